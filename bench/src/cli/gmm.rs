//! `dtx bench gmm`: the TGDP talk's Gaussian-mixture simulation. Per seed it
//! pretrains a source MLP on the source mixture, runs each method at each
//! target size n, scores the samples under the exact target density and
//! draws them; at the end it prints one table (`crate::gmm` has the
//! setting, the scores and the plots).

use crate::gmm::{Method, Row, Setting, metrics, scatter, table};
use anyhow::{Context, bail};
use dtx::data::Gmm;
use dtx::manifest;
use dtx::run::RunSummary;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Added to the seed for the exact reference samples, so that they are not
/// the seed's training points (`builtin:gmm` draws those from the run seed
/// itself).
pub const EXACT_SEED_OFFSET: u64 = 1 << 32;

/// `dtx bench gmm` arguments.
#[derive(Debug, clap::Args)]
pub struct GmmArgs {
    /// Target set sizes n, comma-separated.
    #[arg(long = "n", value_delimiter = ',', default_value = "10,100,1000")]
    pub n: Vec<usize>,
    /// Seeds, comma-separated: each pretrains its own source model, picks
    /// its own n target points and noise.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    pub seeds: Vec<u64>,
    /// Methods, comma-separated, among source, target, finetune, sdft,
    /// tgdp; the `exact` reference row is always there.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "source,target,finetune,sdft,tgdp"
    )]
    pub methods: Vec<String>,
    /// Output folder: generated manifests (`manifests/`), run folders
    /// (`runs/`, replaced when they exist), scatter PNGs, `results.json`,
    /// `table.md`.
    #[arg(long, default_value = "runs/bench-gmm")]
    pub out: PathBuf,
    /// Generated points per run (and exact reference points).
    #[arg(long, default_value_t = 2000)]
    pub samples: usize,
    /// Tiny networks and step counts (for tests; the numbers mean nothing).
    #[arg(long)]
    pub quick: bool,
    /// Also write the Markdown table to this file.
    #[arg(long)]
    pub table: Option<PathBuf>,
}

/// One run the bench makes: the source model (`method` None) or a method.
struct Job {
    name: String,
    method: Option<Method>,
    n: usize,
    seed: u64,
    manifest: PathBuf,
}

/// The methods asked for, in table order, each once.
fn parse_methods(names: &[String]) -> anyhow::Result<Vec<Method>> {
    let mut chosen = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| *n != "exact") {
        chosen.push(Method::parse(name).map_err(|e| anyhow::anyhow!("--methods: {e}"))?);
    }
    Ok(Method::ALL
        .into_iter()
        .filter(|m| chosen.contains(m))
        .collect())
}

