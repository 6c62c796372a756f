//! The benchmark's rows, their Markdown table (mean ± sd over seeds per
//! method and n) and their JSON.

use super::metrics::Scores;
use super::setting::{Method, Setting};
use std::fmt::Write as _;

/// One scored point set: a run, or the exact reference.
#[derive(Debug, Clone)]
pub struct Row {
    /// `exact` or a [`Method`] name.
    pub method: String,
    /// Target points the run saw; `None` for `exact` and `source`, which do
    /// not depend on n.
    pub n: Option<usize>,
    /// The seed.
    pub seed: u64,
    /// Scores under the exact target.
    pub scores: Scores,
    /// Wall seconds of the run (sampling included; the source model's
    /// pretraining is counted apart).
    pub seconds: f64,
    /// The run folder, for runs.
    pub dir: Option<std::path::PathBuf>,
}

impl Row {
    /// The row as JSON: every number, the per-component fractions included,
    /// and the talk's figure for the method and n where there is one.
    pub fn to_json(&self) -> serde_json::Value {
        let paper = self
            .n
            .zip(Method::parse(&self.method).ok())
            .and_then(|(n, m)| m.paper(n));
        serde_json::json!({
            "method": self.method,
            "n": self.n,
            "seed": self.seed,
            "samples": self.scores.count,
            "mean_density": finite(self.scores.mean_density),
            "mean_log_density": finite(self.scores.mean_log_density),
            "coverage_tv": self.scores.coverage_tv,
            "fractions": self.scores.fractions,
            "paper": paper,
            "seconds": self.seconds,
            "run_dir": self.dir.as_ref().map(|d| d.display().to_string()),
        })
    }
}

/// JSON has no NaN or infinity: those become `null`.
fn finite(v: f64) -> serde_json::Value {
    if v.is_finite() {
        v.into()
    } else {
        serde_json::Value::Null
    }
}

/// `mean ± sd` (sample sd) with `digits` decimals; the mean alone for one
/// value, `–` for none.
pub fn mean_sd(v: &[f64], digits: usize) -> String {
    match v.len() {
        0 => "–".into(),
        1 => format!("{:.digits$}", v[0]),
        len => {
            let n = len as f64;
            let m = v.iter().sum::<f64>() / n;
            let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
            format!("{m:.digits$} ± {sd:.digits$}")
        }
    }
}

/// The table rows' keys in order: `exact`, then each n-independent method,
/// then per n each method that uses it.
fn order(methods: &[Method], ns: &[usize]) -> Vec<(String, Option<usize>)> {
    let mut keys = vec![("exact".to_owned(), None)];
    for m in methods.iter().filter(|m| !m.uses_target()) {
        keys.push((m.name().to_owned(), None));
    }
    for &n in ns {
        for m in methods.iter().filter(|m| m.uses_target()) {
            keys.push((m.name().to_owned(), Some(n)));
        }
    }
    keys
}

/// The Markdown table: one line per (method, n), mean ± sd over the seeds,
/// the talk's figure where there is one; then the notes that make it
/// readable.
pub fn markdown(rows: &[Row], methods: &[Method], ns: &[usize], seeds: &[u64]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "| method | n | mean density | mean log-density | coverage TV | paper: avg. likelihood | wall s |\n|---|---|---|---|---|---|---|"
    );
    for (method, n) in order(methods, ns) {
        let mine: Vec<&Row> = rows
            .iter()
            .filter(|r| r.method == method && r.n == n)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let col = |f: &dyn Fn(&Row) -> f64, digits| {
            mean_sd(&mine.iter().map(|r| f(r)).collect::<Vec<_>>(), digits)
        };
        let paper = n
            .zip(Method::parse(&method).ok())
            .and_then(|(n, m)| m.paper(n))
            .map_or("–".into(), |p| format!("{p:.3}"));
        let _ = writeln!(
            o,
            "| {method} | {} | {} | {} | {} | {paper} | {} |",
            n.map_or("–".into(), |n| n.to_string()),
            col(&|r| r.scores.mean_density, 3),
            col(&|r| r.scores.mean_log_density, 3),
            col(&|r| r.scores.coverage_tv, 3),
            col(&|r| r.seconds, 0),
        );
    }
    let seeds_text = seeds
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let over = if seeds.len() == 1 {
        format!("One seed ({seeds_text}), so no spread")
    } else {
        format!("Mean ± sd over seeds {seeds_text}")
    };
    let _ = writeln!(
        o,
        "\n{over}. Mean density and log-density are of the generated points under the exact target density (higher is better; the talk's \"average likelihood\" is the mean density). \
         Coverage TV is ½ Σ_k |f_k − w_k|, f_k the fraction of points nearest component k (distance in σ), w_k its target weight (0 is perfect; results.json has the f_k). \
         `exact` and `source` do not depend on n. The paper column is the talk's simulation table (Vanilla Diffusion, read as the target-only model; Finetune; TGDP): \
         its mixture differs from ours (it is not given), so only the ordering of the methods is comparable, not the values. \
         A model that collapses onto the heavy modes can beat `exact` on mean density: read it together with log-density and coverage."
    );
    o
}

