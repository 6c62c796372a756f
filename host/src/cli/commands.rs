//! The commands.

use crate::manifest;
use crate::plan;
use crate::tensor_abi::CpuBackend;
use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;

/// dtx: transfer pretrained diffusion models to small target datasets, with
/// transfer methods loaded as plugins.
#[derive(Debug, Parser)]
#[command(name = "dtx", version, about, long_about = None)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// `dtx <command>`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a manifest and print its resolved plan: stages, the plugins bound
    /// to each hook and injection point, and trainable parameter counts.
    Plan {
        /// The manifest (TOML).
        manifest: PathBuf,
        /// Override a manifest value, `key.path=value` (TOML value), e.g.
        /// `--set train.steps=10` or `--set plugin[0].config.lambda=0.5`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Run a manifest: prepare, train, sample and filter, writing
    /// `runs/<name>/` (resolved manifest, metrics.jsonl, checkpoints, samples,
    /// report.md). Runs diffusers U-Net and MLP sources.
    Run {
        /// The manifest (TOML).
        manifest: PathBuf,
        /// Override a manifest value, `key.path=value`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Continue from the run folder's latest checkpoint.
        #[arg(long)]
        resume: bool,
        /// Stop after this many training steps in total (checkpoint written,
        /// no sampling); `--resume` continues.
        #[arg(long, value_name = "STEPS")]
        stop_after: Option<u64>,
        /// No progress lines.
        #[arg(long)]
        quiet: bool,
    },
    /// Train a denoiser from scratch on a dataset and export it as a
    /// diffusers model folder (config.json + diffusion_pytorch_model.safetensors,
    /// EMA weights when the manifest keeps an EMA). The manifest is a run
    /// manifest with a diffusers `[source]` whose config.json gives the
    /// architecture; `source.init = "random"` and `train.trainable = "all"`
    /// are forced. This made dtx's shipped source model.
    Pretrain {
        /// The manifest (TOML).
        manifest: PathBuf,
        /// Override a manifest value, `key.path=value`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Model folder to write (default: `runs/<name>/model`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue from the run folder's latest checkpoint.
        #[arg(long)]
        resume: bool,
        /// No progress lines.
        #[arg(long)]
        quiet: bool,
    },
    /// Sample from a run folder's latest checkpoint (EMA weights when the run
    /// keeps them), with its plugins' score corrections and filters; writes
    /// samples.json (and samples.png for 2-D data) to `--out`.
    Sample(SampleArgs),
    /// Export a run's adapted model as files other libraries read:
    /// `diffusers` (the model with its weight-level plugins merged, as a
    /// UNet2DModel folder; an ADM source's state dict with its flags) or
    /// `peft` (a LoRA run's adapter as PEFT saves one). docs/export.md.
    Export(super::export_cmd::ExportArgs),
    /// Compares generated images with reference images: KID and FD on
    /// features of the embedded `dtx` extractor (`KID_dtx`, `FD_dtx`) or of
    /// the FID Inception-v3 (`--extractor inception --inception-weights
    /// pt_inception-2015-12-05-*.pth`); with `--train`, the mean distance
    /// from each sample to its nearest training image.
    Eval(super::eval_cmd::EvalArgs),
    /// Check a checkpoint and compare it with its reference implementation:
    /// `dtx model inspect` (structure, config, parameters, injection points)
    /// and `dtx model forward` (one forward pass on your inputs, with the
    /// activation at every injection point).
    Model {
        /// What to do.
        #[command(subcommand)]
        command: super::model_cmd::ModelCommand,
    },
    /// Benchmarks: `dtx bench engine` times a U-Net training step (forward,
    /// backward, AdamW) and a DDIM step and reports peak memory, to compare
    /// with `benches/python/unet_bench.py` (docs/performance.md); `dtx bench
    /// transfer`, `dtx bench gmm` and `dtx bench cas` compare transfer methods
    /// (docs/results.md).
    Bench {
        /// What to time.
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Find and describe plugins.
    Plugins {
        /// What to do.
        #[command(subcommand)]
        command: PluginsCommand,
    },
    /// List the built-in components (noise schedules, model kinds, …).
    List,
}

/// `dtx bench <command>`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// A diffusers UNet2DModel training step and DDIM step on random data.
    Engine {
        /// Examples per step.
        #[arg(long, default_value_t = crate::bench::EngineBench::default().batch)]
        batch: usize,
        /// Image side; several, comma-separated and ascending, time a ladder
        /// (`--size 16,32,64`), each rung in turn.
        #[arg(long, default_value = "32", value_delimiter = ',')]
        size: Vec<usize>,
        /// `block_out_channels`, comma-separated.
        #[arg(long, default_value = "64,128,128", value_delimiter = ',')]
        channels: Vec<usize>,
        /// `layers_per_block`.
        #[arg(long, default_value_t = crate::bench::EngineBench::default().layers)]
        layers: usize,
        /// Untimed steps first.
        #[arg(long, default_value_t = crate::bench::EngineBench::default().warmup)]
        warmup: usize,
        /// Timed steps (the median is reported).
        #[arg(long, default_value_t = crate::bench::EngineBench::default().iters)]
        iters: usize,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Also time PyTorch + diffusers on the same U-Net, batch, steps and
        /// thread count: PYTHON is an interpreter with torch and diffusers;
        /// rounds of dtx then PyTorch, each side's figures and the ratios.
        #[arg(long, value_name = "PYTHON")]
        compare: Option<PathBuf>,
        /// Interleaved rounds with --compare (medians are reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// The backend dtx times: `cuda` needs a build with the `cuda`
        /// feature and a CUDA device (with --compare, PyTorch runs on
        /// `--device cuda` too).
        #[arg(long, value_enum, default_value = "cpu")]
        backend: super::bench_cmd::EngineBackend,
    },
    // The research benchmarks below live in the `dtx-bench` executable
    // (crate `bench/`): `dtx bench <command> ARGS…` runs `dtx-bench <command>
    // ARGS…` (`super::forward`), so their own `--help` is dtx-bench's. The
    // one-line descriptions here are the ones `dtx bench --help` lists;
    // keep them equal to bench/src/cli/mod.rs (a test compares them).
    /// Runs transfer manifests (default: scratch, naive fine-tune, SDFT from
    /// `manifests/`) on the same target set and seeds and prints one table
    /// of their `[eval]` metrics and wall times, then each against naive
    /// fine-tuning paired by seed with 95 % intervals; per-seed values in
    /// `<runs>/bench-transfer/results.json`.
    #[command(disable_help_flag = true)]
    Transfer(ForwardArgs),
    /// The TGDP talk's Gaussian-mixture simulation: pretrains a source MLP
    /// on `builtin:gmm`, transfers it to n points of the reweighted target
    /// mixture with each method (source only, target only, fine-tune, SDFT,
    /// TGDP), scores the samples under the exact target density (mean
    /// density, mean log-density, component coverage) and draws them; one
    /// table, the paired differences by seed with 95 % intervals,
    /// results.json and scatter PNGs in `--out`.
    #[command(disable_help_flag = true)]
    Gmm(ForwardArgs),
    /// The classification accuracy score of class-conditional transfer:
    /// per seed, fine-tuning, + classifier-free guidance, + rejection and
    /// SDFT + rejection (manifests/rejection.toml, sdft-rejection.toml)
    /// sample equally many images per class; a small classifier trained on
    /// each arm's images, and on the real target images, is scored on real
    /// test images. One table, the paired CAS differences by seed with 95 %
    /// intervals, results.json and table.md in `<runs>/bench-cas/`.
    #[command(disable_help_flag = true)]
    Cas(ForwardArgs),
    /// ANL against naive fine-tuning: manifests/anl.toml,
    /// anl-unconditional.toml and naive-finetune.toml on the same target
    /// set, seeds and step counts (KID_dtx/FD_dtx, trainable parameters,
    /// wall time), then the conditional run sampled at mask rates δ = 0 …
    /// 0.9 (KID against the spread of samples sharing a condition image);
    /// paired differences by seed with 95 % intervals, results.json in
    /// `<runs>/bench-anl/`.
    #[command(disable_help_flag = true)]
    Anl(ForwardArgs),
}

