//! Distribution metrics over extractor features, in f64: the Fréchet
//! distance (FD), the kernel inception distance (KID: unbiased MMD² with the
//! cubic polynomial kernel), the mean distance to the nearest neighbour in
//! another set, and the mean distance between paired features.
//!
//! Conventions follow the tools people compare against: FD as pytorch-fid
//! (covariances with N − 1, `tr √(Σ₁Σ₂)` as scipy's `sqrtm` with the
//! imaginary part discarded), KID as clean-fid (k(x, y) = (x·y / d + 1)³,
//! random subsets without replacement, reported as the mean over subsets).
//! `tests/fixtures/eval/make_metrics.py` computes the same numbers with
//! numpy/scipy; the tests hold us to them within 1e-6 relative.

use nalgebra::{DMatrix, DVector, SymmetricEigen};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Feature vectors, one row per image.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    rows: usize,
    dim: usize,
    data: Vec<f64>,
}

/// What is wrong with the features a metric was given.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricError {
    /// A set is too small for the metric.
    #[error("{metric} needs at least {need} {what}, got {got}")]
    TooFew {
        /// The metric.
        metric: &'static str,
        /// Which set.
        what: &'static str,
        /// The least it needs.
        need: usize,
        /// What it got.
        got: usize,
    },
    /// The two sets' features have different lengths.
    #[error("feature dimensions differ: {0} and {1}")]
    Dim(usize, usize),
    /// A feature is NaN or infinite.
    #[error("{0} holds a non-finite feature value")]
    NonFinite(&'static str),
}

impl Features {
    /// `data.len() / dim` rows of `dim` values (`data` row-major).
    pub fn new(data: Vec<f64>, dim: usize) -> Features {
        assert!(
            dim > 0 && data.len().is_multiple_of(dim),
            "rows of {dim} values"
        );
        Features {
            rows: data.len() / dim,
            dim,
            data,
        }
    }

