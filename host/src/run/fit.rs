//! Stage 3 of a run, training: the ε objective plus every plugin's `loss`,
//! one optimizer step of every trainable parameter, the EMA, validation,
//! `metrics.jsonl` and checkpoints; resuming restores a checkpoint first.
//!
//! Determinism: every random draw of step `s` (timesteps, noise, and whatever
//! plugins draw) comes from an RNG seeded by `(run.seed, s)`, and the data
//! order from the batch iterator's saved position, so a resumed run repeats
//! the uninterrupted one bit for bit.

use super::context::RunContext;
use super::dir::RunDir;
use super::error::{Result, RunError};
use super::objective::{Draw, Objective, Terms};
use super::support::{progress_bar, step_rng};
use super::{RunOptions, RunSummary};
use crate::data::BatchPosition;
use crate::manifest::Train;
use crate::model::Denoiser;
use crate::model::DropoutRng;
use crate::plan::Plan;
use crate::plugins::{Labels, LossArgs};
use crate::tensor_abi::Session;
use crate::train;
use crate::train::checkpoint::{self, Progress};
use crate::train::ema::Ema;
use crate::train::fit::{Recipe, StepRecord, Trainee};
use crate::train::optim::Optimizer;
use burn::tensor::backend::AutodiffBackend;
use dtx_plugin_api::abi::Hook;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Map, Value, json};
use std::cell::RefCell;
use std::io::Write;

/// Mixed into the run seed for the dropout masks' stream.
const DROPOUT_STREAM: u64 = 0xD50F_0D50_F0D5_0F0D;

/// Trains from the start, or (`opts.resume`) from the run folder's latest
/// checkpoint, up to `train.steps` (or `opts.stop_after`), recording each
/// step in `summary`.
pub(super) fn fit<B: AutodiffBackend, const D: usize>(
    ctx: &mut RunContext<B>,
    plan: &Plan,
    t: &Train,
    opts: &RunOptions,
    log: &mut dyn Write,
    summary: &mut RunSummary,
) -> Result<()> {
    let m = &plan.manifest.manifest;
    let quiet = opts.quiet;
    let mut start = 0u64;
    if opts.resume {
        let latest = ctx.dir.latest_checkpoint();
        let progress = restore(ctx, &latest)?;
        ctx.dir.truncate_metrics_after(progress.step)?;
        let data = ctx.data.as_ref().expect("fit runs with data");
        data.borrow_mut().0.iter.restore(BatchPosition {
            epoch: progress.epoch,
            index: progress.index,
        })?;
        start = progress.step;
        writeln!(log, "resumed `{}` at step {start}", m.run.name)?;
    }
    let end = opts.stop_after.map(|s| s.min(t.steps)).unwrap_or(t.steps);
    let flip = m.target.as_ref().is_some_and(|t| t.flip);
    if let Some(tg) = &ctx.target {
        ctx.student.cache_target(tg, flip, t.batch, &ctx.device)?;
    }
    // A bar on a terminal; plain lines otherwise; nothing with --quiet.
    let bar = progress_bar(quiet, end.saturating_sub(start), "train");
    let recipe = Recipe {
        lr: t.lr,
        warmup: t.warmup,
        rule: t.optimizer.into(),
        weight_decay: t.weight_decay,
        grad_clip: t.grad_clip,
    };
    let mut trainee = RunTrainee::<B, D> {
        ctx,
        plan,
        t,
        quiet,
        log,
        summary,
        bar: bar.as_ref(),
        end,
        examples: 0,
    };
    train::fit::fit(&mut trainee, &recipe, start..end)?;
    if let Some(b) = &bar {
        b.finish();
    }
    Ok(())
}

/// The run as [`train::fit::Trainee`]: each step's batch, objective and
/// plugin losses; after each, its `metrics.jsonl` record, validation,
/// progress and checkpoint.
struct RunTrainee<'a, B: AutodiffBackend, const D: usize> {
    ctx: &'a mut RunContext<B>,
    plan: &'a Plan,
    t: &'a Train,
    quiet: bool,
    log: &'a mut dyn Write,
    summary: &'a mut RunSummary,
    bar: Option<&'a indicatif::ProgressBar>,
    /// The step training stops after.
    end: u64,
    /// Examples in the current step's batch.
    examples: usize,
}

