//! 3×3 stride-1 convolutions with padding 1 by Winograd's minimal
//! filtering F(2×2, 3×3) (Lavin and Gray, "Fast Algorithms for
//! Convolutional Neural Networks", CVPR 2016): 16 multiplications for a
//! 2×2 block of outputs of one channel pair, where the direct sum takes 36.
//!
//! Each 4×4 input patch `d` (2×2 outputs and their 3×3 reach, overlapping
//! its neighbours by 2) becomes `V = Bᵀ d B`, each 3×3 filter `g` becomes
//! `U = G g Gᵀ`, and the 2×2 outputs are `Y = Aᵀ [Σ_c U[o, c] ⊙ V[c]] A`:
//!
//! ```text
//!      ⎡1  0 −1  0⎤        ⎡1    0    0 ⎤        ⎡1  1  1  0⎤
//! Bᵀ = ⎢0  1  1  0⎥    G = ⎢½    ½    ½ ⎥   Aᵀ = ⎣0  1 −1 −1⎦
//!      ⎢0 −1  1  0⎥        ⎢½   −½    ½ ⎥
//!      ⎣0  1  0 −1⎦        ⎣0    0    1 ⎦
//! ```
//!
//! The sum over `c` is, for each of the 16 positions `ξ` of the 4×4
//! transform, one GEMM `M[ξ] (O × P) = U[ξ] (O × C) · V[ξ] (C × P)` over the
//! `P` patches of a chunk of samples. That is 4 · C · O multiply-adds per
//! output pixel where the direct sum does 9 · C · O, plus the transforms,
//! which are linear in the data. The GEMMs run on the direct kernel's tile
//! (`direct::panel_gemm`): `V[ξ]` is read in place, 16 patches to a
//! vector, and only the transformed filters are packed, once per call.
//! The input transform loads the padded input lines as vectors and splits
//! them into even and odd values with two permutes, so that each column
//! of 16 patches is one vector ([`transform_input`]).
//!
//! The transforms are exact but for the ½ of `G` and the cancellations in
//! `Aᵀ … A`: an output differs from the direct sum in its last bits (the
//! tests bound it by 1e-5 of the largest magnitude, as for the other
//! paths). The order of the sums is fixed, so the results are the same on
//! every run and thread count.
//!
//! The samples are cut into chunks of about [`PATCHES`] patches, each
//! chunk transformed, multiplied and transformed back by one thread with
//! its working matrices in that thread's cache; the chunks are spread
//! over rayon's threads. The input gradient of such a convolution is one
//! too (the flipped, transposed filters, padding 1), so it takes the same
//! path ([`input_grad`]). The weight gradient reduces over the patches
//! instead, `Gᵀ [Σ_p (A dY Aᵀ) ⊙ V] G` ([`weight`], [`weight_grad`]).
//!
//! It applies to 3×3 kernels with stride 1 and padding 1 on images whose
//! lines hold 4 patches (8 pixels), 8 or a multiple of 16, with at
//! least [`MIN_CHANNELS`] channels in and out and output channels in
//! eights, where the CPU has AVX-512F ([`applies`]). 4×4 images keep the
//! direct kernel: a sample's 4 patches would fill a quarter of a vector.

use super::conv::Geometry;
use super::direct;
use super::scratch::{Output, Scratch};
use super::simd::wide;
use rayon::prelude::*;
use std::array::from_fn;

mod weight;
pub(super) use weight::{applies as weight_grad_applies, weight_grad};

/// Patches of a chunk's GEMMs, about: whole samples, at least one.
const PATCHES: usize = if cfg!(test) { 12 } else { 128 };
/// Fewest input and output channels: below, the transforms cost more
/// than the multiplications they save.
const MIN_CHANNELS: usize = 16;

