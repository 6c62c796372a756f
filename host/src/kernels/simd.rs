//! The kernels' element-wise loops compiled for the CPU's widest vectors,
//! and reductions written so that they vectorise.

/// Runs `f` inside a function compiled with AVX-512 (x86-64-v4) or AVX2 +
/// FMA (v3) enabled when the CPU has them (detected at run time, cached by
/// std), else as it is. No arithmetic changes with it: Rust never fuses a
/// multiply and an add by itself, and an explicit `mul_add` is one
/// instruction here and libm's `fmaf` (the same rounding) in the baseline
/// build, so every result is bit for bit the baseline build's. Call it
/// through [`wide!`], never directly.
#[inline(always)]
pub(crate) fn dispatch<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// `wide!(expr)`: evaluates `expr` with the CPU's widest vectors, through
/// [`dispatch`]. The closure it builds is `#[inline(always)]`: the target
/// features reach only code inlined into pulp's feature-enabled function,
/// and LLVM declines to inline a large closure by itself, which compiled
/// the attention's and group norm's loops for SSE2 (4 lanes) while the
/// kernels looked dispatched. `expr`'s loops, and the `#[inline(always)]`
/// helpers they call, are then vectorised that wide. A rayon task
/// dispatches inside its own closure: features do not cross threads.
macro_rules! wide {
    ($body:expr) => {
        $crate::kernels::simd::dispatch(
            #[inline(always)]
            || $body,
        )
    };
}
pub(crate) use wide;

/// Lanes of the vectorised reductions: independent partial sums, so the
/// additions neither wait on each other nor need reassociating.
pub(crate) const LANES: usize = 16;

/// `Σ f(x_i)` in f64, over [`LANES`] partial sums (element `i` goes to
/// lane `i mod LANES`), added in lane order, then the tail.
#[inline(always)]
pub(crate) fn sum_f64(x: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v)).sum();
    acc.iter().sum::<f64>() + tail
}

/// `Σ x_i` in f32 over [`LANES`] partial sums, as [`sum_f64`].
#[inline(always)]
pub(crate) fn sum_f32(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    let tail: f32 = chunks.remainder().iter().sum();
    acc.iter().sum::<f32>() + tail
}

/// `Σ a_i·b_i` in f32 over [`LANES`] partial sums, as [`sum_f64`].
#[inline(always)]
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (mut ca, mut cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for ((s, &u), &v) in acc.iter_mut().zip(x).zip(y) {
            *s += u * v;
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(u, v)| u * v)
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// `max_i x_i` (`-∞` for none) over [`LANES`] partial maxima. NaN-free
/// input gives exactly the sequential maximum.
#[inline(always)]
pub(crate) fn max_f32(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    acc.iter().fold(tail, |m, &v| m.max(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_values;

    /// Each reduction against the sequential f64 sum (or max), for lengths
    /// around the lane count (tails of every size), inside and outside
    /// [`wide!`]: within 1e-6 relative for f32 sums, 1e-12 for f64.
    #[test]
    fn reductions_match_sequential_ones() {
        for len in [0, 1, 5, 15, 16, 17, 31, 33, 100, 1000] {
            let x = test_values(len, len as u64 + 1, 3.0);
            let y = test_values(len, len as u64 + 7, 2.0);
            let exact: f64 = x.iter().map(|&v| v as f64).sum();
            let exact_sq: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum();
            let exact_dot: f64 = x.iter().zip(&y).map(|(&a, &b)| a as f64 * b as f64).sum();
            let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let mag: f64 = x.iter().map(|&v| (v as f64).abs()).sum::<f64>() + 1.0;
            for (s, sq, dot, m) in [
                (
                    sum_f32(&x),
                    sum_f64(&x, |v| (v as f64).powi(2)),
                    dot_f32(&x, &y),
                    max_f32(&x),
                ),
                wide!({
                    (
                        sum_f32(&x),
                        sum_f64(&x, |v| (v as f64).powi(2)),
                        dot_f32(&x, &y),
                        max_f32(&x),
                    )
                }),
            ] {
                assert!(
                    (s as f64 - exact).abs() <= 1e-6 * mag,
                    "{len}: {s} vs {exact}"
                );
                assert!((sq - exact_sq).abs() <= 1e-12 * (exact_sq + 1.0), "{len}");
                assert!((dot as f64 - exact_dot).abs() <= 1e-6 * 6.0 * mag, "{len}");
                assert_eq!(m, max, "{len}");
            }
        }
    }
}