/// The arguments of a benchmark that `dtx-bench` runs, passed on verbatim.
#[derive(Debug, Clone, clap::Args)]
pub struct ForwardArgs {
    /// The benchmark's arguments (`dtx bench <command> --help` lists them).
    #[arg(
        num_args = 0..,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<std::ffi::OsString>,
}

/// The benchmarks the `dtx-bench` executable runs (`dtx bench <name>`
/// forwards to it).
pub const FORWARDED_BENCHES: [&str; 4] = ["transfer", "gmm", "cas", "anl"];

impl BenchCommand {
    /// The `dtx-bench` subcommand and its arguments, for the benchmarks
    /// that executable runs; `None` for `engine`, which runs in-process.
    pub fn forwarded(&self) -> Option<(&'static str, &[std::ffi::OsString])> {
        match self {
            BenchCommand::Engine { .. } => None,
            BenchCommand::Transfer(a) => Some(("transfer", &a.args)),
            BenchCommand::Gmm(a) => Some(("gmm", &a.args)),
            BenchCommand::Cas(a) => Some(("cas", &a.args)),
            BenchCommand::Anl(a) => Some(("anl", &a.args)),
        }
    }
}

/// `dtx plugins <command>`.
#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// Create a plugin crate that builds and loads on the first try:
    /// Cargo.toml on dtx-plugin-api, src/lib.rs with a working example in
    /// each chosen hook, a test, run.toml using it on the shipped source
    /// model, and a README with the steps.
    New {
        /// The plugin's name (lowercase letters, digits, `_`, `-`); the
        /// crate is `dtx-plugin-NAME`.
        name: String,
        /// Hooks to implement, comma-separated, among inject, weights,
        /// loss, score, filter.
        #[arg(long, value_delimiter = ',', default_value = "inject,loss")]
        hooks: Vec<String>,
        /// The folder to create (default: ./NAME); it must not exist or be
        /// empty.
        #[arg(long)]
        path: Option<PathBuf>,
        /// dtx-plugin-api's source folder for the dependency (default: the
        /// one this dtx was built from).
        #[arg(long, value_name = "DIR")]
        api: Option<PathBuf>,
        /// The source model run.toml uses (default: the shipped
        /// models/shapes-source).
        #[arg(long, value_name = "PATH")]
        model: Option<PathBuf>,
    },
    /// List every plugin in the search path (DTX_PLUGIN_PATH, then the folder of
    /// the dtx executable) and in `--dir` folders: name, version, hooks, file.
    List {
        /// Extra folders to search first.
        #[arg(long)]
        dir: Vec<PathBuf>,
    },
    /// Show one plugin's hooks, injection points and config keys (type,
    /// default, help). NAME is a plugin name, a library name or a file path.
    /// With --model, also the catalogue of that model's base parameters the
    /// plugin would read (`host.model_details()`): key, shape, role, block.
    Inspect {
        /// Plugin name, library name or path.
        name: String,
        /// Extra folders to search first.
        #[arg(long)]
        dir: Vec<PathBuf>,
        /// A model to list the base parameters of: a diffusers folder, an
        /// ADM checkpoint, a dtx run folder or checkpoint (none for
        /// `--kind mlp`).
        #[arg(long, value_name = "PATH")]
        model: Option<PathBuf>,
        /// How to read --model.
        #[command(flatten)]
        source: super::model_cmd::ModelSource,
    },
}