/// Whether [`forward`] computes this convolution: a 3×3 kernel, stride
/// 1, padding 1, lines of 4 patches (four lines of them to a vector, so
/// a multiple of 4), of 8 (two to a vector, so an even number) or of a
/// multiple of 16, at least [`MIN_CHANNELS`] input
/// and output channels, output channels in eights ([`direct::panel_gemm`]),
/// and AVX-512F.
pub(super) fn applies(g: &Geometry) -> bool {
    let (th, tw) = (g.h / 2, g.w / 2);
    g.k == [3, 3]
        && g.stride == [1, 1]
        && g.padding == [1, 1]
        && g.h.is_multiple_of(2)
        && g.w.is_multiple_of(2)
        && th > 0
        && fills_vectors(th, tw)
        && g.c >= MIN_CHANNELS
        && g.o >= MIN_CHANNELS
        && g.o.is_multiple_of(direct::NR)
        && direct::available()
}

/// Whether `th` lines of `tw` patches make whole vectors of 16: lines of
/// 4 in fours, lines of 8 in twos, or lines of a multiple of 16.
fn fills_vectors(th: usize, tw: usize) -> bool {
    tw == 4 && th.is_multiple_of(4)
        || tw == 8 && th.is_multiple_of(2)
        || tw > 0 && tw.is_multiple_of(16)
}

/// The convolution whose forward is `g`'s input gradient: channels
/// swapped, the rest alike. [`input_grad`] computes `g`'s when
/// [`applies`] holds for it.
pub(super) fn transposed(g: &Geometry) -> Geometry {
    Geometry {
        c: g.o,
        o: g.c,
        ..*g
    }
}

/// Forward of a convolution [`applies`] holds for: `[N, O, H, W]`.
pub(super) fn forward(g: &Geometry, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    assert!(
        applies(g)
            && x.len() == g.n * g.c * g.h * g.w
            && weight.len() == g.o * g.c * 9
            && bias.is_none_or(|b| b.len() == g.o),
        "winograd conv2d forward operands"
    );
    let u = filters(g.o, g.c, |o, c| {
        weight[(o * g.c + c) * 9..][..9].try_into().expect("9 taps")
    });
    run(g, x, &u, bias)
}

/// The input gradient `[N, C, H, W]` of a convolution [`applies`] holds
/// for, from its output gradient `dy`: `dy` convolved with the filters
/// `W'[c, o, ki, kj] = W[o, c, 2 − ki, 2 − kj]`, padding 1.
pub(super) fn input_grad(g: &Geometry, weight: &[f32], dy: &[f32]) -> Vec<f32> {
    let t = transposed(g);
    assert!(
        applies(&t) && weight.len() == g.o * g.c * 9 && dy.len() == g.n * g.o * g.h * g.w,
        "winograd conv2d input-gradient operands"
    );
    let u = filters(t.o, t.c, |c, o| {
        let mut taps: [f32; 9] = weight[(o * g.c + c) * 9..][..9].try_into().expect("9 taps");
        taps.reverse();
        taps
    });
    run(&t, dy, &u, None)
}

