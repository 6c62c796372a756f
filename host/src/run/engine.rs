//! `dtx run`: from a resolved [`Plan`] to a run folder — build the model and the
//! plugins in one tensor session, run `prepare`, train (ε objective + plugin
//! losses, AdamW, EMA, checkpoints), sample with the plugins' `score`
//! corrections and `filter` decisions, and write metrics, samples and a report.
//!
//! Determinism: every random draw of step `s` (timesteps, noise, and whatever
//! plugins draw) comes from an RNG seeded by `(run.seed, s)`, and the data
//! order from the batch iterator's saved position, so a resumed run repeats
//! the uninterrupted one bit for bit.

use super::dir::RunDir;
use super::model::{Data, Engine, load_target};
use super::objective::{Draw, Objective};
use crate::data::BatchIter;
use crate::diffusion::Weighting;
use crate::diffusion::prediction::Prediction;
use crate::diffusion::schedule::Schedule;
use crate::manifest::{Init, Schedule as ScheduleKind, SourceKind, Trainable};
use crate::model::DropoutRng;
use crate::model::net::Net;
use crate::plan::Plan;
use crate::plugins::{Instance, LossArgs};
use crate::tensor_abi::{DataService, Session, Stored};
use crate::train::checkpoint::{self, Progress};
use crate::train::ema::Ema;
use crate::train::optim::{AdamConfig, Rule};
use anyhow::{Result, anyhow, bail};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use dtx_plugin_api::abi::Hook;
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::rc::Rc;

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
    /// Sample only (`dtx sample`): load weights from this checkpoint, skip
    /// `prepare` and training, and write the samples to `.1`.
    pub sample_from: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run folder.
    pub dir: std::path::PathBuf,
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
    pub sampling: Option<super::SamplingStats>,
}

type P<B> = FloatTensor<B>;

pub(super) fn prim_f<B: AutodiffBackend, const D: usize>(t: Tensor<B, D>) -> P<B> {
    t.into_primitive().tensor()
}

