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
//! the input gradient `col2im(Wᵀ · dY_n)`. A 1×1 convolution with stride 1
//! and no padding skips the column matrix: `x_n` is already `[C, H·W]`.

use rayon::prelude::*;

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

/// A matrix view for [`gemm`]: element `(i, j)` at `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        View {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    fn t(self) -> Self {
        View {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Whether every element lies inside `data`.
    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst[m, n] (+)= a[m, k] · b[k, n]` with `dst` row-major; `accumulate`
/// adds to what `dst` holds.
fn gemm(dst: &mut [f32], a: View, b: View, accumulate: bool, threads: usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(
        b.rows == k && a.fits() && b.fits() && dst.len() >= m * n,
        "gemm operands"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every index of the three views inside
    // their slices; `dst` is exclusively borrowed and does not alias a or b.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
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

/// One sample's column matrix `[C·KH·KW, OH·OW]` into `col`.
fn im2col(g: &Geometry, x: &[f32], col: &mut [f32]) {
    let [oh, ow] = g.oh_ow();
    let [kh, kw] = g.k;
    let [sh, sw] = g.stride;
    let [ph, pw] = g.padding;
    let rows = col.chunks_exact_mut(oh * ow);
    for (r, row) in rows.enumerate().take(g.ckk()) {
        let (c, ki, kj) = (r / (kh * kw), (r / kw) % kh, r % kw);
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        let (ylo, yhi) = valid(oh, g.h, sh, ki, ph);
        let (xlo, xhi) = valid(ow, g.w, sw, kj, pw);
        for (oy, line) in row.chunks_exact_mut(ow).enumerate() {
            if oy < ylo || oy >= yhi || xlo >= xhi {
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

/// Adds one sample's column matrix back onto its input positions:
/// `dx[c, iy, ix] += col[(c, ki, kj), (oy, ox)]` (the adjoint of [`im2col`]).
fn col2im(g: &Geometry, col: &[f32], dx: &mut [f32]) {
    let [oh, ow] = g.oh_ow();
    let [kh, kw] = g.k;
    let [sh, sw] = g.stride;
    let [ph, pw] = g.padding;
    dx.fill(0.0);
    for (r, row) in col.chunks_exact(oh * ow).enumerate().take(g.ckk()) {
        let (c, ki, kj) = (r / (kh * kw), (r / kw) % kh, r % kw);
        let plane = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        let (ylo, yhi) = valid(oh, g.h, sh, ki, ph);
        let (xlo, xhi) = valid(ow, g.w, sw, kj, pw);
        if xlo >= xhi {
            continue;
        }
        for oy in ylo..yhi {
            let line = &row[oy * ow..][xlo..xhi];
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

/// How to spread `n` samples over `threads`: across samples (each GEMM on
/// one thread) when that balances, else one sample at a time with the
/// GEMM threaded.
fn across_samples(n: usize, threads: usize) -> bool {
    threads > 1 && (n % threads == 0 || n >= 4 * threads)
}

/// Forward: `[N, O, OH, OW]` from `x` `[N, C, H, W]`, `weight` `[O, C, KH, KW]`
/// and an optional `bias` `[O]`.
pub fn forward(g: &Geometry, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let (ohw, ckk) = (g.ohw(), g.ckk());
    assert!(
        x.len() == g.n * g.chw() && weight.len() == g.o * ckk,
        "conv2d forward operands"
    );
    let mut out = vec![0.0f32; g.n * g.o * ohw];
    if ohw == 0 || g.o == 0 {
        return out;
    }
    let threads = rayon::current_num_threads();
    let wv = View::row_major(weight, g.o, ckk);
    let one = |n: usize, out_n: &mut [f32], col: &mut Vec<f32>, gemm_threads: usize| {
        let x_n = &x[n * g.chw()..(n + 1) * g.chw()];
        let rhs = if g.pointwise() {
            View::row_major(x_n, ckk, ohw)
        } else {
            col.resize(ckk * ohw, 0.0);
            im2col(g, x_n, col);
            View::row_major(col, ckk, ohw)
        };
        if let Some(b) = bias {
            for (row, &v) in out_n.chunks_exact_mut(ohw).zip(b) {
                row.fill(v);
            }
        }
        gemm(out_n, wv, rhs, bias.is_some(), gemm_threads);
    };
    if across_samples(g.n, threads) {
        out.par_chunks_exact_mut(g.o * ohw)
            .enumerate()
            .for_each_init(Vec::new, |col, (n, out_n)| one(n, out_n, col, 1));
    } else {
        let mut col = Vec::new();
        for (n, out_n) in out.chunks_exact_mut(g.o * ohw).enumerate() {
            one(n, out_n, &mut col, threads);
        }
    }
    out
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

/// Backward of [`forward`].
pub fn backward(g: &Geometry, x: &[f32], weight: &[f32], dy: &[f32], want: Wanted) -> Grads {
    let (ohw, ckk, chw) = (g.ohw(), g.ckk(), g.chw());
    assert!(
        x.len() == g.n * chw && weight.len() == g.o * ckk && dy.len() == g.n * g.o * ohw,
        "conv2d backward operands"
    );
    let threads = rayon::current_num_threads();
    let wt = View::row_major(weight, g.o, ckk).t();
    let mut dx = want.x.then(|| vec![0.0f32; g.n * chw]);
    // One task per chunk of samples: its own column buffer and its own
    // weight-gradient partial, summed afterwards in chunk order.
    let chunks = if across_samples(g.n, threads) {
        threads.min(g.n)
    } else {
        1
    };
    let gemm_threads = if chunks == 1 { threads } else { 1 };
    let per = g.n.div_ceil(chunks.max(1)).max(1);
    let dx_parts: Vec<Option<&mut [f32]>> = match dx.as_mut() {
        Some(d) => d.chunks_mut(per * chw).map(Some).collect(),
        None => (0..g.n.div_ceil(per)).map(|_| None).collect(),
    };
    let task = |(ci, mut dx_part): (usize, Option<&mut [f32]>)| -> Option<Vec<f32>> {
        let mut dw = want.weight.then(|| vec![0.0f32; g.o * ckk]);
        let mut col = Vec::new();
        let first = ci * per;
        for n in first..(first + per).min(g.n) {
            let x_n = &x[n * chw..(n + 1) * chw];
            let dy_n = View::row_major(&dy[n * g.o * ohw..(n + 1) * g.o * ohw], g.o, ohw);
            if let Some(dw) = dw.as_mut() {
                let cols = if g.pointwise() {
                    View::row_major(x_n, ckk, ohw)
                } else {
                    col.resize(ckk * ohw, 0.0);
                    im2col(g, x_n, &mut col);
                    View::row_major(&col, ckk, ohw)
                };
                gemm(dw, dy_n, cols.t(), true, gemm_threads);
            }
            if let Some(dx_part) = dx_part.as_deref_mut() {
                let dx_n = &mut dx_part[(n - first) * chw..(n - first + 1) * chw];
                if g.pointwise() {
                    gemm(dx_n, wt, dy_n, false, gemm_threads);
                } else {
                    col.resize(ckk * ohw, 0.0);
                    gemm(&mut col, wt, dy_n, false, gemm_threads);
                    col2im(g, &col, dx_n);
                }
            }
        }
        dw
    };
    let parts: Vec<Option<Vec<f32>>> = if chunks > 1 {
        dx_parts.into_par_iter().enumerate().map(task).collect()
    } else {
        dx_parts.into_iter().enumerate().map(task).collect()
    };
    let dweight = want.weight.then(|| {
        let mut sum = vec![0.0f32; g.o * ckk];
        for part in parts.into_iter().flatten() {
            sum.iter_mut().zip(&part).for_each(|(s, p)| *s += p);
        }
        sum
    });
    let dbias = want.bias.then(|| {
        let mut sum = vec![0.0f32; g.o];
        for dy_n in dy.chunks_exact(g.o * ohw.max(1)) {
            for (s, row) in sum.iter_mut().zip(dy_n.chunks_exact(ohw.max(1))) {
                *s += row.iter().sum::<f32>();
            }
        }
        sum
    });
    Grads {
        x: dx,
        weight: dweight,
        bias: dbias,
    }
}

#[cfg(test)]
#[path = "conv_tests.rs"]
mod tests;
