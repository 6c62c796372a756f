//! Runs: the run folder (manifest, metrics, checkpoints, samples, report) and
//! the stages that fill it, one file each, in order: set-up (`context`:
//! data, run folder, base weights, plugins, services), `prepare` (plugins'
//! auxiliary training), `fit` (the training loop), `sampling` (samples,
//! filters and the `[eval]` metrics through `evaluation`) and `report`.
//! `dtx run` is [`run`]; `dtx sample` is [`sample`], which sets up, restores
//! a checkpoint and samples.

mod condition;
mod context;
pub mod dir;
mod drawn;
pub(crate) mod error;
mod evaluation;
pub mod export;
mod fit;
mod inputs;
mod objective;
mod plot;
mod prepare;
mod recipe;
pub(crate) mod report;
mod sampling;
mod source_run;
mod student;
mod support;

use crate::data::BatchPosition;
use crate::model::Denoiser;
use crate::model::Net;
use crate::plan::Plan;
use crate::train::checkpoint::Progress;
use burn::tensor::backend::AutodiffBackend;
use context::{Mode, RunContext};
use dtx_plugin_api::abi::Hook;
use error::{Result, fail, run_error};
use std::io::Write;
use std::path::{Path, PathBuf};

pub use drawn::SamplingStats;
pub use error::RunError;
pub use inputs::load_target;

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from the run folder's latest checkpoint.
    pub resume: bool,
    /// Stop training after this many steps in total (for tests of resume: the
    /// checkpoint is written, sampling is skipped).
    pub stop_after: Option<u64>,
    /// No progress lines.
    pub quiet: bool,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run folder.
    pub dir: PathBuf,
    /// Steps trained in total.
    pub steps: u64,
    /// Final training loss (total), if it trained.
    pub final_loss: Option<f64>,
    /// Accepted samples (flat) and their shape.
    pub samples: Option<(Vec<f32>, Vec<usize>)>,
    /// The `[eval]` metrics, when the manifest asks for some.
    pub evaluation: Option<crate::eval::Evaluation>,
    /// The class of each accepted sample, when the run samples by class.
    pub sample_labels: Option<Vec<i64>>,
    /// How many samples were drawn and how many each filter rejected.
    pub sampling: Option<SamplingStats>,
}

impl RunSummary {
    fn new(dir: &Path) -> Self {
        RunSummary {
            dir: dir.to_path_buf(),
            steps: 0,
            final_loss: None,
            samples: None,
            evaluation: None,
            sample_labels: None,
            sampling: None,
        }
    }
}

/// Runs a plan (backend `B`) into its run folder: set-up, `prepare`,
/// training, sampling, evaluation, report.
pub fn run<B: AutodiffBackend>(
    plan: &Plan,
    opts: &RunOptions,
    log: &mut dyn Write,
) -> Result<RunSummary> {
    let net = source_net(plan)?;
    match net.data_shape().len() {
        1 => run_ranked::<B, 2>(plan, opts, log, net),
        _ => run_ranked::<B, 4>(plan, opts, log, net),
    }
}

/// `dtx sample`: samples the run whose manifest `plan` resolves, from its
/// checkpoint `checkpoint` (no `prepare`, no training), into the folder
/// `out`, evaluating when the manifest has `[eval]`.
pub fn sample<B: AutodiffBackend>(
    plan: &Plan,
    checkpoint: &Path,
    out: &Path,
    log: &mut dyn Write,
) -> Result<RunSummary> {
    let net = source_net(plan)?;
    match net.data_shape().len() {
        1 => sample_ranked::<B, 2>(plan, checkpoint, out, log, net),
        _ => sample_ranked::<B, 4>(plan, checkpoint, out, log, net),
    }
}

/// The source network, of a rank the engine runs (examples `[D]` or
/// `[C, H, W]`).
fn source_net(plan: &Plan) -> Result<Net> {
    let desc = plan
        .model
        .as_ref()
        .ok_or_else(|| run_error!("`dtx run` needs a [source] model"))?;
    let net = Net::from_description(desc).map_err(|e| run_error!("[source]: {e}"))?;
    match net.data_shape().len() {
        1 | 3 => Ok(net),
        n => fail!("[source]: examples of rank {n} are not supported"),
    }
}

