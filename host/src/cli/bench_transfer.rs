//! `dtx bench transfer`: the same target set, seeds and step budget through
//! several transfer manifests, one table of their `[eval]` metrics.

use crate::manifest;
use anyhow::{Context, bail};
use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;

/// The manifests compared when none are given.
const DEFAULT_MANIFESTS: [&str; 3] = [
    "manifests/scratch.toml",
    "manifests/naive-finetune.toml",
    "manifests/sdft.toml",
];

/// `dtx bench transfer` arguments.
#[derive(Debug, clap::Args)]
pub struct TransferArgs {
    /// Manifests to compare; each needs `[eval]` metrics. Default:
    /// manifests/scratch.toml, manifests/naive-finetune.toml and
    /// manifests/sdft.toml (run from the repository root).
    pub manifests: Vec<PathBuf>,
    /// Seeds, comma-separated: each manifest runs once per seed (`run.seed`),
    /// as `bench-<run name>-seed<seed>` in its output folder (a previous
    /// bench run of that name is replaced).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub seeds: Vec<u64>,
    /// Overrides applied to every manifest (`train.steps=100`, …).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Also write the tables (Markdown) to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One finished run.
struct Row {
    name: String,
    seed: u64,
    kid: Option<f64>,
    fd: Option<f64>,
    nearest: Option<f64>,
    reference_nearest: Option<f64>,
    source_distance: Option<f64>,
    seconds: f64,
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
    let manifests: Vec<PathBuf> = if a.manifests.is_empty() {
        DEFAULT_MANIFESTS.iter().map(PathBuf::from).collect()
    } else {
        a.manifests.clone()
    };
    if a.seeds.is_empty() {
        bail!("--seeds needs at least one seed");
    }
    // Every manifest loads (and has metrics) before anything runs.
    let mut loaded = Vec::new();
    for path in &manifests {
        let m = load_with_metrics(path, &a.set)?;
        loaded.push((path.clone(), m.manifest.run.name.clone()));
    }
    let mut rows = Vec::new();
    for &seed in &a.seeds {
        for (path, name) in &loaded {
            let bench_name = format!("bench-{name}-seed{seed}");
            let mut set = a.set.clone();
            set.push(format!("run.seed={seed}"));
            writeln!(out, "== {name}, seed {seed} ({})", path.display())?;
            let (summary, seconds) = fresh_run(path, set, &bench_name)?;
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
                names: e.names.clone(),
            });
        }
    }
    let table = tables(&rows, &loaded);
    writeln!(out, "\n{table}")?;
    if let Some(p) = &a.out {
        std::fs::write(p, &table).with_context(|| format!("writing `{}`", p.display()))?;
    }
    Ok(())
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
/// that name is replaced), quietly; its summary and wall time in seconds.
pub(super) fn fresh_run(
    path: &std::path::Path,
    mut set: Vec<String>,
    run_name: &str,
) -> anyhow::Result<(crate::run::RunSummary, f64)> {
    set.push(format!("run.name=\"{run_name}\""));
    let m = manifest::load(path, &set)?;
    let dir = m.output_dir().join(run_name);
    if dir.join("manifest.toml").is_file() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("replacing the bench run `{}`", dir.display()))?;
    }
    let opts = crate::run::RunOptions {
        quiet: true,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let summary = super::commands::plan_and_run(m, &opts, &mut Vec::new())
        .with_context(|| format!("bench run `{run_name}` of `{}`", path.display()))?;
    Ok((summary, started.elapsed().as_secs_f64()))
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
        "| run | seed {header}\n|---|---|---|---|---|---|---|---|"
    );
    for r in rows {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} |",
            r.name,
            r.seed,
            cell(r.kid),
            cell(r.fd),
            cell(r.nearest),
            cell(r.reference_nearest),
            cell(r.source_distance),
            r.seconds
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
    o
}
