//! Stride-1 convolution as an implicit GEMM on AVX-512: no column matrix.
//!
//! With stride 1, output line `y` of a sample reads input lines
//! `y + ki − ph`, and its pixels `x..x + 16` read input pixels
//! `x + kj − pw ..` of them: in an input zero-padded by `(ph, pw)`, a
//! vector of 16 consecutive output pixels of one line is, for each
//! `(c, ki, kj)`, 16 consecutive padded input values at a fixed offset
//! from the vector's base ([`padded`]). So `out[o, pixels] = Σ_k W[o, k] ·
//! A[k, pixels]` is a GEMM whose right operand is read in place from the
//! padded input (one load per `k` and vector), with no im2col written and
//! no packing of it again by the GEMM; only the weights are packed, once
//! per call, as `[O/NR][K][NR]` panels whose values the tile broadcasts.
//! Lines narrower than 16 (8×8 and 4×4 images) take the input as `KW`
//! copies shifted by each `kj` instead ([`shifted`]), in which 16
//! consecutive outputs in raster order, across lines, read 16 consecutive
//! values.
//!
//! The tile holds [`MV`] vectors by [`NR`] output channels in 24
//! registers, over a pass of [`KC`] values of `k`; the bias, or zero,
//! starts the sums. Every output is summed over `k = (c, ki, kj)` in
//! order, one product at a time, the same on every run and thread count.
//! The output is cut into blocks of about [`BLOCK`] values ([`blocks`]):
//! lines of one sample, or several small samples, whose input is laid out
//! together so that it stays in cache; the blocks are spread over rayon's
//! threads.
//!
//! It applies where the CPU has AVX-512F, the stride is 1, the kernel is
//! not 1×1, the output holds a multiple of 16 pixels, the output channels
//! a multiple of [`NR`] and the padding is smaller than the kernel
//! ([`applies`]); [`super::conv`] uses its column-matrix path elsewhere.
//! The input gradient of such a convolution is one too: a stride-1
//! convolution of the output gradient with the weights flipped and
//! transposed, padded by `k − 1 − p` ([`input_grad`]). The weight gradient
//! of a 3×3 one reads the same layout ([`weight`]).

use super::conv::Geometry;
use super::scratch::Scratch;
use rayon::prelude::*;
use std::ops::Range;

mod weight;
#[cfg(target_arch = "x86_64")]
pub(super) use weight::add_rows;
pub(super) use weight::{applies as weight_grad_applies, weight_grad};

/// Output channels of a tile (the weight values it broadcasts per `k`).
pub(super) const NR: usize = 8;
/// Vectors of 16 output pixels in a tile.
const MV: usize = 3;
/// Values of `k` per pass over a block's tiles (the tile's sums are
/// stored and taken up again between passes, exactly).
const KC: usize = if cfg!(test) { 7 } else { 576 };
/// Outputs of a line block, about (all its channels).
const BLOCK: usize = if cfg!(test) { 1 << 10 } else { 1 << 15 };
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
        && oh * ow > 0
        && (oh * ow).is_multiple_of(LANES)
        && g.o.is_multiple_of(NR)
        && g.n * g.c > 0
        && available()
}

#[cfg(target_arch = "x86_64")]
pub(super) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) fn available() -> bool {
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
    let packed = pack(g.o, ckk, |o, row| {
        row.copy_from_slice(&weight[o * ckk..][..ckk]);
    });
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
    let packed = pack(g.c, g.o * kk, |c, row| {
        for (o, taps) in row.chunks_exact_mut(kk).enumerate() {
            let w = &weight[(o * g.c + c) * kk..][..kk];
            for (t, v) in taps.iter_mut().zip(w.iter().rev()) {
                *t = *v;
            }
        }
    });
    run(&t, dy, &packed, None)
}

/// `f` on up to `threads` shares of `items`, each a run of consecutive
/// items, in order: the per-thread parts the weight gradients (this
/// kernel's and Winograd's) sum in order, so that a result depends on the
/// thread count alone. No shares for no items.
pub(super) fn in_shares<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&[T]) -> R + Sync + Send,
) -> Vec<R> {
    let shares = threads.min(items.len()).max(1);
    items
        .par_chunks(items.len().div_ceil(shares).max(1))
        .map(f)
        .collect()
}

