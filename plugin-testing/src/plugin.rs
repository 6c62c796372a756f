//! [`TestPlugin`]: a plugin built in a [`crate::TestHost`], its hooks and
//! its parameters.

use crate::services::{NetService, timesteps};
use crate::{Array, B, Labels};
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{Tensor, TensorMetadata, TensorPrimitive};
use dtx::plugins::{InjectArgs, Instance, LossArgs};
use dtx::tensor_abi::{Labels as HostLabels, Session};

/// A plugin built in a [`crate::TestHost`]: its hooks, its parameters.
pub struct TestPlugin {
    pub(crate) inst: Instance<B>,
    pub(crate) net: std::rc::Rc<NetService>,
    temb: usize,
}

/// The inputs of one `inject` call beyond the point and the activation.
#[derive(Debug, Clone, Default)]
pub struct InjectInputs<'a> {
    /// Each example's timestep (empty: 100 for every example).
    pub t: &'a [f32],
    /// The `[condition]` embedding `[B, N, D_c]`, when the run has one.
    pub cond: Option<&'a Array>,
    /// The examples' labels, for a class-conditional run.
    pub labels: Option<&'a Labels>,
    /// A training forward (`true`) or a sampling one.
    pub training: bool,
}

/// One training step's tensors, as `loss` receives them.
#[derive(Debug, Clone)]
pub struct LossInputs<'a> {
    /// Clean examples.
    pub x0: &'a Array,
    /// The noise drawn.
    pub noise: &'a Array,
    /// The noised examples.
    pub x_t: &'a Array,
    /// The student's prediction (ε).
    pub pred: &'a Array,
    /// Each example's timestep.
    pub t: &'a [f32],
    /// The examples' labels, when the data has them.
    pub labels: Option<&'a Labels>,
    /// The training step.
    pub step: u64,
}

impl TestPlugin {
    pub(crate) fn new(inst: Instance<B>, net: std::rc::Rc<NetService>, temb: usize) -> Self {
        TestPlugin { inst, net, temb }
    }

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

    pub(crate) fn param_id(&self, name: &str) -> Result<dtx_plugin_api::abi::ParamId, String> {
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
        self.weights_prim(key, w.to_prim())
            .map(|p| Array::of_prim(dtx::tensor_abi::untracked::<B>(p)))
    }

    pub(crate) fn weights_prim(
        &mut self,
        key: &str,
        w: FloatTensor<B>,
    ) -> Result<FloatTensor<B>, String> {
        self.inst.weights(key, &w, true).map_err(|e| e.to_string())
    }

    /// `inject` at `point` of activation `h` (`[B, C, H, W]` or `[B, C]`)
    /// at timestep `t` for every example (the time embedding zero), in a
    /// training forward.
    pub fn inject(&mut self, point: &str, h: &Array, t: f32) -> Result<Array, String> {
        let ts = vec![t; *h.shape.first().ok_or("`h` needs a batch dimension")?];
        let inputs = InjectInputs {
            t: &ts,
            training: true,
            ..Default::default()
        };
        self.inject_with(point, h, &inputs)
    }

    /// `inject` at `point` of `h` with the timesteps, condition embedding
    /// and labels of `inputs` (the time embedding zero).
    pub fn inject_with(
        &mut self,
        point: &str,
        h: &Array,
        inputs: &InjectInputs<'_>,
    ) -> Result<Array, String> {
        self.inject_prim(point, h.to_prim(), inputs)
            .map(|p| Array::of_prim(dtx::tensor_abi::untracked::<B>(p)))
    }

