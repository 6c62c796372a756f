//! [`MlpNet`]: the residual MLP denoiser, built once from its [`MlpConfig`]
//! with its parameters under the names of `docs/models.md` ("MLP denoiser").
//!
//! ```text
//! e    = sinusoidal(t, hidden)                      (cos half, then sin half)
//! temb = time_embed.2(silu(time_embed.0(e)))  [+ class_embed[y]]   -> `temb`
//! h    = in_proj(x)
//! for each block (down.*, mid.res.0, up.*):
//!     u = fc1(silu(norm(h))) + temb_proj(silu(temb))
//!     r = fc2(silu(u))                                              -> block.branch
//!     h = h + r                                                     -> block
//! out  = out_proj(silu(out_norm(h)))
//! ```
//!
//! At each injection point the forward calls a hook, which is where the host
//! runs the plugins bound there (and where `features` records activations).

use super::block_names;
use crate::model::ModelDescription;
use crate::model::nn::hooks::Hooks;
use crate::model::nn::layers::temb_point;
use crate::model::nn::{Catalogue, Param, Vars, Weights};
use crate::tensor_abi::ParamStore;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData, activation};
use rand::Rng;
use rand_distr::{Distribution, Normal, Uniform};
use std::cell::RefCell;

/// Shape of the MLP denoiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlpConfig {
    /// Data dimension `D`.
    pub data_dim: usize,
    /// Width `H`.
    pub hidden: usize,
    /// Residual blocks on each side of the middle one.
    pub blocks: usize,
    /// Classes (0: unconditional).
    pub num_classes: usize,
}

/// A linear layer in dtx's MLP layout: `x · W + b` with an `[in, out]`
/// weight.
#[derive(Debug, Clone, PartialEq)]
struct Dense {
    weight: Param<2>,
    bias: Param<1>,
}

impl Dense {
    fn new(vars: &Vars, d_in: usize, d_out: usize) -> Self {
        Dense {
            weight: vars.param("weight", [d_in, d_out]),
            bias: vars.param("bias", [d_out]),
        }
    }

    fn forward<B: AutodiffBackend>(&self, w: &Weights<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
        x.matmul(w.get(self.weight)) + w.get(self.bias).unsqueeze()
    }
}

/// LayerNorm over the last dim, ε = 1e-5, with affine `weight`/`bias`.
#[derive(Debug, Clone, PartialEq)]
struct LayerNorm {
    weight: Param<1>,
    bias: Param<1>,
}

impl LayerNorm {
    fn new(vars: &Vars, d: usize) -> Self {
        LayerNorm {
            weight: vars.param("weight", [d]),
            bias: vars.param("bias", [d]),
        }
    }

    fn forward<B: AutodiffBackend>(&self, w: &Weights<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let mean = x.clone().mean_dim(1);
        let centered = x - mean;
        let var = centered.clone().powf_scalar(2.0).mean_dim(1);
        let y = centered / (var + 1e-5).sqrt();
        y * w.get(self.weight).unsqueeze() + w.get(self.bias).unsqueeze()
    }
}

/// A residual block, named for its injection point.
#[derive(Debug, Clone, PartialEq)]
struct Block {
    point: String,
    /// `<point>.branch`: `fc2`'s output, before the skip sum.
    branch: String,
    norm: LayerNorm,
    fc1: Dense,
    temb_proj: Dense,
    fc2: Dense,
}

impl Block {
    /// `h + branch(fc2(silu(u)))` with `u = fc1(silu(norm(h))) +
    /// temb_proj(silu(temb))`; an identity `branch` is the plain block.
    ///
    /// # Shapes
    /// - h: `[B, H]`, temb_act: `[B, H]`; `branch` takes and returns
    ///   `[B, H]`; output: `[B, H]`
    fn forward_with<B: AutodiffBackend, E>(
        &self,
        w: &Weights<B>,
        h: Tensor<B, 2>,
        temb_act: &Tensor<B, 2>,
        branch: impl FnOnce(Tensor<B, 2>) -> Result<Tensor<B, 2>, E>,
    ) -> Result<Tensor<B, 2>, E> {
        let u = self
            .fc1
            .forward(w, activation::silu(self.norm.forward(w, h.clone())))
            + self.temb_proj.forward(w, temb_act.clone()); // [B, 2H]
        Ok(h + branch(self.fc2.forward(w, activation::silu(u)))?) // [B, H]
    }
}

