//! The training objectives of TGDP's three networks, as functions of
//! tensors (so tests hold each to a reference computed another way).
//!
//! Reductions follow the talk's Algorithm 4: every term is a mean over the
//! batch of a per-sample quantity; for the consistency term that quantity is
//! the squared norm ‖·‖² of a whole sample's residual, summed over its
//! dimensions (a per-element mean would divide the weight η2 by the sample
//! size D: ½ on 2-D points, 1/768 on 3×16×16 images).

use dtx_plugin_api::prelude::*;

/// Steps 1 and 2, the logistic loss with source and target averaged apart
/// (c = P(source) = sigmoid(z)):
/// −1/m Σ_source log c(x) − 1/n Σ_target log(1 − c(x')),
/// written with −log c = softplus(−z) and −log(1 − c) = softplus(z).
pub fn classifier(z_source: &Tensor, z_target: &Tensor) -> Tensor {
    (-z_source).softplus().mean() + z_target.softplus().mean()
}

/// L_guidance and L_cycle (Alg. 4, l. 4 and l. 7): the mean over the batch
/// of (h − target)², h and target one scalar per sample (`[B]`).
pub fn regression(h: &Tensor, target: &Tensor) -> Tensor {
    (h - target).square().mean()
}

/// L_consistence (Alg. 4, l. 8) with λ(t) = 1 − ᾱ_t, in ε units:
/// 1/B Σ_i ‖ sqrt(1 − ᾱ_i) ∇ₓ log h(x'_i) − (ε_source(x'_i) − ε'_i) ‖², the
/// norm over all of a sample's dimensions. `s1a` is sqrt(1 − ᾱ) `[B]`; the
/// others are shaped as the samples.
pub fn consistency(s1a: &Tensor, grad_log_h: &Tensor, eps_source: &Tensor, eps: &Tensor) -> Tensor {
    let b = grad_log_h.dim(0);
    let mut shape = vec![b];
    shape.extend(std::iter::repeat_n(1, grad_log_h.rank() - 1));
    let residual = s1a.reshape(&shape) * grad_log_h - (eps_source - eps);
    residual.square().sum() * (1.0 / b as f32)
}
