//! The `dtx bench cas` table: one row per arm, the classification accuracy
//! score as mean ± sd over seeds, the acceptance rate of its runs and the
//! images per class its classifiers trained on.

use std::fmt::Write as _;

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
}
