//! Multi-head scaled dot-product attention (Vaswani et al. 2017, eq. 1),
//! `softmax(q kᵀ / sqrt(d)) v` per sample and head, on the projections'
//! own layout `[B, N, H·d]` (head `h` is columns `h·d .. (h+1)·d`), so no
//! head split or merge is copied. The samples go over rayon's threads.
//!
//! Forward keeps, per row, only `lse = log Σ_j e^{s_ij}` of the scaled
//! scores `s = q kᵀ / sqrt(d)`; backward recomputes `P = e^{s − lse}` from
//! q and k (as FlashAttention does) instead of holding B·H·N² weights:
//!
//! ```text
//! dV = Pᵀ dO     dP = dO Vᵀ     dS = P ∘ (dP − rowsum(dP ∘ P)) / sqrt(d)
//! dQ = dS K      dK = dSᵀ Q
//! ```
//!
//! Both go [`ROWS`] query rows at a time, so a block of scores (and of
//! their gradients) stays in cache; backward sums dV and dK over the
//! blocks, and reads Pᵀ and dSᵀ through transposed views (the GEMM packs
//! them) instead of copying them.

use super::gemm::{View, gemm, gemm_rows, transpose_into};
use super::norm::exp;
use super::scratch::Output;
use super::simd::{LANES, dot_f32, max_f32, wide};
use rayon::prelude::*;

/// The shape: `b` samples of `n` tokens, `heads` heads of `d` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    /// Batch.
    pub b: usize,
    /// Tokens.
    pub n: usize,
    /// Heads.
    pub heads: usize,
    /// Values per head.
    pub d: usize,
}

impl Heads {
    fn width(&self) -> usize {
        self.heads * self.d
    }

    fn sample(&self) -> usize {
        self.n * self.width()
    }

    /// Head `h` of one sample's `[N, H·d]` block as an `[N, d]` view.
    fn view<'a>(&self, block: &'a [f32], h: usize) -> View<'a> {
        View {
            data: &block[h * self.d..],
            rows: self.n,
            cols: self.d,
            rs: self.width(),
            cs: 1,
        }
    }

    fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }
}

/// Rows of scores held at once: a `[ROWS, N]` block of scores (and, in
/// backward, of their gradients) stays in the core's L2 cache up to a few
/// thousand tokens, where whole `[N, N]` matrices went out to memory once
/// per pass.
const ROWS: usize = 128;

/// [`transpose_into`] into `out`, resized to the view's size.
#[inline(always)]
fn transpose(src: View, out: &mut Vec<f32>) {
    out.resize(src.rows * src.cols, 0.0);
    transpose_into(src, out);
}

/// The row blocks of `n` tokens: `(first, count)`.
fn blocks(n: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n).step_by(ROWS).map(move |r| (r, ROWS.min(n - r)))
}

/// The unscaled scores of a block of query rows into `s` `[rows, N]`:
/// `q kᵀ`, with `k_t` holding kᵀ `[d, N]`.
#[inline(always)]
fn scores(q: View, k_t: &[f32], n: usize, s: &mut Vec<f32>) {
    s.resize(q.rows * n, 0.0);
    gemm(s, q, View::row_major(k_t, q.cols, n), false, 1);
}

/// A row of unscaled scores into softmax weights `e^{s − max} / Σ`, with
/// `s` the scaled scores; returns the row's `lse = max + ln Σ`. The same
/// values as scaling the row, then [`max_f32`], then `e^{s − max}` summed
/// by [`super::simd::sum_f32`]: the scale is positive, so the largest
/// scaled score is the largest score scaled, and each score is scaled
/// inside the exponential's pass rather than in a pass of its own.
#[inline(always)]
fn softmax_row(row: &mut [f32], scale: f32) -> f32 {
    debug_assert!(scale > 0.0);
    let max = max_f32(row) * scale;
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *x = exp(*x * scale - max);
            *a += *x;
        }
    }
    let mut tail = 0.0f32;
    for x in chunks.into_remainder() {
        *x = exp(*x * scale - max);
        tail += *x;
    }
    let sum = acc.iter().sum::<f32>() + tail;
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|x| *x *= inv);
    max + sum.ln()
}

/// One sample's heads forward, into its `out` `[N, H·d]` and `lse` `[H, N]`.
#[inline(always)]
fn forward_sample(
    g: &Heads,
    [qb, kb, vb]: [&[f32]; 3],
    out: &mut [f32],
    lse: &mut [f32],
    [s, k_t]: &mut [Vec<f32>; 2],
) {
    for h in 0..g.heads {
        transpose(g.view(kb, h), k_t);
        for (first, rows) in blocks(g.n) {
            scores(g.view(qb, h).rows_at(first, rows), k_t, g.n, s);
            let lse = &mut lse[h * g.n + first..][..rows];
            for (row, l) in s.chunks_exact_mut(g.n).zip(lse) {
                *l = softmax_row(row, g.scale());
            }
            let p = View::row_major(s, rows, g.n);
            let out = &mut out[first * g.width() + h * g.d..];
            gemm_rows(out, g.width(), p, g.view(vb, h), false, 1);
        }
    }
}

