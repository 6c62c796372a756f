//! `dtx bench transfer`: the same target set, seeds and step budget through
//! several transfer manifests, one table of their `[eval]` metrics, then
//! each manifest against naive fine-tuning paired by seed with 95 %
//! intervals (`dtx::eval::paired`); `results.json` keeps every value.

use anyhow::{Context, bail};
use dtx::eval::paired::{self, Line, Paired};
use dtx::manifest;
use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;

/// The manifests compared when none are given, in the shipped manifests
/// folder (`crate::shipped`).
const DEFAULT_MANIFESTS: [&str; 3] = ["scratch.toml", "naive-finetune.toml", "sdft.toml"];

/// `dtx bench transfer` arguments.
#[derive(Debug, clap::Args)]
pub struct TransferArgs {
    /// Manifests to compare; each needs `[eval]` metrics. Default:
    /// scratch.toml, naive-finetune.toml and sdft.toml of the shipped
    /// manifests folder (see `--manifests`).
    pub manifests: Vec<PathBuf>,
    /// Seeds, comma-separated: each manifest runs once per seed (`run.seed`),
    /// as `bench-<run name>-seed<seed>` in its output folder (a previous
    /// bench run of that name is replaced).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub seeds: Vec<u64>,
    /// Overrides applied to every manifest (`train.steps=100`, …).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Also write the tables (Markdown) to this file. The per-seed values
    /// and the paired differences always go to `bench-transfer/results.json`
    /// in the first manifest's output folder (replaced on a rerun).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where the shipped manifests are and the runs go.
    #[command(flatten)]
    pub places: crate::shipped::Places,
}

/// The baseline every other manifest is compared with, seed by seed: the
/// one whose run is called this, else the first manifest.
const BASELINE: &str = "naive-finetune";

/// One finished run.
#[derive(serde::Serialize)]
struct Row {
    name: String,
    seed: u64,
    kid: Option<f64>,
    fd: Option<f64>,
    nearest: Option<f64>,
    reference_nearest: Option<f64>,
    source_distance: Option<f64>,
    seconds: f64,
    /// Parameters that train (the base's that train and every plugin's),
    /// as `dtx plan` counts them; `None` when the base's are unknown.
    trainable: Option<usize>,
    names: (String, String),
}

fn mean_sd(v: &[f64]) -> String {
    if v.is_empty() {
        return "–".into();
    }
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    if v.len() == 1 {
        return format!("{m:.3}");
    }
    let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    format!("{m:.3} ± {sd:.3}")
}

fn cell(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.3}"))
}

/// Runs `dtx bench transfer`.
pub fn run(a: &TransferArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    if a.seeds.is_empty() {
        bail!("--seeds needs at least one seed");
    }
    let manifests: Vec<PathBuf> = if a.manifests.is_empty() {
        let dir =
            crate::shipped::find_manifests(a.places.manifests_dir.as_deref(), &DEFAULT_MANIFESTS)?;
        DEFAULT_MANIFESTS.iter().map(|f| dir.join(f)).collect()
    } else {
        a.manifests.clone()
    };
    let mut overrides = a.set.clone();
    overrides.extend(crate::shipped::runs_override(a.places.runs.as_deref())?);
    // Every manifest loads (and has metrics) before anything runs.
    let mut loaded = Vec::new();
    let mut results_dir = None;
    for path in &manifests {
        let m = load_with_metrics(path, &overrides)?;
        results_dir.get_or_insert_with(|| m.output_dir().join("bench-transfer"));
        loaded.push((path.clone(), m.manifest.run.name.clone()));
    }
    let mut rows = Vec::new();
    for &seed in &a.seeds {
        for (path, name) in &loaded {
            let bench_name = format!("bench-{name}-seed{seed}");
            let mut set = overrides.clone();
            set.push(format!("run.seed={seed}"));
            writeln!(out, "== {name}, seed {seed} ({})", path.display())?;
            let (summary, seconds, trainable) = fresh_run(path, set, &bench_name)?;
            let e = summary
                .evaluation
                .context("the run produced no evaluation (no [sample] section?)")?;
            for line in e.lines() {
                writeln!(out, "   {line}")?;
            }
            writeln!(
                out,
                "   {seconds:.0} s, run folder {}",
                summary.dir.display()
            )?;
            rows.push(Row {
                name: name.clone(),
                seed,
                kid: e.kid.map(|(k, _)| k.mean * 1e3),
                fd: e.fd,
                nearest: e.nearest.map(|n| n.samples),
                reference_nearest: e.nearest.and_then(|n| n.reference),
                source_distance: e.source_distance,
                seconds,
                trainable,
                names: e.names.clone(),
            });
        }
    }
    let table = tables(&rows, &loaded);
    writeln!(out, "\n{table}")?;
    if let Some(p) = &a.out {
        std::fs::write(p, &table).with_context(|| format!("writing `{}`", p.display()))?;
    }
    let dir = results_dir.context("no manifest")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating `{}`", dir.display()))?;
    let path = dir.join("results.json");
    let json = results_json(a, &rows, &loaded);
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing `{}`", path.display()))?;
    writeln!(out, "results: {}", path.display())?;
    Ok(())
}

