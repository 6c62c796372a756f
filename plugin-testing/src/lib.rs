//! `dtx-plugin-testing`: test a plugin's hooks in process.
//!
//! A [`TestHost`] is a dtx host on the CPU backend with a tiny model (the
//! 16×16 diffusers U-Net of dtx's tests, or the residual MLP), its base
//! weights drawn from a fixed seed. [`TestHost::plugin`] builds a plugin
//! *type* linked into the test — the plugin crate's `rlib` — through the same
//! ABI the `dtx` binary uses, with no `cargo build` of a `cdylib` and no file
//! to load. The hooks then run as in a run: every return is checked (shape,
//! dtype; a violation is the host's error naming plugin, hook and shapes),
//! parameters live in the host, and gradients flow through its autodiff.
//!
//! ```ignore
//! use dtx_plugin_testing::{Array, TestHost};
//! # fn t() -> Result<(), String> {
//! let host = TestHost::tiny_unet();
//! let mut p = host.plugin::<dtx_plugin_lora::Lora>("rank = 2")?;
//! let key = &p.weight_targets()[0];
//! let w = host.base_weight(key);
//! let w2 = p.weights(key, &w)?;               // W' as the host uses it
//! assert_eq!(w2, w);                          // B starts at zero
//! let err = p.check_weights_gradient(key, &w, "mid_block.attentions.0.to_q.lora_B.weight", 1e-2)?;
//! assert!(err < 1e-2);                        // autodiff against finite differences
//! # Ok(()) }
//! ```
//!
//! Add it as a dev-dependency (`dtx-plugin-testing = { path = ".../plugin-testing" }`)
//! and keep the plugin's own dependencies to `dtx-plugin-api`: the harness
//! brings burn into the tests alone.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{Shape, TensorData, TensorMetadata};
use dtx::model::{Denoiser, ModelDescription, Net};
use dtx::plugins::{InjectArgs, Instance, in_process_library};
use dtx::tensor_abi::{Session, SessionGuard, vtables};
use dtx_plugin_api::{ModelInfo, Plugin};
use std::collections::HashMap;

pub use burn;
/// The backend the harness runs on: burn's CPU backend with autodiff.
pub type B = dtx::tensor_abi::CpuBackend;

/// The diffusers config of the tiny U-Net (channels 32, 64; one layer per
/// block; attention at the lower level; 16×16, 3 channels).
pub const TINY_UNET_CONFIG: &str = r#"{
  "_class_name": "UNet2DModel",
  "sample_size": 16,
  "in_channels": 3,
  "out_channels": 3,
  "block_out_channels": [32, 64],
  "layers_per_block": 1,
  "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
  "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
  "mid_block_type": "UNetMidBlock2D",
  "norm_num_groups": 8,
  "attention_head_dim": 8,
  "add_attention": true
}"#;

/// A tensor as a test writes it: a shape and its values in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// The shape.
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub values: Vec<f32>,
}

impl Array {
    /// An array of `shape` holding `values`.
    ///
    /// # Panics
    /// When `values` does not have `shape`'s length.
    pub fn new(shape: &[usize], values: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "{} values for shape {shape:?}",
            values.len()
        );
        Array {
            shape: shape.to_vec(),
            values,
        }
    }

    /// Zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Array::new(shape, vec![0.0; shape.iter().product()])
    }

    /// Values uniform on (−1, 1) from `seed` (a fixed generator: the same
    /// array on every machine and version).
    pub fn random(shape: &[usize], seed: u64) -> Self {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let values = (0..shape.iter().product::<usize>())
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Array::new(shape, values)
    }

    /// The largest absolute difference from `other` (same shape).
    ///
    /// # Panics
    /// When the shapes differ.
    pub fn max_abs_diff(&self, other: &Array) -> f32 {
        assert_eq!(self.shape, other.shape);
        self.values
            .iter()
            .zip(&other.values)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    fn to_prim(&self) -> FloatTensor<B> {
        B::float_from_data(
            TensorData::new(self.values.clone(), self.shape.clone()),
            &Default::default(),
        )
    }

    fn of_prim(p: FloatTensor<B>) -> Self {
        let shape = p.shape().to_vec();
        let values = burn::tensor::read_sync(B::float_into_data(p))
            .expect("a CPU tensor reads")
            .convert::<f32>()
            .to_vec()
            .expect("f32 values");
        Array { shape, values }
    }
}

