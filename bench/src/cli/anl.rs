//! `dtx bench anl`: ANL conditional, ANL unconditional and naive fine-tuning
//! ("Tuning-All") on the same target set, seeds and step budgets — KID/FD
//! at each step count, trainable parameters and wall time — then ANL's
//! mask-rate trade-off (the paper's appendix A): samples of the trained
//! conditional run at δ = 0 … 0.9, KID against the spread of samples that
//! share a condition image. Under them, the paired differences seed by seed
//! (each arm against naive fine-tuning, each δ against the first) with 95 %
//! intervals; `bench-anl/results.json` keeps every value.

use anyhow::{Context, bail};
use dtx::eval::paired::{self, Line, Paired};
use dtx::manifest;
use dtx::plan;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `dtx bench anl` arguments.
#[derive(Debug, clap::Args)]
pub struct AnlArgs {
    /// The arms, as `name=manifest` or a manifest path (named by its run).
    /// Default: anl=anl.toml, anl-unconditional=anl-unconditional.toml,
    /// naive-finetune=naive-finetune.toml of the shipped manifests folder
    /// (see `--manifests`).
    #[arg(long, value_delimiter = ',')]
    pub arms: Vec<String>,
    /// Training steps, comma-separated: every arm trains once per count.
    #[arg(long, value_delimiter = ',', default_value = "100,300")]
    pub steps: Vec<u64>,
    /// Seeds, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub seeds: Vec<u64>,
    /// Mask rates δ of the sweep, comma-separated (empty: no sweep); the
    /// first arm, at the largest step count, is sampled at each.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"
    )]
    pub mask_rates: Vec<f64>,
    /// Overrides applied to every arm (`sample.count=32`, …).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Also write the tables (Markdown) to this file. The per-seed values
    /// and the paired differences always go to `bench-anl/results.json` in
    /// the first arm's output folder (replaced on a rerun).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where the shipped manifests are and the runs go.
    #[command(flatten)]
    pub places: crate::shipped::Places,
}

/// The arm every other is compared with, seed by seed: the one of this
/// name, else the last arm.
const BASELINE: &str = "naive-finetune";

/// The arms when none are given: (name, manifest in the shipped manifests
/// folder).
const DEFAULT_ARMS: [(&str, &str); 3] = [
    ("anl", "anl.toml"),
    ("anl-unconditional", "anl-unconditional.toml"),
    ("naive-finetune", "naive-finetune.toml"),
];

#[derive(serde::Serialize)]
struct Row {
    arm: String,
    steps: u64,
    seed: u64,
    kid: Option<f64>,
    fd: Option<f64>,
    trainable: usize,
    seconds: f64,
}

#[derive(serde::Serialize)]
struct SweepRow {
    seed: u64,
    delta: f64,
    kid: Option<f64>,
    fd: Option<f64>,
    spread: Option<f64>,
}

fn arms(a: &AnlArgs) -> anyhow::Result<Vec<(String, PathBuf)>> {
    if a.arms.is_empty() {
        let files = DEFAULT_ARMS.map(|(_, f)| f);
        let dir = crate::shipped::find_manifests(a.places.manifests_dir.as_deref(), &files)?;
        return Ok(DEFAULT_ARMS
            .iter()
            .map(|(n, f)| (n.to_string(), dir.join(f)))
            .collect());
    }
    Ok(a.arms
        .iter()
        .map(|s| match s.split_once('=') {
            Some((n, p)) => (n.to_owned(), PathBuf::from(p)),
            None => (
                Path::new(s)
                    .file_stem()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_else(|| s.clone()),
                PathBuf::from(s),
            ),
        })
        .collect())
}

/// Trainable scalars of a resolved run: base (per `train.trainable`) plus
/// every plugin's.
fn trainable(p: &plan::Plan) -> usize {
    p.base_trainable().unwrap_or(0) + p.plugins.iter().map(|x| x.parameters).sum::<usize>()
}