/// `U = G g Gᵀ` of every filter `g[ki][kj] = taps(o, c)[3·ki + kj]`, as
/// 16 `O × C` matrices `U[ξ]` in the panels of the direct kernel's tile
/// (`[O/NR][C][NR]`, as the direct kernel packs its weights), one after
/// another.
fn filters(o: usize, c: usize, taps: impl Fn(usize, usize) -> [f32; 9] + Sync) -> Vec<f32> {
    use direct::NR;
    let per = o * c;
    let mut u = vec![0.0f32; 16 * per];
    // Panel `p` of every `U[ξ]`: 16 runs of `C·NR` values, `O·C` apart.
    let mut runs: Vec<Vec<&mut [f32]>> = (0..o / NR).map(|_| Vec::with_capacity(16)).collect();
    for plane in u.chunks_exact_mut(per) {
        for (p, run) in plane.chunks_exact_mut(c * NR).enumerate() {
            runs[p].push(run);
        }
    }
    runs.into_par_iter().enumerate().for_each(|(p, mut runs)| {
        wide!({
            for ci in 0..c {
                // The panel's NR filters side by side: g[tap][j].
                let filters: [[f32; 9]; NR] = from_fn(|j| taps(p * NR + j, ci));
                let g: [[f32; NR]; 9] = from_fn(|k| filters.map(|f| f[k]));
                // G g: 4 × 3, each entry NR lanes.
                let mut t = [[[0.0f32; NR]; 3]; 4];
                for kj in 0..3 {
                    let (a, b, d) = (g[kj], g[3 + kj], g[6 + kj]);
                    t[0][kj] = a;
                    t[1][kj] = from_fn(|j| 0.5 * (a[j] + b[j] + d[j]));
                    t[2][kj] = from_fn(|j| 0.5 * (a[j] - b[j] + d[j]));
                    t[3][kj] = d;
                }
                // (G g) Gᵀ: 4 × 4.
                for (i, r) in t.iter().enumerate() {
                    let v = [
                        r[0],
                        from_fn(|j| 0.5 * (r[0][j] + r[1][j] + r[2][j])),
                        from_fn(|j| 0.5 * (r[0][j] - r[1][j] + r[2][j])),
                        r[2],
                    ];
                    for (jj, v) in v.into_iter().enumerate() {
                        runs[i * 4 + jj][ci * NR..][..NR].copy_from_slice(&v);
                    }
                }
            }
        })
    });
    u
}

/// Samples per chunk: about [`PATCHES`] patches, and at least as many
/// chunks as threads where there are samples enough.
fn per_chunk(g: &Geometry, threads: usize) -> usize {
    let patches = (g.h / 2) * (g.w / 2);
    (PATCHES / patches.max(1)).clamp(1, g.n.div_ceil(threads.max(1)).max(1))
}

/// The row stride of `V` and `M` for `patches` patches: 16 values more,
/// so that it is never a multiple of 256 values (1 KiB), whose rows would
/// share the L1 cache's sets.
fn stride(patches: usize) -> usize {
    let rs = patches + 16;
    if rs.is_multiple_of(256) { rs + 16 } else { rs }
}

/// The convolution of `x` by the transformed filters `u` ([`filters`]).
fn run(g: &Geometry, x: &[f32], u: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let per = per_chunk(g, rayon::current_num_threads());
    let sample_out = g.o * g.h * g.w;
    let mut out = Output::new(g.n * sample_out);
    out.par_chunks_mut(per * sample_out)
        .enumerate()
        .for_each(|(i, y)| {
            let first = i * per;
            let count = y.len() / sample_out;
            let patches = count * (g.h / 2) * (g.w / 2);
            let rs = stride(patches);
            let mut v = Scratch::take(16 * g.c * rs);
            let mut m = Scratch::take(16 * g.o * rs);
            transform_input(g, x, first, count, rs, &mut v[..]);
            for (xi, u) in u.chunks_exact(g.o * g.c).enumerate() {
                let v = &v[xi * g.c * rs..][..g.c * rs];
                let m = &mut m[xi * g.o * rs..][..g.o * rs];
                direct::panel_gemm(u, [g.o, g.c], v, [patches, rs], m);
            }
            wide!(transform_output(g, &m[..], count, bias, y));
        });
    out.into_vec()
}

