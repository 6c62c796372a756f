//! `dtx bench cas`: per seed, the class-conditional transfer runs of each
//! arm (`crate::cas::ARMS`), the real target images, one classifier
//! per arm, its accuracy on real test images, one table.

use crate::cas::{self, ARMS, Arm, ClassifierSettings, TEST_IMAGES, TEST_SEED, table::Row};
use anyhow::{Context, bail};
use dtx::data::{self, Dataset};
use dtx::manifest::{self, LoadedManifest};
use dtx::tensor_abi::CpuBackend;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `dtx bench cas` arguments.
#[derive(Debug, clap::Args)]
pub struct CasArgs {
    /// Seeds, comma-separated: each arm runs once per seed (`run.seed`), as
    /// `bench-cas-<arm>-seed<seed>` in the manifests' output folder (or
    /// `--runs`; a previous run of that name is replaced).
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    pub seeds: Vec<u64>,
    /// Overrides applied to every run (`train.steps=100`, …).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Samples drawn per class (`sample.count` = this × classes, classes
    /// alternating); the real arm takes as many of its training images.
    #[arg(long, default_value_t = 32)]
    pub per_class: usize,
    /// Real test images (fresh `builtin:shapes` images of the target's
    /// config, seed 2⁴⁰, which no run uses).
    #[arg(long, default_value_t = TEST_IMAGES)]
    pub test_images: usize,
    /// Score a run folder that already holds a finished run of exactly the
    /// manifest the bench would run, instead of running it again.
    #[arg(long)]
    pub reuse: bool,
    /// Also write the Markdown table to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where the shipped manifests are and the runs go.
    #[command(flatten)]
    pub places: crate::shipped::Places,
    /// Two training, sampling and plugin-classifier steps, a short CAS
    /// classifier (for tests; the numbers mean nothing).
    #[arg(long, hide = true)]
    pub quick: bool,
}

/// The overrides that make `arm`'s run at `seed`, after `base` (the
/// user's `--set` and `--runs`).
fn arm_sets(a: &CasArgs, base: &[String], arm: &Arm, seed: u64, count: usize) -> Vec<String> {
    let mut set = base.to_vec();
    if a.quick {
        set.extend(cas::quick_sets(arm));
    }
    set.push(format!("run.seed={seed}"));
    set.push(format!("run.name=\"{}\"", cas::run_name(arm, seed)));
    set.push(format!("sample.count={count}"));
    set.extend(arm.sets.iter().map(|s| (*s).to_owned()));
    set
}

/// The target's class names (`target.labels` must be on).
fn class_names(m: &LoadedManifest, path: &Path) -> anyhow::Result<Vec<String>> {
    let path = path.display();
    let t = m
        .manifest
        .target
        .as_ref()
        .with_context(|| format!("`{path}` has no [target]"))?;
    if !t.labels {
        bail!("`{path}`: the bench needs `target.labels = true` (samples drawn per class)");
    }
    let name = t.builtin().with_context(|| {
        format!("`{path}`: the bench needs a built-in target (`builtin:shapes`)")
    })?;
    let probe = data::builtin(name, &t.config, m.manifest.run.seed, 1)?;
    if probe.class_names.len() < 2 {
        bail!("`{path}`: the target has fewer than two classes");
    }
    Ok(probe.class_names)
}

/// Real test images: the target's built-in set with its config at the
/// samples' side, seed [`TEST_SEED`].
fn test_set(m: &LoadedManifest, side: usize, n: usize) -> anyhow::Result<Dataset> {
    let t = m.manifest.target.as_ref().context("no [target]")?;
    let name = t.builtin().context("not a built-in target")?;
    let mut config = t.config.clone();
    if name == "shapes" && !config.contains_key("resolution") {
        config.insert("resolution".into(), toml::Value::Integer(side as i64));
    }
    Ok(data::builtin(name, &config, TEST_SEED, n)?)
}