/// Mean L2 distance between samples conditioned on the same image (pairs
/// within each condition image's group, averaged over groups), from the
/// run's samples and `samples/conditions.csv`.
fn spread(samples: &[f32], per: usize, conditions_csv: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(conditions_csv).ok()?;
    let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, line) in text.lines().skip(1).enumerate() {
        let image: usize = line.split(',').nth(2)?.parse().ok()?;
        groups.entry(image).or_default().push(i);
    }
    let (mut sum, mut pairs) = (0.0, 0usize);
    for members in groups.values() {
        for (a, &i) in members.iter().enumerate() {
            for &j in &members[a + 1..] {
                let (x, y) = (
                    &samples[i * per..(i + 1) * per],
                    &samples[j * per..(j + 1) * per],
                );
                let d: f64 = x.iter().zip(y).map(|(p, q)| ((p - q) as f64).powi(2)).sum();
                sum += d.sqrt();
                pairs += 1;
            }
        }
    }
    (pairs > 0).then(|| sum / pairs as f64)
}

fn cell(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.3}"))
}

/// Runs `dtx bench anl`.
pub fn run(a: &AnlArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let need = "--seeds, --steps and --arms need at least one value each";
    if a.seeds.is_empty() || a.steps.is_empty() {
        bail!(need);
    }
    if let Some(d) = a.mask_rates.iter().find(|d| !(0.0..1.0).contains(*d)) {
        bail!("--mask-rates: {d} is outside [0, 1)");
    }
    let arms = arms(a)?;
    if arms.is_empty() {
        bail!(need);
    }
    let mut overrides = a.set.clone();
    overrides.extend(crate::shipped::runs_override(a.places.runs.as_deref())?);
    // Every arm resolves (plugins built, [eval] present) before anything
    // runs; its trainable parameters do not depend on the seed or steps.
    let mut params = Vec::new();
    let mut emas = Vec::new();
    let mut results_dir = None;
    for (name, path) in &arms {
        let m = super::transfer::load_with_metrics(path, &overrides)
            .with_context(|| format!("arm `{name}`"))?;
        results_dir.get_or_insert_with(|| m.output_dir().join("bench-anl"));
        emas.push(
            m.manifest
                .train
                .as_ref()
                .and_then(|t| t.ema)
                .map(|e| e.decay),
        );
        params.push(trainable(
            &plan::resolve(m).with_context(|| format!("arm `{name}`"))?,
        ));
    }
    let top = *a.steps.iter().max().expect("checked");
    let mut rows = Vec::new();
    let mut sweep = Vec::new();
    for &seed in &a.seeds {
        for (i, (name, path)) in arms.iter().enumerate() {
            for &steps in &a.steps {
                let mut set = overrides.clone();
                set.extend([
                    format!("run.seed={seed}"),
                    format!("train.steps={steps}"),
                    format!("train.checkpoint_every={steps}"),
                ]);
                writeln!(out, "== {name}, {steps} steps, seed {seed}")?;
                let run_name = format!("bench-anl-{name}-{steps}-seed{seed}");
                let (summary, seconds, _) = super::transfer::fresh_run(path, set, &run_name)?;
                let e = summary
                    .evaluation
                    .context("the run produced no evaluation")?;
                writeln!(out, "   {} ({seconds:.0} s)", e.lines().join("; "))?;
                rows.push(Row {
                    arm: name.clone(),
                    steps,
                    seed,
                    kid: e.kid.map(|(k, _)| k.mean * 1e3),
                    fd: e.fd,
                    trainable: params[i],
                    seconds,
                });
                if i == 0 && steps == top {
                    for &delta in &a.mask_rates {
                        sweep.push(sample_at(&summary.dir, seed, delta, out)?);
                    }
                }
            }
        }
    }
    let table = tables(&rows, &sweep, &arms, &emas);
    writeln!(out, "\n{table}")?;
    if let Some(p) = &a.out {
        std::fs::write(p, &table).with_context(|| format!("writing `{}`", p.display()))?;
    }
    let dir = results_dir.context("no arm")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating `{}`", dir.display()))?;
    let path = dir.join("results.json");
    let json = results_json(a, &arms, &emas, &rows, &sweep);
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing `{}`", path.display()))?;
    writeln!(out, "results: {}", path.display())?;
    Ok(())
}