/// The residual MLP denoiser: its config and its layers.
#[derive(Debug, Clone, PartialEq)]
pub struct MlpNet {
    /// The shape.
    pub config: MlpConfig,
    catalogue: Catalogue,
    time_embed: [Dense; 2],
    /// `[K + 1, H]`, for a class-conditional net.
    class_embed: Option<Param<2>>,
    in_proj: Dense,
    blocks: Vec<Block>,
    out_norm: LayerNorm,
    out_proj: Dense,
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

impl MlpConfig {
    /// The shape a description (kind `mlp`) defines.
    pub fn from_description(d: &ModelDescription) -> Option<MlpConfig> {
        let get = |k: &str| d.config_value(k)?.parse::<usize>().ok();
        (d.kind == "mlp").then_some(())?;
        Some(MlpConfig {
            data_dim: get("data_dim")?,
            hidden: get("hidden")?,
            blocks: get("blocks")?,
            num_classes: get("num_classes")?,
        })
    }
}

impl MlpNet {
    /// The network `config` defines, its parameters declared in forward
    /// order.
    pub fn new(config: MlpConfig) -> Self {
        let cat = RefCell::new(Catalogue::default());
        let vars = Vars::root(&cat);
        let (d, h) = (config.data_dim, config.hidden);
        let time_embed = [
            Dense::new(&vars.pp("time_embed.0"), h, h),
            Dense::new(&vars.pp("time_embed.2"), h, h),
        ];
        let class_embed = (config.num_classes > 0).then(|| {
            vars.pp("class_embed")
                .param("weight", [config.num_classes + 1, h])
        });
        let in_proj = Dense::new(&vars.pp("in_proj"), d, h);
        let blocks = block_names(config.blocks)
            .into_iter()
            .map(|point| {
                let vars = vars.pp(&point);
                Block {
                    norm: LayerNorm::new(&vars.pp("norm"), h),
                    fc1: Dense::new(&vars.pp("fc1"), h, 2 * h),
                    temb_proj: Dense::new(&vars.pp("temb_proj"), h, 2 * h),
                    fc2: Dense::new(&vars.pp("fc2"), 2 * h, h),
                    branch: format!("{point}.branch"),
                    point,
                }
            })
            .collect();
        let out_norm = LayerNorm::new(&vars.pp("out_norm"), h);
        let out_proj = Dense::new(&vars.pp("out_proj"), h, d);
        drop(vars);
        MlpNet {
            config,
            catalogue: cat.into_inner(),
            time_embed,
            class_embed,
            in_proj,
            blocks,
            out_norm,
            out_proj,
        }
    }

    /// The net a description (kind `mlp`) defines.
    pub fn from_description(d: &ModelDescription) -> Option<MlpNet> {
        MlpConfig::from_description(d).map(MlpNet::new)
    }

