//! `dtx bench anl`: ANL conditional, ANL unconditional and naive fine-tuning
//! ("Tuning-All") on the same target set, seeds and step budgets — KID/FD
//! at each step count, trainable parameters and wall time — then ANL's
//! mask-rate trade-off (the paper's appendix A): samples of the trained
//! conditional run at δ = 0 … 0.9, KID against the spread of samples that
//! share a condition image.

use crate::manifest::{self, plan};
use anyhow::{Context, bail};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `dtx bench anl` arguments.
#[derive(Debug, clap::Args)]
pub struct AnlArgs {
    /// The arms, as `name=manifest` or a manifest path (named by its run).
    /// Default: anl=manifests/anl.toml,
    /// anl-unconditional=manifests/anl-unconditional.toml,
    /// naive-finetune=manifests/naive-finetune.toml.
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
    /// Also write the tables (Markdown) to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

const DEFAULT_ARMS: [(&str, &str); 3] = [
    ("anl", "manifests/anl.toml"),
    ("anl-unconditional", "manifests/anl-unconditional.toml"),
    ("naive-finetune", "manifests/naive-finetune.toml"),
];

struct Row {
    arm: String,
    steps: u64,
    seed: u64,
    kid: Option<f64>,
    fd: Option<f64>,
    trainable: usize,
    seconds: f64,
}

struct SweepRow {
    seed: u64,
    delta: f64,
    kid: Option<f64>,
    fd: Option<f64>,
    spread: Option<f64>,
}

fn arms(a: &AnlArgs) -> Vec<(String, PathBuf)> {
    if a.arms.is_empty() {
        return DEFAULT_ARMS
            .iter()
            .map(|(n, p)| (n.to_string(), PathBuf::from(p)))
            .collect();
    }
    a.arms
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
        .collect()
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
    let arms = arms(a);
    if a.seeds.is_empty() || a.steps.is_empty() || arms.is_empty() {
        bail!("--seeds, --steps and --arms need at least one value each");
    }
    if let Some(d) = a.mask_rates.iter().find(|d| !(0.0..1.0).contains(*d)) {
        bail!("--mask-rates: {d} is outside [0, 1)");
    }
    // Every arm resolves (plugins built, [eval] present) before anything
    // runs; its trainable parameters do not depend on the seed or steps.
    let mut params = Vec::new();
    for (name, path) in &arms {
        let m = super::bench_transfer::load_with_metrics(path, &a.set)
            .with_context(|| format!("arm `{name}`"))?;
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
                let mut set = a.set.clone();
                set.extend([
                    format!("run.seed={seed}"),
                    format!("train.steps={steps}"),
                    format!("train.checkpoint_every={steps}"),
                ]);
                writeln!(out, "== {name}, {steps} steps, seed {seed}")?;
                let run_name = format!("bench-anl-{name}-{steps}-seed{seed}");
                let (summary, seconds) = super::bench_transfer::fresh_run(path, set, &run_name)?;
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
    let table = tables(&rows, &sweep, &arms);
    writeln!(out, "\n{table}")?;
    if let Some(p) = &a.out {
        std::fs::write(p, &table).with_context(|| format!("writing `{}`", p.display()))?;
    }
    Ok(())
}

/// Samples the trained run in `dir` at mask rate `delta` (as `dtx sample
/// --mask-rate`), into `dir/mask-<delta>`.
fn sample_at(dir: &Path, seed: u64, delta: f64, out: &mut dyn Write) -> anyhow::Result<SweepRow> {
    let loaded = manifest::load(
        &dir.join("manifest.toml"),
        &[format!("sample.mask_rate={delta}")],
    )?;
    let dest = dir.join(format!("mask-{delta}"));
    let summary = super::commands::plan_and_run(
        loaded,
        &crate::run::RunOptions {
            sample_from: Some((dir.join("checkpoints/latest.safetensors"), dest.clone())),
            quiet: true,
            ..Default::default()
        },
        &mut Vec::new(),
    )?;
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

fn tables(rows: &[Row], sweep: &[SweepRow], arms: &[(String, PathBuf)]) -> String {
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
}