impl<B: AutodiffBackend, const D: usize> Trainee<B> for RunTrainee<'_, B, D> {
    type Error = RunError;

    fn terms(&mut self, step: u64) -> Result<Terms<B>> {
        let (terms, examples) = step_terms::<B, D>(self.ctx, self.plan, self.t, step)?;
        self.examples = examples;
        Ok(terms)
    }

    fn state(&mut self) -> (&RefCell<Optimizer<B>>, Option<&mut Ema<B>>) {
        (&self.ctx.optimizer, self.ctx.ema.as_mut())
    }

    fn diverged(&self, step: u64) -> (String, String) {
        diverged(&self.ctx.dir, self.t, step)
    }

    fn after(&mut self, step: u64, record: StepRecord) -> Result<()> {
        let (ctx, t, quiet) = (&mut *self.ctx, self.t, self.quiet);
        let m = &self.plan.manifest.manifest;
        let total = record.loss;
        let mut values = step_values(step, record.clone());
        values.insert(
            "samples_per_s".into(),
            json!(self.examples as f64 / record.elapsed.as_secs_f64().max(1e-9)),
        );
        let done = step + 1;
        if let (Some(v_every), Some(h)) = (t.validate_every, &ctx.held_out)
            && (done.is_multiple_of(v_every) || done == t.steps)
        {
            let v = objective(ctx, t).validation::<B, D>(
                &ctx.student,
                h,
                m.run.seed,
                t.batch,
                &ctx.device,
            )?;
            values.insert("val.simple".into(), json!(v));
            if self.bar.is_none() && !quiet {
                writeln!(self.log, "step {done}: validation loss {v:.5}")?;
            }
        }
        ctx.dir.log(&Value::Object(values))?;
        self.summary.final_loss = Some(total);
        match self.bar {
            Some(b) => {
                b.inc(1);
                b.set_message(format!("loss {total:.4}"));
            }
            None if !quiet && (done.is_multiple_of((t.steps / 10).max(1)) || done == self.end) => {
                writeln!(self.log, "step {done}/{}: loss {total:.5}", t.steps)?;
            }
            None => {}
        }
        if done.is_multiple_of(t.checkpoint_every.unwrap_or(t.steps.max(1))) || done == self.end {
            let data = ctx.data.as_ref().expect("fit runs with data");
            let pos = data.borrow().0.iter.position();
            save(ctx, pos, done)?;
            tracing::info!(
                step = done,
                "checkpoint written to {}",
                ctx.dir.latest_checkpoint().display()
            );
        }
        self.summary.steps = done;
        Ok(())
    }
}

/// Step `step`'s record for `metrics.jsonl`: each loss term, the gradient
/// norm, what plugins logged, the step, the loss and the rate.
fn step_values(step: u64, record: StepRecord) -> Map<String, Value> {
    let (total_v, lr, grad_norm) = (record.loss, record.lr, record.grad_norm);
    let mut values = Map::new();
    for (k, v) in record.terms {
        values.insert(k, json!(v));
    }
    values.insert("grad_norm".into(), json!(grad_norm));
    tracing::debug!(step = step + 1, loss = total_v, lr, grad_norm, "step");
    for (k, v) in record.logs {
        values.insert(k, json!(v));
    }
    values.insert("step".into(), json!(step + 1));
    values.insert("loss".into(), json!(total_v));
    values.insert("lr".into(), json!(lr));
    values
}

/// The run's denoising objective.
fn objective<'a, B: AutodiffBackend>(ctx: &'a RunContext<B>, t: &Train) -> Objective<'a> {
    Objective {
        alpha_bars: &ctx.student.alpha_bars,
        prediction: ctx.student.prediction,
        weighting: t.weighting(),
        data_channels: ctx.example[0],
    }
}

