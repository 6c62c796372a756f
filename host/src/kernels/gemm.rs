//! The `gemm` crate behind a bounds-checked view type: every GEMM of the
//! kernels goes through [`gemm_rows`].

/// A matrix view for [`gemm`]: element `(i, j)` at `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    pub(super) data: &'a [f32],
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) rs: usize,
    pub(super) cs: usize,
}

impl<'a> View<'a> {
    pub(super) fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        View {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transposed view (no copy: the GEMM packs it).
    pub(super) fn t(self) -> View<'a> {
        View {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Rows `first..first + count` of the view.
    pub(super) fn rows_at(self, first: usize, count: usize) -> View<'a> {
        View {
            data: &self.data[first * self.rs..],
            rows: count,
            ..self
        }
    }

    /// Columns `first..first + count` of the view.
    pub(super) fn cols_at(self, first: usize, count: usize) -> View<'a> {
        View {
            data: &self.data[first * self.cs..],
            cols: count,
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
pub(super) fn gemm(dst: &mut [f32], a: View, b: View, accumulate: bool, threads: usize) {
    gemm_rows(dst, b.cols, a, b, accumulate, threads)
}

/// [`gemm`] into a `dst` whose rows are `dst_rs` apart (`dst_rs ≥ n`).
pub(super) fn gemm_rows(
    dst: &mut [f32],
    dst_rs: usize,
    a: View,
    b: View,
    accumulate: bool,
    threads: usize,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(
        b.rows == k
            && a.fits()
            && b.fits()
            && dst_rs >= n
            && (m == 0 || dst.len() >= (m - 1) * dst_rs + n),
        "gemm operands"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.chunks_mut(dst_rs)
                .take(m)
                .for_each(|row| row[..n].fill(0.0));
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
            dst_rs as isize,
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

/// `out[c·rows + r] = src[r·cols + c]` for a view's `rows × cols` values,
/// in 32 × 32 tiles (`out` holds exactly `rows·cols` values).
#[inline(always)]
pub(super) fn transpose_into(src: View, out: &mut [f32]) {
    assert!(
        src.fits() && out.len() == src.rows * src.cols,
        "transpose operands"
    );
    const T: usize = 32;
    for r0 in (0..src.rows).step_by(T) {
        for c0 in (0..src.cols).step_by(T) {
            for r in r0..(r0 + T).min(src.rows) {
                for c in c0..(c0 + T).min(src.cols) {
                    out[c * src.rows + r] = src.data[r * src.rs + c * src.cs];
                }
            }
        }
    }
}
