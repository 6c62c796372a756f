//! The residual MLP denoiser's forward pass, on parameters held in the host's
//! [`ParamStore`] under the names of `docs/models.md` ("MLP denoiser").
//!
//! ```text
//! e    = sinusoidal(t, hidden)                      (cos half, then sin half)
//! temb = time_embed.2(silu(time_embed.0(e)))  [+ class_embed[y]]   -> `temb`
//! h    = in_proj(x)
//! for each block (down.*, mid.res.0, up.*):
//!     u = fc1(silu(norm(h))) + temb_proj(silu(temb))
//!     h = h + fc2(silu(u))                                          -> block
//! out  = out_proj(silu(out_norm(h)))
//! ```
//!
//! At each injection point the forward calls a hook, which is where the host
//! runs the plugins bound there (and where `features` records activations).

use super::{ModelDescription, mlp};
use crate::tensor_abi::ParamStore;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Int, Tensor, TensorData, TensorPrimitive, activation};
use rand::Rng;
use rand_distr::{Distribution, Normal, Uniform};
use std::collections::HashMap;

/// Shape of the MLP denoiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlpNet {
    /// Data dimension `D`.
    pub data_dim: usize,
    /// Width `H`.
    pub hidden: usize,
    /// Residual blocks on each side of the middle one.
    pub blocks: usize,
    /// Classes (0: unconditional).
    pub num_classes: usize,
}

type P<B> = FloatTensor<B>;

/// The hook called at every injection point: `(point, h, temb) -> h'`.
pub type PointHook<'a, B, E> = dyn FnMut(&str, P<B>, &P<B>) -> Result<P<B>, E> + 'a;

fn t2<B: AutodiffBackend>(p: &P<B>) -> Tensor<B, 2> {
    Tensor::from_primitive(TensorPrimitive::Float(p.clone()))
}

fn t1<B: AutodiffBackend>(p: &P<B>) -> Tensor<B, 1> {
    Tensor::from_primitive(TensorPrimitive::Float(p.clone()))
}

/// A named parameter, or a panic naming it (the store was filled by
/// [`MlpNet::init`] from the same name list, so a miss is a host bug).
fn get<'a, B: AutodiffBackend>(params: &'a HashMap<String, P<B>>, name: &str) -> &'a P<B> {
    params
        .get(name)
        .unwrap_or_else(|| panic!("MLP parameter `{name}` is missing from the store"))
}

fn linear<B: AutodiffBackend>(
    params: &HashMap<String, P<B>>,
    name: &str,
    x: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let w = t2::<B>(get::<B>(params, &format!("{name}.weight")));
    let b = t1::<B>(get::<B>(params, &format!("{name}.bias")));
    x.matmul(w) + b.unsqueeze()
}

/// LayerNorm over the last dim, ε = 1e-5, with affine `weight`/`bias`.
fn layer_norm<B: AutodiffBackend>(
    params: &HashMap<String, P<B>>,
    name: &str,
    x: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let mean = x.clone().mean_dim(1);
    let centered = x - mean;
    let var = centered.clone().powf_scalar(2.0).mean_dim(1);
    let y = centered / (var + 1e-5).sqrt();
    y * t1::<B>(get::<B>(params, &format!("{name}.weight"))).unsqueeze()
        + t1::<B>(get::<B>(params, &format!("{name}.bias"))).unsqueeze()
}

/// ADM's `timestep_embedding`: `[cos(t·f_i), sin(t·f_i)]`, f_i = 10000^(−i/half).
pub fn timestep_embedding<B: AutodiffBackend>(t: Tensor<B, 1>, dim: usize) -> Tensor<B, 2> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f32.ln()) * i as f32 / half as f32).exp())
        .collect();
    let freqs = Tensor::<B, 1>::from_data(TensorData::new(freqs, [half]), &t.device());
    let args = t.unsqueeze_dim::<2>(1) * freqs.unsqueeze(); // [B, half]
    Tensor::cat(vec![args.clone().cos(), args.sin()], 1)
}

impl MlpNet {
    /// The net a description (kind `mlp`) defines.
    pub fn from_description(d: &ModelDescription) -> Option<MlpNet> {
        let get = |k: &str| d.config_value(k)?.parse::<usize>().ok();
        (d.kind == "mlp").then_some(())?;
        Some(MlpNet {
            data_dim: get("data_dim")?,
            hidden: get("hidden")?,
            blocks: get("blocks")?,
            num_classes: get("num_classes")?,
        })
    }

    /// Every parameter name with its shape, in forward order.
    pub fn parameters(&self) -> Vec<(String, Vec<usize>)> {
        mlp::parameters(self.data_dim, self.hidden, self.blocks, self.num_classes)
    }

    /// Registers freshly initialised parameters in `store` (PyTorch's laws:
    /// linear weights and biases uniform on ±1/sqrt(fan_in), norms 1 and 0,
    /// class embeddings standard normal), `trainable(name)` deciding which train.
    pub fn init<B: AutodiffBackend>(
        &self,
        store: &mut ParamStore<B>,
        rng: &mut impl Rng,
        device: &B::Device,
        trainable: &dyn Fn(&str) -> bool,
    ) -> Result<(), dtx_plugin_api::AbiError> {
        for (name, shape) in self.parameters() {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = if name.ends_with("norm.weight") {
                vec![1.0; n]
            } else if name.ends_with("norm.bias") {
                vec![0.0; n]
            } else if name == "class_embed.weight" {
                let d = Normal::new(0.0f32, 1.0).expect("valid normal");
                (0..n).map(|_| d.sample(rng)).collect()
            } else {
                // weights are [in, out]; a bias's fan-in is its layer's input width
                let fan_in = if name.ends_with(".weight") {
                    shape[0]
                } else {
                    let w = name.trim_end_matches(".bias").to_owned() + ".weight";
                    self.parameters()
                        .into_iter()
                        .find(|(n, _)| *n == w)
                        .map(|(_, s)| s[0])
                        .unwrap_or(1)
                };
                let bound = 1.0 / (fan_in as f32).sqrt();
                let d = Uniform::new(-bound, bound).expect("valid bounds");
                (0..n).map(|_| d.sample(rng)).collect()
            };
            let prim = B::float_from_data(TensorData::new(values, shape.clone()), device);
            store.register_base(&name, prim, trainable(&name))?;
        }
        Ok(())
    }