/// Runs a parsed command, writing its output to `out`.
pub fn execute(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    match cli.command {
        Command::Plan { manifest, set } => {
            let loaded = manifest::load(&manifest, &set)?;
            let plan = plan::resolve(loaded)?;
            out.write_all(plan.render().as_bytes())?;
        }
        Command::Run {
            manifest,
            set,
            resume,
            stop_after,
            quiet,
        } => {
            let loaded = manifest::load(&manifest, &set)?;
            let opts = crate::run::RunOptions {
                resume,
                stop_after,
                quiet,
            };
            let summary = plan_and_run(loaded, Job::Run(&opts), out)?;
            writeln!(out, "run folder: {}", summary.dir.display())?;
        }
        Command::Pretrain {
            manifest,
            set,
            out: model_out,
            resume,
            quiet,
        } => pretrain(&manifest, set, model_out, resume, quiet, out)?,
        Command::Sample(args) => sample(args, out)?,
        Command::Export(args) => super::export_cmd::run(&args, out)?,
        Command::Bench {
            command:
                BenchCommand::Engine {
                    batch,
                    size,
                    channels,
                    layers,
                    warmup,
                    iters,
                    json,
                    compare,
                    rounds,
                    backend,
                },
        } => {
            let cfg = crate::bench::EngineBench {
                batch,
                size: 0,
                channels,
                layers,
                warmup,
                iters,
            };
            let compare = compare.as_deref();
            super::bench_cmd::run(cfg, &size, json, compare, rounds, backend, out)?
        }
        Command::Eval(args) => super::eval_cmd::run(&args, out)?,
        Command::Model { command } => super::model_cmd::run(&command, out)?,
        Command::Bench { command: bench } => {
            let (name, args) = bench.forwarded().expect("`engine` is matched above");
            let code = super::forward::bench(name, args, out, None)?;
            if code != 0 {
                bail!("`dtx bench {name}` failed (dtx-bench exited with status {code})");
            }
        }
        Command::Plugins {
            command:
                PluginsCommand::New {
                    name,
                    hooks,
                    path,
                    api,
                    model,
                },
        } => super::plugins_cmd::new(&name, &hooks, path, api, model, out)?,
        Command::Plugins {
            command: PluginsCommand::List { dir },
        } => super::plugins_cmd::list(&dir, out)?,
        Command::Plugins {
            command:
                PluginsCommand::Inspect {
                    name,
                    dir,
                    model,
                    source,
                },
        } => {
            let with_model = model.is_some() || source.kind.is_some();
            let model = with_model.then_some((model.as_deref(), &source));
            super::plugins_cmd::inspect(&name, &dir, model, out)?
        }
        Command::List => {
            let mut kind = "";
            for b in crate::registry::all() {
                if b.kind != kind {
                    kind = b.kind;
                    writeln!(out, "{kind}:")?;
                }
                writeln!(out, "  {:<16} {}", b.name, b.description)?;
            }
        }
    }
    Ok(())
}