/// `V = Bᵀ d B` of every 4×4 patch `d` of samples `first..first + count`
/// (zero outside the input), as `[16][C][P]` with rows `rs` apart,
/// patches in raster order within each sample.
///
/// Patches go 16 at a time, one per lane: 16 of a line of patches, or,
/// on 16-wide images (8 patches a line), two lines of them. The padded
/// input lines they read are loaded as pairs of vectors and split into
/// their even and odd values, which gives column `j` of the 16 patches
/// as one vector (`d[·][j]` is padded value `2·tx + j`).
fn transform_input(g: &Geometry, x: &[f32], first: usize, count: usize, rs: usize, v: &mut [f32]) {
    let (h, w) = (g.h, g.w);
    let (th, tw) = (h / 2, w / 2);
    let pw = w + 2;
    assert!(
        fills_vectors(th, tw)
            && x.len() >= (first + count) * g.c * h * w
            && v.len() >= (15 * g.c + g.c - 1) * rs + count * th * tw,
        "winograd input transform operands"
    );
    if tw == 4 {
        return transform_narrow(g, x, first, count, rs, v);
    }
    // The plane zero-padded by one on every side.
    let mut padded = vec![0.0f32; (h + 2) * pw];
    for c in 0..g.c {
        for s in 0..count {
            let plane = &x[((first + s) * g.c + c) * h * w..][..h * w];
            for (line, row) in padded[pw..].chunks_exact_mut(pw).zip(plane.chunks_exact(w)) {
                // Whole vectors (`w` is a multiple of 16): no `memcpy`
                // call per line.
                for (to, from) in line[1..=w].chunks_exact_mut(16).zip(row.chunks_exact(16)) {
                    let from: &[f32; 16] = from.try_into().expect("16 values");
                    to.copy_from_slice(from);
                }
            }
            // (first padded line, column of the first patch, patch index)
            // of each group of 16 patches.
            let (lines, per_line) = if tw == 8 { (2, 1) } else { (1, tw / 16) };
            let groups = (0..th).step_by(lines).flat_map(|ty| {
                (0..per_line).map(move |q| (2 * ty, 32 * q, (s * th + ty) * tw + 16 * q))
            });
            for (line, x0, at) in groups {
                // The second vector of each pair: the next 16 values of
                // the line, or the line two below (the next line of
                // patches) on 16-wide images.
                let next = if tw == 8 { 2 * pw } else { 16 };
                let base = line * pw + x0;
                assert!(base + 3 * pw + next + 18 <= padded.len(), "patch reads");
                // SAFETY: the loads read `padded[base + i·pw + {0, 2} +
                // {0, next} .. + 16]` for i < 4, inside `padded` (asserted
                // just above); the stores write `v[(ξ·C + c)·rs + at ..
                // + 16]`, inside `v` (the assert at the top: `at + 16 ≤
                // count·th·tw`); the CPU has AVX-512F (`applies`).
                unsafe {
                    group(
                        padded.as_ptr().add(base),
                        pw,
                        next,
                        v.as_mut_ptr().add(c * rs + at),
                        g.c * rs,
                    );
                }
            }
        }
    }
}

/// [`transform_input`] on 8-wide images (4 patches a line): each plane's
/// padded values split by the parity of their line and column into four
/// 5-wide planes, in which value `(i, j)` of 4 lines of 4 patches is a
/// 4 × 4 window, taken into a vector by one permute.
fn transform_narrow(g: &Geometry, x: &[f32], first: usize, count: usize, rs: usize, v: &mut [f32]) {
    let (h, w) = (g.h, g.w);
    let th = h / 2;
    // Each parity plane: TH + 1 rows of 5, and room for a window's loads.
    let plane = (th + 1) * 5 + 16;
    let mut quads = vec![0.0f32; 4 * plane];
    for c in 0..g.c {
        for s in 0..count {
            let src = &x[((first + s) * g.c + c) * h * w..][..h * w];
            // Padded value (y, x) is input value (y − 1, x − 1).
            for (q, quad) in quads.chunks_exact_mut(plane).enumerate() {
                let (pr, pc) = (q / 2, q % 2);
                for row in 0..=th {
                    for col in 0..5 {
                        let (y, x) = (
                            (2 * row + pr).wrapping_sub(1),
                            (2 * col + pc).wrapping_sub(1),
                        );
                        quad[row * 5 + col] = if y < h && x < w { src[y * w + x] } else { 0.0 };
                    }
                }
            }
            for ly in (0..th).step_by(4) {
                let at = (s * th + ly) * 4;
                assert!(
                    ly + 4 <= th && (ly + 1) * 5 + 1 + 32 <= plane,
                    "window reads"
                );
                // SAFETY: a window reads `quads[plane·q + (ly + i/2)·5 +
                // j/2 .. + 32]`, inside its plane (asserted above, with
                // `ly + 4 ≤ TH`); the stores write `v[(ξ·C + c)·rs + at
                // .. + 16]`, inside `v` (asserted by the caller); the CPU
                // has AVX-512F (`applies`).
                unsafe {
                    group_of_four_lines(
                        quads.as_ptr(),
                        plane,
                        ly,
                        v.as_mut_ptr().add(c * rs + at),
                        g.c * rs,
                    );
                }
            }
        }
    }
}

