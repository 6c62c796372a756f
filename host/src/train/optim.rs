//! Adam with decoupled weight decay (AdamW) over host-held parameters.
//!
//! "Decoupled Weight Decay Regularization", Loshchilov & Hutter, 2019
//! (arXiv:1711.05101), Algorithm 2; with `weight_decay = 0` it is Adam
//! ("Adam: A Method for Stochastic Optimization", Kingma & Ba, 2015,
//! arXiv:1412.6980, Algorithm 1):
//!
//! ```text
//! m ← β1 m + (1 − β1) g          v ← β2 v + (1 − β2) g²
//! m̂ = m / (1 − β1^k)             v̂ = v / (1 − β2^k)
//! θ ← θ − lr (m̂ / (sqrt(v̂) + ε) + λ θ)
//! ```
//!
//! [`Optimizer`] keeps each parameter's moments by its id in the session's
//! [`ParamStore`] (the ABI's table of parameter values). The run's optimizer
//! is shared with the `optimizer_step` host service through
//! [`ServiceOptimizer`], which implements the ABI's narrow
//! [`ParamStepper`] interface, so a plugin's `prepare` and the training loop
//! step the same moments, and the ABI layer needs nothing from `train/`.
//!
//! The update runs on the inner (non-autodiff) backend, so it is not recorded
//! in any graph; the new value becomes a fresh leaf that requires gradients.

use crate::kernels::adam as kernels;
use crate::tensor_abi::{ParamEntry, ParamStepper, ParamStore};
use burn::tensor::Scalar;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use dtx_plugin_api::abi::{AbiError, ParamId};
use std::cell::RefCell;
use std::rc::Rc;

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rule {
    /// Adam with decoupled weight decay (default).
    #[default]
    AdamW,
    /// Adam with L2 weight decay added to the gradient (PyTorch's `Adam`).
    Adam,
    /// Plain SGD: θ ← θ − lr (g + λ θ).
    Sgd,
}

/// Optimizer hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// Update rule (default AdamW).
    pub rule: Rule,
    /// Learning rate (default 3e-4).
    pub lr: f32,
    /// First-moment decay β1 (default 0.9).
    pub beta1: f32,
    /// Second-moment decay β2 (default 0.999).
    pub beta2: f32,
    /// ε in the denominator (default 1e-8).
    pub eps: f32,
    /// Decoupled weight decay λ (default 0).
    pub weight_decay: f32,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            rule: Rule::AdamW,
            lr: 3e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Moments of one parameter.
pub struct AdamState<B: AutodiffBackend> {
    /// First moment.
    pub m: FloatTensor<B::InnerBackend>,
    /// Second moment.
    pub v: FloatTensor<B::InnerBackend>,
    /// Steps taken.
    pub k: i32,
}

/// The optimizer's state: each parameter's moments, by its id in the
/// [`ParamStore`] it steps. The hyperparameters come with each step, so a
/// schedule can change the rate between steps.
pub struct Optimizer<B: AutodiffBackend> {
    states: Vec<Option<AdamState<B>>>,
    /// Per parameter id, the group settings a plugin's recipe gave it.
    groups: Vec<Option<GroupSetting>>,
    /// Whether to use the one-pass kernels where the backend has them
    /// (`false`: op by op everywhere, which the tests compare against).
    kernels: bool,
}

/// How a parameter group trains beside the run's settings (a plugin's
/// recipe: LoRA+'s faster `B`, DiffFit's γ).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupSetting {
    /// The learning rate is the step's times this.
    pub lr_scale: f32,
    /// The weight decay, when not the step's.
    pub weight_decay: Option<f32>,
}

impl<B: AutodiffBackend> Default for Optimizer<B> {
    fn default() -> Self {
        Optimizer {
            states: Vec::new(),
            groups: Vec::new(),
            kernels: true,
        }
    }
}

impl<B: AutodiffBackend> Optimizer<B> {
    /// An optimizer that has taken no step.
    pub fn new() -> Self {
        Self::default()
    }

    /// The moments of parameter `id` (`None` before its first step).
    pub fn state(&self, id: ParamId) -> Option<&AdamState<B>> {
        self.states.get(id.0 as usize).and_then(Option::as_ref)
    }

