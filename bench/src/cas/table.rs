//! The `dtx bench cas` table: one row per arm, the classification accuracy
//! score as mean ± sd over seeds, the acceptance rate of its runs and the
//! images per class its classifiers trained on; then the paired differences
//! of CAS between arms, seed by seed.

use dtx::eval::paired::{self, Line, Paired};
use std::fmt::Write as _;

/// The CAS comparisons, (arm, baseline): every arm against plain fine-tuning,
/// then what each step adds to the one before it (rejection to CFG, SDFT to
/// rejection).
pub const COMPARISONS: [(&str, &str); 6] = [
    ("finetune+cfg", "finetune"),
    ("finetune+cfg+rejection", "finetune"),
    ("sdft+rejection", "finetune"),
    ("real", "finetune"),
    ("finetune+cfg+rejection", "finetune+cfg"),
    ("sdft+rejection", "finetune+cfg+rejection"),
];

/// One arm at one seed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// Arm name (`finetune+cfg`).
    pub arm: String,
    /// Run seed.
    pub seed: u64,
    /// Test accuracy of the classifier trained on this arm, in percent.
    pub cas: f64,
    /// Accepted over drawn samples (`None` for the real images).
    pub acceptance_rate: Option<f64>,
    /// Samples drawn in all (`None` for the real images).
    pub drawn: Option<usize>,
    /// Images per class the arm had before the cut.
    pub available: Vec<usize>,
    /// Images per class the classifier trained on (the same for every arm
    /// of the seed).
    pub per_class: usize,
    /// The run folder (`None` for the real images).
    pub run: Option<String>,
}

fn mean_sd(v: &[f64], digits: usize) -> String {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return format!("{m:.digits$}");
    }
    let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    format!("{m:.digits$} ± {sd:.digits$}")
}

/// The range of `v` as `a` or `a–b`.
fn range(v: &[usize]) -> String {
    let (lo, hi) = (
        v.iter().min().copied().unwrap_or(0),
        v.iter().max().copied().unwrap_or(0),
    );
    if lo == hi {
        format!("{lo}")
    } else {
        format!("{lo}–{hi}")
    }
}

/// The summary table (arms in `order`, rows of every seed), then one line
/// per seed whose arms were cut below the requested count.
pub fn markdown(rows: &[Row], order: &[&str], requested: usize) -> String {
    let mut o = String::new();
    let seeds: Vec<u64> = {
        let mut s: Vec<u64> = rows.iter().map(|r| r.seed).collect();
        s.dedup();
        s
    };
    let seed_list = seeds
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        o,
        "| arm | CAS % (mean ± sd over {} seed{}) | per seed | acceptance rate | images per class |\n|---|---|---|---|---|",
        seeds.len(),
        if seeds.len() == 1 { "" } else { "s" }
    );
    for &arm in order {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.arm == arm).collect();
        if mine.is_empty() {
            continue;
        }
        let cas: Vec<f64> = mine.iter().map(|r| r.cas).collect();
        let per_seed = cas
            .iter()
            .map(|c| format!("{c:.1}"))
            .collect::<Vec<_>>()
            .join(" / ");
        let rates: Vec<f64> = mine
            .iter()
            .filter_map(|r| r.acceptance_rate.map(|a| a * 100.0))
            .collect();
        let rate = if rates.is_empty() {
            "–".to_owned()
        } else {
            format!("{} %", mean_sd(&rates, 1))
        };
        let per_class: Vec<usize> = mine.iter().map(|r| r.per_class).collect();
        let _ = writeln!(
            o,
            "| {arm} | {} | {per_seed} | {rate} | {} |",
            mean_sd(&cas, 1),
            range(&per_class)
        );
    }
    let _ = writeln!(
        o,
        "\nSeeds {seed_list}; {requested} images per class requested."
    );
    for &seed in &seeds {
        let of_seed: Vec<&Row> = rows.iter().filter(|r| r.seed == seed).collect();
        let Some(first) = of_seed.first() else {
            continue;
        };
        if first.per_class < requested {
            let short: Vec<String> = of_seed
                .iter()
                .filter(|r| r.available.iter().any(|&a| a < requested))
                .map(|r| format!("{} ({:?})", r.arm, r.available))
                .collect();
            let _ = writeln!(
                o,
                "Seed {seed}: {} had fewer than {requested} of some class, so every arm of this seed trains on {} per class.",
                short.join(", "),
                first.per_class
            );
        }
    }
    o
}

