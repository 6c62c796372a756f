//! The `dtx` feature extractor: a small CNN trained by the project on the
//! procedural `builtin:shapes` family (every kind, colour and texture, at 16
//! and 32 pixels) to tell each image's kind, colour and texture and to
//! regress its centre and size. Its 128-d bottleneck is the feature space of
//! `FD_dtx`, `KID_dtx` and the nearest-neighbour distances. It needs no
//! download: the weights (~0.8 MB) are embedded in the binary.
//!
//! It is *not* Inception: numbers it gives compare dtx runs with each other
//! on shapes-like data, and say nothing comparable to published FIDs. The
//! weights are made by `cargo run --release -p dtx --example
//! train_extractor` (see that file and docs/evaluation.md).

use crate::kernels::conv2d_tensor as conv2d;
use burn::tensor::backend::Backend;
use burn::tensor::module::{avg_pool2d, interpolate};
use burn::tensor::ops::{ConvOptions, InterpolateMode, InterpolateOptions};
use burn::tensor::{Tensor, TensorData, activation::relu};
use std::collections::HashMap;

/// The shipped weights.
pub(crate) const WEIGHTS: &[u8] = include_bytes!("../../assets/dtx-shapes-extractor.safetensors");

/// Side of the images the network sees; inputs are resized to it.
pub const INPUT: usize = 32;
/// Feature dimension.
pub const FEATURE_DIM: usize = 128;
/// Channels of the three conv stages.
pub(crate) const CHANNELS: [usize; 3] = [16, 32, 64];
/// Classes of the three classification heads: kind, colour, texture.
pub(crate) const HEADS: [(&str, usize); 3] = [("kind", 6), ("colour", 7), ("texture", 3)];
/// Outputs of the regression head: centre x, centre y, radius (÷ side).
pub(crate) const REGRESS: usize = 3;

/// Every weight of the network, name and shape, in a fixed order.
pub(crate) fn layout() -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    let mut cin = 3;
    for (s, &c) in CHANNELS.iter().enumerate() {
        for j in 0..2 {
            let name = format!("stage{s}.conv{j}");
            out.push((format!("{name}.weight"), vec![c, cin, 3, 3]));
            out.push((format!("{name}.bias"), vec![c]));
            cin = c;
        }
    }
    let flat = CHANNELS[2] * (INPUT / 8) * (INPUT / 8);
    out.push(("fc.weight".into(), vec![FEATURE_DIM, flat]));
    out.push(("fc.bias".into(), vec![FEATURE_DIM]));
    for (h, k) in HEADS {
        out.push((format!("head.{h}.weight"), vec![k, FEATURE_DIM]));
        out.push((format!("head.{h}.bias"), vec![k]));
    }
    out.push(("head.regress.weight".into(), vec![REGRESS, FEATURE_DIM]));
    out.push(("head.regress.bias".into(), vec![REGRESS]));
    out
}

/// Names of the feature standardisation tensors (each `[FEATURE_DIM]`):
/// the bottleneck's mean and standard deviation over fresh shapes of every
/// kind, measured once after training and shipped with the weights.
pub(crate) const NORM: [&str; 2] = ["features.mean", "features.std"];

/// The network's weights as tensors of backend `B` (plain or autodiff).
#[derive(Clone)]
pub struct DtxNet<B: Backend> {
    pub(crate) w: HashMap<String, Tensor<B, 1>>,
    pub(crate) shapes: HashMap<String, Vec<usize>>,
    /// Feature mean and standard deviation, once measured.
    pub(crate) norm: Option<(Tensor<B, 1>, Tensor<B, 1>)>,
}

/// What one forward pass gives: the features and every head's output.
pub(crate) struct Outputs<B: Backend> {
    pub features: Tensor<B, 2>,
    pub logits: Vec<Tensor<B, 2>>,
    pub regress: Tensor<B, 2>,
}

/// Why bytes do not hold the extractor's weights.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtxNetError {
    /// Not a safetensors file.
    #[error("not a safetensors file: {0}")]
    NotSafetensors(String),
    /// A tensor of the layout is absent.
    #[error("missing tensor `{0}`")]
    Missing(String),
    /// A tensor has another shape than the layout's.
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The tensor.
        name: String,
        /// Its shape.
        found: Vec<usize>,
        /// The layout's.
        expected: Vec<usize>,
    },
    /// A tensor of a dtype that is not read.
    #[error("tensor `{name}` has unsupported dtype {dtype}")]
    Dtype {
        /// The tensor.
        name: String,
        /// Its dtype.
        dtype: String,
    },
}