fn run_ranked<B: AutodiffBackend, const D: usize>(
    plan: &Plan,
    opts: &RunOptions,
    log: &mut dyn Write,
    net: Net,
) -> Result<RunSummary> {
    let m = &plan.manifest.manifest;
    let mode = Mode::Run {
        resume: opts.resume,
    };
    let mut ctx = context::set_up::<B, D>(plan, net, &mode)?;
    // What `prepare` trains is in the checkpoint when resuming.
    if !opts.resume {
        let before = if m.train.is_some() { "train" } else { "sample" };
        prepare::run(&ctx.student, before, opts.quiet, &mut ctx.dir, log)?;
        // Without training, what `prepare` trained is the run's checkpoint,
        // for `dtx sample` to reuse.
        let prepared = ctx
            .student
            .plugins
            .iter()
            .any(|p| p.borrow().implements(Hook::Prepare));
        if m.train.is_none() && prepared {
            let start = BatchPosition { epoch: 0, index: 0 };
            fit::save(&ctx, start, 0)?;
        }
    }
    ctx.start_ema(plan)?;
    let mut summary = RunSummary::new(&ctx.dir.path);
    if let (Some(t), Some(_)) = (&m.train, &ctx.data) {
        fit::fit::<B, D>(&mut ctx, plan, t, opts, log, &mut summary)?;
        if opts.stop_after.is_some_and(|s| s < t.steps) {
            return Ok(summary);
        }
    }
    sampling::sample_stage::<B, D>(&mut ctx, plan, opts.quiet, log, &mut summary)?;
    finish(plan, &ctx, &summary, log)?;
    Ok(summary)
}

fn sample_ranked<B: AutodiffBackend, const D: usize>(
    plan: &Plan,
    checkpoint: &Path,
    out: &Path,
    log: &mut dyn Write,
    net: Net,
) -> Result<RunSummary> {
    let (mut ctx, progress) = restored::<B, D>(plan, net, checkpoint, out)?;
    let mut summary = RunSummary::new(&ctx.dir.path);
    summary.steps = progress.step;
    writeln!(
        log,
        "loaded `{}` (step {})",
        checkpoint.display(),
        progress.step
    )?;
    sampling::sample_stage::<B, D>(&mut ctx, plan, true, log, &mut summary)?;
    finish(plan, &ctx, &summary, log)?;
    Ok(summary)
}

/// A run set up from `checkpoint` (no `prepare`, no training; its EMA
/// restored when it keeps one), writing into the folder `out`: what `dtx
/// sample` and `dtx export` start from.
fn restored<B: AutodiffBackend, const D: usize>(
    plan: &Plan,
    net: Net,
    checkpoint: &Path,
    out: &Path,
) -> Result<(RunContext<B>, Progress)> {
    let mode = Mode::Sample {
        out: out.to_path_buf(),
    };
    let mut ctx = context::set_up::<B, D>(plan, net, &mode)?;
    ctx.start_ema(plan)?;
    let progress = fit::restore(&mut ctx, checkpoint)?;
    Ok((ctx, progress))
}

/// The last stage: a warning for each plugin library that changed on disk
/// during the run, and the report.
fn finish<B: AutodiffBackend>(
    plan: &Plan,
    ctx: &RunContext<B>,
    summary: &RunSummary,
    log: &mut dyn Write,
) -> Result<()> {
    // The run used private copies of its plugin libraries; say so if a
    // file was replaced meanwhile, since a new run would load the new one.
    for p in &plan.plugins {
        if let Some(msg) = p.library.changed_on_disk() {
            tracing::warn!("{msg}");
            writeln!(log, "warning: {msg}")?;
        }
    }
    report::write_report(&ctx.dir, plan, summary)
}