/// A dtx host on the CPU with a tiny model: the session plugins' services
/// run in, the model they are built for, its base weights.
pub struct TestHost {
    desc: ModelDescription,
    base: HashMap<String, FloatTensor<B>>,
    info: ModelInfo,
    // declared last: the session outlives the plugins' parameters
    _session: SessionGuard,
}

impl TestHost {
    /// The tiny diffusers U-Net ([`TINY_UNET_CONFIG`]), weights from seed 0.
    pub fn tiny_unet() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "dtx-plugin-testing-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        std::fs::write(dir.join("config.json"), TINY_UNET_CONFIG).expect("writing config.json");
        let desc = dtx::model::describe("diffusers", Some(&dir), &toml::Table::new())
            .expect("the tiny U-Net's config is valid");
        let _ = std::fs::remove_dir_all(&dir);
        Self::with(desc)
    }

    /// dtx's residual MLP on 2-D data (hidden 32, 2 blocks), weights from
    /// seed 0.
    pub fn mlp() -> Self {
        let table: toml::Table = "hidden = 32\nblocks = 2".parse().expect("TOML");
        let desc = dtx::model::describe("mlp", None, &table).expect("the MLP's config is valid");
        Self::with(desc)
    }

    fn with(desc: ModelDescription) -> Self {
        use rand::SeedableRng;
        let session = Session::<B>::install(Default::default(), 0);
        dtx::train::optim::install::<B>(Default::default()).expect("an optimizer");
        let net = Net::from_description(&desc).expect("the model builds");
        let details = dtx::model::details_of(&net, &desc, "epsilon");
        let base = Session::<B>::with(|s| {
            s.services.model_details = Some(details);
            let mut rng = rand::rngs::StdRng::seed_from_u64(0);
            net.init::<B>(&mut s.params, &mut rng, &Default::default(), &|_| false)
                .expect("the weights initialise");
            s.params
                .entries()
                .iter()
                .map(|e| {
                    (
                        e.name.clone(),
                        dtx::tensor_abi::untracked::<B>(e.value.clone()),
                    )
                })
                .collect()
        })
        .expect("the session is installed");
        let info = desc.to_model_info();
        TestHost {
            desc,
            base,
            info,
            _session: session,
        }
    }

    /// The model plugins are built for: injection points with their sizes.
    pub fn model(&self) -> &ModelInfo {
        &self.info
    }

    /// The shape of injection point `point` for a batch of `batch`:
    /// `[batch, C, H, W]`, or `[batch, C]` for `temb` and vector models.
    ///
    /// # Panics
    /// When the model has no such point.
    pub fn point_shape(&self, point: &str, batch: usize) -> Vec<usize> {
        let p = self
            .info
            .points
            .iter()
            .find(|p| p.name.as_str() == point)
            .unwrap_or_else(|| panic!("no point `{point}`"));
        if p.height == 0 {
            vec![batch, p.channels]
        } else {
            vec![batch, p.channels, p.height, p.width]
        }
    }

    /// The shape of a batch of `batch` examples of the model's data.
    pub fn data_shape(&self, batch: usize) -> Vec<usize> {
        let d = &self.desc;
        if d.resolution == 0 {
            vec![batch, d.data_channels]
        } else {
            vec![batch, d.data_channels, d.resolution, d.resolution]
        }
    }

    /// Every base parameter: checkpoint key and shape, as
    /// `host.model_details()` lists them.
    pub fn base_parameters(&self) -> Vec<(String, Vec<usize>)> {
        Net::from_description(&self.desc)
            .expect("the model builds")
            .parameters()
    }

    /// The base weight `key` (the model's random initialisation).
    ///
    /// # Panics
    /// When the model has no parameter `key`.
    pub fn base_weight(&self, key: &str) -> Array {
        Array::of_prim(
            self.base
                .get(key)
                .unwrap_or_else(|| panic!("no base parameter `{key}`"))
                .clone(),
        )
    }

    /// Builds the plugin `P` (linked into this test) from `config`, the
    /// `[plugin.config]` table as TOML text (`"rank = 2\nalpha = 4.0"`; empty
    /// for the defaults), through the ABI. The error is the host's, naming
    /// the key.
    pub fn plugin<P: Plugin>(&self, config: &str) -> Result<TestPlugin, String> {
        let table: toml::Table = config
            .parse()
            .map_err(|e| format!("the config is not TOML: {e}"))?;
        let json = serde_json::to_string(&table).map_err(|e| e.to_string())?;
        let lib = in_process_library(
            dtx_plugin_api::__private::root_module::<P>(),
            vtables::<B>(),
        )
        .map_err(|e| e.to_string())?;
        let inst =
            Instance::<B>::new(P::NAME, lib, &json, &self.info).map_err(|e| e.to_string())?;
        Ok(TestPlugin {
            inst,
            temb: self.desc.temb_channels,
        })
    }
}