/// Everything the bench measured: the manifests, every run's values per
/// seed and the paired differences against the baseline.
fn results_json(
    a: &TransferArgs,
    rows: &[Row],
    manifests: &[(PathBuf, String)],
) -> serde_json::Value {
    let (baseline, lines) = paired_lines(rows, manifests);
    serde_json::json!({
        "manifests": manifests.iter().map(|(p, n)| serde_json::json!({"path": p, "run": n})).collect::<Vec<_>>(),
        "seeds": a.seeds,
        "overrides": a.set,
        "rows": rows,
        "baseline": baseline,
        "paired": paired::lines_json(&["run", "against"], &PAIRED_KEYS, &lines),
    })
}

/// The metrics compared seed by seed: (JSON key, value). The held-out →
/// nearest-train distance is left out: it is the same for every run of a
/// seed.
const PAIRED_KEYS: [&str; 4] = ["kid_x1e3", "fd", "nearest", "source_distance"];

fn paired_values(r: &Row) -> [Option<f64>; 4] {
    [r.kid, r.fd, r.nearest, r.source_distance]
}

/// The baseline's name and, for every other manifest, its paired
/// differences against it per metric of [`PAIRED_KEYS`].
fn paired_lines(rows: &[Row], manifests: &[(PathBuf, String)]) -> (String, Vec<Line>) {
    let baseline = manifests
        .iter()
        .find(|(_, n)| n == BASELINE)
        .or(manifests.first())
        .map(|(_, n)| n.clone())
        .unwrap_or_default();
    let values = |name: &str, k: usize| -> Vec<(u64, f64)> {
        rows.iter()
            .filter(|r| r.name == name)
            .filter_map(|r| Some((r.seed, paired_values(r)[k]?)))
            .collect()
    };
    let lines = manifests
        .iter()
        .filter(|(_, n)| *n != baseline)
        .map(|(_, name)| Line {
            labels: vec![name.clone(), baseline.clone()],
            metrics: (0..PAIRED_KEYS.len())
                .map(|k| Paired::by_seed(&values(name, k), &values(&baseline, k)))
                .collect(),
        })
        .collect();
    (baseline, lines)
}

/// Loads `path` with overrides `set`; an error unless it has `[eval]
/// metrics` (a benchmark compares their numbers).
pub(super) fn load_with_metrics(
    path: &std::path::Path,
    set: &[String],
) -> anyhow::Result<manifest::LoadedManifest> {
    let m = manifest::load(path, set)?;
    if m.manifest
        .eval
        .as_ref()
        .is_none_or(|e| e.metrics.is_empty())
    {
        bail!(
            "`{}` has no `[eval] metrics`: the benchmark compares their numbers",
            path.display()
        );
    }
    Ok(m)
}

/// Runs `path` with overrides `set` as run `run_name` (an earlier run of
/// that name is replaced), quietly; its summary, wall time in seconds and
/// trainable parameters (as `dtx plan` counts them).
pub(super) fn fresh_run(
    path: &std::path::Path,
    mut set: Vec<String>,
    run_name: &str,
) -> anyhow::Result<(dtx::run::RunSummary, f64, Option<usize>)> {
    set.push(format!("run.name=\"{run_name}\""));
    let m = manifest::load(path, &set)?;
    let dir = m.output_dir().join(run_name);
    if dir.join("manifest.toml").is_file() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("replacing the bench run `{}`", dir.display()))?;
    }
    let opts = dtx::run::RunOptions {
        quiet: true,
        ..Default::default()
    };
    let plan = dtx::plan::resolve(m.clone())?;
    let trainable = plan
        .base_trainable()
        .map(|b| b + plan.plugins.iter().map(|p| p.parameters).sum::<usize>());
    drop(plan);
    let started = std::time::Instant::now();
    let summary = dtx::cli::plan_and_run(m, dtx::cli::Job::Run(&opts), &mut Vec::new())
        .with_context(|| format!("bench run `{run_name}` of `{}`", path.display()))?;
    Ok((summary, started.elapsed().as_secs_f64(), trainable))
}