/// Everything the bench measured: the arms and their EMA, every run's and
/// every mask rate's values per seed, and the paired differences.
fn results_json(
    a: &AnlArgs,
    arms: &[(String, PathBuf)],
    emas: &[Option<f64>],
    rows: &[Row],
    sweep: &[SweepRow],
) -> serde_json::Value {
    serde_json::json!({
        "arms": arms.iter().zip(emas).map(|((n, p), e)| serde_json::json!({"name": n, "manifest": p, "ema": e})).collect::<Vec<_>>(),
        "seeds": a.seeds,
        "steps": a.steps,
        "overrides": a.set,
        "rows": rows,
        "sweep": sweep,
        "paired": paired::lines_json(&["arm", "steps", "against"], &["kid_x1e3", "fd"], &arm_lines(rows, arms)),
        "sweep_paired": paired::lines_json(&["delta", "against"], &["kid_x1e3", "fd", "spread"], &sweep_lines(sweep)),
    })
}

/// The baseline arm: [`BASELINE`] when there is one, else the last.
fn baseline(arms: &[(String, PathBuf)]) -> Option<&str> {
    arms.iter()
        .find(|(n, _)| n == BASELINE)
        .or(arms.last())
        .map(|(n, _)| n.as_str())
}

/// Each arm but the baseline against it, per step count: paired KID and FD.
fn arm_lines(rows: &[Row], arms: &[(String, PathBuf)]) -> Vec<Line> {
    let Some(base) = baseline(arms) else {
        return Vec::new();
    };
    let mut steps: Vec<u64> = rows.iter().map(|r| r.steps).collect();
    steps.sort_unstable();
    steps.dedup();
    let values = |arm: &str, steps: u64, f: fn(&Row) -> Option<f64>| -> Vec<(u64, f64)> {
        rows.iter()
            .filter(|r| r.arm == arm && r.steps == steps)
            .filter_map(|r| Some((r.seed, f(r)?)))
            .collect()
    };
    let metrics: [fn(&Row) -> Option<f64>; 2] = [|r| r.kid, |r| r.fd];
    let mut lines = Vec::new();
    for (name, _) in arms.iter().filter(|(n, _)| n != base) {
        for &s in &steps {
            lines.push(Line {
                labels: vec![name.clone(), s.to_string(), base.to_owned()],
                metrics: metrics
                    .iter()
                    .map(|&f| Paired::by_seed(&values(name, s, f), &values(base, s, f)))
                    .collect(),
            });
        }
    }
    lines
}

/// Each mask rate of the sweep against its first: paired KID, FD and
/// spread.
fn sweep_lines(sweep: &[SweepRow]) -> Vec<Line> {
    let Some(first) = sweep.first().map(|s| s.delta) else {
        return Vec::new();
    };
    let mut deltas: Vec<f64> = Vec::new();
    for s in sweep {
        if !deltas.contains(&s.delta) {
            deltas.push(s.delta);
        }
    }
    let values = |delta: f64, f: fn(&SweepRow) -> Option<f64>| -> Vec<(u64, f64)> {
        sweep
            .iter()
            .filter(|s| s.delta == delta)
            .filter_map(|s| Some((s.seed, f(s)?)))
            .collect()
    };
    let metrics: [fn(&SweepRow) -> Option<f64>; 3] = [|s| s.kid, |s| s.fd, |s| s.spread];
    deltas
        .into_iter()
        .filter(|d| *d != first)
        .map(|d| Line {
            labels: vec![d.to_string(), first.to_string()],
            metrics: metrics
                .iter()
                .map(|&f| Paired::by_seed(&values(d, f), &values(first, f)))
                .collect(),
        })
        .collect()
}

