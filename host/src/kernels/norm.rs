//! Group norm with its affine, optionally followed by SiLU, in two passes
//! over each (sample, group) block forward and two backward, the blocks
//! spread over rayon's threads; and SiLU alone.
//!
//! Forward, per sample `n` and group `g` of `M = (C/G)·H·W` values
//! (PyTorch's `GroupNorm`, biased variance; statistics summed in f64):
//!
//! ```text
//! μ = Σx / M     σ² = Σ(x − μ)² / M     r = 1 / sqrt(σ² + eps)
//! x̂ = (x − μ)·r  y = x̂·γ_c + β_c        out = y·sigmoid(y)   (with SiLU)
//! ```
//!
//! Backward from `dout`: `dy = dout·(s + y·s·(1 − s))`, `s = sigmoid(y)`
//! (with SiLU; else `dy = dout`); `dβ_c = Σ dy`, `dγ_c = Σ dy·x̂` over
//! samples and positions; and within a block
//! `dx = r·(γ_c·dy − mean(γ·dy) − x̂·mean(γ·dy·x̂))`.

use rayon::prelude::*;

/// The shape of one group norm: `[N, C, HW]` in `groups` groups of
/// consecutive channels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormGeometry {
    /// Batch.
    pub n: usize,
    /// Channels (a multiple of `groups`).
    pub c: usize,
    /// Positions per channel (H·W).
    pub hw: usize,
    /// Groups.
    pub groups: usize,
    /// ε.
    pub eps: f64,
}

impl NormGeometry {
    fn per_group(&self) -> usize {
        self.c / self.groups
    }

    fn block(&self) -> usize {
        self.per_group() * self.hw
    }

    /// Whether the sizes are consistent and non-empty.
    pub fn valid(&self) -> bool {
        self.n > 0
            && self.hw > 0
            && self.groups > 0
            && self.c > 0
            && self.c.is_multiple_of(self.groups)
    }
}

/// `e^x` for f32 in a form the compiler vectorises: Cody–Waite reduction
/// `x = k·ln 2 + r`, `k` the nearest integer, `|r| ≤ ln 2 / 2`, and Cephes' degree-6 polynomial for
/// `e^r`, scaled by `2^k` through the exponent bits. Inputs are clamped to
/// [−87, 88], so the result stays finite and normal (`e^−87 ≈ 1.6e−38`);
/// within that range the error is under 2 ulp (tested against f64).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // k = round(x / ln 2) by the 1.5·2²³ trick: adding it leaves no
    // fraction bits, so the sum rounds to the nearest integer (plain adds,
    // which vectorise; `round`/`floor` are libm calls without SSE4.1).
    const SHIFT: f32 = 12_582_912.0;
    let k = (x * std::f32::consts::LOG2_E + SHIFT) - SHIFT;
    let r = x - k * 0.693_359_4 - k * -2.121_944_4e-4;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r2 + r + 1.0;
    e * f32::from_bits(((k as i32 + 127) as u32) << 23)
}

/// `sigmoid(y)` from [`exp`].
#[inline(always)]
fn sigmoid(y: f32) -> f32 {
    1.0 / (1.0 + exp(-y))
}