/// The loss terms of training step `step` (0-based): the objective and
/// every plugin's `loss` on the next batch, with the step's random streams
/// set; and the batch's size.
#[allow(clippy::type_complexity)]
fn step_terms<B: AutodiffBackend, const D: usize>(
    ctx: &mut RunContext<B>,
    plan: &Plan,
    t: &Train,
    step: u64,
) -> Result<(Terms<B>, usize)> {
    let m = &plan.manifest.manifest;
    let student = &ctx.student;
    let data = ctx.data.as_ref().expect("fit runs with data");
    let flip = m.target.as_ref().is_some_and(|t| t.flip);
    let mut rng = step_rng(m.run.seed, step);
    Session::<B>::with(|s| s.rng = StdRng::seed_from_u64(rng.random()))?;
    // The U-Nets' dropout draws from a stream of its own, so that a config
    // without dropout trains exactly as before.
    *student.dropout.borrow_mut() = (student.net.dropout() > 0.0)
        .then(|| DropoutRng::new(step_rng(m.run.seed ^ DROPOUT_STREAM, step).random()));
    let b = { data.borrow_mut().0.iter.next_batch() };
    let flips = flip.then_some(b.flips.as_slice());
    let (x0, labels) =
        data.borrow()
            .0
            .target
            .to_tensor_flipped::<B, D>(&b.indices, flips, &ctx.device);
    student.condition_batch(&b.indices, flips, &ctx.device)?;
    let draw = Draw::new(&mut rng, &x0, t.timesteps, &ctx.device);
    let params = student.adapted(student.params()?, true)?;
    let (mut terms, pred, x_t) =
        objective(ctx, t).simple::<B, D>(student, &params, &x0, labels.clone(), &draw, true)?;
    let ts = draw.t_float();
    let labels = labels.map(Labels::Classes);
    student.each_hooked(
        |p| p.implements(Hook::Loss),
        |inst| -> Result<()> {
            terms.extend(inst.loss(LossArgs {
                x0: &x0,
                noise: &draw.noise,
                t: &ts,
                x_t: &x_t,
                pred: &pred,
                labels: labels.as_ref(),
                step,
            })?);
            Ok(())
        },
    )?;
    Ok((terms, b.indices.len()))
}

/// Where a diverged step happened and what is kept to resume from, for the
/// error [`sum_terms`] gives. Steps count from 1, as in metrics.jsonl.
fn diverged(dir: &RunDir, t: &Train, step: u64) -> (String, String) {
    let kept = if dir.latest_checkpoint().exists() {
        format!(
            "the last good checkpoint is `{}`",
            dir.latest_checkpoint().display()
        )
    } else {
        format!(
            "no checkpoint was written yet (the first comes after {} steps), so nothing is kept to resume from",
            t.checkpoint_every.unwrap_or(t.steps.max(1))
        )
    };
    (format!("training stopped at step {}", step + 1), kept)
}

/// Restores a checkpoint (weights, optimizer moments, EMA, plugin states)
/// and returns its progress.
pub(super) fn restore<B: AutodiffBackend>(
    ctx: &mut RunContext<B>,
    path: &std::path::Path,
) -> Result<Progress> {
    let (states, progress) = Session::<B>::with(|s| {
        let mut optimizer = ctx.optimizer.borrow_mut();
        let ema = ctx.ema.as_mut();
        let base = ctx.base.as_ref();
        checkpoint::load::<B>(
            path,
            &mut s.params,
            Some(&mut optimizer),
            ema,
            &ctx.device,
            base,
        )
    })??;
    for mut inst in ctx.student.plugins.iter().map(|p| p.borrow_mut()) {
        if let Some((_, st)) = states.iter().find(|(n, _)| *n == inst.name) {
            inst.state_load(st)?;
        }
    }
    Ok(progress)
}

/// Writes the run's checkpoint after `done` steps, data position `pos`.
pub(super) fn save<B: AutodiffBackend>(
    ctx: &RunContext<B>,
    pos: BatchPosition,
    done: u64,
) -> Result<()> {
    let states: Vec<(String, Vec<u8>)> = ctx
        .student
        .plugins
        .iter()
        .map(|p| {
            let p = p.borrow();
            Ok((p.name.clone(), p.state_save()?))
        })
        .collect::<Result<_, crate::plugins::HookError>>()?;
    let progress = Progress {
        step: done,
        epoch: pos.epoch,
        index: pos.index,
    };
    Session::<B>::with(|s| {
        let path = ctx.dir.latest_checkpoint();
        let optimizer = ctx.optimizer.borrow();
        let ema = ctx.ema.as_ref();
        let base = ctx.base.as_ref();
        checkpoint::save::<B>(&path, &s.params, &optimizer, ema, &states, &progress, base)
    })??;
    Ok(())
}