/// Runs `dtx bench gmm`.
pub fn run(a: &GmmArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let methods = parse_methods(&a.methods)?;
    if a.seeds.is_empty() {
        bail!("--seeds needs at least one seed");
    }
    if a.n.is_empty() || a.n.contains(&0) {
        bail!("--n needs target sizes of at least 1");
    }
    if a.samples == 0 {
        bail!("--samples must be at least 1");
    }
    let setting = if a.quick {
        Setting::quick(a.samples)
    } else {
        Setting::full(a.samples)
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating `{}`", a.out.display()))?;
    let root = a.out.canonicalize()?;
    let (manifest_dir, runs) = (root.join("manifests"), root.join("runs"));
    std::fs::create_dir_all(&manifest_dir)?;

    // Before anything trains: the plugins are there and every manifest loads.
    let dirs = dtx::plugins::search_dirs(Some(&manifest_dir));
    for (m, lib) in methods.iter().filter_map(|m| Some((m, m.plugin()?))) {
        dtx::plugins::resolve_library(lib, &dirs, None).with_context(|| {
            format!(
                "method `{}` needs the plugin `{lib}`: build it (`cargo build --release -p {}`) or put it on DTX_PLUGIN_PATH",
                m.name(),
                lib.replace('_', "-")
            )
        })?;
    }
    let jobs = write_manifests(&setting, &methods, a, &manifest_dir, &runs)?;
    for j in &jobs {
        manifest::load(&j.manifest, &[])?;
    }

    let target = Gmm::default_target();
    let weights: Vec<f64> = target.components().iter().map(|c| c.weight).collect();
    let mut rows = Vec::new();
    let mut pretrain = Vec::new();
    let first_seed = a.seeds[0];
    let total = Instant::now();
    for &seed in &a.seeds {
        let started = Instant::now();
        let (exact, _) = target.sample(setting.samples, seed + EXACT_SEED_OFFSET);
        let row = Row {
            method: "exact".into(),
            n: None,
            seed,
            scores: metrics::score(&target, &exact),
            seconds: started.elapsed().as_secs_f64(),
            dir: None,
        };
        progress(out, &row)?;
        if seed == first_seed {
            save_png(&scatter::scatter(&target, &exact, None), &root, "exact")?;
        }
        rows.push(row);
        for job in jobs.iter().filter(|j| j.seed == seed) {
            let Some(method) = job.method else {
                writeln!(out, "seed {seed}: pretraining the source model …")?;
                out.flush()?;
                let (_, seconds) = run_one(job, &runs)?;
                writeln!(out, "seed {seed}: source model trained in {seconds:.0} s")?;
                pretrain.push((seed, seconds));
                continue;
            };
            let (summary, seconds) = run_one(job, &runs)?;
            let points = samples_of(&summary, &job.name)?;
            let row = Row {
                method: method.name().into(),
                n: method.uses_target().then_some(job.n),
                seed,
                scores: metrics::score(&target, &points),
                seconds,
                dir: Some(summary.dir.clone()),
            };
            progress(out, &row)?;
            if seed == first_seed {
                let train = method
                    .uses_target()
                    .then(|| target_points(job.n, seed))
                    .transpose()?;
                let img = scatter::scatter(&target, &points, train.as_deref());
                let stem = match method {
                    Method::Source => "source".into(),
                    m => format!("{}-n{}", m.name(), job.n),
                };
                save_png(&img, &root, &stem)?;
            }
            rows.push(row);
        }
    }

    let lines = table::paired_lines(&rows, &methods, &a.n);
    let table = format!(
        "{}\n{}",
        table::markdown(&rows, &methods, &a.n, &a.seeds),
        table::paired_markdown(&lines)
    );
    let mut doc = format!("# dtx bench gmm\n\n{}\n{table}", setting.describe(&methods));
    if !pretrain.is_empty() {
        let mean = pretrain.iter().map(|p| p.1).sum::<f64>() / pretrain.len() as f64;
        doc += &format!(
            "\nPretraining the source model took {mean:.0} s a seed (not in the wall s column). "
        );
    }
    doc += &format!(
        "Total {:.0} s. Scatter plots (seed {first_seed}): `scatter-<method>-n<n>.png`, `scatter-source.png`, `scatter-exact.png`: \
         the generated points dark over the exact target density (blue shading, contour lines at densities {}), the run's n target points red, window [−{e}, {e}]².\n",
        total.elapsed().as_secs_f64(),
        scatter::CONTOUR_LEVELS.map(|l| l.to_string()).join(", "),
        e = scatter::EXTENT,
    );
    writeln!(out, "\n{table}")?;
    let json = table::to_json(&setting, &weights, &rows, &pretrain, &lines);
    let results = root.join("results.json");
    std::fs::write(&results, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing `{}`", results.display()))?;
    std::fs::write(root.join("table.md"), &doc)
        .with_context(|| format!("writing `{}`", root.join("table.md").display()))?;
    if let Some(p) = &a.table {
        std::fs::write(p, &doc).with_context(|| format!("writing `{}`", p.display()))?;
    }
    writeln!(
        out,
        "results: {} and {}",
        results.display(),
        root.join("table.md").display()
    )?;
    Ok(())
}

/// Writes every run's manifest into `dir`, in the order they run: per seed
/// the source model (when a method needs it), `source`, then per n each
/// method that sees the target points.
fn write_manifests(
    setting: &Setting,
    methods: &[Method],
    a: &GmmArgs,
    dir: &Path,
    runs: &Path,
) -> anyhow::Result<Vec<Job>> {
    let mut jobs = Vec::new();
    let mut add = |name: String, method, n, seed, text: String| -> anyhow::Result<()> {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).with_context(|| format!("writing `{}`", path.display()))?;
        jobs.push(Job {
            name,
            method,
            n,
            seed,
            manifest: path,
        });
        Ok(())
    };
    for &seed in &a.seeds {
        let source = runs.join(Setting::pretrain_name(seed));
        if methods.iter().any(|m| m.needs_source()) {
            let text = setting.pretrain_manifest(seed, runs);
            add(Setting::pretrain_name(seed), None, 0, seed, text)?;
        }
        if methods.contains(&Method::Source) {
            let text = setting.method_manifest(Method::Source, 0, seed, runs, &source);
            add(
                Setting::run_name(Method::Source, 0, seed),
                Some(Method::Source),
                0,
                seed,
                text,
            )?;
        }
        for &n in &a.n {
            for &m in methods.iter().filter(|m| m.uses_target()) {
                let text = setting.method_manifest(m, n, seed, runs, &source);
                add(Setting::run_name(m, n, seed), Some(m), n, seed, text)?;
            }
        }
    }
    Ok(jobs)
}

/// Runs one job into `runs/<name>` (replacing an earlier bench run there);
/// returns what it produced and its wall seconds.
fn run_one(job: &Job, runs: &Path) -> anyhow::Result<(RunSummary, f64)> {
    let dir = runs.join(&job.name);
    if dir.join("manifest.toml").is_file() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("replacing the bench run `{}`", dir.display()))?;
    }
    let loaded = manifest::load(&job.manifest, &[])?;
    let opts = dtx::run::RunOptions {
        quiet: true,
        ..Default::default()
    };
    let started = Instant::now();
    let mut sink = Vec::new();
    let summary = dtx::cli::plan_and_run(loaded, dtx::cli::Job::Run(&opts), &mut sink)
        .with_context(|| format!("bench run `{}` ({})", job.name, job.manifest.display()))?;
    Ok((summary, started.elapsed().as_secs_f64()))
}

