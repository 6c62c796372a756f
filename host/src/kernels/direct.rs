//! Stride-1 convolution as an implicit GEMM on AVX-512: no column matrix.
//!
//! With stride 1, output line `y` of a sample reads input lines
//! `y + ki − ph`, and its pixels `x..x + 16` read input pixels
//! `x + kj − pw ..` of them: in an input zero-padded by `(ph, pw)`, a
//! vector of 16 consecutive output pixels of one line is, for each
//! `(c, ki, kj)`, 16 consecutive padded input values at a fixed offset
//! from the vector's base. So `out[o, pixels] = Σ_k W[o, k] · A[k, pixels]`
//! is a GEMM whose left operand is read in place from the padded input
//! (one load per `k` and vector), with no im2col written and no packing
//! of it again by the GEMM; only the weights are packed, once per call,
//! as `[O/NR][K][NR]` panels whose values the tile broadcasts.
//!
//! The tile holds [`MV`] vectors (16 output pixels of one line each, from
//! any lines of the block) by [`NR`] output channels in 24 registers, over
//! a block of [`KC`] values of `k`; the bias, or zero, starts the sums.
//! Every output is summed over `k = (c, ki, kj)` in order, one product at
//! a time, the same on every run and thread count. A sample is cut into
//! blocks of output lines (about [`BLOCK`] outputs each) whose padded input
//! lines are copied together, so that the block stays in cache; blocks of
//! all samples are spread over rayon's threads.
//!
//! It applies where the CPU has AVX-512F, the stride is 1, the kernel is
//! not 1×1, output lines are a multiple of 16 wide, the output channels a
//! multiple of [`NR`] and the padding smaller than the kernel
//! ([`applies`]); [`super::conv`] uses its column-matrix path elsewhere.
//! The input gradient of such a convolution is one too: a stride-1
//! convolution of the output gradient with the weights flipped and
//! transposed, padded by `k − 1 − p` ([`input_grad`]).

use super::conv::Geometry;
use super::scratch::Scratch;
use rayon::prelude::*;
use std::ops::Range;

/// Output channels of a tile (the weight values it broadcasts per `k`).
const NR: usize = 8;
/// Vectors of 16 output pixels in a tile.
const MV: usize = 3;
/// Values of `k` per pass over a block's tiles (the tile's sums are
/// stored and taken up again between passes, exactly).
const KC: usize = if cfg!(test) { 7 } else { 576 };
/// Outputs of a line block, about (all its channels).
const BLOCK: usize = if cfg!(test) { 64 } else { 1 << 15 };
/// Pixels of a vector.
const LANES: usize = 16;

/// Whether [`forward`] computes this convolution.
pub(super) fn applies(g: &Geometry) -> bool {
    let Some([oh, ow]) = g.out_hw() else {
        return false;
    };
    g.stride == [1, 1]
        && g.k != [1, 1]
        && g.padding[0] < g.k[0]
        && g.padding[1] < g.k[1]
        && ow > 0
        && oh > 0
        && ow.is_multiple_of(LANES)
        && g.o.is_multiple_of(NR)
        && g.n * g.c > 0
        && available()
}

#[cfg(target_arch = "x86_64")]
fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn available() -> bool {
    false
}

/// The geometry of the input gradient of `g` as a stride-1 convolution of
/// the output gradient (`[N, O, OH, OW]` to `[N, C, H, W]`).
pub(super) fn transposed(g: &Geometry) -> Option<Geometry> {
    let [oh, ow] = g.out_hw()?;
    (g.stride == [1, 1] && g.padding[0] < g.k[0] && g.padding[1] < g.k[1]).then(|| Geometry {
        n: g.n,
        c: g.o,
        h: oh,
        w: ow,
        o: g.c,
        k: g.k,
        stride: [1, 1],
        padding: [g.k[0] - 1 - g.padding[0], g.k[1] - 1 - g.padding[1]],
    })
}

/// Forward of a convolution [`applies`] holds for: `[N, O, OH, OW]`.
pub(super) fn forward(g: &Geometry, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let ckk = g.c * g.k[0] * g.k[1];
    assert!(
        applies(g) && x.len() == g.n * g.c * g.h * g.w && weight.len() == g.o * ckk,
        "direct conv2d forward operands"
    );
    let packed = pack(g.o, ckk, |o, k| weight[o * ckk + k]);
    run(g, x, &packed, bias)
}

