//! The weight gradient of a stride-1 3×3 convolution from the same block
//! layouts as the forward: `dWᵀ[(c, ki, kj), o] = Σ_p A[(c, ki, kj), p] ·
//! dy[o, p]`, where `A[k, p]` is read in place from the block's padded
//! input (`values[base(p) + offset(k)]`), so no column matrix is
//! written. The output gradient is copied once per block, transposed to
//! `[O/32][pixels][32]`.
//!
//! A tile holds one input channel's 9 taps by 32 output channels in 18
//! registers and runs over all the block's pixels: per pixel, 9 broadcast
//! input values and 2 vectors of `dy`. Each thread sums its blocks, taken
//! in order from a fixed share of them, into its own `dWᵀ`; the callers
//! add those shares in order ([`super::super::conv`]'s
//! `summed_transpose`), so the result is the same on every run with the
//! same thread count.

use super::{Block, LANES, Layout, blocks, in_shares, padded};
use crate::kernels::conv::Geometry;
use crate::kernels::scratch::Scratch;

/// Output channels of a tile.
const OT: usize = 32;
/// Taps of a 3×3 kernel: the input values of a tile.
const TAPS: usize = 9;

/// Whether [`weight_grad`] computes this convolution's weight gradient:
/// 3×3, output channels a multiple of 32, and output lines a multiple of
/// 16 wide, or 8 or 4 wide (runs of a whole line).
pub(in crate::kernels) fn applies(g: &Geometry) -> bool {
    super::applies(g)
        && g.k == [3, 3]
        && g.o.is_multiple_of(OT)
        && g.out_hw().is_some_and(|[_, ow]| run(ow).is_some())
}

/// The pixels of a run for lines `ow` wide.
fn run(ow: usize) -> Option<usize> {
    match ow {
        4 | 8 => Some(ow),
        _ if ow.is_multiple_of(LANES) => Some(LANES),
        _ => None,
    }
}

