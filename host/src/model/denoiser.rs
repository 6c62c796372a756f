//! [`Denoiser`]: what every network dtx runs offers (the residual MLP for
//! vectors, diffusers' `UNet2DModel` and guided-diffusion's ADM U-Net for
//! images), and [`Net`], the one denoiser type the run engine holds. All
//! share one forward: a [`Weights`] table for the network's [`Catalogue`],
//! the input at the data's rank, float timesteps, optional labels, the
//! injection-point [`Hooks`] and, in a training forward, the dropout stream,
//! so training, sampling, `denoise`, `features` and plugins' `inject` do not
//! depend on which one runs.

use super::ModelDescription;
use super::adm::{AdmNet, load_weights};
use super::diffusers::{UNet2D, load_safetensors};
use super::mlp::MlpNet;
use super::nn::hooks::{Hooks, NoHooks, at_rank};
use super::nn::layers::DropoutRng;
use super::nn::{Catalogue, Weights, WeightsError};
use crate::tensor_abi::ParamStore;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Int, Tensor, TensorData};
use rand::Rng;
use rand_distr::{Distribution, Normal, Uniform};
use std::collections::HashMap;
use std::path::Path;

/// Why a [`Net`] cannot be built, initialised or loaded.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// An `mlp` description without its sizes.
    #[error("the MLP description lacks a size")]
    MlpWithoutSize,
    /// A source kind the engine does not run (a `dtx` description is the
    /// model it trained, resolved before this).
    #[error("`dtx run` cannot run `kind = \"{0}\"` sources; use a diffusers, adm or mlp source")]
    UnrunnableKind(String),
    /// The diffusers U-Net's config or weights.
    #[error(transparent)]
    UNet(#[from] super::diffusers::UNetError),
    /// The ADM U-Net's config or weights.
    #[error(transparent)]
    Adm(#[from] super::adm::AdmError),
    /// Registering a parameter failed.
    #[error("{0}")]
    Register(#[from] dtx_plugin_api::AbiError),
    /// A checkpoint could not be read.
    #[error("{0}")]
    Read(String),
    /// A checkpoint's tensors do not fit the network: every problem listed.
    #[error("`{}` does not fit the model's config {problems}", file.display())]
    DoesNotFit {
        /// The weights file.
        file: std::path::PathBuf,
        /// The problems, one per line.
        problems: String,
    },
    /// A dtx run's checkpoint, as a source, does not fit the network.
    #[error("`{}`: its base-model weights do not fit the run's model {problems}", file.display())]
    CheckpointDoesNotFit {
        /// The checkpoint.
        file: std::path::PathBuf,
        /// The problems, one per line.
        problems: String,
    },
    /// An MLP has no weights file to load.
    #[error("{}: MLP sources are built from [source.config] and have no weights file", path.display())]
    MlpHasNoWeights {
        /// The path given.
        path: std::path::PathBuf,
    },
}

/// A network that predicts from a noisy input: its shape, its parameters
/// and its forward.
pub trait Denoiser {
    /// The shape of one example: `[D]` or `[C, S, S]`.
    fn data_shape(&self) -> Vec<usize>;

    /// Channels of the output (twice the data's for a learned-variance net).
    fn out_channels(&self) -> usize;

    /// Classes of a class-conditional net (0: unconditional).
    fn num_classes(&self) -> usize;

    /// The dropout rate of the residual blocks in a training forward (0 for
    /// the MLP).
    fn dropout(&self) -> f64;

    /// Every parameter under its checkpoint key with its shape, in the
    /// order the network declares them.
    fn catalogue(&self) -> &Catalogue;

    /// The forward pass: the network's output for `x` (`[B, …]`, at the
    /// data's rank `D`: 2 for the MLP, 4 for the U-Nets) at float timesteps
    /// `t` (`[B]`), with class `labels` (`[B]`) for a class-conditional net,
    /// calling `hooks` at every injection point in forward order; in
    /// training mode when `dropout` is given (the residual blocks apply their
    /// rate with masks from that stream), else in eval mode.
    ///
    /// # Panics
    /// When `D` is not the network's rank (the engine dispatches on it).
    fn forward<B: AutodiffBackend, H: Hooks<B, D>, const D: usize>(
        &self,
        weights: &Weights<B>,
        x: Tensor<B, D>,
        t: Tensor<B, 1>,
        labels: Option<Tensor<B, 1, Int>>,
        hooks: &mut H,
        dropout: Option<&DropoutRng>,
    ) -> Result<Tensor<B, D>, H::Error>;

    /// [`Denoiser::forward`] in eval mode without hooks.
    fn predict<B: AutodiffBackend, const D: usize>(
        &self,
        weights: &Weights<B>,
        x: Tensor<B, D>,
        t: Tensor<B, 1>,
        labels: Option<Tensor<B, 1, Int>>,
    ) -> Tensor<B, D> {
        match self.forward(weights, x, t, labels, &mut NoHooks, None) {
            Ok(out) => out,
            Err(never) => match never {},
        }
    }

    /// Every parameter with its shape, as owned pairs.
    fn parameters(&self) -> Vec<(String, Vec<usize>)> {
        self.catalogue().entries().to_vec()
    }

    /// The table of this network's weights, each found by its key in
    /// `weights` (the values of the session's parameter store); an error
    /// naming the first key missing or misshapen.
    fn weights<B: AutodiffBackend>(
        &self,
        weights: &HashMap<String, FloatTensor<B>>,
    ) -> Result<Weights<B>, WeightsError> {
        Weights::gather(self.catalogue(), |k| weights.get(k).cloned())
    }
}

impl Denoiser for MlpNet {
    fn data_shape(&self) -> Vec<usize> {
        vec![self.config.data_dim]
    }
    fn out_channels(&self) -> usize {
        self.config.data_dim
    }
    fn num_classes(&self) -> usize {
        self.config.num_classes
    }
    fn dropout(&self) -> f64 {
        0.0
    }
    fn catalogue(&self) -> &Catalogue {
        MlpNet::catalogue(self)
    }
    fn forward<B: AutodiffBackend, H: Hooks<B, D>, const D: usize>(
        &self,
        weights: &Weights<B>,
        x: Tensor<B, D>,
        t: Tensor<B, 1>,
        labels: Option<Tensor<B, 1, Int>>,
        hooks: &mut H,
        dropout: Option<&DropoutRng>,
    ) -> Result<Tensor<B, D>, H::Error> {
        let _ = dropout; // the MLP has none
        let x = at_rank::<B, D, 2>(x);
        let out = MlpNet::forward(self, weights, x, t, labels, &mut AtRank::<H, D>(hooks))?;
        Ok(at_rank::<B, 2, D>(out))
    }
}

/// [`Denoiser`] for a U-Net over `[B, C, S, S]`, from its config's
/// image side and class count (an `Option`).
macro_rules! image_denoiser {
    ($net:ty, side: $side:ident, classes: $classes:ident) => {
        impl Denoiser for $net {
            fn data_shape(&self) -> Vec<usize> {
                let c = &self.config;
                vec![c.in_channels, c.$side, c.$side]
            }
            fn out_channels(&self) -> usize {
                self.config.out_channels
            }
            fn num_classes(&self) -> usize {
                self.config.$classes.unwrap_or(0)
            }
            fn dropout(&self) -> f64 {
                self.config.dropout
            }
            fn catalogue(&self) -> &Catalogue {
                <$net>::catalogue(self)
            }
            fn forward<B: AutodiffBackend, H: Hooks<B, D>, const D: usize>(
                &self,
                weights: &Weights<B>,
                x: Tensor<B, D>,
                t: Tensor<B, 1>,
                labels: Option<Tensor<B, 1, Int>>,
                hooks: &mut H,
                dropout: Option<&DropoutRng>,
            ) -> Result<Tensor<B, D>, H::Error> {
                let (x, mut hooks) = (at_rank::<B, D, 4>(x), AtRank::<H, D>(hooks));
                let out = <$net>::forward(self, weights, x, t, labels, &mut hooks, dropout)?;
                Ok(at_rank::<B, 4, D>(out))
            }
        }
    };
}

image_denoiser!(UNet2D, side: sample_size, classes: num_class_embeds);
image_denoiser!(AdmNet, side: image_size, classes: num_classes);

/// `hooks` of rank `D` seen by a network of rank `Z` (the same rank once
/// the engine has dispatched on it).
struct AtRank<'h, H, const D: usize>(&'h mut H);

impl<B: Backend, H: Hooks<B, D>, const D: usize, const Z: usize> Hooks<B, Z> for AtRank<'_, H, D> {
    type Error = H::Error;

    fn temb(&mut self, temb: Tensor<B, 2>) -> Result<Tensor<B, 2>, H::Error> {
        self.0.temb(temb)
    }

    fn block(
        &mut self,
        point: &str,
        h: Tensor<B, Z>,
        temb: &Tensor<B, 2>,
    ) -> Result<Tensor<B, Z>, H::Error> {
        let h = self.0.block(point, at_rank::<B, Z, D>(h), temb)?;
        Ok(at_rank::<B, D, Z>(h))
    }
}