    pub(crate) fn inject_prim(
        &mut self,
        point: &str,
        h: FloatTensor<B>,
        inputs: &InjectInputs<'_>,
    ) -> Result<FloatTensor<B>, String> {
        let shape = h.shape().to_vec();
        let n = *shape.first().ok_or("`h` needs a batch dimension")?;
        let t = if inputs.t.is_empty() {
            vec![100.0; n]
        } else {
            inputs.t.to_vec()
        };
        let dev = Default::default();
        let ts = timesteps(&t);
        let temb = Tensor::<B, 2>::zeros([n, self.temb.max(1)], &dev);
        let cond = inputs
            .cond
            .map(|c| Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(c.to_prim())));
        let labels = inputs.labels.map(Labels::to_host).transpose()?;
        macro_rules! at_rank {
            ($d:literal) => {{
                let h = Tensor::<B, $d>::from_primitive(TensorPrimitive::Float(h));
                self.inst
                    .inject(InjectArgs {
                        point,
                        h: &h,
                        t: &ts,
                        temb: &temb,
                        cond: cond.as_ref(),
                        labels: labels.as_ref(),
                        training: inputs.training,
                    })
                    .map(|o| o.into_primitive().tensor())
                    .map_err(|e| e.to_string())
            }};
        }
        match shape.len() {
            2 => at_rank!(2),
            4 => at_rank!(4),
            r => Err(format!(
                "`h` of rank {r}: points are [B, C] or [B, C, H, W]"
            )),
        }
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
        let ts = vec![t; *x0.shape.first().ok_or("`x0` needs a batch dimension")?];
        self.loss_with(&LossInputs {
            x0,
            noise,
            x_t,
            pred,
            t: &ts,
            labels: None,
            step: 0,
        })
    }

    /// `loss` on one training step's tensors with per-example timesteps and
    /// labels.
    pub fn loss_with(&mut self, s: &LossInputs<'_>) -> Result<Vec<(String, f32)>, String> {
        let ts = timesteps(s.t);
        let labels = s.labels.map(Labels::to_host).transpose()?;
        macro_rules! at_rank {
            ($d:literal) => {{
                let f = |a: &Array| {
                    Tensor::<B, $d>::from_primitive(TensorPrimitive::Float(a.to_prim()))
                };
                let (x0, noise, x_t, pred) = (f(s.x0), f(s.noise), f(s.x_t), f(s.pred));
                self.inst.loss(LossArgs {
                    x0: &x0,
                    noise: &noise,
                    t: &ts,
                    x_t: &x_t,
                    pred: &pred,
                    labels: labels.as_ref(),
                    step: s.step,
                })
            }};
        }
        let terms = match s.x0.shape.len() {
            2 => at_rank!(2),
            4 => at_rank!(4),
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
        let ts = vec![t; *x_t.shape.first().ok_or("`x_t` needs a batch dimension")?];
        self.score_with(x_t, eps, &ts, None, (0, 1))
    }

    /// `score` with per-example timesteps `t`, the samples' `labels` and the
    /// step's place in the run, `(index, of)`.
    pub fn score_with(
        &mut self,
        x_t: &Array,
        eps: &Array,
        t: &[f32],
        labels: Option<&Labels>,
        (index, of): (u64, u64),
    ) -> Result<Array, String> {
        self.score_prim(x_t.to_prim(), eps.to_prim(), t, labels, (index, of))
            .map(|p| Array::of_prim(dtx::tensor_abi::untracked::<B>(p)))
    }

    pub(crate) fn score_prim(
        &mut self,
        x_t: FloatTensor<B>,
        eps: FloatTensor<B>,
        t: &[f32],
        labels: Option<&Labels>,
        (index, of): (u64, u64),
    ) -> Result<FloatTensor<B>, String> {
        let shape = x_t.shape().to_vec();
        if shape.first() != Some(&t.len()) {
            return Err(format!(
                "{} timesteps for x_t of shape {shape:?}: one per example",
                t.len()
            ));
        }
        let ts = timesteps(t);
        let labels = labels.map(Labels::to_host).transpose()?;
        macro_rules! at_rank {
            ($d:literal) => {{
                let f =
                    |p: FloatTensor<B>| Tensor::<B, $d>::from_primitive(TensorPrimitive::Float(p));
                self.inst
                    .score(&f(x_t), &ts, &f(eps), labels.as_ref(), index, of)
                    .map(|o| o.into_primitive().tensor())
            }};
        }
        match shape.len() {
            2 => at_rank!(2),
            4 => at_rank!(4),
            r => return Err(format!("data of rank {r}")),
        }
        .map_err(|e| e.to_string())
    }

    /// `filter` on finished `samples`: each sample's score and whether it
    /// is kept.
    pub fn filter(&mut self, samples: &Array) -> Result<(Vec<f32>, Vec<bool>), String> {
        self.filter_with(samples, None)
    }

    /// `filter` on `samples` drawn for `labels`.
    pub fn filter_with(
        &mut self,
        samples: &Array,
        labels: Option<&Labels>,
    ) -> Result<(Vec<f32>, Vec<bool>), String> {
        let labels: Option<HostLabels<B>> = labels.map(Labels::to_host).transpose()?;
        macro_rules! at_rank {
            ($d:literal) => {{
                let x = Tensor::<B, $d>::from_primitive(TensorPrimitive::Float(samples.to_prim()));
                self.inst.filter(&x, labels.as_ref())
            }};
        }
        let out = match samples.shape.len() {
            2 => at_rank!(2),
            4 => at_rank!(4),
            r => return Err(format!("data of rank {r}")),
        }
        .map_err(|e| e.to_string())?;
        Ok((out.scores.to_vec(), out.keep.to_vec()))
    }

    /// `prepare` before the stage `before` (`"train"` or `"sample"`), with
    /// a temporary folder as the run folder; its optimizer steps use the
    /// host's Adam.
    pub fn prepare(&mut self, before: &str) -> Result<(), String> {
        // one folder per test thread: tests run in parallel in one process
        let dir = std::env::temp_dir().join(format!(
            "dtx-plugin-testing-run-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let out = self
            .inst
            .prepare(before, &dir.display().to_string())
            .map_err(|e| e.to_string());
        let _ = std::fs::remove_dir_all(&dir);
        out
    }
}