/// `[rows/NR][cols][NR]`: panel `p`, row `k`, lane `j` holds value `k` of
/// row `p·NR + j`, which `row(r, values)` writes.
fn pack(rows: usize, cols: usize, row: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * cols];
    out.par_chunks_mut(cols * NR)
        .enumerate()
        .for_each(|(p, panel)| {
            let mut values = vec![0.0f32; cols];
            for j in 0..NR {
                row(p * NR + j, &mut values);
                for (lanes, &v) in panel.chunks_exact_mut(NR).zip(&values) {
                    lanes[j] = v;
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

/// A unit of work: output lines `lines` of samples `samples`, every
/// channel.
struct Block {
    samples: Range<usize>,
    lines: Range<usize>,
}

/// The blocks of `g`'s output: whole samples, several to a block, where a
/// sample's output is small (at most one block per thread's share of the
/// batch, so that every thread has work), else blocks of lines of one
/// sample; each about [`BLOCK`] outputs, and a whole number of vectors.
fn blocks(g: &Geometry, threads: usize) -> Vec<Block> {
    let [oh, ow] = g.out_hw().expect("checked by applies");
    let per_sample = g.o * oh * ow;
    if per_sample <= BLOCK {
        let per = (BLOCK / per_sample).clamp(1, g.n.div_ceil(threads.max(1)));
        return (0..g.n)
            .step_by(per)
            .map(|s| Block {
                samples: s..(s + per).min(g.n),
                lines: 0..oh,
            })
            .collect();
    }
    // Lines in a whole number of vectors: a multiple of 16 / gcd(OW, 16).
    let unit = LANES / gcd(ow, LANES);
    let lines = (BLOCK / (ow * g.o)).max(1).next_multiple_of(unit).min(oh);
    (0..g.n)
        .flat_map(|s| {
            (0..oh).step_by(lines).map(move |y| Block {
                samples: s..s + 1,
                lines: y..(y + lines).min(oh),
            })
        })
        .collect()
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The convolution `g` of `x` by the packed weights, bias added.
fn run(g: &Geometry, x: &[f32], packed: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let [oh, ow] = g.out_hw().expect("checked by applies");
    let len = g.n * g.o * oh * ow;
    if let Some(b) = bias {
        assert_eq!(b.len(), g.o, "conv2d bias length");
    }
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = Shared(out.as_mut_ptr());
    blocks(g, rayon::current_num_threads())
        .into_par_iter()
        .for_each(|b| {
            // SAFETY: `out` has room for `len` values; this block writes
            // exactly outputs `[samples, 0..O, lines, 0..OW]` (below),
            // which no other block writes.
            unsafe { block(g, x, packed, bias, &b, dst.get()) }
        });
    // SAFETY: the blocks cover every `(s, y)`, and each writes every
    // output of its lines: all `O/NR` panels by all vectors of 16
    // consecutive outputs of its lines (their count a multiple of 16, `O`
    // one of `NR`).
    unsafe { out.set_len(len) };
    out
}

/// A block's input laid out for the tiles: the values, the offset of each
/// `k = (c, ki, kj)` from a vector's base, and each vector's base with the
/// index of its first output in `out`.
struct Layout {
    values: Scratch,
    offsets: Vec<isize>,
    vectors: Vec<(usize, usize)>,
}

/// Block `b`'s input zero-padded, `[samples][C][rows][W + 2·pw]`, padded
/// line `r` being input line `lines.start + r − ph`. Output pixel
/// `(y, x)` reads padded line `y − lines.start + ki`, column `x + kj`, so
/// consecutive outputs of one line read consecutive padded values. The
/// vectors are runs of `run` outputs of a line (`run` divides `OW`): 16
/// for the forward's tiles, a whole narrow line for the weight gradient's.
fn padded(g: &Geometry, x: &[f32], b: &Block, run: usize) -> Layout {
    let [oh, ow] = g.out_hw().expect("checked by applies");
    let kh = g.k[0];
    let [ph, pw] = g.padding;
    let (samples, lines) = (b.samples.clone(), b.lines.clone());
    let wp = g.w + 2 * pw;
    let plane = (lines.len() + kh - 1) * wp;
    let sample = g.c * plane;
    let mut values = Scratch::take(samples.len() * sample);
    let hw = g.h * g.w;
    for (j, dst) in values.chunks_exact_mut(sample).enumerate() {
        let x_s = &x[(samples.start + j) * g.c * hw..][..g.c * hw];
        for (c, dst) in dst.chunks_exact_mut(plane).enumerate() {
            for (r, line) in dst.chunks_exact_mut(wp).enumerate() {
                let iy = (lines.start + r).wrapping_sub(ph);
                if iy < g.h {
                    line[..pw].fill(0.0);
                    line[pw..pw + g.w].copy_from_slice(&x_s[c * hw + iy * g.w..][..g.w]);
                    line[pw + g.w..].fill(0.0);
                } else {
                    line.fill(0.0);
                }
            }
        }
    }
    let offsets = taps(g, |c, ki, kj| c * plane + ki * wp + kj);
    let ohw = oh * ow;
    let vectors = samples
        .enumerate()
        .flat_map(|(j, s)| {
            lines.clone().flat_map(move |y| {
                (0..ow).step_by(run).map(move |x0| {
                    let at = j * sample + (y - lines.start) * wp + x0;
                    (at, s * g.o * ohw + y * ow + x0)
                })
            })
        })
        .collect();
    Layout {
        values,
        offsets,
        vectors,
    }
}

/// Block `b`'s input as `KW` shifted copies, `[KW][samples][C][rows][OW]`:
/// copy `kj`, line `r` (input line `lines.start + r − ph`), column `x`
/// holds input column `x + kj − pw` (zeros outside the image). Output
/// pixel `(y, x)` reads copy `kj`, line `y − lines.start + ki`, column
/// `x`, so 16 consecutive outputs of the block in raster order, across
/// lines however narrow, read 16 consecutive values of each copy.
fn shifted(g: &Geometry, x: &[f32], b: &Block) -> Layout {
    let [oh, ow] = g.out_hw().expect("checked by applies");
    let [kh, kw] = g.k;
    let [ph, pw] = g.padding;
    let (samples, lines) = (b.samples.clone(), b.lines.clone());
    let plane = (lines.len() + kh - 1) * ow;
    let sample = g.c * plane;
    let copy = samples.len() * sample;
    let mut values = Scratch::take(kw * copy);
    let hw = g.h * g.w;
    for (kj, dst) in values.chunks_exact_mut(copy).enumerate() {
        // Output columns whose input column `x + kj − pw` is inside.
        let xlo = pw.saturating_sub(kj).min(ow);
        let xhi = (g.w + pw).saturating_sub(kj).clamp(xlo, ow);
        for (j, dst) in dst.chunks_exact_mut(sample).enumerate() {
            let x_s = &x[(samples.start + j) * g.c * hw..][..g.c * hw];
            for (c, dst) in dst.chunks_exact_mut(plane).enumerate() {
                for (r, line) in dst.chunks_exact_mut(ow).enumerate() {
                    let iy = (lines.start + r).wrapping_sub(ph);
                    if iy >= g.h || xlo == xhi {
                        line.fill(0.0);
                        continue;
                    }
                    let src = &x_s[c * hw + iy * g.w..][..g.w];
                    line[..xlo].fill(0.0);
                    line[xlo..xhi].copy_from_slice(&src[xlo + kj - pw..xhi + kj - pw]);
                    line[xhi..].fill(0.0);
                }
            }
        }
    }
    let offsets = taps(g, |c, ki, kj| kj * copy + c * plane + ki * ow);
    let (ohw, span) = (oh * ow, lines.len() * ow);
    let vectors = samples
        .enumerate()
        .flat_map(|(j, s)| {
            (0..span)
                .step_by(LANES)
                .map(move |q| (j * sample + q, s * g.o * ohw + lines.start * ow + q))
        })
        .collect();
    Layout {
        values,
        offsets,
        vectors,
    }
}

/// `offset(c, ki, kj)` for every `k = (c, ki, kj)` in order.
fn taps(g: &Geometry, offset: impl Fn(usize, usize, usize) -> usize) -> Vec<isize> {
    let [kh, kw] = g.k;
    (0..g.c * kh * kw)
        .map(|k| offset(k / (kh * kw), (k / kw) % kh, k % kw) as isize)
        .collect()
}

/// Block `b`'s outputs into `out` (`[N, O, OH, OW]`): its input
/// [`padded`] where output lines are a multiple of 16 wide (the smaller
/// copy), else [`shifted`].
///
/// # Safety
/// `out` has room for `g`'s whole output, and nothing else accesses
/// these outputs meanwhile.
unsafe fn block(
    g: &Geometry,
    x: &[f32],
    packed: &[f32],
    bias: Option<&[f32]>,
    b: &Block,
    out: *mut f32,
) {
    let [oh, ow] = g.out_hw().expect("checked by applies");
    let Layout {
        values,
        offsets,
        vectors,
    } = if ow.is_multiple_of(LANES) {
        padded(g, x, b, LANES)
    } else {
        shifted(g, x, b)
    };
    let ohw = oh * ow;
    let ckk = offsets.len();
    assert!(
        (b.lines.len() * ow).is_multiple_of(LANES),
        "a whole number of vectors"
    );
    // The farthest value a vector reads, inside `shifted`.
    let last = vectors.last().map_or(0, |v| v.0) + offsets.last().map_or(0, |&o| o as usize);
    assert!(last + LANES <= values.len(), "block input bounds");
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
                // SAFETY: the vectors' reads stay inside `values`
                // (asserted above); their outputs, `NR` rows `ohw` apart
                // from channel `p·NR`, lie inside `out` and in this block.
                unsafe {
                    tiles(
                        group.len(),
                        |i| values.as_ptr().add(group[i].0),
                        &offsets[ks.clone()],
                        b,
                        |i| out.add(group[i].1 + p * NR * ohw),
                        ohw,
                        start,
                    )
                }
            }
        }
    }
}

/// `out[o, i] = Σ_k W[o, k] · a[k, i]` for `i < q`, an `O × K` matrix `W`
/// packed by [`pack`] and a `K × q` matrix `a` read in place (rows `rs`
/// apart), into the `O × q` matrix `out` (rows `rs` apart too), on the
/// calling thread: the tile of the convolutions as a plain GEMM (a 1×1
/// convolution of a `K`-channel image of `q` pixels). `q` is a multiple of
/// 16, `O` of [`NR`], `rs ≥ q`; AVX-512F. A row stride that is not a
/// multiple of 256 values keeps the rows the tile reads together from
/// sharing cache sets.
pub(super) fn panel_gemm(
    packed: &[f32],
    [o, k]: [usize; 2],
    a: &[f32],
    [q, rs]: [usize; 2],
    out: &mut [f32],
) {
    assert!(
        available()
            && q.is_multiple_of(LANES)
            && o.is_multiple_of(NR)
            && rs >= q
            && packed.len() == o * k
            && (k == 0 || a.len() >= (k - 1) * rs + q)
            && (o == 0 || out.len() >= (o - 1) * rs + q),
        "panel GEMM operands"
    );
    let offsets: Vec<isize> = (0..k).map(|c| (c * rs) as isize).collect();
    let vectors: Vec<usize> = (0..q).step_by(LANES).collect();
    let out = out.as_mut_ptr();
    for k0 in (0..k).step_by(KC) {
        let ks = k0..(k0 + KC).min(k);
        let start = if k0 == 0 { Start::Zero } else { Start::Load };
        for group in vectors.chunks(MV) {
            for p in 0..o / NR {
                let b = &packed[(p * k + ks.start) * NR..][..ks.len() * NR];
                // SAFETY: vector `v` reads `a[k·rs + v .. + 16]` for the
                // pass's `k`, inside `a` (`v + 16 ≤ q`, `k < K`); it writes
                // `out[(p·NR + j)·rs + v .. + 16]`, inside `out`, which
                // this call borrows exclusively.
                unsafe {
                    tiles(
                        group.len(),
                        |i| a.as_ptr().add(group[i] + ks.start * rs),
                        &offsets[..ks.len()],
                        b,
                        |i| out.add(p * NR * rs + group[i]),
                        rs,
                        start,
                    )
                }
            }
        }
    }
}

/// [`tile`] on a group of 1 to [`MV`] vectors: vector `i` reads from
/// `a(i)` and writes to `out(i)`.
///
/// # Safety
/// [`tile`]'s, for every vector of the group.
unsafe fn tiles(
    vectors: usize,
    a: impl Fn(usize) -> *const f32,
    offs: &[isize],
    b: &[f32],
    out: impl Fn(usize) -> *mut f32,
    stride: usize,
    start: Start,
) {
    // SAFETY: the caller's contract, vector by vector.
    unsafe {
        match vectors {
            3 => tile::<3>(
                [a(0), a(1), a(2)],
                offs,
                b,
                [out(0), out(1), out(2)],
                stride,
                start,
            ),
            2 => tile::<2>([a(0), a(1)], offs, b, [out(0), out(1)], stride, start),
            _ => tile::<1>([a(0)], offs, b, [out(0)], stride, start),
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
