//! The optimizer's and the EMA's per-element updates in one pass over each
//! parameter, instead of a dozen whole-tensor ops (each a pass over memory
//! and an allocation).
//!
//! Each element goes through the same f32 operations, in the same order,
//! as `train::optim`'s op-by-op update on the flex backend (whose scalar
//! and element-wise ops are plain IEEE f32 arithmetic, one rounding per
//! op, no fused multiply-add), so the results are bit for bit the same;
//! `train::optim`'s and `train::ema`'s tests compare the two paths.

use super::back;
use super::scratch::Output;
use super::simd::wide;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorMetadata};
use burn_flex::FlexTensor;
use rayon::prelude::*;
use std::any::Any;

/// Elements per parallel task: below this a parameter is updated on one
/// thread.
const CHUNK: usize = 1 << 15;

/// The update rule's constants for one parameter's step.
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    /// Decoupled weight decay (AdamW) rather than coupled (L2, Adam).
    pub decoupled: bool,
    /// Learning rate.
    pub lr: f32,
    /// β1.
    pub beta1: f32,
    /// β2.
    pub beta2: f32,
    /// ε.
    pub eps: f32,
    /// λ.
    pub weight_decay: f32,
    /// Global-norm clipping factor on the gradient (1 = none).
    pub scale: f32,
    /// `1 − β1^k` and `1 − β2^k` for this step `k`.
    pub bias_correction: [f32; 2],
}