/// The paired CAS differences (arm − baseline at the same seed, in points)
/// of every comparison in [`COMPARISONS`] whose two arms have rows.
pub fn paired_lines(rows: &[Row]) -> Vec<Line> {
    let values = |arm: &str| -> Vec<(u64, f64)> {
        rows.iter()
            .filter(|r| r.arm == arm)
            .map(|r| (r.seed, r.cas))
            .collect()
    };
    COMPARISONS
        .iter()
        .filter(|(a, b)| !values(a).is_empty() && !values(b).is_empty())
        .map(|(a, b)| Line {
            labels: vec![(*a).to_owned(), (*b).to_owned()],
            metrics: vec![Paired::by_seed(&values(a), &values(b))],
        })
        .collect()
}

/// The paired-difference table (empty without a comparison).
pub fn paired_markdown(lines: &[Line]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "Paired differences of CAS, arm − baseline at the same seed (percentage points):\n\n{}\n{}\n",
        paired::table(&["arm", "against"], &[("Δ CAS (points)", 1)], lines),
        paired::NOTE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(arm: &str, seed: u64, cas: f64, rate: Option<f64>, available: [usize; 2]) -> Row {
        Row {
            arm: arm.into(),
            seed,
            cas,
            acceptance_rate: rate,
            drawn: None,
            available: available.to_vec(),
            per_class: available.into_iter().min().unwrap().min(32),
            run: None,
        }
    }

    #[test]
    fn the_table_gives_mean_sd_rates_and_cuts() {
        let mut rows = vec![
            row("a", 0, 50.0, Some(0.5), [32, 32]),
            row("real", 0, 90.0, None, [100, 100]),
            row("a", 1, 60.0, Some(0.7), [32, 30]),
            row("real", 1, 80.0, None, [100, 100]),
        ];
        rows[3].per_class = 30; // the seed's cut
        let md = markdown(&rows, &["a", "real"], 32);
        // mean 55, sample sd √50 ≈ 7.07
        assert!(
            md.contains("| a | 55.0 ± 7.1 | 50.0 / 60.0 | 60.0 ± 14.1 % | 30–32 |"),
            "{md}"
        );
        assert!(
            md.contains("| real | 85.0 ± 7.1 | 90.0 / 80.0 | – | 30–32 |"),
            "{md}"
        );
        assert!(md.contains("over 2 seeds"), "{md}");
        assert!(
            md.contains("Seed 1: a ([32, 30]) had fewer than 32 of some class"),
            "{md}"
        );
        assert!(!md.contains("Seed 0:"), "{md}");
    }

    #[test]
    fn arms_are_paired_seed_by_seed_with_the_doc_numbers() {
        // docs/results.md's CAS per seed (0 / 1 / 2): finetune+cfg 52.0 /
        // 43.0 / 56.9, +rejection 55.7 / 62.6 / 57.9. Rejection − CFG:
        // 3.7, 19.6, 1.0: mean 8.1, sd 10.050, 95 % interval
        // 8.1 ± 4.303 · 10.050 / √3 = [−16.9, 33.1].
        let cas = [
            ("finetune", [53.4, 43.2, 57.7]),
            ("finetune+cfg", [52.0, 43.0, 56.9]),
            ("finetune+cfg+rejection", [55.7, 62.6, 57.9]),
        ];
        let mut rows = Vec::new();
        for (arm, v) in cas {
            for (seed, c) in v.into_iter().enumerate() {
                rows.push(row(arm, seed as u64, c, None, [32, 32]));
            }
        }
        let lines = paired_lines(&rows);
        let md = paired_markdown(&lines);
        assert!(
            md.contains("| finetune+cfg+rejection | finetune+cfg | 3 | 8.1 [-16.9, 33.1] |"),
            "{md}"
        );
        // +cfg − finetune: −1.4, −0.2, −0.8: mean −0.8, sd 0.6, half-width
        // 4.303 · 0.6 / √3 = 1.49.
        assert!(
            md.contains("| finetune+cfg | finetune | 3 | -0.8 [-2.3, 0.7] |"),
            "{md}"
        );
        // sdft+rejection and real have no rows: no line for them.
        assert_eq!(lines.len(), 3, "{md}");
        assert!(
            md.contains("| arm | against | n | Δ CAS (points) |"),
            "{md}"
        );
        assert_eq!(paired_markdown(&paired_lines(&rows[..3])), "");
    }
}