/// A denoiser the engine can run.
#[derive(Debug, Clone, PartialEq)]
pub enum Net {
    /// Residual MLP over `[B, D]`.
    Mlp(MlpNet),
    /// diffusers `UNet2DModel` over `[B, C, S, S]`.
    UNet(UNet2D),
    /// guided-diffusion ADM U-Net over `[B, C, S, S]`.
    Adm(AdmNet),
}

/// `$body` with `$n` bound to the network inside `$net`.
macro_rules! each {
    ($net:expr, $n:ident => $body:expr) => {
        match $net {
            Net::Mlp($n) => $body,
            Net::UNet($n) => $body,
            Net::Adm($n) => $body,
        }
    };
}

impl Denoiser for Net {
    fn data_shape(&self) -> Vec<usize> {
        each!(self, n => n.data_shape())
    }
    fn out_channels(&self) -> usize {
        each!(self, n => Denoiser::out_channels(n))
    }
    fn num_classes(&self) -> usize {
        each!(self, n => Denoiser::num_classes(n))
    }
    fn dropout(&self) -> f64 {
        each!(self, n => Denoiser::dropout(n))
    }
    fn catalogue(&self) -> &Catalogue {
        each!(self, n => Denoiser::catalogue(n))
    }
    fn forward<B: AutodiffBackend, H: Hooks<B, D>, const D: usize>(
        &self,
        weights: &Weights<B>,
        x: Tensor<B, D>,
        t: Tensor<B, 1>,
        labels: Option<Tensor<B, 1, Int>>,
        hooks: &mut H,
        dropout: Option<&DropoutRng>,
    ) -> Result<Tensor<B, D>, H::Error> {
        each!(self, n => Denoiser::forward(n, weights, x, t, labels, hooks, dropout))
    }
}