/// Resolves and runs a manifest on the backend it names (`run.backend`):
/// the CPU, or CUDA in a build with the `cuda` feature (without it,
/// resolving reports the missing backend).
/// `dtx sample`'s arguments.
#[derive(Debug, clap::Args)]
pub struct SampleArgs {
    /// The run folder (`runs/<name>`).
    pub run_dir: PathBuf,
    /// Number of samples (default: the run's `sample.count`, or 16).
    #[arg(long)]
    pub count: Option<usize>,
    /// Sampler steps (default: the run's `sample.steps`, or 50).
    #[arg(long)]
    pub steps: Option<usize>,
    /// `ddim` or `ddpm`.
    #[arg(long)]
    pub sampler: Option<String>,
    /// DDIM η.
    #[arg(long)]
    pub eta: Option<f64>,
    /// Seed of the initial noise (default: the run's seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output folder (default: `<run_dir>/samples-<seed>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Condition every sample on this text (a run with a CLIP
    /// `[condition]` encoder): text-to-image through CLIP's shared
    /// embedding space.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Condition samples on these images in turn (a run with
    /// `[condition]`): `target`, `held_out`, or an image file or folder.
    #[arg(long)]
    pub condition: Option<String>,
    /// Side fraction δ of the rectangle masked out of each condition
    /// image, in [0, 1) (default: the run's `sample.mask_rate`, or 0.5).
    #[arg(long)]
    pub mask_rate: Option<f64>,
    /// Override a sampling or plugin key of the run's manifest for this
    /// sampling, `key=value` (TOML value): `sample.…` keys and plugin
    /// config keys, `plugin[i].config.…` (a guidance weight, a filter
    /// threshold). Other keys are fixed by the checkpoint and refused.
    /// Applied after the flags above.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// Whether `dtx sample --set` may change `key` (the text before `=`):
/// `sample.…` and `plugin[i].config.…` / `plugin.i.config.…`.
fn sampling_key(key: &str) -> bool {
    let key = key.trim().replace('[', ".").replace(']', "");
    if key.starts_with("sample.") || key == "sample" {
        return true;
    }
    let parts: Vec<&str> = key.split('.').collect();
    parts.len() >= 4
        && parts[0] == "plugin"
        && parts[1].parse::<usize>().is_ok()
        && parts[2] == "config"
}

/// `dtx sample`: the run's manifest with the flags as overrides of its
/// `[sample]` section, sampled from the run's latest checkpoint.
fn sample(args: SampleArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let SampleArgs {
        run_dir,
        count,
        steps,
        sampler,
        eta,
        seed,
        out: out_dir,
        prompt,
        condition,
        mask_rate,
        set: overrides,
    } = args;
    for (flag, value) in [("--eta", eta), ("--mask-rate", mask_rate)] {
        if let Some(v) = value.filter(|v| !v.is_finite()) {
            bail!("{flag}: must be a finite number, got {v}");
        }
    }
    if let Some(s) = seed.filter(|&s| s > i64::MAX as u64) {
        bail!("--seed: must be at most {}, got {s}", i64::MAX);
    }
    let manifest_path = run_dir.join("manifest.toml");
    let ckpt = run_dir.join("checkpoints").join("latest.safetensors");
    if !ckpt.exists() {
        bail!(
            "`{}` has no checkpoint (expected `{}`): is it a run folder?",
            run_dir.display(),
            ckpt.display()
        );
    }
    let mut set = Vec::new();
    if let Some(c) = count {
        set.push(format!("sample.count={c}"));
    }
    if let Some(s) = steps {
        set.push(format!("sample.steps={s}"));
    }
    if let Some(s) = &sampler {
        set.push(format!("sample.sampler=\"{s}\""));
    }
    if let Some(e) = eta {
        set.push(format!("sample.eta={e}"));
    }
    if let Some(s) = seed {
        set.push(format!("run.seed={s}"));
    }
    let quoted = |v: &str| toml::Value::String(v.to_owned()).to_string();
    if let Some(p) = &prompt {
        set.push(format!("sample.prompt={}", quoted(p)));
    }
    if let Some(c) = &condition {
        // a path on the command line is relative to where dtx runs
        let c = match c.as_str() {
            "target" | "held_out" => c.clone(),
            path => std::path::absolute(path)?.display().to_string(),
        };
        set.push(format!("sample.condition={}", quoted(&c)));
    }
    if let Some(d) = mask_rate {
        set.push(format!("sample.mask_rate={d}"));
    }
    let refused: Vec<&str> = overrides
        .iter()
        .filter_map(|o| o.split_once('=').map_or(Some(o.as_str()), |(k, _)| Some(k)))
        .filter(|k| !sampling_key(k))
        .collect();
    if !refused.is_empty() {
        let list: Vec<String> = refused.iter().map(|k| format!("`{}`", k.trim())).collect();
        let (what, verb) = if list.len() == 1 {
            ("key", "is")
        } else {
            ("keys", "are")
        };
        bail!(
            "dtx sample --set: {} {verb} not sampling or plugin {what}; `dtx sample` takes \
             `sample.…` and `plugin[i].config.…` keys (the run's other settings are fixed by \
             its checkpoint)",
            list.join(", ")
        );
    }
    set.extend(overrides);
    let loaded = manifest::load(&manifest_path, &set)?;
    if loaded.manifest.sample.is_none() {
        bail!("the run has no [sample] section: give `--count` (and `--steps`) to sample from it");
    }
    let seed = loaded.manifest.run.seed;
    let dest = out_dir.unwrap_or_else(|| run_dir.join(format!("samples-{seed}")));
    let job = Job::Sample {
        checkpoint: &ckpt,
        out: &dest,
    };
    plan_and_run(loaded, job, out)?;
    writeln!(out, "samples: {}", dest.display())?;
    Ok(())
}

/// What [`plan_and_run`] carries out.
pub enum Job<'a> {
    /// `dtx run` (and the runs of `dtx pretrain` and the benches).
    Run(&'a crate::run::RunOptions),
    /// `dtx sample`: from `checkpoint` into the folder `out`.
    Sample {
        /// The checkpoint to sample (`<run>/checkpoints/latest.safetensors`).
        checkpoint: &'a std::path::Path,
        /// The folder the samples go to.
        out: &'a std::path::Path,
    },
}

impl Job<'_> {
    fn on<B: burn::tensor::backend::AutodiffBackend>(
        &self,
        plan: &plan::Plan,
        log: &mut dyn Write,
    ) -> anyhow::Result<crate::run::RunSummary> {
        match self {
            Job::Run(opts) => Ok(crate::run::run::<B>(plan, opts, log)?),
            Job::Sample { checkpoint, out } => {
                Ok(crate::run::sample::<B>(plan, checkpoint, out, log)?)
            }
        }
    }
}