/// A plugin built in a [`TestHost`]: its hooks, its parameters.
pub struct TestPlugin {
    inst: Instance<B>,
    temb: usize,
}

impl TestPlugin {
    /// The host's instance (every hook with burn tensors, as the engine
    /// calls them).
    pub fn instance(&mut self) -> &mut Instance<B> {
        &mut self.inst
    }

    /// The plugin's parameters: name (without `plugin.<name>.`) and shape.
    pub fn parameters(&self) -> Vec<(String, Vec<usize>)> {
        self.inst
            .parameters()
            .iter()
            .map(|p| (p.name.to_string(), p.shape.to_vec()))
            .collect()
    }

    fn param_id(&self, name: &str) -> Result<dtx_plugin_api::abi::ParamId, String> {
        let full = format!("plugin.{}.{name}", self.inst.name);
        Session::<B>::with(|s| s.params.by_name(&full))
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "no parameter `{name}`; the plugin has {:?}",
                    self.parameters()
                        .iter()
                        .map(|(n, _)| n.clone())
                        .collect::<Vec<_>>()
                )
            })
    }

    /// The current value of parameter `name`.
    pub fn param(&self, name: &str) -> Result<Array, String> {
        let id = self.param_id(name)?;
        Session::<B>::with(|s| {
            s.params
                .get(id)
                .map(|e| Array::of_prim(dtx::tensor_abi::untracked::<B>(e.value.clone())))
                .map_err(|e| e.to_string())
        })
        .map_err(|e| e.to_string())?
    }

    /// Sets parameter `name` (same shape).
    pub fn set_param(&mut self, name: &str, value: &Array) -> Result<(), String> {
        let id = self.param_id(name)?;
        Session::<B>::with(|s| {
            let e = s.params.get_mut(id).map_err(|e| e.to_string())?;
            let shape = e.value.shape().to_vec();
            if shape != value.shape {
                return Err(format!(
                    "`{name}` has shape {shape:?}, the value {:?}",
                    value.shape
                ));
            }
            e.value = B::float_set_require_grad(value.to_prim(), e.trainable);
            Ok(())
        })
        .map_err(|e| e.to_string())?
    }

    /// The base weights its `weights` hook changes (checkpoint keys).
    pub fn weight_targets(&self) -> Vec<String> {
        self.inst.weight_targets().to_vec()
    }

    /// `weights`: `W'` for the base weight `key` given `w`, checked as the
    /// host checks it.
    pub fn weights(&mut self, key: &str, w: &Array) -> Result<Array, String> {
        self.weights_prim(key, w)
            .map(|p| Array::of_prim(dtx::tensor_abi::untracked::<B>(p)))
    }

    fn weights_prim(&mut self, key: &str, w: &Array) -> Result<FloatTensor<B>, String> {
        self.inst
            .weights(key, &w.to_prim(), true)
            .map_err(|e| e.to_string())
    }

    /// `inject` at `point` of activation `h` (`[B, C, H, W]` or `[B, C]`)
    /// at timestep `t` for every example (the time embedding zero), in a
    /// training forward.
    pub fn inject(&mut self, point: &str, h: &Array, t: f32) -> Result<Array, String> {
        self.inject_prim(point, h, t)
            .map(|p| Array::of_prim(dtx::tensor_abi::untracked::<B>(p)))
    }

    fn inject_prim(&mut self, point: &str, h: &Array, t: f32) -> Result<FloatTensor<B>, String> {
        use burn::tensor::{Tensor, TensorPrimitive};
        let n = *h.shape.first().ok_or("`h` needs a batch dimension")?;
        let dev = Default::default();
        let ts = Tensor::<B, 1>::from_data(TensorData::new(vec![t; n], [n]), &dev);
        let temb = Tensor::<B, 2>::zeros([n, self.temb.max(1)], &dev);
        let run =
            |inst: &mut Instance<B>, prim: FloatTensor<B>| -> Result<FloatTensor<B>, String> {
                macro_rules! ranked {
                    ($d:literal) => {{
                        let h = Tensor::<B, $d>::from_primitive(TensorPrimitive::Float(prim));
                        inst.inject(InjectArgs {
                            point,
                            h: &h,
                            t: &ts,
                            temb: &temb,
                            cond: None,
                            labels: None,
                            training: true,
                        })
                        .map(|o| o.into_primitive().tensor())
                        .map_err(|e| e.to_string())
                    }};
                }
                match h.shape.len() {
                    2 => ranked!(2),
                    4 => ranked!(4),
                    r => Err(format!(
                        "`h` of rank {r}: points are [B, C] or [B, C, H, W]"
                    )),
                }
            };
        run(&mut self.inst, h.to_prim())
    }

    /// `loss` on a batch: clean `x0`, `noise`, noised `x_t`, the student's
    /// `pred`, timestep `t` for every example; the named terms (as the host
    /// logs them, `<plugin>.<term>`) and their values.
    pub fn loss(
        &mut self,
        x0: &Array,
        noise: &Array,
        x_t: &Array,
        pred: &Array,
        t: f32,
    ) -> Result<Vec<(String, f32)>, String> {
        use burn::tensor::{Tensor, TensorPrimitive};
        use dtx::plugins::LossArgs;
        let n = x0.shape[0];
        let ts = Tensor::<B, 1>::from_data(TensorData::new(vec![t; n], [n]), &Default::default());
        macro_rules! ranked {
            ($d:literal) => {{
                let f = |a: &Array| {
                    Tensor::<B, $d>::from_primitive(TensorPrimitive::Float(a.to_prim()))
                };
                let (x0, noise, x_t, pred) = (f(x0), f(noise), f(x_t), f(pred));
                self.inst.loss(LossArgs {
                    x0: &x0,
                    noise: &noise,
                    t: &ts,
                    x_t: &x_t,
                    pred: &pred,
                    labels: None,
                    step: 0,
                })
            }};
        }
        let terms = match x0.shape.len() {
            2 => ranked!(2),
            4 => ranked!(4),
            r => return Err(format!("data of rank {r}")),
        }
        .map_err(|e| e.to_string())?;
        Ok(terms
            .into_iter()
            .map(|(name, v)| (name, v.into_scalar()))
            .collect())
    }

    /// `score` at one sampling step: the corrected ε for `x_t` and `eps` at
    /// timestep `t`.
    pub fn score(&mut self, x_t: &Array, eps: &Array, t: f32) -> Result<Array, String> {
        use burn::tensor::{Tensor, TensorPrimitive};
        let n = x_t.shape[0];
        let ts = Tensor::<B, 1>::from_data(TensorData::new(vec![t; n], [n]), &Default::default());
        macro_rules! ranked {
            ($d:literal) => {{
                let f = |a: &Array| {
                    Tensor::<B, $d>::from_primitive(TensorPrimitive::Float(a.to_prim()))
                };
                self.inst
                    .score(&f(x_t), &ts, &f(eps), None, 0, 1)
                    .map(|o| o.into_primitive().tensor())
            }};
        }
        let out = match x_t.shape.len() {
            2 => ranked!(2),
            4 => ranked!(4),
            r => return Err(format!("data of rank {r}")),
        }
        .map_err(|e| e.to_string())?;
        Ok(Array::of_prim(dtx::tensor_abi::untracked::<B>(out)))
    }

    /// `filter` on finished `samples`: each sample's score and whether it
    /// is kept.
    pub fn filter(&mut self, samples: &Array) -> Result<(Vec<f32>, Vec<bool>), String> {
        use burn::tensor::{Tensor, TensorPrimitive};
        macro_rules! ranked {
            ($d:literal) => {{
                let x = Tensor::<B, $d>::from_primitive(TensorPrimitive::Float(samples.to_prim()));
                self.inst.filter(&x, None)
            }};
        }
        let out = match samples.shape.len() {
            2 => ranked!(2),
            4 => ranked!(4),
            r => return Err(format!("data of rank {r}")),
        }
        .map_err(|e| e.to_string())?;
        Ok((out.scores.to_vec(), out.keep.to_vec()))
    }

    /// How far the autodiff gradient of `Σ v ⊙ W'` (v a fixed random
    /// array) with respect to parameter `param` is from central finite
    /// differences (step `eps`, f64 sums), as the largest absolute error
    /// over the parameter's entries divided by the largest gradient entry.
    pub fn check_weights_gradient(
        &mut self,
        key: &str,
        w: &Array,
        param: &str,
        eps: f32,
    ) -> Result<f64, String> {
        let key = key.to_owned();
        let w = w.clone();
        self.check_gradient(param, eps, move |p| p.weights_prim(&key, &w))
    }

    /// As [`TestPlugin::check_weights_gradient`], for `inject` at `point`.
    pub fn check_inject_gradient(
        &mut self,
        point: &str,
        h: &Array,
        param: &str,
        eps: f32,
    ) -> Result<f64, String> {
        let point = point.to_owned();
        let h = h.clone();
        self.check_gradient(param, eps, move |p| p.inject_prim(&point, &h, 100.0))
    }

    fn check_gradient(
        &mut self,
        param: &str,
        eps: f32,
        run: impl Fn(&mut TestPlugin) -> Result<FloatTensor<B>, String>,
    ) -> Result<f64, String> {
        let id = self.param_id(param)?;
        let first = run(self)?;
        let v = Array::random(&first.shape().to_vec(), 7);
        let objective = |out: FloatTensor<B>| -> FloatTensor<B> {
            let n: usize = out.shape().num_elements();
            let flat = B::float_reshape(out, Shape::new([n]));
            let vv = B::float_reshape(v.to_prim(), Shape::new([n]));
            B::float_sum(B::float_mul(flat, vv))
        };
        // autodiff
        let grads = B::backward(objective(first));
        let g = Session::<B>::with(|s| {
            let e = s.params.get(id).map_err(|e| e.to_string())?;
            B::grad(&e.value, &grads).ok_or_else(|| format!("no gradient reached `{param}`"))
        })
        .map_err(|e| e.to_string())??;
        let g = Array::of_prim(B::from_inner(g));
        // central differences, entry by entry
        let base = self.param(param)?;
        let value = |p: &mut TestPlugin, a: &Array| -> Result<f64, String> {
            p.set_param(param, a)?;
            let out = Array::of_prim(dtx::tensor_abi::untracked::<B>(run(p)?));
            Ok(out
                .values
                .iter()
                .zip(&v.values)
                .map(|(o, w)| f64::from(*o) * f64::from(*w))
                .sum())
        };
        let mut worst = 0f64;
        for i in 0..base.values.len() {
            let mut up = base.clone();
            up.values[i] += eps;
            let mut down = base.clone();
            down.values[i] -= eps;
            let fd = (value(self, &up)? - value(self, &down)?) / (2.0 * f64::from(eps));
            worst = worst.max((fd - f64::from(g.values[i])).abs());
        }
        self.set_param(param, &base)?;
        let scale = g
            .values
            .iter()
            .map(|x| f64::from(x.abs()))
            .fold(0.0, f64::max)
            .max(1e-12);
        Ok(worst / scale)
    }
}