    /// Puts parameter `id` in a group with its own rate and decay.
    pub fn set_group(&mut self, id: ParamId, setting: GroupSetting) {
        let i = id.0 as usize;
        if self.groups.len() <= i {
            self.groups.resize(i + 1, None);
        }
        self.groups[i] = Some(setting);
    }

    /// The group settings of parameter `id`, when a recipe gave it some.
    pub fn group(&self, id: ParamId) -> Option<GroupSetting> {
        self.groups.get(id.0 as usize).copied().flatten()
    }

    /// `config` as parameter `id` steps with it: its group's rate and decay.
    fn config_for(&self, id: ParamId, config: &AdamConfig) -> AdamConfig {
        match self.groups.get(id.0 as usize).copied().flatten() {
            Some(g) => AdamConfig {
                lr: config.lr * g.lr_scale,
                weight_decay: g.weight_decay.unwrap_or(config.weight_decay),
                ..*config
            },
            None => *config,
        }
    }

    /// Sets the moments of parameter `id` (a resumed checkpoint's).
    pub fn set_state(&mut self, id: ParamId, state: Option<AdamState<B>>) {
        let i = id.0 as usize;
        if self.states.len() <= i {
            self.states.resize_with(i + 1, || None);
        }
        self.states[i] = state;
    }

    /// Updates parameter `id` (its entry `p`) from its gradient in `grads`
    /// with `config`; a parameter without a gradient (not used in the loss)
    /// or that does not train is left as it is.
    ///
    /// `scale` multiplies the gradient first (global-norm clipping).
    pub fn step_param(
        &mut self,
        config: &AdamConfig,
        id: ParamId,
        p: &mut ParamEntry<B>,
        grads: &B::Gradients,
        scale: f32,
    ) {
        if !p.trainable {
            return;
        }
        let Some(g) = B::grad(&p.value, grads) else {
            return;
        };
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        let c = *config;
        let theta = B::inner(p.value.clone());
        if self.kernels {
            if c.rule == Rule::Sgd {
                let fused = kernels::sgd_tensors::<I<B>>(c.lr, c.weight_decay, scale, &theta, &g);
                if let Some(theta) = fused {
                    p.value = B::float_set_require_grad(B::from_inner(theta), true);
                    return;
                }
            } else if self.fused_step(&c, id, p, &theta, &g, scale) {
                return;
            }
        }
        let mut g = if scale != 1.0 {
            I::<B>::float_mul_scalar(g, Scalar::from(scale))
        } else {
            g
        };
        if c.rule != Rule::AdamW && c.weight_decay != 0.0 {
            // Coupled (L2) decay: λθ joins the gradient.
            g = I::<B>::float_add(
                g,
                I::<B>::float_mul_scalar(theta.clone(), Scalar::from(c.weight_decay)),
            );
        }
        if c.rule == Rule::Sgd {
            let theta = I::<B>::float_sub(theta, I::<B>::float_mul_scalar(g, Scalar::from(c.lr)));
            p.value = B::float_set_require_grad(B::from_inner(theta), true);
            return;
        }
        let previous = self.states.get_mut(id.0 as usize).and_then(Option::take);
        let (m, v, k) = match previous {
            Some(s) => (s.m, s.v, s.k + 1),
            None => {
                let zeros = I::<B>::float_mul_scalar(g.clone(), Scalar::from(0.0f32));
                (zeros.clone(), zeros, 1)
            }
        };
        let m = I::<B>::float_add(
            I::<B>::float_mul_scalar(m, Scalar::from(c.beta1)),
            I::<B>::float_mul_scalar(g.clone(), Scalar::from(1.0 - c.beta1)),
        );
        let g2 = I::<B>::float_mul(g.clone(), g);
        let v = I::<B>::float_add(
            I::<B>::float_mul_scalar(v, Scalar::from(c.beta2)),
            I::<B>::float_mul_scalar(g2, Scalar::from(1.0 - c.beta2)),
        );
        let bc1 = 1.0 - c.beta1.powi(k);
        let bc2 = 1.0 - c.beta2.powi(k);
        let m_hat = I::<B>::float_div_scalar(m.clone(), Scalar::from(bc1));
        let v_hat = I::<B>::float_div_scalar(v.clone(), Scalar::from(bc2));
        let denom = I::<B>::float_add_scalar(I::<B>::float_sqrt(v_hat), Scalar::from(c.eps));
        let mut update = I::<B>::float_div(m_hat, denom);
        if c.rule == Rule::AdamW && c.weight_decay != 0.0 {
            update = I::<B>::float_add(
                update,
                I::<B>::float_mul_scalar(theta.clone(), Scalar::from(c.weight_decay)),
            );
        }
        let theta = I::<B>::float_sub(theta, I::<B>::float_mul_scalar(update, Scalar::from(c.lr)));
        p.value = B::float_set_require_grad(B::from_inner(theta), true);
        self.set_state(id, Some(AdamState { m, v, k }));
    }