/// Per (sample, group): `(μ, r)` as f32.
fn stats(x: &[f32], eps: f64) -> (f32, f32) {
    let m = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / m;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / m;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

/// Forward: `(out, μ, r)` with `μ` and `r` per (sample, group), `[N·G]`.
pub fn forward(
    g: &NormGeometry,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    silu: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert!(
        g.valid() && x.len() == g.n * g.c * g.hw && gamma.len() == g.c && beta.len() == g.c,
        "group norm operands"
    );
    let (block, per_group) = (g.block(), g.per_group());
    let mut out = vec![0.0f32; x.len()];
    let stats: Vec<(f32, f32)> = out
        .par_chunks_mut(block)
        .zip(x.par_chunks(block))
        .enumerate()
        .map(|(b, (out, x))| {
            let (mean, r) = stats(x, g.eps);
            let c0 = (b % g.groups) * per_group;
            for (ci, (out, x)) in out.chunks_mut(g.hw).zip(x.chunks(g.hw)).enumerate() {
                let (ga, be) = (gamma[c0 + ci], beta[c0 + ci]);
                for (o, &v) in out.iter_mut().zip(x) {
                    let y = (v - mean) * r * ga + be;
                    *o = if silu { y * sigmoid(y) } else { y };
                }
            }
            (mean, r)
        })
        .collect();
    let (mean, rstd) = stats.into_iter().unzip();
    (out, mean, rstd)
}

/// The gradients of [`forward`]: `(dx, dγ, dβ)`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    g: &NormGeometry,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dout: &[f32],
    silu: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert!(
        g.valid()
            && x.len() == g.n * g.c * g.hw
            && dout.len() == x.len()
            && gamma.len() == g.c
            && beta.len() == g.c
            && mean.len() == g.n * g.groups
            && rstd.len() == g.n * g.groups,
        "group norm backward operands"
    );
    let (block, per_group, hw) = (g.block(), g.per_group(), g.hw);
    let mut dx = vec![0.0f32; x.len()];
    // Per block: each channel's Σ dy and Σ dy·x̂ (for dβ and dγ).
    let sums: Vec<Vec<(f64, f64)>> = dx
        .par_chunks_mut(block)
        .zip(x.par_chunks(block).zip(dout.par_chunks(block)))
        .enumerate()
        .map(|(b, (dx, (x, dout)))| {
            let (mu, r) = (mean[b], rstd[b]);
            let c0 = (b % g.groups) * per_group;
            // Pass 1: dy into dx (scratch), the channel sums and the block's.
            let mut channel = Vec::with_capacity(per_group);
            let (mut a, mut bsum) = (0f64, 0f64);
            for ci in 0..per_group {
                let (ga, be) = (gamma[c0 + ci], beta[c0 + ci]);
                let range = ci * hw..(ci + 1) * hw;
                let (mut s_dy, mut s_dyx) = (0f64, 0f64);
                for ((d, &v), &go) in dx[range.clone()]
                    .iter_mut()
                    .zip(&x[range.clone()])
                    .zip(&dout[range])
                {
                    let xh = (v - mu) * r;
                    let dy = if silu {
                        let y = xh * ga + be;
                        let s = sigmoid(y);
                        go * (s + y * s * (1.0 - s))
                    } else {
                        go
                    };
                    *d = dy;
                    s_dy += dy as f64;
                    s_dyx += (dy * xh) as f64;
                }
                a += ga as f64 * s_dy;
                bsum += ga as f64 * s_dyx;
                channel.push((s_dy, s_dyx));
            }
            // Pass 2: dx = r·(γ·dy − A/M − x̂·B/M).
            let m = block as f64;
            let (am, bm) = ((a / m) as f32, (bsum / m) as f32);
            for ci in 0..per_group {
                let ga = gamma[c0 + ci];
                let range = ci * hw..(ci + 1) * hw;
                for (d, &v) in dx[range.clone()].iter_mut().zip(&x[range]) {
                    let xh = (v - mu) * r;
                    *d = r * (ga * *d - am - xh * bm);
                }
            }
            channel
        })
        .collect();
    let (mut dgamma, mut dbeta) = (vec![0f64; g.c], vec![0f64; g.c]);
    for (b, channel) in sums.iter().enumerate() {
        let c0 = (b % g.groups) * per_group;
        for (ci, &(s_dy, s_dyx)) in channel.iter().enumerate() {
            dbeta[c0 + ci] += s_dy;
            dgamma[c0 + ci] += s_dyx;
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
    (dx, f(dgamma), f(dbeta))
}

/// Elements per parallel task for [`silu`] and [`silu_backward`].
const CHUNK: usize = 1 << 14;

/// `x·sigmoid(x)` element-wise.
pub fn silu(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            for (o, &v) in o.iter_mut().zip(x) {
                *o = v * sigmoid(v);
            }
        });
    out
}

/// The gradient of [`silu`]: `dout·(s + x·s·(1 − s))`.
pub fn silu_backward(x: &[f32], dout: &[f32]) -> Vec<f32> {
    assert!(x.len() == dout.len(), "silu backward operands");
    let mut dx = vec![0.0f32; x.len()];
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(dout.par_chunks(CHUNK)))
        .for_each(|(d, (x, go))| {
            for ((d, &v), &go) in d.iter_mut().zip(x).zip(go) {
                let s = sigmoid(v);
                *d = go * (s + v * s * (1.0 - s));
            }
        });
    dx
}

#[cfg(test)]
#[path = "norm_tests.rs"]
mod tests;
