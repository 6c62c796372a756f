//! 2-d convolution on f32 slices: forward, input-gradient, weight-gradient
//! and bias-gradient, each an im2col into one GEMM per sample (the `gemm`
//! crate's packed micro-kernels), the samples spread over rayon's threads.
//!
//! Layouts are PyTorch's and contiguous: `x` `[N, C, H, W]`, `weight`
//! `[O, C, KH, KW]`, output `[N, O, OH, OW]`. Groups and dilation are 1;
//! any stride and zero padding. The column matrix of one sample is
//! `[C·KH·KW, OH·OW]`, its row `(c, ki, kj)` holding
//! `x[c, oy·sh + ki − ph, ox·sw + kj − pw]` (zero outside the image), so
//! that forward is `W · col`, the weight gradient `Σ_n dY_n · col_nᵀ` and
//! the input gradient `col2im(Wᵀ · dY_n)`. The column matrix is built and
//! used a piece at a time (a slice of its rows, and for large images a
//! block of output lines: `pieces`), so that it stays in cache. A 1×1
//! convolution with stride 1 and no padding skips the column matrix:
//! `x_n` is already `[C, H·W]`.
//!
//! On CPUs with AVX-512, stride-1 convolutions (other than 1×1) go to
//! the `direct` module instead, which reads the padded input in place with
//! no column matrix: the forward, the input gradient (itself a stride-1
//! convolution) and, for 3×3 kernels, the weight gradient. 3×3 ones with
//! padding 1 on images 8 or 16 pixels wide or a multiple of 32 go to the
//! `winograd` module for the forward, the input gradient and (with output
//! channels in 32s) the weight gradient: F(2×2, 3×3), 4 multiply-adds per
//! output and channel pair instead of 9. The functions here choose per
//! gradient ([`forward_with`] and [`backward_with`] can leave Winograd's
//! algorithm out); the tests run every path.

use super::direct;
use super::gemm::{View, gemm, gemm_rows, transpose_into};
use super::scratch::{Output, Pending, Scratch};
use super::simd::wide;
use super::winograd;
use rayon::prelude::*;
use std::ops::Range;

mod sums;
use sums::{bias_grad, summed_transpose};

/// The shape of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Batch.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub o: usize,
    /// Kernel height and width.
    pub k: [usize; 2],
    /// Stride (height, width).
    pub stride: [usize; 2],
    /// Zero padding (height, width), the same on both sides.
    pub padding: [usize; 2],
}

impl Geometry {
    /// Output height and width, or `None` when the kernel does not fit the
    /// padded input or a stride is zero.
    pub fn out_hw(&self) -> Option<[usize; 2]> {
        let side = |len: usize, d: usize| {
            let padded = len + 2 * self.padding[d];
            (self.stride[d] > 0 && self.k[d] > 0 && padded >= self.k[d])
                .then(|| (padded - self.k[d]) / self.stride[d] + 1)
        };
        Some([side(self.h, 0)?, side(self.w, 1)?])
    }

    fn oh_ow(&self) -> [usize; 2] {
        self.out_hw().unwrap_or([0, 0])
    }

    fn ohw(&self) -> usize {
        let [oh, ow] = self.oh_ow();
        oh * ow
    }

    fn ckk(&self) -> usize {
        self.c * self.k[0] * self.k[1]
    }

    fn chw(&self) -> usize {
        self.c * self.h * self.w
    }

    /// A 1×1 kernel, stride 1, no padding: the input is its own column matrix.
    fn pointwise(&self) -> bool {
        self.k == [1, 1] && self.stride == [1, 1] && self.padding == [0, 0]
    }
}