    /// The Adam/AdamW update of [`Optimizer::step_param`] in one pass per
    /// parameter (`kernels::adam`, the same f32 operations in the same
    /// order); `false` when the backend or dtype has no fused kernel.
    fn fused_step(
        &mut self,
        c: &AdamConfig,
        id: ParamId,
        p: &mut ParamEntry<B>,
        theta: &FloatTensor<B::InnerBackend>,
        g: &FloatTensor<B::InnerBackend>,
        scale: f32,
    ) -> bool {
        let slot = self.states.get_mut(id.0 as usize).and_then(Option::take);
        let k = slot.as_ref().map_or(1, |s| s.k + 1);
        let mut moments = slot.map(|s| (s.m, s.v));
        let step = kernels::AdamStep {
            decoupled: c.rule == Rule::AdamW,
            lr: c.lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            scale,
            bias_correction: [1.0 - c.beta1.powi(k), 1.0 - c.beta2.powi(k)],
        };
        match kernels::adam_tensors::<B::InnerBackend>(&step, theta, g, &mut moments) {
            Some((theta, m, v)) => {
                p.value = B::float_set_require_grad(B::from_inner(theta), true);
                self.set_state(id, Some(AdamState { m, v, k }));
                true
            }
            None => {
                // Nothing was consumed: the moments go back for the op-by-op path.
                let state = moments.map(|(m, v)| AdamState { m, v, k: k - 1 });
                self.set_state(id, state);
                false
            }
        }
    }

    /// Steps every parameter of `store` from `grads` (a model trained
    /// outside a run: the embedded extractor, the CAS classifier).
    pub fn step_all(
        &mut self,
        config: &AdamConfig,
        store: &mut ParamStore<B>,
        grads: &B::Gradients,
    ) {
        for (i, e) in store.entries_mut().iter_mut().enumerate() {
            self.step_param(config, ParamId(i as u64), e, grads, 1.0);
        }
    }

    /// One step on `ids` of `store` for the scalar `loss`: backward through
    /// the whole graph (plugin ops included), then update each parameter.
    pub fn step(
        &mut self,
        store: &mut ParamStore<B>,
        loss: FloatTensor<B>,
        ids: &[ParamId],
        config: AdamConfig,
    ) -> Result<(), AbiError> {
        self.step_clipped(store, loss, ids, config, None)
            .map(|_| ())
    }

    /// [`Optimizer::step`] with the gradient's global L2 norm over `ids`
    /// clipped to `max_norm` (PyTorch's `clip_grad_norm_`: every gradient
    /// scaled by `min(1, max_norm / (norm + 1e-6))`). Returns the norm before
    /// clipping.
    pub fn step_clipped(
        &mut self,
        store: &mut ParamStore<B>,
        loss: FloatTensor<B>,
        ids: &[ParamId],
        config: AdamConfig,
        max_norm: Option<f32>,
    ) -> Result<f32, AbiError> {
        use burn::tensor::TensorMetadata;
        if loss.shape().num_elements() != 1 {
            return Err(AbiError::new(
                dtx_plugin_api::abi::ErrorKind::SHAPE,
                format!(
                    "the loss must be a scalar, got shape {:?}",
                    loss.shape().to_vec()
                ),
            ));
        }
        let grads = B::backward(loss);
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        let mut sq = 0f64;
        for &id in ids {
            if let Some(g) = B::grad(&store.get(id)?.value, &grads) {
                let s = I::<B>::float_sum(I::<B>::float_mul(g.clone(), g));
                let d = burn::tensor::read_sync(I::<B>::float_into_data(s))
                    .map_err(|e| AbiError::other(format!("reading a gradient norm: {e:?}")))?;
                sq += d.iter::<f64>().next().unwrap_or(0.0);
            }
        }
        let norm = sq.sqrt() as f32;
        let scale = match max_norm {
            Some(m) if norm > m => m / (norm + 1e-6),
            _ => 1.0,
        };
        for &id in ids {
            let config = self.config_for(id, &config);
            self.step_param(&config, id, store.get_mut(id)?, &grads, scale);
        }
        Ok(norm)
    }
}