pub(super) fn ranked<B: AutodiffBackend, const D: usize>(p: P<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

pub(super) fn scalar<B: AutodiffBackend>(t: &Tensor<B, 1>) -> f64 {
    t.clone()
        .into_data()
        .iter::<f64>()
        .next()
        .unwrap_or(f64::NAN)
}

/// A progress bar on stderr when it is a terminal (and not `quiet`).
pub(super) fn progress_bar(quiet: bool, len: u64, what: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    (!quiet && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(len);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {msg} ({eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_prefix(what.to_owned());
        b
    })
}

/// A spinner on stderr when it is a terminal (and not `quiet`), for loops
/// whose length the host does not know (a plugin's `prepare`).
pub(super) fn progress_spinner(quiet: bool, what: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    (!quiet && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {prefix}: {msg} ({elapsed})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        b.set_prefix(what.to_owned());
        b.enable_steady_tick(std::time::Duration::from_millis(200));
        b
    })
}

/// Mixed into the run seed for the dropout masks' stream.
const DROPOUT_STREAM: u64 = 0xD50F_0D50_F0D5_0F0D;

/// The RNG of step `s`: independent streams per step, the same on resume.
pub(super) fn step_rng(seed: u64, step: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ step.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

pub(super) fn normal<B: AutodiffBackend, const D: usize>(
    rng: &mut StdRng,
    shape: [usize; D],
    dev: &B::Device,
) -> Tensor<B, D> {
    let n: usize = shape.iter().product();
    let d = rand_distr::StandardNormal;
    let v: Vec<f32> = (0..n).map(|_| rng.sample::<f32, _>(d)).collect();
    Tensor::from_data(TensorData::new(v, shape), dev)
}

fn schedule(kind: ScheduleKind) -> Schedule {
    match kind.as_str() {
        "cosine" => Schedule::Cosine,
        "scaled_linear" => Schedule::ScaledLinear,
        _ => Schedule::Linear,
    }
}

/// Runs a plan (CPU backend `B`) into its run folder.
pub fn run<B: AutodiffBackend>(
    plan: &Plan,
    opts: &RunOptions,
    log: &mut dyn Write,
) -> Result<RunSummary> {
    let desc = plan
        .model
        .as_ref()
        .ok_or_else(|| anyhow!("`dtx run` needs a [source] model"))?;
    let net = Net::from_description(desc).map_err(|e| anyhow!("[source]: {e}"))?;
    match net.data_shape().len() {
        1 => run_ranked::<B, 2>(plan, opts, log, net),
        3 => run_ranked::<B, 4>(plan, opts, log, net),
        n => bail!("[source]: examples of rank {n} are not supported"),
    }
}

/// `[n, …example shape]` as an array of rank `D`.
pub(super) fn batch_shape<const D: usize>(n: usize, example: &[usize]) -> [usize; D] {
    std::array::from_fn(|i| if i == 0 { n } else { example[i - 1] })
}

/// Registers the base weights: the checkpoint's (`init = "pretrained"`), or
/// a fresh init from `run.seed` (`init = "random"`, and MLP sources).
fn base_weights<B: AutodiffBackend>(
    plan: &Plan,
    net: &Net,
    device: &B::Device,
    is_trainable: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let m = &plan.manifest.manifest;
    let src = m.source.as_ref().ok_or_else(|| anyhow!("no [source]"))?;
    let random =
        src.init == Init::Random || (matches!(net, Net::Mlp(_)) && src.kind != SourceKind::Dtx);
    if !random && src.kind == SourceKind::Dtx {
        let path = src
            .path
            .as_ref()
            .map(|p| crate::model::dtx_checkpoint(&plan.manifest.resolve_path(p)))
            .ok_or_else(|| anyhow!("[source]: `path` names the dtx run folder"))?;
        Session::<B>::with(|s| {
            checkpoint::load_base::<B>(
                &path,
                &net.parameters(),
                &mut s.params,
                device,
                is_trainable,
            )
        })??;
        Ok(())
    } else if random {
        let mut init_rng = StdRng::seed_from_u64(m.run.seed);
        Session::<B>::with(|s| net.init(&mut s.params, &mut init_rng, device, is_trainable))?
            .map_err(|e| anyhow!("[source]: {e}"))
    } else {
        let path = src
            .path
            .as_ref()
            .map(|p| plan.manifest.resolve_path(p))
            .ok_or_else(|| anyhow!("[source]: `path` is required to load pretrained weights"))?;
        Session::<B>::with(|s| net.load(&path, &mut s.params, device, is_trainable))?
            .map_err(|e| anyhow!("[source] `{}`: {e}", path.display()))
    }
}

fn run_ranked<B: AutodiffBackend, const D: usize>(
    plan: &Plan,
    opts: &RunOptions,
    log: &mut dyn Write,
    net: Net,
) -> Result<RunSummary> {
    let m = &plan.manifest.manifest;
    let desc = plan.model.as_ref().expect("checked by run");
    let prediction = match m.source.as_ref().map(|s| s.prediction.as_str()) {
        Some("sample") => Prediction::Sample,
        Some("v_prediction") => Prediction::VPrediction,
        _ => Prediction::Epsilon,
    };
    super::model::unsupported_settings(plan, &net)?;
    let example = net.data_shape();
    // Targets load before the run folder exists, so bad data leaves nothing behind.
    let (target, held_out) = if m.target.is_some() {
        let (t, h) = load_target(plan, &example)?;
        let k = net.num_classes();
        if let Some(&top) = t.labels.iter().chain(h.labels.iter()).flatten().max()
            && top as usize >= k
            && (k > 0 || plan.plugins.is_empty())
        {
            bail!(
                "target `{}` has class label {top}, but the source model has {k} classes (labels 0 to {})",
                t.source,
                k.saturating_sub(1)
            );
        }
        (Some(t), Some(h).filter(|h| !h.is_empty()))
    } else {
        (None, None)
    };
    let classes = super::model::run_classes(plan, &net, target.as_ref(), held_out.as_ref())?;
    let sample_masks = super::model::sample_masks(plan, target.as_ref(), held_out.as_ref())?;
    let source_data = super::model::load_source_data(plan, &example)?;
    let device: B::Device = Default::default();
    // The extractor and the reference images load before anything trains,
    // so a bad weights file or folder costs nothing.
    let eval_setup = super::evaluation::prepare::<B::InnerBackend>(
        plan,
        &example,
        target.as_ref(),
        held_out.as_ref(),
        &device,
    )?;
    let mut condition = super::condition::RunCondition::<B>::load(plan, &device)?;
    if let (Some(c), Some(sm)) = (condition.as_mut(), &m.sample) {
        c.sample_images(plan, sm, target.as_ref(), held_out.as_ref(), &example)?;
    }
    let _session = Session::<B>::install(device.clone(), m.run.seed);
    Session::<B>::with(|s| s.services.condition_shape = plan.condition.as_ref().map(|c| c.shape))?;
    let mut dir = match &opts.sample_from {
        Some((_, out)) => RunDir::at(out)?,
        None => RunDir::open(
            &plan.manifest.output_dir(),
            &m.run.name,
            opts.resume,
            &plan.manifest.to_portable_toml_string(),
        )?,
    };

    // 1. base model
    let trainable = m
        .train
        .as_ref()
        .map(|t| t.trainable.clone())
        .unwrap_or_default();
    let is_trainable = move |name: &str| match &trainable {
        Trainable::None => false,
        Trainable::All => true,
        Trainable::Globs(g) => g.iter().any(|p| dtx_plugin_api::points::matches(p, name)),
    };
    base_weights::<B>(plan, &net, &device, &is_trainable)?;
    tracing::info!(
        kind = %desc.kind,
        parameters = net.parameters().iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>(),
        trainable = Session::<B>::with(|s| s.params.trainable_ids().len())?,
        "base model ready"
    );
    let source: HashMap<String, P<B>> = Session::<B>::with(|s| {
        s.params
            .entries()
            .iter()
            .map(|e| {
                (
                    e.name.clone(),
                    crate::tensor_abi::untracked::<B>(e.value.clone()),
                )
            })
            .collect()
    })?;

    let timesteps = m.train.as_ref().map(|t| t.timesteps).unwrap_or(1000);
    let sched = schedule(m.train.as_ref().map(|t| t.schedule).unwrap_or_default());
    let alpha_bars = sched.alpha_bars(timesteps);

    // 2. plugins, built against the model, in manifest order
    let model_info = desc.to_model_info();
    let mut instances = Vec::new();
    for p in &plan.plugins {
        instances.push(Instance::<B>::new(
            &p.name,
            p.library.clone(),
            &p.config_json,
            &model_info,
        )?);
    }
    let engine = Rc::new(Engine {
        net,
        plugins: instances.into_iter().map(RefCell::new).collect(),
        source,
        prediction,
        alpha_bars: alpha_bars.clone(),
        data_channels: example[0],
        classes,
        sampling_weights: RefCell::new(None),
        dropout: RefCell::new(None),
        sample_masks,
        condition,
    });

    // 3. services: data, denoisers
    let batch = m.train.as_ref().map(|t| t.batch).unwrap_or(16);
    let flip = m.target.as_ref().is_some_and(|t| t.flip);
    let data = match &target {
        Some(ds) => Some(Rc::new(RefCell::new((
            Data {
                target: ds.clone(),
                iter: BatchIter::for_dataset(ds, batch, m.run.seed, flip)?,
                source: source_data.clone(),
                held_out: held_out.clone(),
            },
            device.clone(),
        )))),
        None => None,
    };
    let source_sampler = super::sampling::SourceSampler::<B, D> {
        engine: engine.clone(),
        // the run's sampler, else 50 DDIM steps in batches of 256
        settings: m.sample.clone().unwrap_or_else(|| {
            toml::from_str("count = 1\nbatch = 256").expect("a valid [sample] table")
        }),
        seed: m.run.seed,
        calls: std::cell::Cell::new(0),
        device: device.clone(),
    };
    Session::<B>::with(|s| {
        s.services.alpha_bar = Some(alpha_bars.iter().map(|&a| a as f32).collect());
        s.services.denoiser = Some(Rc::new(engine.clone()));
        s.services.source_sampler = Some(Rc::new(source_sampler));
        if engine.condition.is_some() {
            s.services.condition = Some(Rc::new(engine.clone()));
        }
        if let Some(d) = &data {
            s.services.data =
                Some(Rc::new(RefCell::new(d.clone())) as Rc<RefCell<dyn DataService<B>>>);
        }
    })?;

    if let Some(t) = &target {
        tracing::info!(
            examples = t.len(),
            held_out = held_out.as_ref().map_or(0, |h| h.len()),
            shape = ?t.sample_shape,
            "target set loaded from {}",
            t.source
        );
    }

    // 4. prepare (what it trains is in the checkpoint when resuming or sampling)
    let fresh = opts.sample_from.is_none() && !opts.resume;
    if fresh {
        let before = if m.train.is_some() { "train" } else { "sample" };
        super::prepare::run(&engine, before, opts.quiet, &mut dir, log)?;
    }
    // Without training, what `prepare` trained is the run's checkpoint, for
    // `dtx sample` to reuse.
    let prepared = engine
        .plugins
        .iter()
        .any(|p| p.borrow().implements(Hook::Prepare));
    if fresh && m.train.is_none() && prepared {
        save(
            &engine,
            &dir,
            None,
            crate::data::BatchPosition { epoch: 0, index: 0 },
            0,
        )?;
    }

    // 5. train
    let mut ema = m
        .train
        .as_ref()
        .and_then(|t| t.ema)
        .map(|e| Session::<B>::with(|s| Ema::new(e.decay as f32, &s.params)))
        .transpose()?;
    let mut summary = RunSummary {
        dir: dir.path.clone(),
        steps: 0,
        final_loss: None,
        samples: None,
        evaluation: None,
        sample_labels: None,
        sampling: None,
    };
    let objective = Objective {
        alpha_bars: &alpha_bars,
        prediction,
        weighting: m
            .train
            .as_ref()
            .map(crate::manifest::Train::weighting)
            .unwrap_or(Weighting::None),
        data_channels: example[0],
    };
    if let Some((ckpt, _)) = &opts.sample_from {
        let progress = restore(&engine, ckpt, ema.as_mut(), &device)?;
        summary.steps = progress.step;
        writeln!(log, "loaded `{}` (step {})", ckpt.display(), progress.step)?;
    } else if let (Some(t), Some(d)) = (&m.train, &data) {
        let mut start = 0u64;
        if opts.resume {
            let progress = restore(&engine, &dir.latest_checkpoint(), ema.as_mut(), &device)?;
            dir.truncate_metrics_after(progress.step)?;
            d.borrow_mut().0.iter.restore(crate::data::BatchPosition {
                epoch: progress.epoch,
                index: progress.index,
            })?;
            start = progress.step;
            writeln!(log, "resumed `{}` at step {start}", m.run.name)?;
        }
        let rule = match t.optimizer.as_str() {
            "sgd" => Rule::Sgd,
            "adam" => Rule::Adam,
            _ => Rule::AdamW,
        };
        let end = opts.stop_after.map(|s| s.min(t.steps)).unwrap_or(t.steps);
        let every = t.checkpoint_every.unwrap_or(t.steps.max(1));
        let report_every = (t.steps / 10).max(1);
        // A bar on a terminal; plain lines otherwise; nothing with --quiet.
        if let Some(tg) = &target {
            engine.cache_target(tg, flip, batch, &device)?;
        }
        let bar = progress_bar(opts.quiet, end.saturating_sub(start), "train");
        for step in start..end {
            let timer = std::time::Instant::now();
            let mut rng = step_rng(m.run.seed, step);
            Session::<B>::with(|s| s.rng = StdRng::seed_from_u64(rng.random()))?;
            // The U-Nets' dropout draws from a stream of its own, so that a
            // config without dropout trains exactly as before.
            *engine.dropout.borrow_mut() = (engine.net.dropout() > 0.0)
                .then(|| DropoutRng::new(step_rng(m.run.seed ^ DROPOUT_STREAM, step).random()));
            let b = { d.borrow_mut().0.iter.next_batch() };
            let flips = flip.then_some(b.flips.as_slice());
            let (x0, labels) = d
                .borrow()
                .0
                .target
                .to_tensor_flipped::<B>(&b.indices, flips, &device);
            engine.condition_batch(&b.indices, flips, &device)?;
            let draw = Draw::new::<D>(&mut rng, &x0, timesteps, &device);
            let params = engine.params();
            let (mut terms, pred, x_t) =
                objective.simple::<B, D>(&engine, &params, &x0, labels.clone(), &draw, true)?;
            let t_stored = Stored::Float(draw.t_float());
            for mut inst in engine.hooked(|p| p.implements(Hook::Loss)) {
                let noise_p = prim_f(draw.noise::<D>());
                terms.extend(inst.loss(LossArgs {
                    x0: &x0,
                    noise: &noise_p,
                    t: &t_stored,
                    x_t: &x_t,
                    pred: &pred,
                    labels: labels.as_ref(),
                    step,
                })?);
            }
            let mut values = serde_json::Map::new();
            let total = sum_terms::<B>(&terms, &mut values, || {
                // Steps count from 1, as in metrics.jsonl.
                let kept = if dir.latest_checkpoint().exists() {
                    format!(
                        "the last good checkpoint is `{}`",
                        dir.latest_checkpoint().display()
                    )
                } else {
                    format!(
                        "no checkpoint was written yet (the first comes after {every} steps), so nothing is kept to resume from"
                    )
                };
                (format!("training stopped at step {}", step + 1), kept)
            })?;
            let total_v = scalar(&total);
            let lr = warmup_lr(t.lr, t.warmup, step);
            let adam = AdamConfig {
                rule,
                lr: lr as f32,
                weight_decay: t.weight_decay as f32,
                ..Default::default()
            };
            let grad_norm = Session::<B>::with(|s| {
                let ids = s.params.trainable_ids();
                s.params
                    .step_clipped(prim_f(total), &ids, adam, t.grad_clip.map(|c| c as f32))
            })??;
            values.insert("grad_norm".into(), serde_json::json!(grad_norm));
            if let Some(e) = ema.as_mut() {
                Session::<B>::with(|s| e.update(&s.params))?;
            }
            let logs = Session::<B>::with(|s| s.services.take_logs())?;
            for (k, v) in logs {
                values.insert(k, serde_json::json!(v));
            }
            let done = step + 1;
            values.insert("step".into(), serde_json::json!(done));
            values.insert("loss".into(), serde_json::json!(total_v));
            values.insert("lr".into(), serde_json::json!(lr));
            values.insert(
                "samples_per_s".into(),
                serde_json::json!(b.indices.len() as f64 / timer.elapsed().as_secs_f64().max(1e-9)),
            );
            if let (Some(v_every), Some(h)) = (t.validate_every, &held_out)
                && (done % v_every == 0 || done == t.steps)
            {
                let v = objective.validation::<B, D>(&engine, h, m.run.seed, batch, &device)?;
                values.insert("val.simple".into(), serde_json::json!(v));
                if bar.is_none() && !opts.quiet {
                    writeln!(log, "step {done}: validation loss {v:.5}")?;
                }
            }
            tracing::debug!(step = done, loss = total_v, lr, grad_norm, "step");
            dir.log(&serde_json::Value::Object(values))?;
            summary.final_loss = Some(total_v);
            match &bar {
                Some(b) => {
                    b.inc(1);
                    b.set_message(format!("loss {total_v:.4}"));
                }
                None if !opts.quiet && (done % report_every == 0 || done == end) => {
                    writeln!(log, "step {done}/{}: loss {total_v:.5}", t.steps)?;
                }
                None => {}
            }
            if done % every == 0 || done == end {
                let pos = d.borrow().0.iter.position();
                save(&engine, &dir, ema.as_ref(), pos, done)?;
                tracing::info!(
                    step = done,
                    "checkpoint written to {}",
                    dir.latest_checkpoint().display()
                );
            }
            summary.steps = done;
        }
        if let Some(b) = &bar {
            b.finish();
        }
        if opts.stop_after.is_some_and(|s| s < t.steps) {
            return Ok(summary);
        }
    }

    // 6. sample (EMA weights when there are some) and filter
    if let Some(sm) = &m.sample {
        let weights: HashMap<String, P<B>> = match &ema {
            Some(e) => Session::<B>::with(|s| e.values(&s.params))?
                .into_iter()
                .collect(),
            // no graph through the weights while sampling
            None => engine
                .params()
                .into_iter()
                .map(|(k, v)| (k, crate::tensor_abi::untracked::<B>(v)))
                .collect(),
        };
        let drawn = super::sampling::draw::<B, D>(
            &engine,
            &weights,
            sm,
            m.run.seed,
            &device,
            opts.quiet,
            eval_setup.as_ref().is_some_and(|e| e.wants_source()),
        )?;
        let (stats, labels) =
            super::sampling::record(&drawn, sm, &mut dir, log, &example, target.as_ref())?;
        summary.sampling = Some(stats);
        summary.sample_labels = labels;
        if let Some(e) = &eval_setup {
            summary.evaluation =
                Some(e.record(&drawn, &example, m.run.seed, &device, &mut dir, log)?);
        }
        let mut shape = vec![drawn.accepted_count()];
        shape.extend_from_slice(&example);
        summary.samples = Some((drawn.accepted, shape));
    }
    // The run used private copies of its plugin libraries; say so if a
    // file was replaced meanwhile, since a new run would load the new one.
    for p in &plan.plugins {
        if let Some(msg) = p.library.changed_on_disk() {
            tracing::warn!("{msg}");
            writeln!(log, "warning: {msg}")?;
        }
    }
    super::report::write_report(&dir, plan, &summary)?;
    Ok(summary)
}

/// The learning rate of step `step` (0-based): linear warmup from 0 to `lr`
/// over `warmup` steps, then constant.
pub(super) fn warmup_lr(lr: f64, warmup: u64, step: u64) -> f64 {
    if warmup == 0 {
        lr
    } else {
        lr * ((step + 1) as f64 / warmup as f64).min(1.0)
    }
}

/// Adds up named scalar loss terms into `values` (by name); a NaN or
/// infinite term is an error naming it and every term's value, between the
/// two parts of `context()` (where it happened, what is kept).
fn sum_terms<B: AutodiffBackend>(
    terms: &[(String, P<B>)],
    values: &mut serde_json::Map<String, serde_json::Value>,
    context: impl Fn() -> (String, String),
) -> Result<Tensor<B, 1>> {
    let mut total: Option<Tensor<B, 1>> = None;
    for (name, term) in terms {
        let t1: Tensor<B, 1> = ranked::<B, 1>(term.clone()).reshape([1]);
        let v = scalar(&t1);
        if !f64::is_finite(v) {
            let all: Vec<String> = terms
                .iter()
                .map(|(n, t)| format!("{n} = {}", scalar(&ranked::<B, 1>(t.clone()).reshape([1]))))
                .collect();
            let (head, tail) = context();
            bail!(
                "{head}: loss term `{name}` is {v} ({}); {tail}",
                all.join(", ")
            );
        }
        values.insert(name.clone(), serde_json::json!(v));
        total = Some(match total {
            Some(acc) => acc + t1,
            None => t1,
        });
    }
    total.ok_or_else(|| anyhow!("no loss terms"))
}

/// Restores a checkpoint (weights, EMA, plugin states) and returns its progress.
fn restore<B: AutodiffBackend>(
    engine: &Engine<B>,
    path: &std::path::Path,
    ema: Option<&mut Ema<B>>,
    device: &B::Device,
) -> Result<Progress> {
    let (states, progress) =
        Session::<B>::with(|s| checkpoint::load::<B>(path, &mut s.params, ema, device))??;
    for mut inst in engine.plugins.iter().map(|p| p.borrow_mut()) {
        if let Some((_, st)) = states.iter().find(|(n, _)| *n == inst.name) {
            inst.state_load(st)?;
        }
    }
    Ok(progress)
}

/// Writes the run's checkpoint after `done` steps, data position `pos`.
fn save<B: AutodiffBackend>(
    engine: &Engine<B>,
    dir: &RunDir,
    ema: Option<&Ema<B>>,
    pos: crate::data::BatchPosition,
    done: u64,
) -> Result<()> {
    let states: Vec<(String, Vec<u8>)> = engine
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
        checkpoint::save::<B>(&dir.latest_checkpoint(), &s.params, ema, &states, &progress)
    })??;
    Ok(())
}