/// One group of 16 patches of [`transform_input`]: line `i` of the
/// patches is `src + i·pw`, its values `0..16` then `next..next + 16`;
/// value `ξ` of the patches goes to `dst + ξ·step`.
///
/// # Safety
/// See the caller; AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn group(src: *const f32, pw: usize, next: usize, dst: *mut f32, step: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract covers every pointer used here.
    unsafe {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        // d[i][j]: line i, column j of the 16 patches.
        let mut d = [[_mm512_setzero_ps(); 4]; 4];
        for (i, d) in d.iter_mut().enumerate() {
            let l = src.add(i * pw);
            let (a, b) = (_mm512_loadu_ps(l), _mm512_loadu_ps(l.add(next)));
            let (a2, b2) = (_mm512_loadu_ps(l.add(2)), _mm512_loadu_ps(l.add(next + 2)));
            d[0] = _mm512_permutex2var_ps(a, even, b);
            d[1] = _mm512_permutex2var_ps(a, odd, b);
            d[2] = _mm512_permutex2var_ps(a2, even, b2);
            d[3] = _mm512_permutex2var_ps(a2, odd, b2);
        }
        finish(d, dst, step);
    }
}

/// One group of 16 patches of an 8-wide image (4 lines of 4 patches) for
/// [`transform_input`]: `quads` holds the padded plane's values split by
/// the parity of their line and column, `[2][2][TH + 1][5]` with planes
/// `plane` apart, and the group's first line of patches is `ly`.
///
/// # Safety
/// Every `quads + plane·(2·(i % 2) + j % 2) + (ly + i/2)·5 + j/2 .. + 32`
/// is readable; `dst + ξ·step .. + 16` writable; AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn group_of_four_lines(
    quads: *const f32,
    plane: usize,
    ly: usize,
    dst: *mut f32,
    step: usize,
) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract covers every pointer used here.
    unsafe {
        // Lane (r, tx) ← row r, column tx of a plane with rows 5 apart.
        let window = _mm512_setr_epi32(0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 15, 16, 17, 18);
        let d: [[__m512; 4]; 4] = std::array::from_fn(|i| {
            std::array::from_fn(|j| {
                let at = quads.add(plane * (2 * (i % 2) + j % 2) + (ly + i / 2) * 5 + j / 2);
                _mm512_permutex2var_ps(_mm512_loadu_ps(at), window, _mm512_loadu_ps(at.add(16)))
            })
        });
        finish(d, dst, step);
    }
}

/// `V = Bᵀ d B` of 16 patches, `d[i][j]` holding value `(i, j)` of each,
/// stored as 16 vectors `step` apart.
///
/// # Safety
/// `dst + ξ·step .. + 16` is writable for every ξ < 16; AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn finish(d: [[std::arch::x86_64::__m512; 4]; 4], dst: *mut f32, step: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract covers every pointer used here.
    unsafe {
        // Bᵀ d: rows d0 − d2, d1 + d2, d2 − d1, d1 − d3.
        let t: [[__m512; 4]; 4] = std::array::from_fn(|i| {
            std::array::from_fn(|j| match i {
                0 => _mm512_sub_ps(d[0][j], d[2][j]),
                1 => _mm512_add_ps(d[1][j], d[2][j]),
                2 => _mm512_sub_ps(d[2][j], d[1][j]),
                _ => _mm512_sub_ps(d[1][j], d[3][j]),
            })
        });
        // (Bᵀ d) B: the same on the columns.
        for (i, r) in t.iter().enumerate() {
            let v = [
                _mm512_sub_ps(r[0], r[2]),
                _mm512_add_ps(r[1], r[2]),
                _mm512_sub_ps(r[2], r[1]),
                _mm512_sub_ps(r[1], r[3]),
            ];
            for (j, v) in v.into_iter().enumerate() {
                _mm512_storeu_ps(dst.add((i * 4 + j) * step), v);
            }
        }
    }
}