/// Runs `dtx bench cas`.
pub fn run(a: &CasArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    if a.seeds.is_empty() {
        bail!("--seeds needs at least one seed");
    }
    if a.per_class == 0 || a.test_images == 0 {
        bail!("--per-class and --test-images must be at least 1");
    }
    let synthetic: Vec<&Arm> = ARMS.iter().filter(|a| a.manifest.is_some()).collect();
    let mut files: Vec<&str> = synthetic.iter().filter_map(|a| a.manifest).collect();
    files.dedup();
    let manifests = crate::shipped::find_manifests(a.places.manifests_dir.as_deref(), &files)?;
    let manifest_of = |arm: &Arm| manifests.join(arm.manifest.expect("synthetic arm"));
    let mut base = a.set.clone();
    base.extend(crate::shipped::runs_override(a.places.runs.as_deref())?);
    // Every arm's manifest loads, and the targets agree, before anything runs.
    let mut classes: Option<Vec<String>> = None;
    for arm in &synthetic {
        let path = manifest_of(arm);
        let m = manifest::load(&path, &arm_sets(a, &base, arm, a.seeds[0], 2))?;
        let names = class_names(&m, &path)?;
        if classes.as_ref().is_some_and(|c| *c != names) {
            bail!(
                "`{}`: its target's classes {names:?} differ from the other arms'",
                path.display()
            );
        }
        classes = Some(names);
    }
    let classes = classes.expect("there are synthetic arms");
    let k = classes.len();
    let count = a.per_class * k;
    let settings = if a.quick {
        ClassifierSettings {
            steps: 20,
            ..Default::default()
        }
    } else {
        ClassifierSettings::default()
    };
    writeln!(
        out,
        "dtx bench cas: {} arms × seeds {:?}; {} samples per class ({count} per run, classes {classes:?})",
        ARMS.len(),
        a.seeds,
        a.per_class
    )?;

    let total = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    let mut test: Option<Dataset> = None;
    let mut results_dir: Option<PathBuf> = None;
    for &seed in &a.seeds {
        // (arm, its images, sampling stats, run folder)
        let mut sets = Vec::new();
        let mut reference: Option<LoadedManifest> = None;
        for arm in &synthetic {
            let path = &manifest_of(arm);
            let m = manifest::load(path, &arm_sets(a, &base, arm, seed, count))?;
            let dir = m.output_dir().join(cas::run_name(arm, seed));
            results_dir.get_or_insert_with(|| m.output_dir().join("bench-cas"));
            if arm.name == "finetune+cfg+rejection" {
                reference = Some(manifest::load(path, &arm_sets(a, &base, arm, seed, count))?);
            }
            let started = Instant::now();
            if a.reuse && cas::finished_run(&dir, &m.to_portable_toml_string()) {
                writeln!(
                    out,
                    "== {}, seed {seed}: reusing {}",
                    arm.name,
                    dir.display()
                )?;
            } else {
                if dir.join("manifest.toml").is_file() {
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("replacing the bench run `{}`", dir.display()))?;
                }
                writeln!(out, "== {}, seed {seed} ({})", arm.name, path.display())?;
                let opts = dtx::run::RunOptions {
                    quiet: true,
                    ..Default::default()
                };
                let mut sink = Vec::new();
                dtx::cli::plan_and_run(m, dtx::cli::Job::Run(&opts), &mut sink)
                    .with_context(|| format!("bench cas run `{}`", dir.display()))?;
            }
            let r = cas::read_run(&dir, &classes)?;
            writeln!(
                out,
                "   {} of {} drawn kept ({:.1} %), per class {:?}, {:.0} s",
                r.stats.accepted,
                r.stats.drawn,
                100.0 * r.stats.acceptance_rate(),
                cas::per_class_counts(r.set.labels.as_deref().unwrap_or(&[]), k),
                started.elapsed().as_secs_f64()
            )?;
            if r.stats.accepted < r.stats.requested {
                writeln!(
                    out,
                    "   {} stopped at its attempt cap: {} of {} requested",
                    arm.name, r.stats.accepted, r.stats.requested
                )?;
            }
            sets.push((*arm, r.set, Some(r.stats), Some(dir)));
        }
        // The real arm: the run's own training images (same seed, split and
        // limit as `dtx run` takes them).
        let reference = reference.context("the rejection arm is missing")?;
        let side = sets[0].1.sample_shape[1];
        let plan = dtx::plan::resolve(reference)?;
        let (train, _held) = dtx::run::load_target(&plan, &sets[0].1.sample_shape)?;
        let real = ARMS
            .iter()
            .find(|a| a.manifest.is_none())
            .expect("real arm");
        sets.push((real, train, None, None));
        let test = match &test {
            Some(t) => t,
            None => test.insert(test_set(&plan.manifest, side, a.test_images)?),
        };

        let counts: Vec<Vec<usize>> = sets
            .iter()
            .map(|(_, s, _, _)| cas::per_class_counts(s.labels.as_deref().unwrap_or(&[]), k))
            .collect();
        let n = cas::common_per_class(a.per_class, &counts);
        if n == 0 {
            bail!(
                "seed {seed}: some arm has no image of some class ({counts:?}), so no arm can be scored"
            );
        }
        if n < a.per_class {
            writeln!(
                out,
                "   seed {seed}: some arm has fewer than {} of some class (per class: {counts:?}; rejection keeps the classes unequally, or a run stopped at its attempt cap); every arm is cut to {n} per class",
                a.per_class
            )?;
        }
        for ((arm, set, stats, dir), available) in sets.iter().zip(counts) {
            let cut = cas::take_per_class(set, n, k)?;
            let acc =
                cas::train_and_score::<CpuBackend>(&cut, test, k, settings, &Default::default())
                    .map_err(|e| anyhow::anyhow!("{}, seed {seed}: {e}", arm.name))?;
            writeln!(
                out,
                "   {}, seed {seed}: CAS {:.1} %",
                arm.name,
                100.0 * acc
            )?;
            rows.push(Row {
                arm: arm.name.to_owned(),
                seed,
                cas: 100.0 * acc,
                acceptance_rate: stats.as_ref().map(|s| s.acceptance_rate()),
                drawn: stats.as_ref().map(|s| s.drawn),
                available,
                per_class: n,
                run: dir.as_ref().map(|d| d.display().to_string()),
            });
        }
    }

    let order: Vec<&str> = ARMS.iter().map(|a| a.name).collect();
    let lines = cas::table::paired_lines(&rows);
    let table = format!(
        "{}\n{}",
        cas::table::markdown(&rows, &order, a.per_class),
        cas::table::paired_markdown(&lines)
    );
    writeln!(out, "\n{table}")?;
    let doc = format!(
        "# dtx bench cas\n\nSetting: the arms' manifests (manifests/rejection.toml, manifests/sdft-rejection.toml) with `sample.count` = {count}{}; a CNN classifier (2 conv stages 16/32, 64 hidden, Adam {} steps × {} images, lr {}, seed {}) per arm; accuracy on {} real `builtin:shapes` test images (seed 2⁴⁰).\n\n{table}",
        if a.set.is_empty() {
            String::new()
        } else {
            format!(", overrides {:?}", a.set)
        },
        settings.steps,
        settings.batch,
        settings.lr,
        settings.seed,
        a.test_images
    );
    let root = results_dir.context("no run folder")?;
    std::fs::create_dir_all(&root).with_context(|| format!("creating `{}`", root.display()))?;
    let json = serde_json::json!({
        "seeds": a.seeds,
        "per_class_requested": a.per_class,
        "classes": classes,
        "test_images": a.test_images,
        "test_seed": TEST_SEED,
        "classifier": settings,
        "overrides": a.set,
        "quick": a.quick,
        "rows": rows,
        "paired": dtx::eval::paired::lines_json(&["arm", "against"], &["cas"], &lines),
    });
    std::fs::write(
        root.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )
    .with_context(|| format!("writing `{}`", root.join("results.json").display()))?;
    std::fs::write(root.join("table.md"), &doc)
        .with_context(|| format!("writing `{}`", root.join("table.md").display()))?;
    if let Some(p) = &a.out {
        std::fs::write(p, &doc).with_context(|| format!("writing `{}`", p.display()))?;
    }
    writeln!(
        out,
        "results.json and table.md in {} ({:.0} s)",
        root.display(),
        total.elapsed().as_secs_f64()
    )?;
    Ok(())
}