/// `dWᵀ` `[C·9, O]` of a convolution [`applies`] holds for, in one part
/// per thread (to be summed in order).
pub(in crate::kernels) fn weight_grad(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<Vec<f32>> {
    let [oh, ow] = g.out_hw().expect("checked by applies");
    assert!(
        applies(g) && x.len() == g.n * g.c * g.h * g.w && dy.len() == g.n * g.o * oh * ow,
        "direct conv2d weight-gradient operands"
    );
    let threads = rayon::current_num_threads().max(1);
    in_shares(&blocks(g, threads), threads, |share| {
        let mut dw_t = vec![0.0f32; g.c * TAPS * g.o];
        for b in share {
            block(g, x, dy, b, &mut dw_t);
        }
        dw_t
    })
}

/// Block `b`'s terms added onto `dw_t` (`[C·9, O]`).
fn block(g: &Geometry, x: &[f32], dy: &[f32], b: &Block, dw_t: &mut [f32]) {
    let [oh, ow] = g.out_hw().expect("checked by applies");
    let ohw = oh * ow;
    let run = run(ow).expect("checked by applies");
    let Layout {
        values,
        offsets,
        vectors,
    } = padded(g, x, b, run);
    let pixels = vectors.len() * run;
    // dy of the block's pixels, `[O/32][pixels][32]`.
    let mut dyp = Scratch::take(g.o * pixels);
    for (t, panel) in dyp.chunks_exact_mut(pixels * OT).enumerate() {
        for (v, &(_, at)) in vectors.iter().enumerate() {
            for oo in 0..OT {
                let src = &dy[at + (t * OT + oo) * ohw..][..run];
                for (l, &d) in src.iter().enumerate() {
                    panel[(v * run + l) * OT + oo] = d;
                }
            }
        }
    }
    let last = vectors.last().map_or(0, |v| v.0) + offsets.last().map_or(0, |&o| o as usize);
    assert!(last + run <= values.len(), "block input bounds");
    let bases: Vec<usize> = vectors.iter().map(|v| v.0).collect();
    // A panel of dy (in L1) against every channel's taps in turn.
    for (t, panel) in dyp.chunks_exact(pixels * OT).enumerate() {
        for (c, taps) in offsets.chunks_exact(TAPS).enumerate() {
            let taps: &[isize; TAPS] = taps.try_into().expect("3×3 taps");
            let dst = &mut dw_t[c * TAPS * g.o + t * OT..];
            let at = values.as_ptr();
            // SAFETY: every `base + lane + tap` lies inside `values`
            // (asserted above: the last run's base and the last tap are
            // the largest), `panel` holds `pixels·32` values, and `dst`
            // rows `O` apart hold `32` values from its start for each of
            // the 9 taps (`dw_t` is `[C·9, O]`).
            unsafe {
                match run {
                    4 => tile::<4>(at, &bases, taps, panel, dst, g.o),
                    8 => tile::<8>(at, &bases, taps, panel, dst, g.o),
                    _ => tile::<LANES>(at, &bases, taps, panel, dst, g.o),
                }
            }
        }
    }
}

/// `dst[i·stride ..][..32] += Σ_p values[p + taps[i]] · dy[p][..32]` over
/// the pixels `p = base + lane` of every base, `RUN` lanes each, `dy`
/// holding their rows of 32 in order.
///
/// # Safety
/// Every `values + base + lane + tap` is readable, `dy` holds
/// `bases.len()·RUN·32` values, `dst` holds `8·stride + 32`, and the CPU
/// has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // constant bounds: unrolled, sums in registers
unsafe fn tile<const RUN: usize>(
    values: *const f32,
    bases: &[usize],
    taps: &[isize; TAPS],
    dy: &[f32],
    dst: &mut [f32],
    stride: usize,
) {
    use std::arch::x86_64::*;
    assert!(
        dy.len() >= bases.len() * RUN * OT && dst.len() >= (TAPS - 1) * stride + OT,
        "weight-gradient tile operands"
    );
    // SAFETY: the caller's contract and the assert cover every access.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; TAPS];
        let mut row = dy.as_ptr();
        for &base in bases {
            let at: [*const f32; TAPS] =
                std::array::from_fn(|i| values.offset(base as isize + taps[i]));
            for l in 0..RUN {
                let d = [_mm512_loadu_ps(row), _mm512_loadu_ps(row.add(16))];
                for i in 0..TAPS {
                    let a = _mm512_set1_ps(*at[i].add(l));
                    acc[i][0] = _mm512_fmadd_ps(a, d[0], acc[i][0]);
                    acc[i][1] = _mm512_fmadd_ps(a, d[1], acc[i][1]);
                }
                row = row.add(OT);
            }
        }
        add_rows(&acc, dst.as_mut_ptr(), stride);
    }
}

/// `dst[i·stride ..][..32] += acc[i]` (two vectors each) for the `N` rows
/// of a weight-gradient tile's sums (this one's and Winograd's).
///
/// # Safety
/// `dst + i·stride .. + 32` is readable and writable for `i < N`; AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(in crate::kernels) unsafe fn add_rows<const N: usize>(
    acc: &[[std::arch::x86_64::__m512; 2]; N],
    dst: *mut f32,
    stride: usize,
) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract covers every pointer used here.
    unsafe {
        for (i, pair) in acc.iter().enumerate() {
            let out = dst.add(i * stride);
            for (h, &a) in pair.iter().enumerate() {
                let sum = _mm512_add_ps(_mm512_loadu_ps(out.add(16 * h)), a);
                _mm512_storeu_ps(out.add(16 * h), sum);
            }
        }
    }
}

/// Never called: [`applies`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile<const RUN: usize>(
    _: *const f32,
    _: &[usize],
    _: &[isize; TAPS],
    _: &[f32],
    _: &mut [f32],
    _: usize,
) {
    unreachable!("the direct convolution needs AVX-512F")
}