/// Gives the `optimizer_step` service of this thread's session a fresh
/// optimizer with `config` (the rate comes with each call) and returns its
/// state, for the training loop to step the same moments.
pub fn install<B: AutodiffBackend>(
    config: AdamConfig,
) -> Result<Rc<RefCell<Optimizer<B>>>, AbiError> {
    let shared = Rc::new(RefCell::new(Optimizer::new()));
    let service = ServiceOptimizer {
        shared: shared.clone(),
        config,
    };
    crate::tensor_abi::Session::<B>::with(|s| s.services.optimizer = Some(Box::new(service)))?;
    Ok(shared)
}

/// The run's optimizer as the `optimizer_step` host service uses it: the
/// shared state, stepped with `config` at the rate the plugin asks for.
pub struct ServiceOptimizer<B: AutodiffBackend> {
    /// The state the training loop steps too.
    pub shared: Rc<RefCell<Optimizer<B>>>,
    /// Hyperparameters but the rate.
    pub config: AdamConfig,
}

impl<B: AutodiffBackend> ParamStepper<B> for ServiceOptimizer<B> {
    fn step(
        &mut self,
        store: &mut ParamStore<B>,
        loss: FloatTensor<B>,
        ids: &[ParamId],
        lr: f32,
    ) -> Result<(), AbiError> {
        let config = AdamConfig { lr, ..self.config };
        self.shared.borrow_mut().step(store, loss, ids, config)
    }
}

#[cfg(test)]
mod tests {
    //! The update rules through a plugin's parameters: `optimizer_step` (a
    //! plugin's `prepare`) with the run's optimizer installed, and SGD with
    //! clipping on the host side.
    use super::*;
    use crate::tensor_abi::tests::{close, float_of, session};
    use crate::tensor_abi::{CpuBackend, Session};
    use burn::tensor::Tensor as BTensor;
    use dtx_plugin_api::Host;

    type B = CpuBackend;

    #[test]
    fn optimizer_step_trains_registered_parameters() {
        let _s = session(0);
        install::<B>(AdamConfig::default()).unwrap();
        let host = Host::get();
        let p = host
            .param("w", &[3], dtx_plugin_api::abi::ParamInit::constant(2.0))
            .unwrap();
        // loss = Σ w², one Adam step of lr 0.1 moves each entry by lr · sign(g) = 0.1.
        host.optimizer_step(&[&p], p.value().square().sum(), 0.1)
            .unwrap();
        close(&p.value().to_f32_vec(), &[1.9, 1.9, 1.9], 1e-6);
        let err = host.optimizer_step(&[&p], p.value(), 0.1).unwrap_err();
        assert!(err.message.contains("scalar"), "{}", err.message);
    }

    #[test]
    fn sgd_and_global_norm_clipping_follow_their_formulas() {
        let _s = session(0);
        let host = Host::get();
        let p = host
            .param("w", &[2], dtx_plugin_api::abi::ParamInit::constant(0.0))
            .unwrap();
        Session::<B>::with(|s| {
            let id = s.params.by_name("plugin.t.w").unwrap();
            s.params.get_mut(id).unwrap().value =
                <B as burn::tensor::ops::FloatTensorOps<B>>::float_set_require_grad(
                    BTensor::<B, 1>::from_floats([3.0, 4.0], &Default::default())
                        .into_primitive()
                        .tensor(),
                    true,
                );
        })
        .unwrap();
        // loss = Σ w², g = 2w = [6, 8], |g| = 10; clipped to 1: g = [0.6, 0.8];
        // SGD with lr 1: w = [3 − 0.6, 4 − 0.8].
        let loss = p.value().square().sum();
        let sgd = AdamConfig {
            rule: Rule::Sgd,
            lr: 1.0,
            ..Default::default()
        };
        let lp = float_of(loss.id());
        let norm = Session::<B>::with(|s| {
            let ids = s.params.trainable_ids();
            Optimizer::new().step_clipped(&mut s.params, lp, &ids, sgd, Some(1.0))
        })
        .unwrap()
        .unwrap();
        assert!((norm - 10.0).abs() < 1e-5, "{norm}");
        close(&p.value().to_f32_vec(), &[2.4, 3.2], 1e-5);
    }

