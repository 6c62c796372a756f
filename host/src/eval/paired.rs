//! Paired differences over seeds: how far a method is from its baseline when
//! both ran on the same seeds, with a two-sided 95 % confidence interval for
//! the mean difference (Student's t with n − 1 degrees of freedom). Every
//! `dtx bench` table uses it to say whether a gap between two methods is
//! larger than the seed-to-seed noise.
//!
//! Within a seed both runs see the same training images, references and
//! noise, so their difference cancels what the seed shares; the interval is
//! over those per-seed differences d_i = method_i − baseline_i:
//!
//! ```text
//! mean = Σ d_i / n,   sd = √(Σ (d_i − mean)² / (n − 1)),
//! interval = mean ± t(0.975, n − 1) · sd / √n
//! ```
//!
//! With fewer than two seeds there is no sd and no interval; the functions
//! say so (`None`) instead of inventing one.

use std::fmt::Write as _;

/// t(0.975, df) for df = 1 … 30, the two-sided 95 % quantile of Student's t,
/// from the standard t table (NIST/SEMATECH e-Handbook of Statistical
/// Methods, section 1.3.6.7.2, "Critical values of the Student's t
/// distribution", column 0.975). The tests check each entry against a
/// numerical integral of the t density.
const T975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, //
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, //
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
];

/// Beyond df 30, the same table's rows for df 40, 60, 120 and ∞ (the normal
/// quantile 1.960), interpolated linearly in 1/df, the table's own rule for
/// degrees of freedom it does not list.
const T975_LARGE: [(f64, f64); 4] = [
    (40.0, 2.021),
    (60.0, 2.000),
    (120.0, 1.980),
    (f64::INFINITY, 1.960),
];

/// t(0.975, df), the quantile the 95 % interval uses; `None` for df 0.
pub fn t975(df: usize) -> Option<f64> {
    match df {
        0 => None,
        1..=30 => Some(T975[df - 1]),
        _ => {
            let inv = 1.0 / df as f64;
            let mut lo = (30.0, T975[29]);
            for hi in T975_LARGE {
                if df as f64 <= hi.0 {
                    let (a, b) = (1.0 / lo.0, 1.0 / hi.0);
                    return Some(lo.1 + (hi.1 - lo.1) * (a - inv) / (a - b));
                }
                lo = hi;
            }
            Some(1.960)
        }
    }
}

/// The mean paired difference of a method against its baseline over the
/// seeds both have a finite value for.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Paired {
    /// The seeds that paired, in the order given.
    pub seeds: Vec<u64>,
    /// method − baseline at each of those seeds.
    pub differences: Vec<f64>,
    /// Number of pairs (`seeds.len()`).
    pub n: usize,
    /// Mean difference; `None` without a pair.
    pub mean: Option<f64>,
    /// Sample standard deviation of the differences (n − 1); `None` below 2
    /// pairs.
    pub sd: Option<f64>,
    /// Two-sided 95 % confidence interval of the mean difference (Student's
    /// t, n − 1 degrees of freedom); `None` below 2 pairs.
    pub ci95: Option<(f64, f64)>,
}

impl Paired {
    /// The statistics of `differences` taken at `seeds` (one each).
    pub fn of_differences(seeds: Vec<u64>, differences: Vec<f64>) -> Paired {
        assert_eq!(seeds.len(), differences.len(), "one difference per seed");
        let n = differences.len();
        let mean = (n > 0).then(|| differences.iter().sum::<f64>() / n as f64);
        let sd = mean.filter(|_| n > 1).map(|m| {
            let ss: f64 = differences.iter().map(|d| (d - m).powi(2)).sum();
            (ss / (n - 1) as f64).sqrt()
        });
        let ci95 = mean
            .zip(sd)
            .zip(t975(n.saturating_sub(1)))
            .map(|((m, s), t)| {
                let half = t * s / (n as f64).sqrt();
                (m - half, m + half)
            });
        Paired {
            seeds,
            differences,
            n,
            mean,
            sd,
            ci95,
        }
    }

    /// `method` against `baseline`, each a list of (seed, value): pairs are
    /// the seeds both lists hold with finite values in both (a seed only one
    /// ran, or a NaN or infinite value, is left out and `n` shows it).
    pub fn by_seed(method: &[(u64, f64)], baseline: &[(u64, f64)]) -> Paired {
        let (mut seeds, mut differences) = (Vec::new(), Vec::new());
        for &(seed, m) in method {
            let b = baseline.iter().find(|(s, _)| *s == seed).map(|p| p.1);
            if let Some(b) = b.filter(|b| b.is_finite() && m.is_finite()) {
                seeds.push(seed);
                differences.push(m - b);
            }
        }
        Paired::of_differences(seeds, differences)
    }