/// Everything the bench measured, as one JSON document.
pub fn to_json(
    setting: &Setting,
    weights: &[f64],
    rows: &[Row],
    pretrain: &[(u64, f64)],
) -> serde_json::Value {
    serde_json::json!({
        "setting": setting,
        "target_weights": weights,
        "assignment": "nearest component mean, distance in the component's standard deviations",
        "pretrain": pretrain.iter().map(|(seed, s)| serde_json::json!({"seed": seed, "seconds": s})).collect::<Vec<_>>(),
        "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(method: &str, n: Option<usize>, seed: u64, density: f64) -> Row {
        Row {
            method: method.into(),
            n,
            seed,
            scores: Scores {
                count: 10,
                mean_density: density,
                mean_log_density: density.ln(),
                fractions: vec![0.5, 0.5],
                coverage_tv: 0.25,
            },
            seconds: 2.0,
            dir: None,
        }
    }

    #[test]
    fn mean_sd_matches_hand_values() {
        assert_eq!(mean_sd(&[], 3), "–");
        assert_eq!(mean_sd(&[0.5], 3), "0.500");
        // mean 2, sample sd sqrt(((1)² + 0 + 1²) / 2) = 1.
        assert_eq!(mean_sd(&[1.0, 2.0, 3.0], 2), "2.00 ± 1.00");
    }

    #[test]
    fn table_has_one_line_per_method_and_n_with_the_paper_figure() {
        let rows = vec![
            row("exact", None, 0, 0.1),
            row("exact", None, 1, 0.2),
            row("source", None, 0, 0.04),
            row("target", Some(10), 0, 0.3),
            row("target", Some(10), 1, 0.5),
            row("target", Some(100), 0, 0.2),
        ];
        let t = markdown(
            &rows,
            &[Method::Source, Method::Target],
            &[10, 100],
            &[0, 1],
        );
        let lines: Vec<&str> = t.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert_eq!(
            lines[1],
            "| exact | – | 0.150 ± 0.071 | -1.956 ± 0.490 | 0.250 ± 0.000 | – | 2 ± 0 |"
        );
        assert!(lines[2].starts_with("| source | – | 0.040 |"), "{t}");
        assert!(
            lines[3].starts_with("| target | 10 | 0.400 ± 0.141 |"),
            "{t}"
        );
        assert!(
            lines[3].contains("| 0.145 |"),
            "the paper's Vanilla n = 10: {t}"
        );
        assert!(lines[4].contains("| 0.253 |"), "{t}");
    }

    #[test]
    fn json_keeps_fractions_and_nulls_non_finite_numbers() {
        let mut r = row("finetune", Some(10), 2, 0.1);
        r.scores.mean_log_density = f64::NEG_INFINITY;
        let v = r.to_json();
        assert_eq!(v["fractions"], serde_json::json!([0.5, 0.5]));
        assert!(v["mean_log_density"].is_null());
        assert_eq!(v["n"], 10);
        assert_eq!(v["paper"], 0.290);
        assert!(row("exact", None, 0, 0.1).to_json()["paper"].is_null());
    }
}
