//! The weight gradient of a convolution [`super::forward`] computes, by
//! the same F(2×2, 3×3) (Lavin and Gray, CVPR 2016): the gradient of its
//! equation for `Y` with respect to the filter `g`. With
//! `Y = Aᵀ [U ⊙ V] A` per patch and `U = G g Gᵀ`, the gradient of the
//! filter `g[o, c]` is
//!
//! ```text
//! dg[o, c] = Gᵀ dU[o, c] G,    dU[ξ][o, c] = Σ_p Z[ξ][o, p] · V[ξ][c, p],
//! Z = A dY Aᵀ (the 4×4 image of each patch's 2×2 output gradient)
//! ```
//!
//! so the 9 taps' sums over the pixels become, for each of the 16
//! positions `ξ`, one product `Z[ξ] · V[ξ]ᵀ` that reduces over the
//! patches: 4 multiply-adds per output pixel and channel pair where the
//! direct sum ([`crate::kernels::direct`]'s weight gradient) does 9.
//!
//! `V` is the forward's input transform ([`super::transform_input`],
//! `[16][C][P]`, patches along the rows). `Z` is written with 32 output
//! channels side by side, `[16][O/32][P][32]`: the output gradient of a
//! line of patches is first turned channel-last (32 channels at a time,
//! in L1), and each patch's `A dY Aᵀ` is then 16 sums of 32-channel rows.
//! A tile ([`tile`]) holds [`CB`] input channels by 32 output channels
//! in registers and runs over the chunk's patches: per patch, 2 vectors of
//! `Z` and `CB` broadcast values of `V`.
//!
//! Each thread sums the chunks of a fixed share of the batch, in order,
//! into its own `dUᵀ` (`[16][C][O]`), transforms it by `Gᵀ · G` into
//! `[C·9][O]`, and the caller sums those parts in order
//! (`conv`'s `summed_transpose`), so the result is the same on every run
//! with the same thread count. The transforms add, subtract and halve; the
//! result differs from the direct sums in the last bits (the tests bound
//! it by 1e-5 of the largest magnitude).

use super::{Geometry, per_chunk, stride, transform_input};
use crate::kernels::direct;
use crate::kernels::scratch::{Output, Scratch};
use crate::kernels::simd::wide;
use rayon::prelude::*;
use std::array::from_fn;

/// Output channels of a tile: two vectors.
const OT: usize = 32;
/// Input channels of a full tile: 24 sums in registers.
const CB: usize = 12;

/// Whether [`weight_grad`] computes this convolution's weight gradient:
/// [`super::applies`] and output channels a multiple of [`OT`].
pub(in crate::kernels) fn applies(g: &Geometry) -> bool {
    super::applies(g) && g.o.is_multiple_of(OT)
}