    /// A table cell: `mean [lo, hi]` with `digits` decimals, or what is
    /// missing (`mean (one seed, no interval)`, `–` without a pair).
    pub fn cell(&self, digits: usize) -> String {
        match (self.mean, self.ci95) {
            (None, _) => "–".into(),
            (Some(m), None) => format!("{m:.digits$} (one seed, no interval)"),
            (Some(m), Some((lo, hi))) => format!("{m:.digits$} [{lo:.digits$}, {hi:.digits$}]"),
        }
    }

    /// The JSON the benches keep: seeds, differences, n, mean, sd and the
    /// interval (`null` where undefined).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain numbers serialise")
    }
}

/// One line of a paired-difference table: its label cells (`run`, `against`,
/// …) and one [`Paired`] per metric column.
pub struct Line {
    /// The label cells, as many as the table's label columns.
    pub labels: Vec<String>,
    /// One per metric column.
    pub metrics: Vec<Paired>,
}

/// A Markdown table of paired differences: label columns `labels`, a column
/// `n` (pairs of the first metric; a cell whose own n differs says so), then
/// one column per `(name, decimals)` in `metrics`.
pub fn table(labels: &[&str], metrics: &[(&str, usize)], lines: &[Line]) -> String {
    let mut o = String::new();
    let mut header: Vec<&str> = labels.to_vec();
    header.push("n");
    header.extend(metrics.iter().map(|m| m.0));
    let _ = writeln!(o, "| {} |", header.join(" | "));
    let _ = writeln!(o, "|{}", "---|".repeat(header.len()));
    for line in lines {
        let n = line.metrics.first().map_or(0, |p| p.n);
        let mut cells = line.labels.clone();
        cells.push(n.to_string());
        for (p, (_, digits)) in line.metrics.iter().zip(metrics) {
            let mut c = p.cell(*digits);
            if p.n != n && p.ci95.is_some() {
                let _ = write!(c, " (n {})", p.n);
            }
            cells.push(c);
        }
        let _ = writeln!(o, "| {} |", cells.join(" | "));
    }
    o
}

/// `lines` as JSON: one object per line with its labels under the keys
/// `labels` and its [`Paired`] values under `metrics` (one key each).
pub fn lines_json(labels: &[&str], metrics: &[&str], lines: &[Line]) -> serde_json::Value {
    let one = |line: &Line| {
        let mut o = serde_json::Map::new();
        for (k, v) in labels.iter().zip(&line.labels) {
            o.insert((*k).to_owned(), v.clone().into());
        }
        for (k, p) in metrics.iter().zip(&line.metrics) {
            o.insert((*k).to_owned(), p.to_json());
        }
        serde_json::Value::Object(o)
    };
    lines.iter().map(one).collect()
}