/// One Adam/AdamW step: returns θ′ and overwrites `m` and `v` with the new
/// moments. `first`: the moments start at zero (the first step).
pub fn adam(
    s: &AdamStep,
    theta: &[f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    first: bool,
) -> Vec<f32> {
    assert!(
        theta.len() == g.len() && m.len() == g.len() && v.len() == g.len(),
        "adam operands"
    );
    let mut out = Output::new(theta.len());
    let (one_b1, one_b2) = (1.0 - s.beta1, 1.0 - s.beta2);
    let [bc1, bc2] = s.bias_correction;
    out.par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .enumerate()
        .for_each(|(ci, (out, (m, v)))| {
            let range = ci * CHUNK..ci * CHUNK + out.len();
            let (theta, g) = (&theta[range.clone()], &g[range]);
            wide!({
                adam_chunk(
                    s,
                    [one_b1, one_b2, bc1, bc2],
                    [theta, g],
                    [out, m, v],
                    first,
                )
            });
        });
    out.into_vec()
}

/// [`adam`] on one chunk of the parameter.
#[inline(always)]
fn adam_chunk(
    s: &AdamStep,
    [one_b1, one_b2, bc1, bc2]: [f32; 4],
    [theta, g]: [&[f32]; 2],
    [out, m, v]: [&mut [f32]; 3],
    first: bool,
) {
    for i in 0..out.len() {
        let t = theta[i];
        let mut gi = g[i];
        if s.scale != 1.0 {
            gi *= s.scale;
        }
        if !s.decoupled && s.weight_decay != 0.0 {
            gi += t * s.weight_decay;
        }
        let (m0, v0) = if first {
            (gi * 0.0, gi * 0.0)
        } else {
            (m[i], v[i])
        };
        let m1 = m0 * s.beta1 + gi * one_b1;
        let v1 = v0 * s.beta2 + (gi * gi) * one_b2;
        let denom = (v1 / bc2).sqrt() + s.eps;
        let mut update = (m1 / bc1) / denom;
        if s.decoupled && s.weight_decay != 0.0 {
            update += t * s.weight_decay;
        }
        out[i] = t - update * s.lr;
        m[i] = m1;
        v[i] = v1;
    }
}

/// One SGD step: θ − lr (s·g + λθ) with the clipping factor `scale` and
/// coupled decay, as `train::optim` computes it.
pub fn sgd(lr: f32, weight_decay: f32, scale: f32, theta: &[f32], g: &[f32]) -> Vec<f32> {
    assert!(theta.len() == g.len(), "sgd operands");
    theta
        .iter()
        .zip(g)
        .map(|(&t, &gi)| {
            let mut gi = if scale != 1.0 { gi * scale } else { gi };
            if weight_decay != 0.0 {
                gi += t * weight_decay;
            }
            t - gi * lr
        })
        .collect()
}

/// One EMA step in place: `avg ← avg·d + θ·(1 − d)`.
pub fn ema(decay: f32, avg: &mut [f32], theta: &[f32]) {
    assert!(avg.len() == theta.len(), "ema operands");
    let one_d = 1.0 - decay;
    avg.par_chunks_mut(CHUNK)
        .zip(theta.par_chunks(CHUNK))
        .for_each(|(a, t)| {
            wide!({
                for (a, &t) in a.iter_mut().zip(t) {
                    *a = *a * decay + t * one_d;
                }
            })
        });
}

/// The update on backend `I`'s tensors when `I` is the flex backend and
/// they are f32: `(θ′, m′, v′)` from θ, the gradient and the previous
/// moments (`None` on the first step); `None` for any other backend or
/// dtype, with nothing consumed, so the caller runs its op-by-op path.
pub fn adam_tensors<I: Backend>(
    s: &AdamStep,
    theta: &FloatTensor<I>,
    g: &FloatTensor<I>,
    moments: &mut Option<(FloatTensor<I>, FloatTensor<I>)>,
) -> Option<(FloatTensor<I>, FloatTensor<I>, FloatTensor<I>)> {
    let (theta, g) = (f32_flex(theta)?, f32_flex(g)?);
    if let Some((m, v)) = moments.as_ref() {
        f32_flex(m)?;
        f32_flex(v)?;
    }
    let shape = theta.shape();
    let (tv, gv) = (super::values(theta)?, super::values(g)?);
    let first = moments.is_none();
    let (mut m, mut v) = match moments.take() {
        Some((m, v)) => (owned(back(m)), owned(back(v))),
        None => (vec![0.0; gv.len()], vec![0.0; gv.len()]),
    };
    let out = adam(s, &tv, &gv, &mut m, &mut v, first);
    let t = |x: Vec<f32>| back(super::flex(x, shape.to_vec()));
    Some((t(out), t(m), t(v)))
}

/// The SGD step on flex f32 tensors, or `None` (see [`adam_tensors`]).
pub fn sgd_tensors<I: Backend>(
    lr: f32,
    weight_decay: f32,
    scale: f32,
    theta: &FloatTensor<I>,
    g: &FloatTensor<I>,
) -> Option<FloatTensor<I>> {
    let (theta, g) = (f32_flex(theta)?, f32_flex(g)?);
    let out = sgd(
        lr,
        weight_decay,
        scale,
        &super::values(theta)?,
        &super::values(g)?,
    );
    Some(back(super::flex(out, theta.shape().to_vec())))
}

/// The EMA step on flex f32 tensors: the new average, or `avg` back (see
/// [`adam_tensors`]).
pub fn ema_tensors<I: Backend>(
    decay: f32,
    avg: FloatTensor<I>,
    theta: &FloatTensor<I>,
) -> Result<FloatTensor<I>, FloatTensor<I>> {
    let (Some(_), Some(theta)) = (f32_flex(&avg), f32_flex(theta)) else {
        return Err(avg);
    };
    let Some(tv) = super::values(theta) else {
        return Err(avg);
    };
    let shape = theta.shape().to_vec();
    let mut a = owned(back(avg));
    ema(decay, &mut a, &tv);
    Ok(back(super::flex(a, shape)))
}

/// `t` as a flex f32 tensor, when it is one.
fn f32_flex<T: 'static>(t: &T) -> Option<&FlexTensor> {
    (t as &dyn Any)
        .downcast_ref::<FlexTensor>()
        .filter(|t| t.dtype() == DType::F32)
}

/// The values of an f32 flex tensor as an owned vector: its own buffer when
/// nothing else holds it, else a copy.
fn owned(t: FlexTensor) -> Vec<f32> {
    t.into_data().into_vec::<f32>().unwrap_or_default()
}