    /// The forward pass: ε prediction for `x` `[B, D]` at timesteps `t` `[B]`
    /// (float), calling `hook(point, h, temb)` at every injection point.
    ///
    /// # Shapes
    /// - x: `[B, D]`, t: `[B]`, labels: `[B]`
    /// - output: `[B, D]`
    pub fn forward<B: AutodiffBackend, E>(
        &self,
        params: &HashMap<String, P<B>>,
        x: P<B>,
        t: P<B>,
        labels: Option<IntTensor<B>>,
        hook: &mut PointHook<'_, B, E>,
    ) -> Result<P<B>, E> {
        // 1. time (and class) embedding
        let e = timestep_embedding(t1::<B>(&t), self.hidden); // [B, H]
        let mut temb = linear(
            params,
            "time_embed.2",
            activation::silu(linear(params, "time_embed.0", e)),
        );
        if let (true, Some(y)) = (self.num_classes > 0, labels) {
            let table = t2::<B>(get::<B>(params, "class_embed.weight")); // [K+1, H]
            temb = temb + table.select(0, Tensor::<B, 1, Int>::from_primitive(y));
        }
        let temb0 = temb.into_primitive().tensor();
        let temb = hook("temb", temb0.clone(), &temb0)?; // [B, H]
        // 2. input projection
        let mut h = linear(params, "in_proj", t2::<B>(&x)); // [B, H]
        // 3. residual blocks, each an injection point
        let temb_act = activation::silu(t2::<B>(&temb));
        for block in mlp::block_names(self.blocks) {
            let u = linear(
                params,
                &format!("{block}.fc1"),
                activation::silu(layer_norm(params, &format!("{block}.norm"), h.clone())),
            ) + linear(params, &format!("{block}.temb_proj"), temb_act.clone()); // [B, 2H]
            let out = h + linear(params, &format!("{block}.fc2"), activation::silu(u)); // [B, H]
            h = t2::<B>(&hook(&block, out.into_primitive().tensor(), &temb)?);
        }
        // 4. output
        let out = linear(
            params,
            "out_proj",
            activation::silu(layer_norm(params, "out_norm", h)),
        ); // [B, D]
        Ok(out.into_primitive().tensor())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor_abi::CpuBackend as B;
    use rand::SeedableRng;

    fn net() -> MlpNet {
        MlpNet {
            data_dim: 2,
            hidden: 8,
            blocks: 1,
            num_classes: 3,
        }
    }

    fn store(net: &MlpNet) -> ParamStore<B> {
        let mut s = ParamStore::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        net.init(&mut s, &mut rng, &Default::default(), &|_| true)
            .unwrap();
        s
    }

    fn params(s: &ParamStore<B>) -> HashMap<String, P<B>> {
        s.entries()
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect()
    }

    #[test]
    fn every_documented_parameter_is_registered_with_its_shape() {
        let n = net();
        let s = store(&n);
        use burn::tensor::TensorMetadata;
        for (name, shape) in n.parameters() {
            let e = &s.entries()[s.by_name(&name).unwrap().0 as usize];
            assert_eq!(e.value.shape().to_vec(), shape, "{name}");
        }
    }

    #[test]
    fn forward_visits_every_point_in_order_and_the_hook_can_change_it() {
        let n = net();
        let s = store(&n);
        let p = params(&s);
        let dev = Default::default();
        let x = Tensor::<B, 2>::ones([4, 2], &dev).into_primitive().tensor();
        let t = Tensor::<B, 1>::from_floats([1.0, 10.0, 100.0, 999.0], &dev)
            .into_primitive()
            .tensor();
        let y = Tensor::<B, 1, Int>::from_ints([0, 1, 2, 3], &dev).into_primitive();
        let mut seen = Vec::new();
        let out = n
            .forward::<B, ()>(&p, x.clone(), t.clone(), Some(y), &mut |point, h, _| {
                seen.push(point.to_owned());
                Ok(h)
            })
            .unwrap();
        assert_eq!(seen, ["temb", "down.0.res.0", "mid.res.0", "up.0.res.0"]);
        assert_eq!(t2::<B>(&out).dims(), [4, 2]);
        // Zeroing the last block's output changes the result.
        let zeroed = n
            .forward::<B, ()>(&p, x, t, None, &mut |point, h, _| {
                Ok(if point == "up.0.res.0" {
                    t2::<B>(&h).mul_scalar(0.0).into_primitive().tensor()
                } else {
                    h
                })
            })
            .unwrap();
        assert_ne!(
            t2::<B>(&out).into_data().to_vec::<f32>().unwrap(),
            t2::<B>(&zeroed).into_data().to_vec::<f32>().unwrap()
        );
    }

    #[test]
    fn timestep_embedding_matches_its_formula() {
        let dev = Default::default();
        let e = timestep_embedding::<B>(Tensor::from_floats([1.0], &dev), 4)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        // f = [1, 0.01]: [cos 1, cos 0.01, sin 1, sin 0.01]
        let want = [1f32.cos(), 0.01f32.cos(), 1f32.sin(), 0.01f32.sin()];
        for (a, b) in e.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