/// Resolves the manifest on the backend it names (`run.backend`: the CPU,
/// or CUDA in a build with the `cuda` feature) and carries out `job`: what
/// `dtx run` and `dtx sample` do, and the benches' runs (crate `dtx-bench`).
pub fn plan_and_run(
    loaded: manifest::LoadedManifest,
    job: Job,
    out: &mut dyn Write,
) -> anyhow::Result<crate::run::RunSummary> {
    #[cfg(feature = "cuda")]
    if loaded.manifest.run.backend.as_str() == "cuda" {
        use crate::tensor_abi::CudaBackend;
        // burn's CUDA runtime panics without a driver or a device: ask first.
        crate::util::cuda::devices().map_err(|e| {
            anyhow::anyhow!("{}: run.backend = \"cuda\": {e}", loaded.file.display())
        })?;
        let plan = plan::resolve_on::<CudaBackend>(loaded)?;
        return job.on::<CudaBackend>(&plan, out);
    }
    let plan = plan::resolve(loaded)?;
    job.on::<CpuBackend>(&plan, out)
}

/// `dtx pretrain`: a run from random weights, then the model folder.
fn pretrain(
    manifest_path: &std::path::Path,
    set: Vec<String>,
    model_out: Option<PathBuf>,
    resume: bool,
    quiet: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut all = vec![
        "source.init=\"random\"".to_owned(),
        "train.trainable=\"all\"".to_owned(),
    ];
    all.extend(set);
    let loaded = manifest::load(manifest_path, &all)?;
    let m = &loaded.manifest;
    let what = manifest_path.display();
    if !m.plugins.is_empty() {
        bail!("{what}: `dtx pretrain` trains the base model alone; remove the [[plugin]] entries");
    }
    if m.train.is_none() || m.target.is_none() {
        bail!("{what}: `dtx pretrain` needs [train] and [target] (the data to train on)");
    }
    let config = match &m.source {
        Some(s) if s.kind.as_str() == "diffusers" => s
            .path
            .as_ref()
            .map(|p| loaded.resolve_path(p).join("config.json"))
            .ok_or_else(|| {
                anyhow::anyhow!("{what}: `source.path` names the folder with config.json")
            })?,
        _ => bail!(
            "{what}: `dtx pretrain` exports a diffusers model folder, so `[source]` must be `kind = \"diffusers\"` with a config.json"
        ),
    };
    let opts = crate::run::RunOptions {
        resume,
        quiet,
        ..Default::default()
    };
    let summary = plan_and_run(loaded, Job::Run(&opts), out)?;
    let folder = model_out.unwrap_or_else(|| summary.dir.join("model"));
    std::fs::create_dir_all(&folder).with_context(|| format!("creating `{}`", folder.display()))?;
    let dest = folder.join("config.json");
    let same = matches!(
        (config.canonicalize(), dest.canonicalize()),
        (Ok(a), Ok(b)) if a == b
    );
    if !same {
        std::fs::copy(&config, &dest)
            .with_context(|| format!("copying `{}` to `{}`", config.display(), dest.display()))?;
    }
    let ckpt = summary.dir.join("checkpoints").join("latest.safetensors");
    let n = crate::train::checkpoint::export_base(
        &ckpt,
        &folder.join(crate::model::diffusers::WEIGHTS_FILE),
        true,
    )?;
    writeln!(out, "model: {} ({n} tensors)", folder.display())?;
    Ok(())
}
