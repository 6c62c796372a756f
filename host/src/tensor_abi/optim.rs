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
//! It lives next to [`ParamStore`](super::ParamStore), which keeps each
//! parameter's moments, so that the ABI layer (whose `optimizer_step`
//! service steps plugin parameters) needs nothing from `train/`; `train`
//! re-exports it as `train::optim`. Both move to `train/` together once the
//! denoisers hold their own weights (docs/architecture.md).
//!
//! The update runs on the inner (non-autodiff) backend, so it is not recorded
//! in any graph; the new value becomes a fresh leaf that requires gradients.

use super::ParamEntry;
use burn::tensor::Scalar;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};

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

/// The optimizer.
#[derive(Debug, Clone, Copy)]
pub struct Adam {
    config: AdamConfig,
}

impl Adam {
    /// An optimizer with `config`.
    pub fn new(config: AdamConfig) -> Self {
        Adam { config }
    }

    /// Updates `p` from its gradient in `grads`; a parameter without a gradient
    /// (not used in the loss) is left as it is.
    ///
    /// `scale` multiplies the gradient first (global-norm clipping).
    pub fn step_param<B: AutodiffBackend>(
        &self,
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
        let c = self.config;
        let theta = B::inner(p.value.clone());
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
        let (m, v, k) = match p.adam.take() {
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
        p.adam = Some(AdamState { m, v, k });
    }
}