/// Never called: [`applies`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn group(_: *const f32, _: usize, _: usize, _: *mut f32, _: usize) {
    unreachable!("the Winograd transform needs AVX-512F")
}

/// Never called: [`applies`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn group_of_four_lines(_: *const f32, _: usize, _: usize, _: *mut f32, _: usize) {
    unreachable!("the Winograd transform needs AVX-512F")
}

/// `Y = Aᵀ M A` (plus the bias) of every patch's `M` (`[16][O][P]`) into
/// `y`, `count` samples of `[O, H, W]`: for each output channel, over all
/// its patches at once (consecutive in `M`), then spread to the lines.
#[inline(always)]
fn transform_output(g: &Geometry, m: &[f32], count: usize, bias: Option<&[f32]>, y: &mut [f32]) {
    let (h, w) = (g.h, g.w);
    let (th, tw) = (h / 2, w / 2);
    let patches = count * th * tw;
    let rs = stride(patches);
    // Aᵀ M's two rows for each column j (8 runs), then the 4 outputs.
    let mut rows = vec![0.0f32; 8 * patches];
    let mut q = vec![0.0f32; 4 * patches];
    for o in 0..g.o {
        let b = bias.map_or(0.0, |b| b[o]);
        let r = |xi: usize| &m[(xi * g.o + o) * rs..][..patches];
        for (j, pair) in rows.chunks_exact_mut(2 * patches).enumerate() {
            let (s0, s1) = pair.split_at_mut(patches);
            a_rows([s0, s1], [r(j), r(4 + j), r(8 + j), r(12 + j)], 0.0);
        }
        let run = |j: usize, k: usize| &rows[(2 * j + k) * patches..][..patches];
        for (k, out) in q.chunks_exact_mut(2 * patches).enumerate() {
            let (left, right) = out.split_at_mut(patches);
            a_rows(
                [left, right],
                [run(0, k), run(1, k), run(2, k), run(3, k)],
                b,
            );
        }
        for s in 0..count {
            let plane = &mut y[(s * g.o + o) * h * w..][..h * w];
            for (ty, lines) in plane.chunks_exact_mut(2 * w).enumerate() {
                let at = (s * th + ty) * tw;
                let (top, bottom) = lines.split_at_mut(w);
                for (k, line) in [top, bottom].into_iter().enumerate() {
                    let left = &q[2 * k * patches + at..][..tw];
                    let right = &q[(2 * k + 1) * patches + at..][..tw];
                    for ((pair, l), r) in line.chunks_exact_mut(2).zip(left).zip(right) {
                        pair[0] = *l;
                        pair[1] = *r;
                    }
                }
            }
        }
    }
}

/// Aᵀ's two rows over four runs, plus `b`: `x0 + x1 + x2 + b` into
/// `first` and `x1 − x2 − x3 + b` into `second`.
#[inline(always)]
fn a_rows([first, second]: [&mut [f32]; 2], [x0, x1, x2, x3]: [&[f32]; 4], b: f32) {
    for ((((f, s), x0), x1), (x2, x3)) in first
        .iter_mut()
        .zip(second.iter_mut())
        .zip(x0)
        .zip(x1)
        .zip(x2.iter().zip(x3))
    {
        *f = x0 + x1 + x2 + b;
        *s = x1 - x2 - x3 + b;
    }
}
