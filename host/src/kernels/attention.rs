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

use super::gemm::{View, gemm, gemm_rows, transpose_into};
use super::norm::exp;
use super::simd::{dot_f32, max_f32, sum_f32, wide};
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

/// [`transpose_into`] into `out`, resized to the view's size.
#[inline(always)]
fn transpose(src: View, out: &mut Vec<f32>) {
    out.resize(src.rows * src.cols, 0.0);
    transpose_into(src, out);
}

/// The scaled scores of one head into `s` `[N, N]`: `q kᵀ / sqrt(d)`.
#[inline(always)]
fn scores(g: &Heads, q: View, k: View, s: &mut Vec<f32>, k_t: &mut Vec<f32>) {
    transpose(k, k_t);
    s.resize(g.n * g.n, 0.0);
    gemm(s, q, View::row_major(k_t, g.d, g.n), false, 1);
    let scale = g.scale();
    s.iter_mut().for_each(|v| *v *= scale);
}

/// One sample's heads forward, into its `out` `[N, H·d]` and `lse` `[H, N]`.
#[inline(always)]
fn forward_sample(
    g: &Heads,
    [qb, kb, vb]: [&[f32]; 3],
    out: &mut [f32],
    lse: &mut [f32],
    s: &mut Vec<f32>,
    k_t: &mut Vec<f32>,
) {
    for h in 0..g.heads {
        scores(g, g.view(qb, h), g.view(kb, h), s, k_t);
        for (row, l) in s
            .chunks_exact_mut(g.n)
            .zip(&mut lse[h * g.n..(h + 1) * g.n])
        {
            let max = max_f32(row);
            row.iter_mut().for_each(|x| *x = exp(*x - max));
            let sum = sum_f32(row);
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|x| *x *= inv);
            *l = max + sum.ln();
        }
        let p = View::row_major(s, g.n, g.n);
        gemm_rows(&mut out[h * g.d..], g.width(), p, g.view(vb, h), false, 1);
    }
}

/// Forward: `(out, lse)`, `out` `[B, N, H·d]`, `lse` `[B, H, N]`.
pub fn forward(g: &Heads, q: &[f32], k: &[f32], v: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let len = g.b * g.sample();
    assert!(
        q.len() == len && k.len() == len && v.len() == len,
        "attention operands"
    );
    let mut out = vec![0.0f32; len];
    let mut lse = vec![0.0f32; g.b * g.heads * g.n];
    if len == 0 {
        return (out, lse);
    }
    out.par_chunks_mut(g.sample())
        .zip(lse.par_chunks_mut(g.heads * g.n))
        .enumerate()
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(s, k_t), (i, (out, lse))| {
                let r = i * g.sample()..(i + 1) * g.sample();
                let (qb, kb, vb) = (&q[r.clone()], &k[r.clone()], &v[r]);
                wide(|| forward_sample(g, [qb, kb, vb], out, lse, s, k_t));
            },
        );
    (out, lse)
}

/// One sample's heads backward, into its `dq`, `dk`, `dv` `[N, H·d]`.
#[inline(always)]
fn backward_sample(
    g: &Heads,
    [qb, kb, vb, dob]: [&[f32]; 4],
    lse: &[f32],
    [dq, dk, dv]: [&mut [f32]; 3],
    [s, dp, t1, t2]: &mut [Vec<f32>; 4],
) {
    let scale = g.scale();
    for h in 0..g.heads {
        // P from the kept log-sum-exp.
        scores(g, g.view(qb, h), g.view(kb, h), s, t1);
        let lse = &lse[h * g.n..][..g.n];
        for (row, &l) in s.chunks_exact_mut(g.n).zip(lse) {
            row.iter_mut().for_each(|x| *x = exp(*x - l));
        }
        let p = View::row_major(s, g.n, g.n);
        let d_out = g.view(dob, h);
        // dV = Pᵀ dO
        transpose(p, t1);
        gemm_rows(
            &mut dv[h * g.d..],
            g.width(),
            View::row_major(t1, g.n, g.n),
            d_out,
            false,
            1,
        );
        // dP = dO Vᵀ
        transpose(g.view(vb, h), t2);
        dp.resize(g.n * g.n, 0.0);
        gemm(dp, d_out, View::row_major(t2, g.d, g.n), false, 1);
        // dS = P ∘ (dP − rowsum(dP ∘ P)) · scale, into dp
        for (dp_row, p_row) in dp.chunks_exact_mut(g.n).zip(s.chunks_exact(g.n)) {
            let dot = dot_f32(dp_row, p_row);
            for (x, &pv) in dp_row.iter_mut().zip(p_row) {
                *x = pv * (*x - dot) * scale;
            }
        }
        let ds = View::row_major(dp, g.n, g.n);
        // dQ = dS K; dK = dSᵀ Q
        gemm_rows(&mut dq[h * g.d..], g.width(), ds, g.view(kb, h), false, 1);
        transpose(ds, t1);
        gemm_rows(
            &mut dk[h * g.d..],
            g.width(),
            View::row_major(t1, g.n, g.n),
            g.view(qb, h),
            false,
            1,
        );
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
    let (mut dq, mut dk, mut dv) = (vec![0.0f32; len], vec![0.0f32; len], vec![0.0f32; len]);
    if len == 0 {
        return (dq, dk, dv);
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
                wide(|| backward_sample(g, [qb, kb, vb, dob], lse, [dq, dk, dv], scratch));
            },
        );
    (dq, dk, dv)
}