/// The input gradient `[N, C, H, W]` of a stride-1 convolution `g` from
/// its output gradient `dy`, where [`applies`] holds for
/// [`transposed`]`(g)`: `dx[c, iy, ix] = Σ W[o, c, ki, kj] ·
/// dy[o, iy + ph − ki, ix + pw − kj]`, which is `dy` convolved with
/// `W'[c, o, ki, kj] = W[o, c, KH − 1 − ki, KW − 1 − kj]`, padded by
/// `K − 1 − p`.
pub(super) fn input_grad(g: &Geometry, weight: &[f32], dy: &[f32]) -> Vec<f32> {
    let t = transposed(g).expect("a stride-1 convolution");
    let [kh, kw] = g.k;
    let kk = kh * kw;
    assert!(
        applies(&t) && weight.len() == g.o * g.c * kk && dy.len() == t.n * t.c * t.h * t.w,
        "direct conv2d input-gradient operands"
    );
    // W' row `c`, column `(o, ki, kj)`.
    let packed = pack(g.c, g.o * kk, |c, k| {
        let (o, ki, kj) = (k / kk, (k / kw) % kh, k % kw);
        weight[((o * g.c + c) * kh + kh - 1 - ki) * kw + kw - 1 - kj]
    });
    run(&t, dy, &packed, None)
}

/// `[rows/NR][cols][NR]`: panel `p`, row `k`, lane `j` holds `at(p·NR + j, k)`.
fn pack(rows: usize, cols: usize, at: impl Fn(usize, usize) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * cols];
    out.par_chunks_mut(cols * NR)
        .enumerate()
        .for_each(|(p, panel)| {
            for (k, lanes) in panel.chunks_exact_mut(NR).enumerate() {
                for (j, v) in lanes.iter_mut().enumerate() {
                    *v = at(p * NR + j, k);
                }
            }
        });
    out
}

/// A pointer the line blocks write their disjoint outputs through.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: each line block writes only its own outputs (see `run`).
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so that closures capture the `Sync` wrapper
    /// rather than its field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// The convolution `g` of `x` by the packed weights, bias added.
fn run(g: &Geometry, x: &[f32], packed: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let [oh, ow] = g.out_hw().expect("checked by applies");
    let len = g.n * g.o * oh * ow;
    let lines = (BLOCK / (ow * g.o)).clamp(1, oh);
    let blocks: Vec<(usize, Range<usize>)> = (0..g.n)
        .flat_map(|s| {
            (0..oh)
                .step_by(lines)
                .map(move |y| (s, y..(y + lines).min(oh)))
        })
        .collect();
    if let Some(b) = bias {
        assert_eq!(b.len(), g.o, "conv2d bias length");
    }
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = Shared(out.as_mut_ptr());
    blocks.into_par_iter().for_each(|(s, lines)| {
        // SAFETY: `out` has room for `len` values; this block writes
        // exactly outputs `[s, 0..O, lines, 0..OW]` (below), which no
        // other block writes.
        unsafe { block(g, x, packed, bias, s, lines, dst.get()) }
    });
    // SAFETY: the blocks cover every `(s, y)`, and each writes every
    // output of its lines: all `O/NR` panels by all vectors of 16 pixels
    // of each line (`OW` is a multiple of 16, `O` of `NR`).
    unsafe { out.set_len(len) };
    out
}