    /// From f32 values, as extractors give them.
    pub fn from_f32(data: &[f32], dim: usize) -> Features {
        Features::new(data.iter().map(|&v| v as f64).collect(), dim)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    fn matrix(&self) -> DMatrix<f64> {
        DMatrix::from_row_slice(self.rows, self.dim, &self.data)
    }

    fn check(&self, what: &'static str) -> Result<(), MetricError> {
        if self.data.iter().all(|v| v.is_finite()) {
            Ok(())
        } else {
            Err(MetricError::NonFinite(what))
        }
    }
}

fn check_pair(
    metric: &'static str,
    a: &Features,
    b: &Features,
    need: usize,
) -> Result<(), MetricError> {
    if a.dim != b.dim {
        return Err(MetricError::Dim(a.dim, b.dim));
    }
    for (f, what) in [(a, "samples"), (b, "reference images")] {
        if f.rows < need {
            return Err(MetricError::TooFew {
                metric,
                what,
                need,
                got: f.rows,
            });
        }
        f.check(what)?;
    }
    Ok(())
}

/// Rows minus their mean (`rows × dim`), and the mean.
fn centred(f: &Features) -> (DMatrix<f64>, DVector<f64>) {
    let x = f.matrix();
    let mean = DVector::from_iterator(f.dim, x.column_iter().map(|c| c.mean()));
    let mut xc = x;
    for mut row in xc.row_iter_mut() {
        row -= mean.transpose();
    }
    (xc, mean)
}

/// `√` of a symmetric positive semi-definite matrix by its eigenvectors,
/// negative round-off eigenvalues taken as 0.
fn sqrt_psd(m: DMatrix<f64>) -> DMatrix<f64> {
    let e = SymmetricEigen::new(m);
    let roots = e.eigenvalues.map(|l| l.max(0.0).sqrt());
    &e.eigenvectors * DMatrix::from_diagonal(&roots) * e.eigenvectors.transpose()
}

/// The Fréchet distance between Gaussians fitted to `a` and `b`:
/// ‖μ_a − μ_b‖² + tr Σ_a + tr Σ_b − 2 tr √(Σ_a Σ_b).
///
/// The eigenvalues of Σ_a Σ_b are real and non-negative (they are those of
/// √Σ_a Σ_b √Σ_a), so `tr √(Σ_a Σ_b)` is the sum of their roots; scipy's
/// `sqrtm` reaches the same number through a complex Schur form and drops
/// the imaginary round-off. With X_a, X_b the centred rows, the same sum is
/// the nuclear norm of X_a X_bᵀ / √((n_a − 1)(n_b − 1)), which is cheaper
/// when there are fewer images than feature dimensions (the few-shot case,
/// where both covariances are singular and FD is a weak estimate: lead with
/// KID there).
pub fn frechet_distance(a: &Features, b: &Features) -> Result<f64, MetricError> {
    check_pair("FD", a, b, 2)?;
    let (xa, ma) = centred(a);
    let (xb, mb) = centred(b);
    let (na, nb) = ((a.rows - 1) as f64, (b.rows - 1) as f64);
    let d = a.dim;
    let mean_term = (&ma - &mb).norm_squared();
    let trace_a = xa.norm_squared() / na;
    let trace_b = xb.norm_squared() / nb;
    let small = a.rows.min(b.rows);
    let root_trace = if a.rows * b.rows * small < d * d * d {
        let c = &xa * xb.transpose();
        c.singular_values().sum() / (na * nb).sqrt()
    } else {
        let sa = xa.transpose() * &xa / na;
        let sb = xb.transpose() * &xb / nb;
        let ra = sqrt_psd(sa);
        let m = &ra * sb * &ra;
        let m = (&m + m.transpose()) * 0.5;
        SymmetricEigen::new(m)
            .eigenvalues
            .iter()
            .map(|l| l.max(0.0).sqrt())
            .sum()
    };
    Ok(mean_term + trace_a + trace_b - 2.0 * root_trace)
}

/// The cubic polynomial kernel k(x, y) = (x·y / d + 1)³ between every row of
/// `a` and every row of `b`.
fn kernel(a: &Features, b: &Features) -> DMatrix<f64> {
    let d = a.dim as f64;
    (a.matrix() * b.matrix().transpose()).map(|v| (v / d + 1.0).powi(3))
}

/// A KID estimate over random subsets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kid {
    /// Mean of the subsets' unbiased MMD² (clean-fid's KID).
    pub mean: f64,
    /// Their standard deviation (population, as `np.std`).
    pub std: f64,
    /// Number of subsets.
    pub subsets: usize,
    /// Images drawn from each set per subset: min(n_a, n_b, max size).
    pub subset_size: usize,
}

/// KID as clean-fid computes it: `subsets` times, draw `m` rows of each set
/// without replacement (m = min(n_a, n_b, `max_subset_size`)) and take
/// [Σ_{i≠j} k(a_i, a_j) + Σ_{i≠j} k(b_i, b_j)] / (m(m − 1)) − 2 Σ_{i,j}
/// k(a_i, b_j) / m²; report the mean. The draws come from `seed`.
pub fn kid(
    a: &Features,
    b: &Features,
    subsets: usize,
    max_subset_size: usize,
    seed: u64,
) -> Result<Kid, MetricError> {
    check_pair("KID", a, b, 2)?;
    let m = a.rows.min(b.rows).min(max_subset_size.max(2));
    let mut rng = StdRng::seed_from_u64(seed);
    let draws: Vec<(Vec<usize>, Vec<usize>)> = (0..subsets.max(1))
        .map(|_| {
            let ib = rand::seq::index::sample(&mut rng, b.rows, m).into_vec();
            let ia = rand::seq::index::sample(&mut rng, a.rows, m).into_vec();
            (ia, ib)
        })
        .collect();
    kid_with_subsets(a, b, &draws)
}