/// Forward: `(out, lse)`, `out` `[B, N, H·d]`, `lse` `[B, H, N]`.
pub fn forward(g: &Heads, q: &[f32], k: &[f32], v: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let len = g.b * g.sample();
    assert!(
        q.len() == len && k.len() == len && v.len() == len,
        "attention operands"
    );
    let mut out = Output::new(len);
    let mut lse = vec![0.0f32; g.b * g.heads * g.n];
    if len == 0 {
        return (out.into_vec(), lse);
    }
    out.par_chunks_mut(g.sample())
        .zip(lse.par_chunks_mut(g.heads * g.n))
        .enumerate()
        .for_each_init(
            || [Vec::new(), Vec::new()],
            |scratch, (i, (out, lse))| {
                let r = i * g.sample()..(i + 1) * g.sample();
                let (qb, kb, vb) = (&q[r.clone()], &k[r.clone()], &v[r]);
                wide!(forward_sample(g, [qb, kb, vb], out, lse, scratch));
            },
        );
    (out.into_vec(), lse)
}

/// One sample's heads backward, into its `dq`, `dk`, `dv` `[N, H·d]`, a
/// block of query rows at a time: dV and dK sum the blocks' terms.
#[inline(always)]
fn backward_sample(
    g: &Heads,
    [qb, kb, vb, dob]: [&[f32]; 4],
    lse: &[f32],
    [dq, dk, dv]: [&mut [f32]; 3],
    [s, dp, k_t, v_t]: &mut [Vec<f32>; 4],
) {
    let (scale, width) = (g.scale(), g.width());
    for h in 0..g.heads {
        transpose(g.view(kb, h), k_t);
        transpose(g.view(vb, h), v_t);
        for (first, rows) in blocks(g.n) {
            let q = g.view(qb, h).rows_at(first, rows);
            let d_out = g.view(dob, h).rows_at(first, rows);
            let add = first > 0;
            // P from the kept log-sum-exp.
            scores(q, k_t, g.n, s);
            let lse = &lse[h * g.n + first..][..rows];
            for (row, &l) in s.chunks_exact_mut(g.n).zip(lse) {
                row.iter_mut().for_each(|x| *x = exp(*x * scale - l));
            }
            let p = View::row_major(s, rows, g.n);
            // dV += Pᵀ dO
            gemm_rows(&mut dv[h * g.d..], width, p.t(), d_out, add, 1);
            // dP = dO Vᵀ
            dp.resize(rows * g.n, 0.0);
            gemm(dp, d_out, View::row_major(v_t, g.d, g.n), false, 1);
            // dS = P ∘ (dP − rowsum(dP ∘ P)) · scale, into dp
            for (dp_row, p_row) in dp.chunks_exact_mut(g.n).zip(s.chunks_exact(g.n)) {
                let dot = dot_f32(dp_row, p_row);
                for (x, &pv) in dp_row.iter_mut().zip(p_row) {
                    *x = pv * (*x - dot) * scale;
                }
            }
            let ds = View::row_major(dp, rows, g.n);
            // dQ = dS K (this block's rows); dK += dSᵀ Q
            let dq = &mut dq[first * width + h * g.d..];
            gemm_rows(dq, width, ds, g.view(kb, h), false, 1);
            gemm_rows(&mut dk[h * g.d..], width, ds.t(), q, add, 1);
        }
    }
}

/// The gradients `(dq, dk, dv)` from the output gradient `dout` `[B, N, H·d]`.
pub fn backward(
    g: &Heads,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    lse: &[f32],
    dout: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let len = g.b * g.sample();
    assert!(
        [q.len(), k.len(), v.len(), dout.len()]
            .iter()
            .all(|&l| l == len)
            && lse.len() == g.b * g.heads * g.n,
        "attention backward operands"
    );
    let [mut dq, mut dk, mut dv] = [(); 3].map(|_| Output::new(len));
    if len == 0 {
        return (dq.into_vec(), dk.into_vec(), dv.into_vec());
    }
    dq.par_chunks_mut(g.sample())
        .zip(
            dk.par_chunks_mut(g.sample())
                .zip(dv.par_chunks_mut(g.sample())),
        )
        .enumerate()
        .for_each_init(
            || [(); 4].map(|_| Vec::new()),
            |scratch, (i, (dq, (dk, dv)))| {
                let r = i * g.sample()..(i + 1) * g.sample();
                let (qb, kb, vb, dob) = (&q[r.clone()], &k[r.clone()], &v[r.clone()], &dout[r]);
                let lse = &lse[i * g.heads * g.n..][..g.heads * g.n];
                wide!(backward_sample(
                    g,
                    [qb, kb, vb, dob],
                    lse,
                    [dq, dk, dv],
                    scratch
                ));
            },
        );
    (dq.into_vec(), dk.into_vec(), dv.into_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::sum_f32;

    #[test]
    fn softmax_row_is_bit_for_bit_the_scaled_row_softmax() {
        // Scaling inside the exponential's pass gives the bits of scaling
        // the row first: the reference below is the separate passes.
        let scale = 1.0 / 32f32.sqrt();
        for n in [1, 15, 16, 33, 300] {
            let row: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 % 97) as f32 - 48.0) * 0.37)
                .collect();
            let mut want: Vec<f32> = row.iter().map(|x| x * scale).collect();
            let max = max_f32(&want);
            want.iter_mut().for_each(|x| *x = exp(*x - max));
            let sum = sum_f32(&want);
            want.iter_mut().for_each(|x| *x *= 1.0 / sum);
            let mut got = row.clone();
            let lse = softmax_row(&mut got, scale);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{n} scores");
            assert_eq!(lse.to_bits(), (max + sum.ln()).to_bits());
        }
    }
}