    /// The one-pass kernels against the op-by-op update, bit for bit: three
    /// steps of every rule, with and without decay, clipping and a group's
    /// rate, on a parameter large enough to be split across threads.
    #[test]
    fn the_one_pass_update_is_bit_for_bit_the_op_by_op_one() {
        use burn::tensor::{Distribution, TensorPrimitive};
        type I = <B as AutodiffBackend>::InnerBackend;
        let dev = Default::default();
        let random = |seed: u64, len: usize| {
            <I as burn::tensor::backend::Backend>::seed(&dev, seed);
            BTensor::<I, 1>::random([len], Distribution::Normal(0.0, 1.0), &dev)
        };
        let bits = |t: BTensor<I, 1>| -> Vec<u32> {
            t.into_data()
                .to_vec::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        for rule in [Rule::AdamW, Rule::Adam, Rule::Sgd] {
            for (weight_decay, max_norm, lr_scale) in
                [(0.0, None, None), (0.01, Some(1.0), Some(4.0))]
            {
                let config = AdamConfig {
                    rule,
                    lr: 1e-3,
                    weight_decay,
                    ..Default::default()
                };
                let mut runs = Vec::new();
                for kernels in [true, false] {
                    let mut store = ParamStore::<B>::default();
                    let ids = [("w", 70_000), ("b", 5)].map(|(name, len)| {
                        let value = BTensor::<B, 1>::from_inner(random(1 + len as u64, len));
                        store
                            .register_base(name, value.into_primitive().tensor(), true)
                            .unwrap()
                    });
                    let mut opt = Optimizer::<B>::new();
                    opt.kernels = kernels;
                    if let Some(lr_scale) = lr_scale {
                        opt.set_group(
                            ids[1],
                            GroupSetting {
                                lr_scale,
                                weight_decay: Some(0.1),
                            },
                        );
                    }
                    for step in 0..3 {
                        // loss = Σ c·w + Σ w² / 2: the gradient c + w changes each step.
                        let mut loss = BTensor::<B, 1>::zeros([1], &dev);
                        for (i, &id) in ids.iter().enumerate() {
                            let w = BTensor::<B, 1>::from_primitive(TensorPrimitive::Float(
                                store.get(id).unwrap().value.clone(),
                            ));
                            let c = BTensor::<B, 1>::from_inner(random(
                                100 + step * 7 + i as u64,
                                w.dims()[0],
                            ));
                            loss = loss + (w.clone() * c).sum() + (w.clone() * w).sum() / 2.0;
                        }
                        let loss = loss.into_primitive().tensor();
                        opt.step_clipped(&mut store, loss, &ids, config, max_norm)
                            .unwrap();
                    }
                    let values: Vec<Vec<u32>> = ids
                        .iter()
                        .flat_map(|&id| {
                            let v = B::inner(store.get(id).unwrap().value.clone());
                            let mut out =
                                vec![bits(BTensor::from_primitive(TensorPrimitive::Float(v)))];
                            if let Some(s) = opt.state(id) {
                                out.push(bits(BTensor::from_primitive(TensorPrimitive::Float(
                                    s.m.clone(),
                                ))));
                                out.push(bits(BTensor::from_primitive(TensorPrimitive::Float(
                                    s.v.clone(),
                                ))));
                                out.push(vec![s.k as u32]);
                            }
                            out
                        })
                        .collect();
                    runs.push(values);
                }
                assert!(
                    runs[0] == runs[1],
                    "{rule:?}, decay {weight_decay}, clipping {max_norm:?}: the kernels differ"
                );
                // The parameters moved.
                assert_eq!(runs[0].len(), if rule == Rule::Sgd { 2 } else { 8 });
            }
        }
    }
}