impl Net {
    /// The net a description defines, or an error saying why it cannot run.
    pub fn from_description(d: &ModelDescription) -> Result<Net, NetError> {
        Ok(match d.kind.as_str() {
            "mlp" => Net::Mlp(MlpNet::from_description(d).ok_or(NetError::MlpWithoutSize)?),
            "diffusers" => Net::UNet(UNet2D::from_description(d)?),
            "adm" => Net::Adm(AdmNet::from_description(d)?),
            other => return Err(NetError::UnrunnableKind(other.to_owned())),
        })
    }

    /// Registers freshly initialised parameters (training from scratch):
    /// PyTorch's default laws — a weight of rank ≥ 2 and its bias uniform on
    /// ±1/sqrt(fan_in) (fan_in = input channels × kernel area), rank-1
    /// weights (norms) 1 with bias 0, class embeddings standard normal.
    pub fn init<B: AutodiffBackend>(
        &self,
        store: &mut ParamStore<B>,
        rng: &mut impl Rng,
        device: &B::Device,
        trainable: &dyn Fn(&str) -> bool,
    ) -> Result<(), NetError> {
        if let Net::Mlp(m) = self {
            return Ok(m.init(store, rng, device, trainable)?);
        }
        let params = self.catalogue().entries();
        let shapes: HashMap<&str, &Vec<usize>> =
            params.iter().map(|(n, s)| (n.as_str(), s)).collect();
        for (name, shape) in params {
            let n: usize = shape.iter().product();
            let weight_of_bias = name
                .strip_suffix(".bias")
                .and_then(|stem| shapes.get(format!("{stem}.weight").as_str()).copied());
            let values: Vec<f32> =
                if name.ends_with("embedding.weight") || name == "label_emb.weight" {
                    let d = Normal::new(0.0f32, 1.0).expect("valid normal");
                    (0..n).map(|_| d.sample(rng)).collect()
                } else {
                    let layer = if name.ends_with(".weight") {
                        Some(shape)
                    } else {
                        weight_of_bias
                    };
                    match layer {
                        Some(w) if w.len() >= 2 => {
                            let fan_in: usize = w[1..].iter().product();
                            let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
                            let d = Uniform::new_inclusive(-bound, bound).expect("valid bounds");
                            (0..n).map(|_| d.sample(rng)).collect()
                        }
                        _ if name.ends_with(".weight") => vec![1.0; n],
                        _ => vec![0.0; n],
                    }
                };
            let prim = B::float_from_data(TensorData::new(values, shape.clone()), device);
            store.register_base(name, prim, trainable(name))?;
        }
        Ok(())
    }