/// The valid output range `[lo, hi)` along one axis for kernel offset `kk`:
/// the outputs whose input index `o·s + kk − p` lies in `[0, len)`.
fn valid(out: usize, len: usize, s: usize, kk: usize, p: usize) -> (usize, usize) {
    // o·s + kk ≥ p  ⇔  o ≥ ceil((p − kk) / s)
    let lo = if kk >= p { 0 } else { (p - kk).div_ceil(s) };
    // o·s + kk − p ≤ len − 1  ⇔  o ≤ (len − 1 + p − kk) / s
    let hi = if len + p > kk {
        ((len - 1 + p - kk) / s + 1).min(out)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// Rows `rows` of one sample's column matrix `[C·KH·KW, OH·OW]`, output
/// lines `lines` of them, into `col`: row `r` at
/// `col[(r − rows.start)·ld + off ..][.. lines.len()·OW]` (several samples
/// side by side, or a block of lines, share rows of length `ld`).
#[inline(always)]
fn im2col(
    g: &Geometry,
    x: &[f32],
    [ld, off]: [usize; 2],
    rows: Range<usize>,
    lines: Range<usize>,
    col: &mut [f32],
) {
    let [oh, ow] = g.oh_ow();
    let [kh, kw] = g.k;
    let [sh, sw] = g.stride;
    let [ph, pw] = g.padding;
    let y0 = lines.start;
    // Stride 1 with outputs as wide as the input ("same" padding): a row
    // of the column matrix is the input plane shifted by
    // (ki − ph)·W + (kj − pw), so it is one copy, and then the values that
    // wrapped around a line end, and the lines outside the image, are zeroed.
    let shifted = sh == 1 && sw == 1 && ow == g.w;
    for r in rows.clone() {
        let seg = &mut col[(r - rows.start) * ld + off..][..lines.len() * ow];
        let (c, ki, kj) = (r / (kh * kw), (r / kw) % kh, r % kw);
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        let (ylo, yhi) = valid(oh, g.h, sh, ki, ph);
        let (ylo, yhi) = (ylo.max(y0), yhi.min(lines.end));
        let (xlo, xhi) = valid(ow, g.w, sw, kj, pw);
        if ylo >= yhi || xlo >= xhi {
            seg.fill(0.0);
            continue;
        }
        if shifted {
            let (start, end) = ((ylo - y0) * ow + xlo, (yhi - 1 - y0) * ow + xhi);
            let src = (ylo + ki - ph) * g.w + xlo + kj - pw;
            seg[start..end].copy_from_slice(&plane[src..src + (end - start)]);
            seg[..start].fill(0.0);
            seg[end..].fill(0.0);
            for line in seg[(ylo - y0) * ow..(yhi - y0) * ow].chunks_exact_mut(ow) {
                line[..xlo].fill(0.0);
                line[xhi..].fill(0.0);
            }
            continue;
        }
        for (oy, line) in lines.clone().zip(seg.chunks_exact_mut(ow)) {
            if oy < ylo || oy >= yhi {
                line.fill(0.0);
                continue;
            }
            let src = &plane[(oy * sh + ki - ph) * g.w..][..g.w];
            line[..xlo].fill(0.0);
            line[xhi..].fill(0.0);
            let ix0 = xlo * sw + kj - pw;
            if sw == 1 {
                line[xlo..xhi].copy_from_slice(&src[ix0..ix0 + (xhi - xlo)]);
            } else {
                for (d, v) in line[xlo..xhi].iter_mut().enumerate() {
                    *v = src[ix0 + d * sw];
                }
            }
        }
    }
}

/// Adds rows `rows`, lines `lines`, of one sample's column matrix (laid
/// out as in [`im2col`]) onto their input positions,
/// `dx[c, iy, ix] += Σ col[(c, ki, kj), (oy, ox)]` (the adjoint of
/// [`im2col`]; values of `col` that no input position receives may be
/// zeroed).
#[inline(always)]
fn col2im(
    g: &Geometry,
    col: &mut [f32],
    [ld, off]: [usize; 2],
    rows: Range<usize>,
    lines: Range<usize>,
    dx: &mut [f32],
) {
    let [oh, ow] = g.oh_ow();
    let [kh, kw] = g.k;
    let [sh, sw] = g.stride;
    let [ph, pw] = g.padding;
    let y0 = lines.start;
    // As in `im2col`: with stride 1 and "same" width, a row adds onto the
    // plane shifted, in one pass, once the values of positions that wrap
    // around a line end (which no input receives) are zeroed in `col`.
    let shifted = sh == 1 && sw == 1 && ow == g.w;
    for r in rows.clone() {
        let seg = &mut col[(r - rows.start) * ld + off..][..lines.len() * ow];
        let (c, ki, kj) = (r / (kh * kw), (r / kw) % kh, r % kw);
        let plane = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        let (ylo, yhi) = valid(oh, g.h, sh, ki, ph);
        let (ylo, yhi) = (ylo.max(y0), yhi.min(lines.end));
        let (xlo, xhi) = valid(ow, g.w, sw, kj, pw);
        if xlo >= xhi || ylo >= yhi {
            continue;
        }
        if shifted {
            for line in seg[(ylo - y0) * ow..(yhi - y0) * ow].chunks_exact_mut(ow) {
                line[..xlo].fill(0.0);
                line[xhi..].fill(0.0);
            }
            let (start, end) = ((ylo - y0) * ow + xlo, (yhi - 1 - y0) * ow + xhi);
            let dst = (ylo + ki - ph) * g.w + xlo + kj - pw;
            for (d, v) in plane[dst..dst + (end - start)]
                .iter_mut()
                .zip(&seg[start..end])
            {
                *d += v;
            }
            continue;
        }
        for oy in ylo..yhi {
            let line = &seg[(oy - y0) * ow..][xlo..xhi];
            let dst = &mut plane[(oy * sh + ki - ph) * g.w..][..g.w];
            let ix0 = xlo * sw + kj - pw;
            if sw == 1 {
                for (d, v) in dst[ix0..ix0 + line.len()].iter_mut().zip(line) {
                    *d += v;
                }
            } else {
                for (j, v) in line.iter().enumerate() {
                    dst[ix0 + j * sw] += v;
                }
            }
        }
    }
}

/// Columns a GEMM should have at least for its packing to pay off: a
/// layer with small images puts several samples side by side.
const MIN_COLUMNS: usize = 512;

/// How the samples are split: `(per, tasks, gemm_threads)`, tasks of `per`
/// consecutive samples each (the last may be shorter), run in parallel
/// when there are at least as many as threads (each GEMM then on one
/// thread), else one after the other with the GEMM threaded.
fn split(g: &Geometry, threads: usize) -> (usize, usize, usize) {
    let (n, ohw) = (g.n, g.ohw());
    // A pointwise convolution's GEMM reads the input in place, one sample
    // at a time, unless its images are small enough to need the copy.
    let min = if g.pointwise() {
        MIN_COLUMNS / 4
    } else {
        MIN_COLUMNS
    };
    let want = min.div_ceil(ohw.max(1)).max(1);
    let per = if threads > 1 && n >= threads {
        want.min(n / threads).max(1)
    } else {
        want.min(n).max(1)
    };
    let tasks = n.div_ceil(per);
    let gemm_threads = if threads > 1 && tasks >= threads {
        1
    } else {
        threads
    };
    (per, tasks, gemm_threads)
}

/// A piece of a task's column matrix: rows `rows`, output lines `lines`
/// of each of the task's samples.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    rows: Range<usize>,
    lines: Range<usize>,
}

impl Piece {
    /// Columns of the piece for `count` samples side by side.
    fn width(&self, g: &Geometry, count: usize) -> usize {
        count * self.lines.len() * g.oh_ow()[1]
    }
}

/// Values of the column matrix per piece: 512 KiB, which stays in a
/// core's L2 cache between the im2col that writes a piece and the GEMM
/// that packs it (the whole matrix, several MiB at 32², went out to
/// memory and back; alternating runs put the 32² DDIM step at 0.319–0.329
/// s with slices against 0.342–0.365 s without).
/// Tests use small pieces, so that every case runs several.
const SLICE: usize = if cfg!(test) { 1 << 8 } else { 1 << 17 };

/// Rows of a piece at most when a task has one sample.
const DEPTH: usize = if cfg!(test) { 16 } else { 256 };

/// `len` cut into about even parts of at most `most` (at least 1 each).
fn even(len: usize, most: usize) -> usize {
    len.div_ceil(len.div_ceil(most.max(1)).max(1)).max(1)
}

/// The pieces of a task of `count` samples, line blocks outside, row
/// slices inside, each about [`SLICE`] values at most; with the values
/// the largest holds. Several samples (small images) are cut in row
/// slices only (at least 16 rows). One sample is cut in row slices of at
/// most [`DEPTH`] rows and blocks of lines that fill [`SLICE`] with them:
/// row slices alone were 32 rows deep at 64×64, and each GEMM that
/// shallow rewrote the whole output (3×3 128→64 at 64×64, forward +
/// backward: 160 ms in pieces against 180 ms in slices).
fn pieces(g: &Geometry, count: usize) -> (usize, Vec<Piece>) {
    let ([oh, ow], ckk) = (g.oh_ow(), g.ckk());
    let (rows, lines) = if count > 1 {
        (
            (SLICE / (count * oh * ow).max(1)).clamp(16, ckk.max(16)),
            oh,
        )
    } else {
        let rows = even(ckk, DEPTH);
        (rows, even(oh, SLICE / (rows * ow).max(1)))
    };
    let mut out = Vec::new();
    for y in (0..oh).step_by(lines.max(1)) {
        for r in (0..ckk).step_by(rows.max(1)) {
            out.push(Piece {
                rows: r..(r + rows).min(ckk),
                lines: y..(y + lines).min(oh),
            });
        }
    }
    let most = out
        .iter()
        .map(|p| p.rows.len() * p.width(g, count))
        .max()
        .unwrap_or(0);
    (most, out)
}

/// A piece of the column matrix of samples `first..first + count` side
/// by side, `[rows.len(), count·lines.len()·OW]`, into `col` (every value
/// written).
#[inline(always)]
fn columns(g: &Geometry, x: &[f32], first: usize, count: usize, piece: &Piece, col: &mut [f32]) {
    let (ohw, chw, ow) = (g.ohw(), g.chw(), g.oh_ow()[1]);
    let (rows, lines) = (piece.rows.clone(), piece.lines.clone());
    let (ld, seg) = (piece.width(g, count), lines.len() * ow);
    assert_eq!(col.len(), rows.len() * ld, "column matrix size");
    for j in 0..count {
        let x_n = &x[(first + j) * chw..(first + j + 1) * chw];
        if g.pointwise() {
            for (r, src) in x_n
                .chunks_exact(ohw)
                .enumerate()
                .take(rows.end)
                .skip(rows.start)
            {
                col[(r - rows.start) * ld + j * seg..][..seg]
                    .copy_from_slice(&src[lines.start * ow..lines.end * ow]);
            }
        } else {
            im2col(g, x_n, [ld, j * seg], rows.clone(), lines.clone(), col);
        }
    }
}

/// Forward: `[N, O, OH, OW]` from `x` `[N, C, H, W]`, `weight` `[O, C, KH, KW]`
/// and an optional `bias` `[O]`: Winograd's F(2×2, 3×3) where it applies
/// (3×3, stride 1, padding 1 on AVX-512, the `winograd` module), else the
/// direct kernel (stride 1 on AVX-512, the `direct` module), else the
/// column matrix.
pub fn forward(g: &Geometry, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    forward_with(g, x, weight, bias, true)
}

/// [`forward`], with Winograd's algorithm where it applies (`fast`) or
/// without it (the direct kernel, else the column matrix): the benchmark
/// `conv_direct` times both, the tests check both.
pub fn forward_with(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    fast: bool,
) -> Vec<f32> {
    if fast && winograd::applies(g) {
        return winograd::forward(g, x, weight, bias);
    }
    if direct::applies(g) {
        return direct::forward(g, x, weight, bias);
    }
    forward_columns(g, x, weight, bias)
}

/// [`forward`] through the column matrix.
fn forward_columns(g: &Geometry, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let (ohw, ckk) = (g.ohw(), g.ckk());
    assert!(
        x.len() == g.n * g.chw() && weight.len() == g.o * ckk,
        "conv2d forward operands"
    );
    if ohw == 0 || g.o == 0 {
        return Vec::new();
    }
    let mut out = Output::new(g.n * g.o * ohw);
    let (per, _, gemm_threads) = split(g, rayon::current_num_threads());
    let wv = View::row_major(weight, g.o, ckk);
    // Each task zero-fills its own part of the output (in its cache).
    let task = |(t, out_t): (usize, Pending)| {
        let out_t = out_t.zeroed();
        let count = out_t.len() / (g.o * ohw);
        let ld = count * ohw;
        // dst = W · col, a piece of col at a time: its rows (W's columns)
        // into its lines' columns of dst (rows `ld` apart).
        let product = |dst: &mut [f32], accumulate: bool| {
            if g.pointwise() && count == 1 {
                let rhs = View::row_major(&x[t * per * g.chw()..][..g.chw()], ckk, ohw);
                gemm(dst, wv, rhs, accumulate, gemm_threads);
                return;
            }
            let (most, pieces) = pieces(g, count);
            let mut col = Scratch::take(most);
            for piece in &pieces {
                let (rows, width) = (piece.rows.clone(), piece.width(g, count));
                let col = &mut col[..rows.len() * width];
                wide!(columns(g, x, t * per, count, piece, col));
                gemm_rows(
                    &mut dst[piece.lines.start * g.oh_ow()[1]..],
                    ld,
                    wv.cols_at(rows.start, rows.len()),
                    View::row_major(col, rows.len(), width),
                    accumulate || rows.start > 0,
                    gemm_threads,
                );
            }
        };
        if count == 1 {
            if let Some(b) = bias {
                for (row, &v) in out_t.chunks_exact_mut(ohw).zip(b) {
                    row.fill(v);
                }
            }
            product(out_t, bias.is_some());
            return;
        }
        // Several samples: [O, count·OH·OW], then each sample's rows to
        // their place with the bias.
        let mut tmp = Scratch::take(g.o * ld);
        product(&mut tmp, false);
        wide!({
            for (j, out_n) in out_t.chunks_exact_mut(g.o * ohw).enumerate() {
                for (o, row) in out_n.chunks_exact_mut(ohw).enumerate() {
                    let src = &tmp[o * ld + j * ohw..][..ohw];
                    let b = bias.map_or(0.0, |b| b[o]);
                    for (d, s) in row.iter_mut().zip(src) {
                        *d = s + b;
                    }
                }
            }
        });
    };
    let chunks = out.chunks(per * g.o * ohw).into_iter().enumerate();
    if gemm_threads == 1 {
        let chunks: Vec<_> = chunks.collect();
        chunks.into_par_iter().for_each(task);
    } else {
        chunks.for_each(task);
    }
    out.into_vec()
}

/// The gradients of [`forward`] from the output gradient `dy`
/// `[N, O, OH, OW]`: `(dx, dweight, dbias)`, each computed only when asked.
pub struct Grads {
    /// `[N, C, H, W]`.
    pub x: Option<Vec<f32>>,
    /// `[O, C, KH, KW]`.
    pub weight: Option<Vec<f32>>,
    /// `[O]`.
    pub bias: Option<Vec<f32>>,
}

/// Which gradients [`backward`] computes.
#[derive(Debug, Clone, Copy)]
pub struct Wanted {
    /// The input gradient.
    pub x: bool,
    /// The weight gradient.
    pub weight: bool,
    /// The bias gradient.
    pub bias: bool,
}

/// Backward of [`forward`]: the input gradient by Winograd's algorithm
/// or the direct kernel where they apply (it is a convolution too:
/// `winograd::input_grad`, `direct::input_grad`), the weight gradient by
/// `direct::weight_grad` where it applies, the rest through the column
/// matrix.
pub fn backward(g: &Geometry, x: &[f32], weight: &[f32], dy: &[f32], want: Wanted) -> Grads {
    backward_with(g, x, weight, dy, want, true)
}

/// [`backward`], with Winograd's algorithm where it applies (`fast`) or
/// without it, as [`forward_with`].
pub fn backward_with(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    want: Wanted,
    fast: bool,
) -> Grads {
    let dx = if !want.x {
        None
    } else if fast && winograd::applies(&winograd::transposed(g)) {
        Some(winograd::input_grad(g, weight, dy))
    } else {
        direct::transposed(g)
            .is_some_and(|t| direct::applies(&t))
            .then(|| direct::input_grad(g, weight, dy))
    };
    let dw = if !want.weight {
        None
    } else if fast && winograd::weight_grad_applies(g) {
        Some(winograd::weight_grad(g, x, dy))
    } else {
        direct::weight_grad_applies(g).then(|| direct::weight_grad(g, x, dy))
    };
    let dw = dw.map(|parts| summed_transpose(&parts, g.ckk(), g.o));
    let rest = Wanted {
        x: want.x && dx.is_none(),
        weight: want.weight && dw.is_none(),
        bias: false,
    };
    let cols = (rest.x || rest.weight).then(|| backward_columns(g, x, weight, dy, rest));
    let (cx, cw) = cols.map_or((None, None), |c| (c.x, c.weight));
    Grads {
        x: dx.or(cx),
        weight: dw.or(cw),
        bias: want.bias.then(|| bias_grad(g, dy)),
    }
}

/// [`backward`] through the column matrix.
fn backward_columns(g: &Geometry, x: &[f32], weight: &[f32], dy: &[f32], want: Wanted) -> Grads {
    let (ohw, ckk, chw) = (g.ohw(), g.ckk(), g.chw());
    assert!(
        x.len() == g.n * chw && weight.len() == g.o * ckk && dy.len() == g.n * g.o * ohw,
        "conv2d backward operands"
    );
    let (per, tasks, gemm_threads) = split(g, rayon::current_num_threads());
    // Wᵀ is copied once (the input gradient's GEMM then reads both
    // operands along rows, the `gemm` crate's fast layout); the weight
    // gradient is computed transposed, `dWᵀ = col · dYᵀ`, with dYᵀ copied
    // once per chunk of samples (below).
    let mut w_t = vec![0.0f32; ckk * g.o];
    transpose_into(View::row_major(weight, g.o, ckk), &mut w_t);
    let wt = View::row_major(&w_t, ckk, g.o);
    let mut dx = want.x.then(|| Output::new(g.n * chw));
    let dx_parts: Vec<Option<Pending>> = match dx.as_mut() {
        Some(d) => d.chunks(per * chw).into_iter().map(Some).collect(),
        None => (0..tasks).map(|_| None).collect(),
    };
    // One task per chunk of samples, with its own buffers; it adds its
    // chunk's dWᵀ onto `dw_t` (or writes it there, for the first chunk).
    let task = |t: usize, dx_part: Option<Pending>, dw_t: Option<&mut [f32]>, accumulate: bool| {
        // The task's part of dx, zero-filled here (in its cache).
        let dx_part = dx_part.map(Pending::zeroed);
        let first = t * per;
        let count = per.min(g.n - first);
        let ld = count * ohw;
        // The output gradient of the chunk as [O, count·OH·OW].
        let mut gathered = None;
        let dyc = if count == 1 {
            View::row_major(&dy[first * g.o * ohw..][..g.o * ohw], g.o, ohw)
        } else {
            let buf = gathered.insert(Scratch::take(g.o * ld));
            for j in 0..count {
                let dy_n = &dy[(first + j) * g.o * ohw..][..g.o * ohw];
                for (o, src) in dy_n.chunks_exact(ohw).enumerate() {
                    buf[o * ld + j * ohw..][..ohw].copy_from_slice(src);
                }
            }
            View::row_major(buf, g.o, ld)
        };
        if g.pointwise() && count == 1 {
            // The sample is its own column matrix: two GEMMs in place.
            let cols = View::row_major(&x[first * chw..][..chw], ckk, ohw);
            if let Some(dw_t) = dw_t {
                gemm(dw_t, cols, dyc.t(), accumulate, gemm_threads);
            }
            if let Some(dx_part) = dx_part {
                gemm(dx_part, wt, dyc, false, gemm_threads);
            }
            return;
        }
        // A piece of the column matrix at a time: its rows of
        // dWᵀ = col · dYᵀ (from its lines), then Wᵀ · dY over its rows and
        // lines added back onto dx (zero-filled above).
        let (mut dw_t, mut dx_part) = (dw_t, dx_part);
        let (most, pieces) = pieces(g, count);
        let mut col = Scratch::take(most);
        // dYᵀ copied once for all the pieces' weight-gradient GEMMs (as a
        // strided view, each GEMM packed it again: 8 % of the 64² step).
        let mut dy_t = Scratch::take(if dw_t.is_some() { ld * g.o } else { 0 });
        if dw_t.is_some() {
            wide!(transpose_into(dyc, &mut dy_t));
        }
        let dy_t = View::row_major(&dy_t, ld, g.o);
        let ow = g.oh_ow()[1];
        for piece in &pieces {
            let (rows, lines) = (piece.rows.clone(), piece.lines.clone());
            let (width, seg) = (piece.width(g, count), lines.len() * ow);
            let col = &mut col[..rows.len() * width];
            if let Some(dw_t) = dw_t.as_mut() {
                wide!(columns(g, x, first, count, piece, col));
                let cols = View::row_major(col, rows.len(), width);
                let dst = &mut dw_t[rows.start * g.o..rows.end * g.o];
                let dy_t = dy_t.rows_at(lines.start * ow, width);
                gemm(dst, cols, dy_t, accumulate || lines.start > 0, gemm_threads);
            }
            if let Some(dx_part) = dx_part.as_deref_mut() {
                let dy = dyc.cols_at(lines.start * ow, width);
                gemm(
                    col,
                    wt.rows_at(rows.start, rows.len()),
                    dy,
                    false,
                    gemm_threads,
                );
                wide!({
                    for (j, dx_n) in dx_part.chunks_exact_mut(chw).enumerate() {
                        if g.pointwise() {
                            for (r, dst) in dx_n
                                .chunks_exact_mut(ohw)
                                .enumerate()
                                .take(rows.end)
                                .skip(rows.start)
                            {
                                dst[lines.start * ow..lines.end * ow].copy_from_slice(
                                    &col[(r - rows.start) * width + j * seg..][..seg],
                                );
                            }
                        } else {
                            let at = [width, j * seg];
                            col2im(g, col, at, rows.clone(), lines.clone(), dx_n);
                        }
                    }
                });
            }
        }
    };
    // The chunks in one group per thread, consecutive chunks together:
    // each group sums its chunks' dWᵀ in one buffer, and the groups'
    // buffers are added in group order (the same order on every run with
    // the same thread count, whatever thread runs what).
    let groups = if gemm_threads == 1 {
        rayon::current_num_threads().clamp(1, tasks.max(1))
    } else {
        1
    };
    let mut grouped: Vec<Vec<(usize, Option<Pending>)>> = (0..groups).map(|_| Vec::new()).collect();
    for (t, part) in dx_parts.into_iter().enumerate() {
        grouped[t * groups / tasks].push((t, part));
    }
    let run_group = |group: Vec<(usize, Option<Pending>)>| -> Option<Vec<f32>> {
        let mut dw_t = want.weight.then(|| vec![0.0f32; ckk * g.o]);
        for (i, (t, dx_part)) in group.into_iter().enumerate() {
            task(t, dx_part, dw_t.as_deref_mut(), i > 0);
        }
        dw_t
    };
    let parts: Vec<Vec<f32>> = if groups > 1 {
        grouped.into_par_iter().map(run_group).collect::<Vec<_>>()
    } else {
        grouped.into_iter().map(run_group).collect::<Vec<_>>()
    }
    .into_iter()
    .flatten()
    .collect();
    let dweight = want.weight.then(|| summed_transpose(&parts, ckk, g.o));
    let dbias = want.bias.then(|| bias_grad(g, dy));
    Grads {
        x: dx.map(Output::into_vec),
        weight: dweight,
        bias: dbias,
    }
}

#[cfg(test)]
#[path = "conv_tests.rs"]
mod tests;