/// `dWᵀ` `[C·9, O]` of a convolution [`applies`] holds for, from its
/// input `x` and output gradient `dy`, in one part per thread (to be
/// summed in order).
pub(in crate::kernels) fn weight_grad(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<Vec<f32>> {
    assert!(
        applies(g) && x.len() == g.n * g.c * g.h * g.w && dy.len() == g.n * g.o * g.h * g.w,
        "winograd conv2d weight-gradient operands"
    );
    let threads = rayon::current_num_threads().max(1);
    let per = per_chunk(g, threads);
    let chunks: Vec<usize> = (0..g.n.div_ceil(per)).collect();
    direct::in_shares(&chunks, threads, |share| {
        let mut du_t = vec![0.0f32; 16 * g.c * g.o];
        for &i in share {
            let first = i * per;
            chunk(g, x, dy, first, per.min(g.n - first), &mut du_t);
        }
        filter_grads(g, &du_t)
    })
}

/// Samples `first..first + count`'s terms added onto `du_t` (`[16][C][O]`).
fn chunk(g: &Geometry, x: &[f32], dy: &[f32], first: usize, count: usize, du_t: &mut [f32]) {
    let patches = count * (g.h / 2) * (g.w / 2);
    let rs = stride(patches);
    let mut v = Scratch::take(16 * g.c * rs);
    transform_input(g, x, first, count, rs, &mut v);
    let mut z = Scratch::take(16 * g.o * patches);
    wide!(transform_dy(g, dy, first, count, &mut z));
    for xi in 0..16 {
        let v = &v[xi * g.c * rs..][..g.c * rs];
        let z = &z[xi * g.o * patches..][..g.o * patches];
        let du_t = &mut du_t[xi * g.c * g.o..][..g.c * g.o];
        let mut c0 = 0;
        while c0 < g.c {
            let cb = match g.c - c0 {
                CB.. => CB,
                8.. => 8,
                4.. => 4,
                _ => 1,
            };
            // A block of V's rows (in L1) against every panel of Z.
            for (t, panel) in z.chunks_exact(patches * OT).enumerate() {
                let dst = &mut du_t[c0 * g.o + t * OT..];
                // SAFETY: `v` rows `c0..c0 + cb` hold `patches` values
                // each, `rs` apart, `panel` `patches·32`, and `dst` rows
                // `O` apart hold 32 values for each of the `cb` channels
                // (`du_t` is `[C][O]` for this ξ); AVX-512F (`applies`).
                unsafe {
                    let v = v[c0 * rs..].as_ptr();
                    match cb {
                        CB => tile::<CB>(v, rs, panel, patches, dst, g.o),
                        8 => tile::<8>(v, rs, panel, patches, dst, g.o),
                        4 => tile::<4>(v, rs, panel, patches, dst, g.o),
                        _ => tile::<1>(v, rs, panel, patches, dst, g.o),
                    }
                }
            }
            c0 += cb;
        }
    }
}

/// `Z = A dY Aᵀ` of every patch's 2×2 output gradient of samples
/// `first..first + count`, as `[16][O/32][P][32]`, patches in raster order
/// within each sample (as [`transform_input`] orders them).
#[inline(always)]
fn transform_dy(g: &Geometry, dy: &[f32], first: usize, count: usize, z: &mut [f32]) {
    let (h, w) = (g.h, g.w);
    let (th, tw) = (h / 2, w / 2);
    let patches = count * th * tw;
    assert!(
        dy.len() >= (first + count) * g.o * h * w && z.len() >= 16 * g.o * patches,
        "winograd output-gradient transform operands"
    );
    // Two lines of the image, channel-last: `[2·W][32]`.
    let mut lines = vec![0.0f32; 2 * w * OT];
    for s in 0..count {
        for t in 0..g.o / OT {
            let planes = &dy[((first + s) * g.o + t * OT) * h * w..][..OT * h * w];
            for ty in 0..th {
                for (oo, plane) in planes.chunks_exact(h * w).enumerate() {
                    let src = &plane[2 * ty * w..][..2 * w];
                    for (px, &d) in src.iter().enumerate() {
                        lines[px * OT + oo] = d;
                    }
                }
                for tx in 0..tw {
                    let p = (s * th + ty) * tw + tx;
                    let d = |a: usize, b: usize| -> &[f32; OT] {
                        lines[(a * w + 2 * tx + b) * OT..][..OT]
                            .try_into()
                            .expect("32 channels")
                    };
                    let (d00, d01, d10, d11) = (d(0, 0), d(0, 1), d(1, 0), d(1, 1));
                    // A dY: rows d0, d0 + d1, d0 − d1, −d1 (two columns each).
                    let rows: [[[f32; OT]; 2]; 4] = [
                        [*d00, *d01],
                        [from_fn(|i| d00[i] + d10[i]), from_fn(|i| d01[i] + d11[i])],
                        [from_fn(|i| d00[i] - d10[i]), from_fn(|i| d01[i] - d11[i])],
                        [d10.map(|v| -v), d11.map(|v| -v)],
                    ];
                    // (A dY) Aᵀ: the same on the columns.
                    for (i, [u0, u1]) in rows.iter().enumerate() {
                        let cols: [[f32; OT]; 4] = [
                            *u0,
                            from_fn(|k| u0[k] + u1[k]),
                            from_fn(|k| u0[k] - u1[k]),
                            u1.map(|v| -v),
                        ];
                        for (j, col) in cols.iter().enumerate() {
                            let xi = 4 * i + j;
                            z[((xi * (g.o / OT) + t) * patches + p) * OT..][..OT]
                                .copy_from_slice(col);
                        }
                    }
                }
            }
        }
    }
}

/// `dWᵀ` `[C·9][O]` from `dUᵀ` `[16][C][O]`: `Gᵀ dU G` for every filter,
/// along the output channels.
fn filter_grads(g: &Geometry, du_t: &[f32]) -> Vec<f32> {
    let (c, o) = (g.c, g.o);
    let mut out = Output::new(c * 9 * o);
    out.par_chunks_mut(9 * o)
        .enumerate()
        .for_each(|(ci, taps)| {
            let du = |xi: usize| &du_t[(xi * c + ci) * o..][..o];
            wide!(g_transform(from_fn(du), taps, o))
        });
    out.into_vec()
}

/// `Gᵀ dU G` of `o` filters at once: `du[ξ]` holds entry ξ of each
/// filter's `dU`, `taps` receives the 9 rows of `o` values.
#[inline(always)]
fn g_transform(du: [&[f32]; 16], taps: &mut [f32], o: usize) {
    // Gᵀ (3 × 4) times a column: rows (1, ½, ½, 0), (0, ½, −½, 0), (0, ½, ½, 1).
    let g_t = |[r0, r1, r2, r3]: [f32; 4]| {
        let half = 0.5 * (r1 + r2);
        [r0 + half, 0.5 * (r1 - r2), half + r3]
    };
    for k in 0..o {
        // t[j][i] = (Gᵀ dU)[i][j]: Gᵀ times dU's column j.
        let t: [[f32; 3]; 4] = from_fn(|j| g_t(from_fn(|i| du[4 * i + j][k])));
        // (Gᵀ dU) G = (Gᵀ (Gᵀ dU)ᵀ)ᵀ: row i is Gᵀ times row i of Gᵀ dU.
        for i in 0..3 {
            for (j, v) in g_t(from_fn(|b| t[b][i])).into_iter().enumerate() {
                taps[(3 * i + j) * o + k] = v;
            }
        }
    }
}

/// `dst[i·stride ..][..32] += Σ_p v[i·rs + p] · z[p][..32]` for the tile's
/// `CB` input channels `i` over `patches` patches.
///
/// # Safety
/// `v + i·rs .. + patches` is readable for `i < CB`, `z` holds
/// `patches·32` values, `dst` holds `(CB − 1)·stride + 32`, and the CPU
/// has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // constant bounds: unrolled, sums in registers
unsafe fn tile<const CB: usize>(
    v: *const f32,
    rs: usize,
    z: &[f32],
    patches: usize,
    dst: &mut [f32],
    stride: usize,
) {
    use std::arch::x86_64::*;
    assert!(
        z.len() >= patches * OT && dst.len() >= (CB - 1) * stride + OT,
        "winograd weight-gradient tile operands"
    );
    // SAFETY: the caller's contract and the assert cover every access.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; CB];
        let rows: [*const f32; CB] = from_fn(|i| v.add(i * rs));
        let mut row = z.as_ptr();
        for p in 0..patches {
            let d = [_mm512_loadu_ps(row), _mm512_loadu_ps(row.add(16))];
            for i in 0..CB {
                let a = _mm512_set1_ps(*rows[i].add(p));
                acc[i][0] = _mm512_fmadd_ps(a, d[0], acc[i][0]);
                acc[i][1] = _mm512_fmadd_ps(a, d[1], acc[i][1]);
            }
            row = row.add(OT);
        }
        direct::add_rows(&acc, dst.as_mut_ptr(), stride);
    }
}

/// Never called: [`applies`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile<const CB: usize>(
    _: *const f32,
    _: usize,
    _: &[f32],
    _: usize,
    _: &mut [f32],
    _: usize,
) {
    unreachable!("the Winograd weight gradient needs AVX-512F")
}