/// The run's samples as flat `[n, 2]` points.
fn samples_of(summary: &RunSummary, name: &str) -> anyhow::Result<Vec<f32>> {
    match &summary.samples {
        Some((v, shape)) if shape.last() == Some(&2) && shape.len() == 2 => Ok(v.clone()),
        Some((_, shape)) => {
            bail!("bench run `{name}` gave samples of shape {shape:?}, not 2-D points")
        }
        None => bail!("bench run `{name}` produced no samples"),
    }
}

/// The n target points a run of `seed` trains on: what the engine loads for
/// `[target] dataset = "builtin:gmm", limit = n, config = { preset = "target" }`
/// (n points drawn from the run seed, none held out).
fn target_points(n: usize, seed: u64) -> anyhow::Result<Vec<f32>> {
    let mut config = toml::Table::new();
    config.insert("preset".into(), "target".into());
    Ok(dtx::data::builtin("gmm", &config, seed, n)?.samples)
}

fn save_png(img: &image::RgbImage, root: &Path, stem: &str) -> anyhow::Result<()> {
    let path = root.join(format!("scatter-{stem}.png"));
    img.save(&path)
        .with_context(|| format!("writing `{}`", path.display()))
}

/// One line as a row finishes.
fn progress(out: &mut dyn Write, r: &Row) -> anyhow::Result<()> {
    writeln!(
        out,
        "seed {:<3} {:<9} n {:<5} mean density {:.4}  mean log-density {:8.3}  coverage TV {:.3}  {:.0} s",
        r.seed,
        r.method,
        r.n.map_or("–".into(), |n| n.to_string()),
        r.scores.mean_density,
        r.scores.mean_log_density,
        r.scores.coverage_tv,
        r.seconds
    )?;
    out.flush()?;
    Ok(())
}