/// Samples the trained run in `dir` at mask rate `delta` (as `dtx sample
/// --mask-rate`), into `dir/mask-<delta>`.
fn sample_at(dir: &Path, seed: u64, delta: f64, out: &mut dyn Write) -> anyhow::Result<SweepRow> {
    let loaded = manifest::load(
        &dir.join("manifest.toml"),
        &[format!("sample.mask_rate={delta}")],
    )?;
    let dest = dir.join(format!("mask-{delta}"));
    let checkpoint = dir.join("checkpoints/latest.safetensors");
    let job = dtx::cli::Job::Sample {
        checkpoint: &checkpoint,
        out: &dest,
    };
    let summary = dtx::cli::plan_and_run(loaded, job, &mut Vec::new())?;
    let e = summary.evaluation.context("no evaluation")?;
    let spread = summary.samples.as_ref().and_then(|(s, shape)| {
        spread(
            s,
            shape[1..].iter().product(),
            &dest.join("samples/conditions.csv"),
        )
    });
    writeln!(
        out,
        "   δ = {delta}: {} ; spread {}",
        e.lines().join("; "),
        cell(spread)
    )?;
    Ok(SweepRow {
        seed,
        delta,
        kid: e.kid.map(|(k, _)| k.mean * 1e3),
        fd: e.fd,
        spread,
    })
}

fn tables(
    rows: &[Row],
    sweep: &[SweepRow],
    arms: &[(String, PathBuf)],
    emas: &[Option<f64>],
) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "| arm | steps | seed | KID_dtx ×10³ | FD_dtx | trainable parameters | wall s |\n|---|---|---|---|---|---|---|"
    );
    for (name, _) in arms {
        for r in rows.iter().filter(|r| &r.arm == name) {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {:.0} |",
                r.arm,
                r.steps,
                r.seed,
                cell(r.kid),
                cell(r.fd),
                r.trainable,
                r.seconds
            );
        }
    }
    if !sweep.is_empty() {
        let _ = writeln!(
            o,
            "\nMask rate δ ({}, largest step count; spread = mean L2 distance between samples sharing a condition image):\n\n| δ | seed | KID_dtx ×10³ | FD_dtx | spread |\n|---|---|---|---|---|",
            arms[0].0
        );
        for s in sweep {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} |",
                s.delta,
                s.seed,
                cell(s.kid),
                cell(s.fd),
                cell(s.spread)
            );
        }
    }
    o + &paired_tables(rows, sweep, arms, emas)
}