    /// Every parameter name with its shape, in forward order.
    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// Every parameter name with its shape, in forward order.
    pub fn parameters(&self) -> Vec<(String, Vec<usize>)> {
        self.catalogue.entries().to_vec()
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
        for (name, shape) in self.catalogue.entries() {
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
                    self.catalogue.shape_of(&w).map(|s| s[0]).unwrap_or(1)
                };
                let bound = 1.0 / (fan_in as f32).sqrt();
                let d = Uniform::new(-bound, bound).expect("valid bounds");
                (0..n).map(|_| d.sample(rng)).collect()
            };
            let prim = B::float_from_data(TensorData::new(values, shape.clone()), device);
            store.register_base(name, prim, trainable(name))?;
        }
        Ok(())
    }

    /// The forward pass: ε prediction for `x` `[B, D]` at timesteps `t` `[B]`
    /// (float), calling `hooks` at every injection point.
    ///
    /// # Shapes
    /// - x: `[B, D]`, t: `[B]`, labels: `[B]`
    /// - output: `[B, D]`
    pub(crate) fn forward<B: AutodiffBackend, H: Hooks<B, 2>>(
        &self,
        w: &Weights<B>,
        x: Tensor<B, 2>,
        t: Tensor<B, 1>,
        labels: Option<Tensor<B, 1, Int>>,
        hooks: &mut H,
    ) -> Result<Tensor<B, 2>, H::Error> {
        // 1. time (and class) embedding
        let e = timestep_embedding(t, self.config.hidden); // [B, H]
        let [te0, te2] = &self.time_embed;
        let mut temb = te2.forward(w, activation::silu(te0.forward(w, e)));
        if let (Some(table), Some(y)) = (self.class_embed, labels) {
            temb = temb + w.get(table).select(0, y); // rows of the [K + 1, H] table
        }
        let (temb, temb_act) = temb_point(temb, hooks)?; // [B, H]
        // 2. input projection
        let mut h = self.in_proj.forward(w, x); // [B, H]
        // 3. residual blocks: the branch, then the output, each a point
        for b in &self.blocks {
            let out = b.forward_with(w, h, &temb_act, |r| hooks.block(&b.branch, r, &temb))?;
            h = hooks.block(&b.point, out, &temb)?;
        }
        // 4. output
        let out = self
            .out_proj
            .forward(w, activation::silu(self.out_norm.forward(w, h))); // [B, D]
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NoHooks;
    use crate::tensor_abi::CpuBackend as B;
    use rand::SeedableRng;

    fn net() -> MlpNet {
        MlpNet::new(MlpConfig {
            data_dim: 2,
            hidden: 8,
            blocks: 1,
            num_classes: 3,
        })
    }

    fn store(net: &MlpNet) -> ParamStore<B> {
        let mut s = ParamStore::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        net.init(&mut s, &mut rng, &Default::default(), &|_| true)
            .unwrap();
        s
    }

    fn params(n: &MlpNet, s: &ParamStore<B>) -> Weights<B> {
        Weights::gather(n.catalogue(), |k| {
            s.entries()
                .iter()
                .find(|e| e.name == k)
                .map(|e| e.value.clone())
        })
        .unwrap()
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
        use crate::model::test_io::{Trace, values_of};
        let n = net();
        let s = store(&n);
        let p = params(&n, &s);
        let dev = Default::default();
        let x = Tensor::<B, 2>::ones([4, 2], &dev);
        let t = Tensor::<B, 1>::from_floats([1.0, 10.0, 100.0, 999.0], &dev);
        let y = Tensor::<B, 1, Int>::from_ints([0, 1, 2, 3], &dev);
        let mut trace = Trace::new(None);
        let out = n
            .forward(&p, x.clone(), t.clone(), Some(y), &mut trace)
            .unwrap();
        let seen = trace.block_outputs();
        let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["temb", "down.0.res.0", "mid.res.0", "up.0.res.0"]);
        assert_eq!(out.dims(), [4, 2]);
        // Zeroing the last block's output changes the result.
        let mut trace = Trace::new(Some(("up.0.res.0", 0.0)));
        let zeroed = n.forward(&p, x, t, None, &mut trace).unwrap();
        assert_ne!(values_of(&out), values_of(&zeroed));
    }

    /// Each block's branch point (`fc2`'s output) comes before its output
    /// point, as the description lists them; a hook there replaces the
    /// branch in `h + branch`, so zeroing every branch makes every block
    /// the identity; a recorder records one when asked.
    #[test]
    fn branch_points_replace_the_residual_branches() {
        use crate::model::test_io::{Trace, check_branch_points, check_recorded_branch, values_of};
        let table: toml::Table = "hidden = 8\nblocks = 2\nnum_classes = 3".parse().unwrap();
        let d = crate::model::describe("mlp", None, &table).unwrap();
        let n = MlpNet::from_description(&d).unwrap();
        let s = store(&n);
        let p = params(&n, &s);
        let dev = Default::default();
        let x = || Tensor::<B, 2>::from_floats([[1.0, -2.0], [0.5, 3.0], [2.0, 0.0]], &dev);
        let t = || Tensor::<B, 1>::from_floats([1.0, 50.0, 999.0], &dev);
        let plain = values_of(&n.forward(&p, x(), t(), None, &mut NoHooks).unwrap());
        let run = |hooks: &mut Trace| values_of(&n.forward(&p, x(), t(), None, hooks).unwrap());
        check_branch_points(&d, run, &plain);
        // Zeroed branches: every block passes its input on.
        let mut zeroed = Trace::new(Some(("*.res.*.branch", 0.0)));
        run(&mut zeroed);
        let h0 = values_of(&n.in_proj.forward(&p, x()));
        for b in block_names(2) {
            assert_eq!(zeroed.at(&b), h0, "{b}");
            assert!(zeroed.at(&format!("{b}.branch")).iter().all(|&v| v == 0.0));
        }
        check_recorded_branch(&d, "up.1.res.0.branch", "mid.res.0", |rec| {
            n.forward(&p, x(), t(), None, rec).unwrap();
        });
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
