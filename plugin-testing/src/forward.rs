//! The model's forward with a plugin in it, as a run's student computes it,
//! and `score` handed the ε it gives as a run's sampler hands it.

use crate::plugin::InjectInputs;
use crate::services::timesteps;
use crate::{Array, B, Labels, TestPlugin};
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{Tensor, TensorMetadata, TensorPrimitive};
use dtx::model::{Denoiser, Hooks};
use dtx::plugins::{InjectArgs, Instance};
use dtx::tensor_abi::Labels as HostLabels;
use dtx_plugin_api::abi::Hook;

/// The plugin's `inject` at the points it is bound to, in forward order.
struct Injecting<'a> {
    inst: &'a mut Instance<B>,
    t: Tensor<B, 1>,
    cond: Option<Tensor<B, 3>>,
    labels: Option<HostLabels<B>>,
    training: bool,
}

impl Injecting<'_> {
    fn at<const K: usize>(
        &mut self,
        point: &str,
        h: Tensor<B, K>,
        temb: &Tensor<B, 2>,
    ) -> Result<Tensor<B, K>, String> {
        if !(self.inst.implements(Hook::Inject) && self.inst.points().iter().any(|p| p == point)) {
            return Ok(h);
        }
        self.inst
            .inject(InjectArgs {
                point,
                h: &h,
                t: &self.t,
                temb,
                cond: self.cond.as_ref(),
                labels: self.labels.as_ref(),
                training: self.training,
            })
            .map_err(|e| e.to_string())
    }
}

impl<const D: usize> Hooks<B, D> for Injecting<'_> {
    type Error = String;

    fn temb(&mut self, temb: Tensor<B, 2>) -> Result<Tensor<B, 2>, String> {
        self.at("temb", temb.clone(), &temb)
    }

    fn block(
        &mut self,
        point: &str,
        h: Tensor<B, D>,
        temb: &Tensor<B, 2>,
    ) -> Result<Tensor<B, D>, String> {
        self.at(point, h, temb)
    }
}

impl TestPlugin {
    /// The model's output for `x` at each example's timestep with this
    /// plugin in it, as a run's student computes it: the `weights` hook
    /// on its targets, then the forward (eval mode: no dropout) with
    /// `inject` at its points, handed `inputs`' condition embedding and
    /// labels (`inputs.t` is ignored: the network's timesteps are `t`).
    pub fn forward(
        &mut self,
        x: &Array,
        t: &[f32],
        inputs: &InjectInputs<'_>,
    ) -> Result<Array, String> {
        self.forward_prim(x.to_prim(), t, inputs)
            .map(|p| Array::of_prim(dtx::tensor_abi::untracked::<B>(p)))
    }

    /// `score` as a run's sampler calls it: `x_t` a leaf that tracks
    /// gradients and ε the model's output for it with this plugin in it
    /// ([`TestPlugin::forward`] in a sampling forward, its `inject` handed
    /// `labels`), tracked from `x_t`; so a hook that differentiates through
    /// ε (guidance through x̂0) sees the graph a run gives it. `t` holds
    /// each example's timestep, `(index, of)` the step's place in the run.
    /// Returns ε and the hook's corrected ε.
    pub fn score_sampled(
        &mut self,
        x_t: &Array,
        t: &[f32],
        labels: Option<&Labels>,
        step: (u64, u64),
    ) -> Result<(Array, Array), String> {
        if x_t.shape.first() != Some(&t.len()) {
            return Err(format!(
                "{} timesteps for x_t of shape {:?}: one per example",
                t.len(),
                x_t.shape
            ));
        }
        let leaf = B::float_set_require_grad(x_t.to_prim(), true);
        let inputs = InjectInputs {
            t,
            labels,
            ..Default::default()
        };
        let eps = self.forward_prim(leaf.clone(), t, &inputs)?;
        let out = self.score_prim(leaf, eps.clone(), t, labels, step)?;
        let value = |p| Array::of_prim(dtx::tensor_abi::untracked::<B>(p));
        Ok((value(eps), value(out)))
    }

    fn forward_prim(
        &mut self,
        x: FloatTensor<B>,
        t: &[f32],
        inputs: &InjectInputs<'_>,
    ) -> Result<FloatTensor<B>, String> {
        let net = self.net.clone();
        let mut w = net.weights.clone();
        if self.inst.implements(Hook::Weights) {
            for key in self.inst.weight_targets().to_vec() {
                let at = net
                    .net
                    .catalogue()
                    .index_of(&key)
                    .ok_or_else(|| format!("`{key}` is not a weight of this model"))?;
                let new = self
                    .inst
                    .weights(&key, w.tensor(at), inputs.training)
                    .map_err(|e| e.to_string())?;
                w.set(at, new);
            }
        }
        let mut hooks = Injecting {
            inst: &mut self.inst,
            t: timesteps(t),
            cond: inputs
                .cond
                .map(|c| Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(c.to_prim()))),
            labels: inputs.labels.map(Labels::to_host).transpose()?,
            training: inputs.training,
        };
        let ts = timesteps(t);
        macro_rules! at_rank {
            ($d:literal) => {{
                let x = Tensor::<B, $d>::from_primitive(TensorPrimitive::Float(x));
                net.net
                    .forward(&w, x, ts, None, &mut hooks, None)
                    .map(|o| o.into_primitive().tensor())
            }};
        }
        match x.shape().num_dims() {
            2 => at_rank!(2),
            4 => at_rank!(4),
            r => Err(format!("x of rank {r}")),
        }
    }
}