/// The sentence under every paired-difference table.
pub const NOTE: &str = "Each cell is the mean over seeds of (run − baseline) at the same seed, \
    then the two-sided 95 % confidence interval of that mean in brackets (Student's t with n − 1 degrees of freedom); \
    with one seed there is no interval. An interval that contains 0 does not tell the two apart at this number of seeds.";

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand arithmetic below is carried to 4 significant digits.
    const HAND: f64 = 5e-3;

    /// Student's t density at `x` for `df` degrees of freedom, its constant
    /// Γ((ν+1)/2) / (√(νπ) Γ(ν/2)) from Γ(1) / Γ(1/2) = 1/√π, Γ(3/2) / Γ(1) =
    /// √π / 2 and the recursion r(ν + 2) = r(ν) · (ν + 1) / ν.
    fn t_density(x: f64, df: usize) -> f64 {
        let pi = std::f64::consts::PI;
        let mut r = if df % 2 == 1 {
            1.0 / pi.sqrt()
        } else {
            pi.sqrt() / 2.0
        };
        let mut nu = if df % 2 == 1 { 1 } else { 2 };
        while nu < df {
            r *= (nu + 1) as f64 / nu as f64;
            nu += 2;
        }
        let v = df as f64;
        r / (v * pi).sqrt() * (1.0 + x * x / v).powf(-(v + 1.0) / 2.0)
    }

    /// P(T ≤ q) for q ≥ 0 by Simpson's rule on [0, q] (20,000 intervals).
    fn t_cdf(q: f64, df: usize) -> f64 {
        let k = 20_000;
        let h = q / k as f64;
        let inner: f64 = (1..k)
            .map(|i| t_density(i as f64 * h, df) * if i % 2 == 1 { 4.0 } else { 2.0 })
            .sum();
        0.5 + h / 3.0 * (t_density(0.0, df) + inner + t_density(q, df))
    }

    #[test]
    fn the_t_table_holds_the_0975_quantiles_to_its_three_decimals() {
        for df in (1..=30).chain([40, 60, 120]) {
            let q = t975(df).unwrap();
            // The true quantile lies within half a unit of the last decimal.
            let (below, above) = (t_cdf(q - 5e-4, df), t_cdf(q + 5e-4, df));
            assert!(
                below < 0.975 && 0.975 < above,
                "df {df}: t {q} gives {below}..{above}"
            );
        }
        assert_eq!(t975(0), None);
        assert_eq!(t975(2), Some(4.303));
        // Between table rows, 1/df interpolation: df 50 lies between 2.021
        // (df 40) and 2.000 (df 60); the exact value is 2.009.
        assert!((t975(50).unwrap() - 2.009).abs() < 1e-3, "{:?}", t975(50));
        assert!((t975(100_000).unwrap() - 1.960).abs() < 1e-3);
    }

    #[test]
    fn three_seeds_give_the_hand_computed_interval() {
        // d = [3.7, 19.6, 1.0]: mean 24.3 / 3 = 8.1; deviations −4.4, 11.5,
        // −7.1, squares 19.36 + 132.25 + 50.41 = 202.02, sd = √(202.02 / 2)
        // = 10.050; half-width 4.303 · 10.050 / √3 = 24.97, so the interval
        // is [−16.87, 33.07].
        let p = Paired::of_differences(vec![0, 1, 2], vec![3.7, 19.6, 1.0]);
        assert_eq!(p.n, 3);
        assert!((p.mean.unwrap() - 8.1).abs() < 1e-12);
        assert!((p.sd.unwrap() - 10.050).abs() < HAND, "{:?}", p.sd);
        let (lo, hi) = p.ci95.unwrap();
        assert!(
            (lo + 16.87).abs() < 1e-2 && (hi - 33.07).abs() < 1e-2,
            "{lo} {hi}"
        );
        assert_eq!(p.cell(1), "8.1 [-16.9, 33.1]");
    }

    #[test]
    fn five_equal_differences_have_a_zero_width_interval() {
        let p = Paired::of_differences(vec![0, 1, 2, 3, 4], vec![2.0; 5]);
        assert_eq!(p.sd, Some(0.0));
        assert_eq!(p.ci95, Some((2.0, 2.0)));
    }

    #[test]
    fn two_seeds_use_twelve_point_seven() {
        // d = [1, 3]: mean 2, sd √2, half-width 12.706 · √2 / √2 = 12.706.
        let p = Paired::of_differences(vec![0, 1], vec![1.0, 3.0]);
        let (lo, hi) = p.ci95.unwrap();
        assert!((lo + 10.706).abs() < 1e-9 && (hi - 14.706).abs() < 1e-9);
    }

    #[test]
    fn fewer_than_two_pairs_have_no_interval() {
        let one = Paired::of_differences(vec![7], vec![1.5]);
        assert_eq!((one.mean, one.sd, one.ci95), (Some(1.5), None, None));
        assert_eq!(one.cell(2), "1.50 (one seed, no interval)");
        let none = Paired::of_differences(vec![], vec![]);
        assert_eq!((none.mean, none.sd, none.ci95), (None, None, None));
        assert_eq!(none.cell(2), "–");
        let json = one.to_json();
        assert!(json["ci95"].is_null() && json["sd"].is_null(), "{json}");
    }

    #[test]
    fn pairs_are_matched_by_seed_and_skip_missing_or_non_finite_values() {
        let method = [(2, 5.0), (0, 1.0), (1, f64::NEG_INFINITY), (9, 4.0)];
        let baseline = [(0, 0.5), (1, 0.0), (2, 3.0)];
        let p = Paired::by_seed(&method, &baseline);
        assert_eq!(p.seeds, [2, 0]);
        assert_eq!(p.differences, [2.0, 0.5]);
    }

    #[test]
    fn the_table_has_an_n_column_and_marks_cells_with_fewer_pairs() {
        let full = Paired::of_differences(vec![0, 1], vec![1.0, 3.0]);
        let short = Paired::of_differences(vec![0], vec![1.0]);
        let md = table(
            &["run", "against"],
            &[("KID", 1), ("FD", 2)],
            &[Line {
                labels: vec!["sdft".into(), "naive-finetune".into()],
                metrics: vec![full, short],
            }],
        );
        assert_eq!(
            md,
            "| run | against | n | KID | FD |\n|---|---|---|---|---|\n\
             | sdft | naive-finetune | 2 | 2.0 [-10.7, 14.7] | 1.00 (one seed, no interval) |\n"
        );
    }

    #[test]
    fn json_lines_name_their_labels_and_metrics() {
        let lines = [Line {
            labels: vec!["sdft".into()],
            metrics: vec![Paired::of_differences(vec![3], vec![0.25])],
        }];
        let v = lines_json(&["run"], &["kid"], &lines);
        assert_eq!(v[0]["run"], "sdft");
        assert_eq!(v[0]["kid"]["seeds"], serde_json::json!([3]));
        assert_eq!(v[0]["kid"]["mean"], 0.25);
        assert!(v[0]["kid"]["ci95"].is_null());
    }
}