    /// Checks the checkpoint at `path` against this network from its
    /// safetensors header alone (no tensor data is read): every missing,
    /// unexpected, misshaped or non-float key, as [`Net::load`] would report
    /// them. A `.pt` archive's tensor list is in a pickle read with the
    /// data, so that file is read whole.
    pub fn check_weights(&self, path: &Path) -> Result<(), NetError> {
        use crate::model::weights::{check_safetensors_header, problem_list};
        let (file, problems) = match self {
            Net::UNet(u) => {
                let file = crate::model::diffusers::weights_file(path);
                let p = check_safetensors_header(
                    &file,
                    &crate::model::diffusers::current_name,
                    u.catalogue().entries(),
                );
                (file, p)
            }
            Net::Adm(a) if path.extension().is_some_and(|e| e == "safetensors") => {
                let p = check_safetensors_header(path, &str::to_owned, a.catalogue().entries());
                (path.to_path_buf(), p)
            }
            Net::Adm(a) => {
                // A torch.save archive lists its tensors in a pickle read
                // with the data: the check reads the file as the run will.
                use crate::model::weights::StoredTensor;
                let found = crate::model::torch_file::read_state_dict(path)
                    .map_err(|e| NetError::Read(format!("`{}`: {e}", path.display())))?
                    .into_iter()
                    .map(|(k, t)| (k, (t.shape(), t.dtype())))
                    .collect();
                let p = crate::model::weights::header_problems(a.catalogue().entries(), found);
                (path.to_path_buf(), Ok(p))
            }
            Net::Mlp(_) => return Ok(()),
        };
        match problems {
            Ok(p) if p.is_empty() => Ok(()),
            Ok(p) => Err(NetError::DoesNotFit {
                file,
                problems: problem_list(&p),
            }),
            Err(e) => Err(NetError::Read(e)),
        }
    }

    /// Loads the checkpoint at `path` (a diffusers folder, or an ADM `.pt` /
    /// `.safetensors` file) into `store`.
    pub fn load<B: AutodiffBackend>(
        &self,
        path: &Path,
        store: &mut ParamStore<B>,
        device: &B::Device,
        trainable: &dyn Fn(&str) -> bool,
    ) -> Result<(), NetError> {
        match self {
            Net::UNet(u) => Ok(load_safetensors::<B>(u, path, store, device, trainable)?),
            Net::Adm(a) => Ok(load_weights::<B>(
                path,
                store,
                device,
                trainable,
                a.catalogue().entries(),
            )?),
            Net::Mlp(_) => Err(NetError::MlpHasNoWeights {
                path: path.to_path_buf(),
            }),
        }
    }
}