/// KID over given subsets: `(rows of a, rows of b)` per subset, each the
/// same size m ≥ 2 with no repeats. [`kid`] draws them; tests give them.
pub fn kid_with_subsets(
    a: &Features,
    b: &Features,
    subsets: &[(Vec<usize>, Vec<usize>)],
) -> Result<Kid, MetricError> {
    check_pair("KID", a, b, 2)?;
    let kaa = kernel(a, a);
    let kbb = kernel(b, b);
    let kab = kernel(a, b);
    let mut values = Vec::with_capacity(subsets.len());
    let mut size = 0;
    for (ia, ib) in subsets {
        let m = ia.len();
        assert!(m >= 2 && ib.len() == m, "subsets of equal size ≥ 2");
        size = m;
        let mut within = 0.0;
        let mut cross = 0.0;
        for (p, &i) in ia.iter().enumerate() {
            for (q, &j) in ia.iter().enumerate() {
                if p != q {
                    within += kaa[(i, j)];
                }
            }
            for &j in ib {
                cross += kab[(i, j)];
            }
        }
        for (p, &i) in ib.iter().enumerate() {
            for (q, &j) in ib.iter().enumerate() {
                if p != q {
                    within += kbb[(i, j)];
                }
            }
        }
        let mf = m as f64;
        values.push(within / (mf * (mf - 1.0)) - 2.0 * cross / (mf * mf));
    }
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    Ok(Kid {
        mean,
        std,
        subsets: values.len(),
        subset_size: size,
    })
}

/// The deterministic KID over every row: the unbiased MMD² with sizes n_a,
/// n_b: Σ_{i≠j} k(a_i, a_j) / (n_a(n_a − 1)) + Σ_{i≠j} k(b_i, b_j) /
/// (n_b(n_b − 1)) − 2 Σ k(a_i, b_j) / (n_a n_b).
pub fn kid_full(a: &Features, b: &Features) -> Result<f64, MetricError> {
    check_pair("KID", a, b, 2)?;
    let off_diagonal = |k: DMatrix<f64>| k.sum() - k.trace();
    let (na, nb) = (a.rows as f64, b.rows as f64);
    Ok(off_diagonal(kernel(a, a)) / (na * (na - 1.0))
        + off_diagonal(kernel(b, b)) / (nb * (nb - 1.0))
        - 2.0 * kernel(a, b).sum() / (na * nb))
}

/// Each query's Euclidean distance to its nearest row of `pool`.
pub fn nearest_distances(queries: &Features, pool: &Features) -> Result<Vec<f64>, MetricError> {
    if queries.dim != pool.dim {
        return Err(MetricError::Dim(queries.dim, pool.dim));
    }
    if pool.rows == 0 {
        return Err(MetricError::TooFew {
            metric: "the nearest-neighbour distance",
            what: "training images",
            need: 1,
            got: 0,
        });
    }
    queries.check("samples")?;
    pool.check("training images")?;
    // ‖q − p‖² = ‖q‖² + ‖p‖² − 2 q·p, one matrix product for every pair
    let q = queries.matrix();
    let p = pool.matrix();
    let dots = &q * p.transpose();
    let qn: Vec<f64> = q.row_iter().map(|r| r.norm_squared()).collect();
    let pn: Vec<f64> = p.row_iter().map(|r| r.norm_squared()).collect();
    Ok((0..queries.rows)
        .map(|i| {
            (0..pool.rows)
                .map(|j| (qn[i] + pn[j] - 2.0 * dots[(i, j)]).max(0.0))
                .fold(f64::INFINITY, f64::min)
                .sqrt()
        })
        .collect())
}

/// Mean Euclidean distance between row i of `a` and row i of `b`.
pub fn mean_paired_distance(a: &Features, b: &Features) -> Result<f64, MetricError> {
    if a.dim != b.dim {
        return Err(MetricError::Dim(a.dim, b.dim));
    }
    if a.rows != b.rows || a.rows == 0 {
        return Err(MetricError::TooFew {
            metric: "the paired distance",
            what: "pairs",
            need: a.rows.max(1),
            got: a.rows.min(b.rows),
        });
    }
    let total: f64 = (0..a.rows)
        .map(|i| {
            a.row(i)
                .iter()
                .zip(b.row(i))
                .map(|(x, y)| (x - y).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .sum();
    Ok(total / a.rows as f64)
}

/// Mean of `v` (0 for none).
pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

#[cfg(test)]
mod tests;
