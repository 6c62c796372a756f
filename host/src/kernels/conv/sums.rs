//! The reductions the convolution's gradients end with: the weight
//! gradient's per-thread parts summed in order, and the bias gradient.

use super::Geometry;
use crate::kernels::scratch::Output;
use crate::kernels::simd::{sum_f32, wide};
use rayon::prelude::*;

/// `(Σ_p parts[p])ᵀ` as `[cols, rows]`, for `parts` of `[rows, cols]`
/// each, summed in their order (zeros when there are none); a block of
/// output rows per thread task.
pub(super) fn summed_transpose(parts: &[Vec<f32>], rows: usize, cols: usize) -> Vec<f32> {
    const BLOCK: usize = 8;
    let Some((first, rest)) = parts.split_first() else {
        return vec![0.0; rows * cols];
    };
    let mut out = Output::new(rows * cols);
    out.par_chunks_mut(BLOCK * rows)
        .enumerate()
        .for_each(|(i, block)| {
            for (j, line) in block.chunks_exact_mut(rows).enumerate() {
                let c = i * BLOCK + j;
                for (r, d) in line.iter_mut().enumerate() {
                    let at = r * cols + c;
                    *d = rest.iter().fold(first[at], |s, p| s + p[at]);
                }
            }
        });
    out.into_vec()
}

/// The bias gradient from `dy` `[N, O, OH, OW]`: each channel's sum over
/// the samples in order, each sample's row in 16 lanes; the channels
/// spread over the threads.
pub(super) fn bias_grad(g: &Geometry, dy: &[f32]) -> Vec<f32> {
    let ohw = g.ohw();
    let row = |n: usize, o: usize| &dy[(n * g.o + o) * ohw..][..ohw];
    let sum = |o: usize| wide!((0..g.n).fold(0.0f32, |s, n| s + sum_f32(row(n, o))));
    (0..g.o).into_par_iter().map(sum).collect()
}