/// Output lines `lines` of sample `s`, all channels, into `out`
/// (`[N, O, OH, OW]`).
///
/// # Safety
/// `out` has room for `g`'s whole output, and nothing else accesses
/// these outputs meanwhile.
unsafe fn block(
    g: &Geometry,
    x: &[f32],
    packed: &[f32],
    bias: Option<&[f32]>,
    s: usize,
    lines: Range<usize>,
    out: *mut f32,
) {
    let [oh, ow] = g.out_hw().expect("checked by applies");
    let [kh, kw] = g.k;
    let [ph, pw] = g.padding;
    let wp = g.w + 2 * pw;
    let rows = lines.len() + kh - 1;
    let plane = rows * wp;
    // The padded input lines of the block, every channel: padded line `r`
    // is input line `lines.start + r − ph` (zeros outside the image).
    let mut pad = Scratch::take(g.c * plane);
    let x_s = &x[s * g.c * g.h * g.w..][..g.c * g.h * g.w];
    for (c, dst) in pad.chunks_exact_mut(plane).enumerate() {
        for (r, line) in dst.chunks_exact_mut(wp).enumerate() {
            let iy = (lines.start + r).wrapping_sub(ph);
            if iy < g.h {
                line[..pw].fill(0.0);
                line[pw..pw + g.w].copy_from_slice(&x_s[(c * g.h + iy) * g.w..][..g.w]);
                line[pw + g.w..].fill(0.0);
            } else {
                line.fill(0.0);
            }
        }
    }
    let ckk = g.c * kh * kw;
    let offsets: Vec<isize> = (0..ckk)
        .map(|k| {
            let (c, ki, kj) = (k / (kh * kw), (k / kw) % kh, k % kw);
            (c * plane + ki * wp + kj) as isize
        })
        .collect();
    // Each vector: its base in `pad`, its first output's index in `out`.
    let vectors: Vec<(usize, usize)> = lines
        .clone()
        .flat_map(|y| {
            (0..ow).step_by(LANES).map(move |x0| {
                let at = (y - lines.start) * wp + x0;
                (at, (s * g.o * oh + y) * ow + x0)
            })
        })
        .collect();
    // The farthest value a vector reads, inside `pad`.
    let last = vectors.last().map_or(0, |v| v.0) + offsets.last().map_or(0, |&o| o as usize);
    assert!(last + LANES <= pad.len(), "padded input bounds");
    let ohw = oh * ow;
    let panels = g.o / NR;
    for k0 in (0..ckk).step_by(KC) {
        let ks = k0..(k0 + KC).min(ckk);
        for group in vectors.chunks(MV) {
            for p in 0..panels {
                let b = &packed[(p * ckk + ks.start) * NR..][..ks.len() * NR];
                let start = match (k0, bias) {
                    (0, Some(bias)) => Start::Bias(&bias[p * NR..][..NR]),
                    (0, None) => Start::Zero,
                    _ => Start::Load,
                };
                // SAFETY: the vectors' reads stay inside `pad` (asserted
                // above); their outputs, `NR` rows `ohw` apart from
                // channel `p·NR`, lie inside `out` and in this block.
                unsafe {
                    let a = |i: usize| pad.as_ptr().add(group[i].0);
                    let o = |i: usize| out.add(group[i].1 + p * NR * ohw);
                    let offs = &offsets[ks.clone()];
                    match group.len() {
                        3 => tile::<3>([a(0), a(1), a(2)], offs, b, [o(0), o(1), o(2)], ohw, start),
                        2 => tile::<2>([a(0), a(1)], offs, b, [o(0), o(1)], ohw, start),
                        _ => tile::<1>([a(0)], offs, b, [o(0)], ohw, start),
                    }
                }
            }
        }
    }
}

/// What a tile's sums start from.
#[derive(Clone, Copy)]
enum Start<'a> {
    Zero,
    /// The panel's `NR` bias values.
    Bias(&'a [f32]),
    /// The outputs, as an earlier pass left them.
    Load,
}

/// `out[v][j·stride ..][..16] = start + Σ_k b[k·NR + j] · a[v][offs[k] ..][..16]`
/// for the tile's `V` vectors and `NR` channels.
///
/// # Safety
/// Every `a[v] + offs[k] .. + 16` is readable, every `out[v] + j·stride
/// .. + 16` writable (and readable with [`Start::Load`]), `b` holds
/// `offs.len()·NR` values, and the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile<const V: usize>(
    a: [*const f32; V],
    offs: &[isize],
    b: &[f32],
    out: [*mut f32; V],
    stride: usize,
    start: Start,
) {
    use std::arch::x86_64::*;
    debug_assert_eq!(b.len(), offs.len() * NR);
    // SAFETY: the caller's contract covers every pointer used here.
    // (Index loops over constant bounds: they unroll, and the sums stay
    // in registers.)
    #[allow(clippy::needless_range_loop)]
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); NR]; V];
        match start {
            Start::Zero => {}
            Start::Bias(bias) => {
                let bias: &[f32; NR] = bias.try_into().expect("NR bias values");
                for v in 0..V {
                    for j in 0..NR {
                        acc[v][j] = _mm512_set1_ps(bias[j]);
                    }
                }
            }
            Start::Load => {
                for v in 0..V {
                    for j in 0..NR {
                        acc[v][j] = _mm512_loadu_ps(out[v].add(j * stride));
                    }
                }
            }
        }
        let (b, _) = b.as_chunks::<NR>();
        for (&off, bk) in offs.iter().zip(b) {
            let mut av = [_mm512_setzero_ps(); V];
            for v in 0..V {
                av[v] = _mm512_loadu_ps(a[v].offset(off));
            }
            for j in 0..NR {
                let w = _mm512_set1_ps(bk[j]);
                for v in 0..V {
                    acc[v][j] = _mm512_fmadd_ps(av[v], w, acc[v][j]);
                }
            }
        }
        for v in 0..V {
            for j in 0..NR {
                _mm512_storeu_ps(out[v].add(j * stride), acc[v][j]);
            }
        }
    }
}

/// Never called: [`applies`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile<const V: usize>(
    _: [*const f32; V],
    _: &[isize],
    _: &[f32],
    _: [*mut f32; V],
    _: usize,
    _: Start,
) {
    unreachable!("the direct convolution needs AVX-512F")
}