/// Per-run rows, then mean ± sd per manifest over the seeds.
fn tables(rows: &[Row], manifests: &[(PathBuf, String)]) -> String {
    let (kid, fd) = rows
        .first()
        .map(|r| r.names.clone())
        .unwrap_or_else(|| ("KID".into(), "FD".into()));
    let mut o = String::new();
    let header = format!(
        "| {kid} ×10³ | {fd} | sample → nearest train | held-out → nearest train | to source sample | wall s |"
    );
    let _ = writeln!(
        o,
        "| run | seed {header} trainable |\n|---|---|---|---|---|---|---|---|---|"
    );
    for r in rows {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} | {} |",
            r.name,
            r.seed,
            cell(r.kid),
            cell(r.fd),
            cell(r.nearest),
            cell(r.reference_nearest),
            cell(r.source_distance),
            r.seconds,
            r.trainable.map_or("–".into(), |n| n.to_string())
        );
    }
    let seeds = rows.iter().filter(|r| r.name == manifests[0].1).count();
    if seeds > 1 {
        let _ = writeln!(
            o,
            "\nMean ± sd over {seeds} seeds:\n\n| run {header}\n|---|---|---|---|---|---|---|"
        );
        for (_, name) in manifests {
            let mine: Vec<&Row> = rows.iter().filter(|r| &r.name == name).collect();
            let col = |f: &dyn Fn(&Row) -> Option<f64>| {
                mean_sd(&mine.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
            };
            let _ = writeln!(
                o,
                "| {name} | {} | {} | {} | {} | {} | {} |",
                col(&|r| r.kid),
                col(&|r| r.fd),
                col(&|r| r.nearest),
                col(&|r| r.reference_nearest),
                col(&|r| r.source_distance),
                col(&|r| Some(r.seconds))
            );
        }
    }
    let (baseline, lines) = paired_lines(rows, manifests);
    if !lines.is_empty() {
        let _ = writeln!(
            o,
            "\nPaired differences, run − {baseline} at the same seed:\n\n{}\n{}",
            paired::table(
                &["run", "against"],
                &[
                    (&format!("Δ {kid} ×10³"), 3),
                    (&format!("Δ {fd}"), 3),
                    ("Δ sample → nearest train", 3),
                    ("Δ to source sample", 3),
                ],
                &lines
            ),
            paired::NOTE
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, seed: u64, kid: f64) -> Row {
        Row {
            name: name.into(),
            seed,
            kid: Some(kid),
            fd: Some(kid / 10.0),
            nearest: Some(7.0),
            reference_nearest: Some(6.5),
            source_distance: None,
            seconds: 100.0,
            trainable: Some(702_499),
            names: ("KID_dtx".into(), "FD_dtx".into()),
        }
    }

    fn manifests(names: &[&str]) -> Vec<(PathBuf, String)> {
        names
            .iter()
            .map(|n| (PathBuf::from(format!("manifests/{n}.toml")), n.to_string()))
            .collect()
    }

    #[test]
    fn runs_are_paired_against_naive_finetune_seed_by_seed() {
        // The doc's KID_dtx ×10³ of seeds 0-2 (sdft − naive-finetune: −17.380,
        // −1.711, −32.371; mean −17.154, sd 15.332, half-width 4.303 · 15.332
        // / √3 = 38.088, so [−55.242, 20.934]; FD is KID / 10 here).
        let rows = vec![
            row("scratch", 0, 61980.824),
            row("naive-finetune", 0, 1271.578),
            row("sdft", 0, 1254.198),
            row("scratch", 1, 24193.557),
            row("naive-finetune", 1, 782.686),
            row("sdft", 1, 780.975),
            row("scratch", 2, 44127.679),
            row("naive-finetune", 2, 936.058),
            row("sdft", 2, 903.687),
        ];
        let md = tables(&rows, &manifests(&["scratch", "naive-finetune", "sdft"]));
        // The per-run and mean ± sd tables are as before.
        assert!(
            md.contains("| sdft | 0 | 1254.198 | 125.420 | 7.000 | 6.500 | – | 100 | 702499 |"),
            "{md}"
        );
        assert!(md.contains("Mean ± sd over 3 seeds:"), "{md}");
        assert!(
            md.contains("Paired differences, run − naive-finetune at the same seed:"),
            "{md}"
        );
        assert!(
            md.contains("| run | against | n | Δ KID_dtx ×10³ | Δ FD_dtx | Δ sample → nearest train | Δ to source sample |"),
            "{md}"
        );
        assert!(
            md.contains("| sdft | naive-finetune | 3 | -17.154 [-55.242, 20.934] | -1.715 [-5.524, 2.093] | 0.000 [0.000, 0.000] | – |"),
            "{md}"
        );
        assert!(md.contains("| scratch | naive-finetune | 3 | "), "{md}");
        assert!(!md.contains("| naive-finetune | naive-finetune |"), "{md}");
    }

    #[test]
    fn without_naive_finetune_the_first_manifest_is_the_baseline() {
        let rows = vec![row("tgdp", 0, 700.0), row("source-only", 0, 800.0)];
        let (baseline, lines) = paired_lines(&rows, &manifests(&["tgdp", "source-only"]));
        assert_eq!(baseline, "tgdp");
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].metrics[0].cell(1), "100.0 (one seed, no interval)");
        // One manifest: nothing to compare, no paired table.
        let md = tables(&rows[..1], &manifests(&["tgdp"]));
        assert!(!md.contains("Paired"), "{md}");
    }
}
