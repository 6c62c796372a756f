//! The benchmark's rows, their Markdown table (mean ± sd over seeds per
//! method and n), the paired differences between methods seed by seed, and
//! their JSON.

use super::metrics::Scores;
use super::setting::{Method, Setting};
use dtx::eval::paired::{self, Line, Paired};
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

/// The scores compared seed by seed: (JSON key, column title, decimals).
const PAIRED: [(&str, &str, usize); 3] = [
    ("mean_density", "Δ mean density", 4),
    ("mean_log_density", "Δ mean log-density", 3),
    ("coverage_tv", "Δ coverage TV", 4),
];

fn paired_value(s: &Scores, k: usize) -> f64 {
    [s.mean_density, s.mean_log_density, s.coverage_tv][k]
}

/// The comparisons, each as (method, n, baseline): per n every method that
/// uses the target points against `source` (which has no n), then TGDP
/// against fine-tuning at the same n — for the methods asked for.
fn comparisons(methods: &[Method], ns: &[usize]) -> Vec<(Method, usize, Method)> {
    let mut out = Vec::new();
    for &n in ns {
        if methods.contains(&Method::Source) {
            for &m in methods.iter().filter(|m| m.uses_target()) {
                out.push((m, n, Method::Source));
            }
        }
        if methods.contains(&Method::Tgdp) && methods.contains(&Method::Finetune) {
            out.push((Method::Tgdp, n, Method::Finetune));
        }
    }
    out
}

/// The paired differences (method − baseline at the same seed) of every
/// comparison, one [`Paired`] per score of [`PAIRED`]; labels method, n,
/// baseline.
pub fn paired_lines(rows: &[Row], methods: &[Method], ns: &[usize]) -> Vec<Line> {
    let values = |m: Method, n: Option<usize>, k: usize| -> Vec<(u64, f64)> {
        rows.iter()
            .filter(|r| r.method == m.name() && r.n == n)
            .map(|r| (r.seed, paired_value(&r.scores, k)))
            .collect()
    };
    let at = |m: Method, n: usize| m.uses_target().then_some(n);
    comparisons(methods, ns)
        .into_iter()
        .map(|(m, n, base)| Line {
            labels: vec![m.name().into(), n.to_string(), base.name().into()],
            metrics: (0..PAIRED.len())
                .map(|k| Paired::by_seed(&values(m, at(m, n), k), &values(base, at(base, n), k)))
                .collect(),
        })
        .collect()
}

/// The paired-difference table under the main one (empty without a
/// comparison): each method against `source` per n, TGDP against
/// fine-tuning.
pub fn paired_markdown(lines: &[Line]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let columns: Vec<(&str, usize)> = PAIRED.iter().map(|(_, t, d)| (*t, *d)).collect();
    format!(
        "Paired differences, method − baseline at the same seed (the same n target points and source model):\n\n{}\n{} Seeds whose log-density is infinite for either method are left out of that column.\n",
        paired::table(&["method", "n", "against"], &columns, lines),
        paired::NOTE
    )
}

/// Everything the bench measured, as one JSON document: every row of every
/// seed, and the paired differences `lines`.
pub fn to_json(
    setting: &Setting,
    weights: &[f64],
    rows: &[Row],
    pretrain: &[(u64, f64)],
    lines: &[Line],
) -> serde_json::Value {
    let keys: Vec<&str> = PAIRED.iter().map(|p| p.0).collect();
    serde_json::json!({
        "setting": setting,
        "target_weights": weights,
        "assignment": "nearest component mean, distance in the component's standard deviations",
        "pretrain": pretrain.iter().map(|(seed, s)| serde_json::json!({"seed": seed, "seconds": s})).collect::<Vec<_>>(),
        "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        "paired": paired::lines_json(&["method", "n", "against"], &keys, lines),
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
    fn methods_are_paired_with_source_per_n_and_tgdp_with_finetune() {
        let mut rows = Vec::new();
        for seed in 0..3 {
            let s = seed as f64;
            rows.push(row("source", None, seed, 0.03 + 0.001 * s));
            rows.push(row("finetune", Some(10), seed, 0.08 + 0.002 * s));
            rows.push(row("tgdp", Some(10), seed, 0.06 + 0.004 * s));
        }
        let methods = [Method::Source, Method::Finetune, Method::Tgdp];
        let lines = paired_lines(&rows, &methods, &[10]);
        let labels: Vec<String> = lines.iter().map(|l| l.labels.join(" ")).collect();
        assert_eq!(
            labels,
            ["finetune 10 source", "tgdp 10 source", "tgdp 10 finetune"]
        );
        // tgdp − finetune in density: −0.02, −0.018, −0.016: mean −0.018,
        // sd 0.002, half-width 4.303 · 0.002 / √3 = 0.00497.
        let md = paired_markdown(&lines);
        assert!(
            md.contains("| tgdp | 10 | finetune | 3 | -0.0180 [-0.0230, -0.0130] |"),
            "{md}"
        );
        assert!(
            md.contains("| finetune | 10 | source | 3 | 0.0510 [0.0485, 0.0535] |"),
            "{md}"
        );
        // Without `source` and `finetune` there is nothing to compare.
        assert!(paired_lines(&rows, &[Method::Target, Method::Tgdp], &[10]).is_empty());
        assert_eq!(paired_markdown(&[]), "");
        let json = to_json(&Setting::quick(10), &[1.0], &rows, &[], &lines);
        assert_eq!(json["paired"][2]["against"], "finetune");
        assert_eq!(json["paired"][2]["mean_density"]["n"], 3);
        assert_eq!(json["rows"][4]["seed"], 1, "per-seed rows are kept");
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