impl<B: Backend> DtxNet<B> {
    /// The shipped network.
    pub fn embedded(device: &B::Device) -> Result<Self, DtxNetError> {
        Self::from_safetensors(WEIGHTS, device)
    }

    /// A network from safetensors bytes holding exactly [`layout`]'s tensors.
    pub fn from_safetensors(bytes: &[u8], device: &B::Device) -> Result<Self, DtxNetError> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| DtxNetError::NotSafetensors(e.to_string()))?;
        let mut named = Vec::new();
        // the standardisation is optional (a network straight from training)
        let norm_layout = NORM
            .iter()
            .filter(|n| st.names().contains(n))
            .map(|n| (n.to_string(), vec![FEATURE_DIM]));
        for (name, shape) in layout().into_iter().chain(norm_layout) {
            let view = st
                .tensor(&name)
                .map_err(|_| DtxNetError::Missing(name.clone()))?;
            if view.shape() != shape.as_slice() {
                return Err(DtxNetError::Shape {
                    name,
                    found: view.shape().to_vec(),
                    expected: shape,
                });
            }
            let dtype = format!("{:?}", view.dtype());
            let Some(data) = crate::model::weights::le_bytes_to_f32(&dtype, view.data()) else {
                return Err(DtxNetError::Dtype { name, dtype });
            };
            named.push((name, data));
        }
        Ok(Self::from_values(named, device))
    }

    /// The shape of weight `name` (or of a [`NORM`] tensor).
    pub fn shape_of(&self, name: &str) -> Vec<usize> {
        self.shapes
            .get(name)
            .cloned()
            .unwrap_or_else(|| vec![FEATURE_DIM])
    }

    /// Every weight (and the standardisation, when there is one) as flat
    /// values, weights in [`layout`] order.
    pub fn values(&self) -> Vec<(String, Vec<f32>)> {
        let flat = |t: &Tensor<B, 1>| t.clone().into_data().to_vec::<f32>().expect("f32 weights");
        let mut out: Vec<(String, Vec<f32>)> = layout()
            .into_iter()
            .map(|(name, _)| {
                let v = flat(&self.w[&name]);
                (name, v)
            })
            .collect();
        if let Some((m, sd)) = &self.norm {
            out.push((NORM[0].to_owned(), flat(m)));
            out.push((NORM[1].to_owned(), flat(sd)));
        }
        out
    }

    /// A network from flat values in [`layout`]'s names, with the feature
    /// standardisation when the values hold [`NORM`]'s tensors too.
    pub fn from_values(named: Vec<(String, Vec<f32>)>, device: &B::Device) -> Self {
        let shapes: HashMap<String, Vec<usize>> = layout().into_iter().collect();
        let mut w: HashMap<String, Tensor<B, 1>> = named
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    Tensor::from_data(TensorData::new(v.clone(), [v.len()]), device),
                )
            })
            .collect();
        let norm = match (w.remove(NORM[0]), w.remove(NORM[1])) {
            (Some(m), Some(s)) => Some((m, s)),
            _ => None,
        };
        DtxNet { w, shapes, norm }
    }

    fn get<const D: usize>(&self, name: &str) -> Tensor<B, D> {
        let shape: [usize; D] = self.shapes[name]
            .clone()
            .try_into()
            .expect("layout ranks are fixed");
        self.w[name].clone().reshape(shape)
    }

    fn linear(&self, name: &str, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let w: Tensor<B, 2> = self.get(&format!("{name}.weight"));
        let b: Tensor<B, 1> = self.w[&format!("{name}.bias")].clone();
        x.matmul(w.transpose()) + b.unsqueeze()
    }

    /// Images `[N, C, H, W]` in [−1, 1] (C = 1 or 3) as the network's input:
    /// grey repeated to RGB, resized bilinearly to 32 × 32.
    pub(crate) fn prepare(x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let x = if c == 1 { x.expand([n, 3, h, w]) } else { x };
        if h == INPUT && w == INPUT {
            return x;
        }
        interpolate(
            x,
            [INPUT, INPUT],
            InterpolateOptions {
                mode: InterpolateMode::Bilinear,
                align_corners: false,
            },
        )
    }

    /// One forward pass over images already [`prepare`](Self::prepare)d.
    pub(crate) fn forward(&self, x: Tensor<B, 4>) -> Outputs<B> {
        let mut h = x;
        for s in 0..CHANNELS.len() {
            for j in 0..2 {
                let name = format!("stage{s}.conv{j}");
                let w: Tensor<B, 4> = self.get(&format!("{name}.weight"));
                let b = self.w[&format!("{name}.bias")].clone();
                h = relu(conv2d(
                    h,
                    w,
                    Some(b),
                    ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
                ));
            }
            h = avg_pool2d(h, [2, 2], [2, 2], [0, 0], true, false);
        }
        let n = h.dims()[0];
        let flat: Tensor<B, 2> = h.reshape([n as i32, -1]);
        let features = self.linear("fc", flat);
        let act = relu(features.clone());
        let logits = HEADS
            .iter()
            .map(|(name, _)| self.linear(&format!("head.{name}"), act.clone()))
            .collect();
        let regress = self.linear("head.regress", act);
        Outputs {
            features,
            logits,
            regress,
        }
    }

    /// The 128-d features of images `[N, C, H, W]` in [−1, 1]: the
    /// bottleneck, standardised per dimension with the shipped statistics
    /// (so that KID's kernel (x·y/d + 1)³ sees values of order 1, as with
    /// Inception features).
    pub fn features(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let f = self.forward(Self::prepare(images)).features;
        match &self.norm {
            Some((mean, std)) => (f - mean.clone().unsqueeze()) / std.clone().unsqueeze(),
            None => f,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shapes::ShapesConfig;
    use crate::eval::metrics::{Features, kid_full};
    use burn::backend::Flex;

    type B = Flex;

    fn features_of(net: &DtxNet<B>, preset: &str, seed: u64, n: usize, res: usize) -> Features {
        let mut cfg = ShapesConfig::preset(preset);
        cfg.resolution = res;
        let ds = cfg.dataset(seed, n);
        let x = Tensor::<B, 4>::from_data(
            TensorData::new(ds.samples, [n, 3, res, res]),
            &Default::default(),
        );
        let f = net.features(x).into_data().to_vec::<f32>().unwrap();
        Features::from_f32(&f, FEATURE_DIM)
    }

    /// The shipped weights load, and still do what they were trained for:
    /// on fresh shapes (a seed training never used) the heads name kind,
    /// colour and texture at ≥ 90 % (at training's end they scored ≥ 96 %).
    #[test]
    fn embedded_extractor_recognises_fresh_shapes() {
        let device = Default::default();
        let net = DtxNet::<B>::embedded(&device).unwrap();
        assert!(
            net.norm.is_some(),
            "the shipped file holds the standardisation"
        );
        for res in [16, 32] {
            let acc = crate::eval::train_extractor::accuracy(&net, 777, 128, res, &device);
            assert!(acc.iter().all(|&a| a >= 0.9), "{res} px: {acc:?}");
        }
    }

    /// In its feature space two draws of the target family are close and
    /// the source family is far: KID_dtx(target, target′) is under a tenth
    /// of KID_dtx(target, source). This is what makes KID_dtx measure a
    /// transfer.
    #[test]
    fn features_separate_source_and_target_families() {
        let net = DtxNet::<B>::embedded(&Default::default()).unwrap();
        let t1 = features_of(&net, "target", 1, 64, 16);
        let t2 = features_of(&net, "target", 2, 64, 16);
        let s = features_of(&net, "source", 3, 64, 16);
        let same = kid_full(&t1, &t2).unwrap();
        let apart = kid_full(&t1, &s).unwrap();
        assert!(apart > 0.0 && same < 0.1 * apart, "{same} vs {apart}");
    }

    /// A file with a tensor missing or of the wrong shape is an error naming
    /// the tensor.
    #[test]
    fn bad_weights_name_the_tensor() {
        let device = Default::default();
        assert!(DtxNet::<B>::from_safetensors(b"not a file", &device).is_err());
        let data = vec![0u8; 4 * 16];
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![16], &data).unwrap();
        let bytes = safetensors::serialize([("stage0.conv0.bias", view)], None).unwrap();
        let err = DtxNet::<B>::from_safetensors(&bytes, &device)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("stage0.conv0.weight"), "{err}");
    }
}