/// The paired differences under the tables: arms against the baseline,
/// then mask rates against the first; and each arm's EMA, which differs
/// between the arms compared.
fn paired_tables(
    rows: &[Row],
    sweep: &[SweepRow],
    arms: &[(String, PathBuf)],
    emas: &[Option<f64>],
) -> String {
    let mut o = String::new();
    let lines = arm_lines(rows, arms);
    if let (Some(base), false) = (baseline(arms), lines.is_empty()) {
        let ema: Vec<String> = arms
            .iter()
            .zip(emas)
            .map(|((n, _), e)| format!("{n} {}", e.map_or("none".into(), |d| d.to_string())))
            .collect();
        let _ = writeln!(
            o,
            "\nPaired differences, arm − {base} at the same seed and steps:\n\n{}\n{}\n\
             EMA of the sampled weights (`train.ema` decay): {}; dtx keeps no EMA of plugin parameters, so an adapter arm samples its last weights.",
            paired::table(
                &["arm", "steps", "against"],
                &[("Δ KID_dtx ×10³", 3), ("Δ FD_dtx", 3)],
                &lines
            ),
            paired::NOTE,
            ema.join(", ")
        );
    }
    let lines = sweep_lines(sweep);
    if !lines.is_empty() {
        let _ = writeln!(
            o,
            "\nPaired differences, each mask rate δ − the first at the same seed (one mask rectangle per sampling batch unless `sample.mask_per_sample`, so with `sample.count` = `sample.batch` one rectangle per run):\n\n{}\n{}",
            paired::table(
                &["δ", "against"],
                &[("Δ KID_dtx ×10³", 3), ("Δ FD_dtx", 3), ("Δ spread", 3)],
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

    #[test]
    fn spread_averages_pairs_within_each_condition_image() {
        let dir = std::env::temp_dir().join(format!("dtx-spread-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let csv = dir.join("conditions.csv");
        std::fs::write(
            &csv,
            "file,condition,image,top,left,height,width\n0.png,t,0,0,0,1,1\n1.png,t,1,0,0,1,1\n2.png,t,0,0,0,1,1\n",
        )
        .unwrap();
        // samples 0 and 2 share image 0: distance |(0,0) - (3,4)| = 5
        let s = [0.0, 0.0, 9.0, 9.0, 3.0, 4.0];
        assert_eq!(spread(&s, 2, &csv), Some(5.0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn row(arm: &str, steps: u64, seed: u64, kid: f64) -> Row {
        Row {
            arm: arm.into(),
            steps,
            seed,
            kid: Some(kid),
            fd: Some(kid / 20.0),
            trainable: 1,
            seconds: 10.0,
        }
    }

    fn sweep_row(seed: u64, delta: f64, kid: f64, spread: f64) -> SweepRow {
        SweepRow {
            seed,
            delta,
            kid: Some(kid),
            fd: None,
            spread: Some(spread),
        }
    }

    #[test]
    fn arms_are_paired_with_naive_finetune_per_step_count_and_deltas_with_the_first() {
        // docs/results.md, 300 steps, KID_dtx ×10³ per seed: anl-unconditional
        // 1030.855 / 890.127 / 738.886, naive-finetune 1271.578 / 782.686 /
        // 936.058. Differences −240.723, 107.441, −197.172: mean −110.151,
        // sd 189.694, half-width 4.303 · 189.694 / √3 = 471.27.
        let arms: Vec<(String, PathBuf)> = ["anl-unconditional", "naive-finetune"]
            .iter()
            .map(|n| (n.to_string(), PathBuf::from(format!("{n}.toml"))))
            .collect();
        let rows = vec![
            row("anl-unconditional", 300, 0, 1030.855),
            row("anl-unconditional", 300, 1, 890.127),
            row("anl-unconditional", 300, 2, 738.886),
            row("naive-finetune", 300, 0, 1271.578),
            row("naive-finetune", 300, 1, 782.686),
            row("naive-finetune", 300, 2, 936.058),
        ];
        let sweep = vec![
            sweep_row(0, 0.0, 1784.5, 11.21),
            sweep_row(0, 0.9, 2244.4, 12.34),
            sweep_row(1, 0.0, 1097.7, 14.20),
            sweep_row(1, 0.9, 1896.8, 13.75),
        ];
        let md = tables(&rows, &sweep, &arms, &[None, Some(0.99)]);
        assert!(
            md.contains("| anl-unconditional | 300 | 0 | 1030.855 | "),
            "the per-run table is unchanged: {md}"
        );
        assert!(
            md.contains(
                "| anl-unconditional | 300 | naive-finetune | 3 | -110.151 [-581.417, 361.114] |"
            ),
            "{md}"
        );
        assert!(
            md.contains("anl-unconditional none, naive-finetune 0.99"),
            "{md}"
        );
        // δ 0.9 − 0: KID 459.9 and 799.1 (mean 629.5, half-width 12.706 ·
        // 239.85 / √2 = 2154.9); spread 1.13 and −0.45; FD was not measured.
        assert!(
            md.contains("| 0.9 | 0 | 2 | 629.500 [-1525.438, 2784.438] | – | 0.340 ["),
            "{md}"
        );
        // The last arm is the baseline when none is called naive-finetune.
        let other: Vec<(String, PathBuf)> = vec![
            ("anl".into(), PathBuf::from("anl.toml")),
            ("ft".into(), PathBuf::from("ft.toml")),
        ];
        assert_eq!(baseline(&other), Some("ft"));
    }
}
