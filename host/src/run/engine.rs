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
use crate::data::BatchIter;
use crate::diffusion::prediction::{BatchScalar, Prediction, q_sample, to_epsilon, v_from_eps_x0};
use crate::diffusion::sampler::{Sampler, SamplerConfig, sample};
use crate::diffusion::schedule::Schedule;
use crate::manifest::plan::Plan;
use crate::manifest::{Sampler as SamplerKind, Schedule as ScheduleKind, Trainable};
use crate::model::mlp_net::MlpNet;
use crate::plugins::{Instance, LossArgs};
use crate::tensor_abi::{DataService, Session, Stored};
use crate::train::checkpoint::{self, Progress};
use crate::train::ema::Ema;
use crate::train::optim::{AdamConfig, Rule};
use anyhow::{Result, anyhow, bail};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Int, Tensor, TensorData, TensorPrimitive};
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
}

type P<B> = FloatTensor<B>;

fn prim_f<B: AutodiffBackend, const D: usize>(t: Tensor<B, D>) -> P<B> {
    t.into_primitive().tensor()
}

fn ranked<B: AutodiffBackend, const D: usize>(p: P<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

fn scalar<B: AutodiffBackend>(t: &Tensor<B, 1>) -> f64 {
    t.clone()
        .into_data()
        .iter::<f64>()
        .next()
        .unwrap_or(f64::NAN)
}

/// A progress bar on stderr when it is a terminal (and not `quiet`).
fn progress_bar(quiet: bool, len: u64, what: &str) -> Option<indicatif::ProgressBar> {
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

/// The RNG of step `s`: independent streams per step, the same on resume.
fn step_rng(seed: u64, step: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ step.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn normal<B: AutodiffBackend, const D: usize>(
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

/// Settings a manifest may hold that this engine does not carry out yet: an
/// error naming each, rather than a run that silently ignores it.
fn unsupported_settings(plan: &Plan) -> Result<()> {
    let m = &plan.manifest.manifest;
    let mut problems = Vec::new();
    if let Some(s) = &m.sample {
        if s.guidance != 0.0 {
            problems.push("`sample.guidance` (classifier-free guidance needs a class-conditional model; set it to 0)");
        }
        if s.label.is_some() {
            problems.push("`sample.label` (class-conditional sampling)");
        }
    }
    if m.eval.as_ref().is_some_and(|e| !e.metrics.is_empty()) {
        problems.push(
            "`[eval] metrics` (evaluation comes with the evaluation issue; remove them to run)",
        );
    }
    if m.target.as_ref().is_some_and(|t| t.labels) {
        problems.push("`target.labels` (class-conditional training)");
    }
    if problems.is_empty() {
        return Ok(());
    }
    bail!(
        "`dtx run` does not carry out these settings yet: {}",
        problems.join("; ")
    )
}

/// Runs a plan (CPU backend `B`) into its run folder.
pub fn run<B: AutodiffBackend>(
    plan: &Plan,
    opts: &RunOptions,
    log: &mut dyn Write,
) -> Result<RunSummary> {
    let m = &plan.manifest.manifest;
    let desc = plan
        .model
        .as_ref()
        .ok_or_else(|| anyhow!("`dtx run` needs a [source] model"))?;
    let net = MlpNet::from_description(desc).ok_or_else(|| {
        anyhow!(
            "`dtx run` runs `kind = \"mlp\"` sources so far; the {} forward pass comes with the diffusion engine (its description, injection points and plan work today)",
            desc.kind
        )
    })?;
    let prediction = match m.source.as_ref().map(|s| s.prediction.as_str()) {
        Some("sample") => Prediction::Sample,
        Some("v_prediction") => Prediction::VPrediction,
        _ => Prediction::Epsilon,
    };
    unsupported_settings(plan)?;
    let device: B::Device = Default::default();
    let _session = Session::<B>::install(device.clone(), m.run.seed);
    let mut dir = match &opts.sample_from {
        Some((_, out)) => RunDir::at(out)?,
        None => RunDir::open(
            &plan.manifest.output_dir(),
            &m.run.name,
            opts.resume,
            &plan.manifest.to_toml_string(),
        )?,
    };

    // 1. base model: fresh weights from the run's seed (MLP sources have no file)
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
    let mut init_rng = StdRng::seed_from_u64(m.run.seed);
    Session::<B>::with(|s| net.init(&mut s.params, &mut init_rng, &device, &is_trainable))??;
    let source: HashMap<String, P<B>> = Session::<B>::with(|s| {
        s.params
            .entries()
            .iter()
            .map(|e| (e.name.clone(), B::float_detach(e.value.clone())))
            .collect()
    })?;

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
        plugins: RefCell::new(instances),
        source,
    });

    // 3. services: schedule, data, denoisers
    let timesteps = m.train.as_ref().map(|t| t.timesteps).unwrap_or(1000);
    let sched = schedule(m.train.as_ref().map(|t| t.schedule).unwrap_or_default());
    let alpha_bars = sched.alpha_bars(timesteps);
    let target = if m.target.is_some() {
        Some(load_target(plan)?)
    } else {
        None
    };
    let batch = m.train.as_ref().map(|t| t.batch).unwrap_or(16);
    let data = match &target {
        Some(ds) => Some(Rc::new(RefCell::new((
            Data {
                target: ds.clone(),
                iter: BatchIter::for_dataset(ds, batch, m.run.seed, false)?,
            },
            device.clone(),
        )))),
        None => None,
    };
    Session::<B>::with(|s| {
        s.services.alpha_bar = Some(alpha_bars.iter().map(|&a| a as f32).collect());
        s.services.denoiser = Some(Rc::new(engine.clone()));
        if let Some(d) = &data {
            s.services.data =
                Some(Rc::new(RefCell::new(d.clone())) as Rc<RefCell<dyn DataService<B>>>);
        }
    })?;

    // 4. prepare (what it trains is in the checkpoint when resuming or sampling)
    let run_dir = dir.path.display().to_string();
    let fresh = opts.sample_from.is_none() && !opts.resume;
    for inst in engine
        .plugins
        .borrow_mut()
        .iter_mut()
        .filter(|p| fresh && p.implements(Hook::Prepare))
    {
        inst.prepare(if m.train.is_some() { "train" } else { "sample" }, &run_dir)?;
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
    };
    if let Some((ckpt, _)) = &opts.sample_from {
        let (states, progress) = Session::<B>::with(|s| {
            checkpoint::load::<B>(ckpt, &mut s.params, ema.as_mut(), &device)
        })??;
        for inst in engine.plugins.borrow_mut().iter_mut() {
            if let Some((_, st)) = states.iter().find(|(n, _)| *n == inst.name) {
                inst.state_load(st)?;
            }
        }
        summary.steps = progress.step;
        writeln!(log, "loaded `{}` (step {})", ckpt.display(), progress.step)?;
    } else if let (Some(t), Some(d)) = (&m.train, &data) {
        let mut start = 0u64;
        if opts.resume {
            let path = dir.latest_checkpoint();
            let (states, progress) = Session::<B>::with(|s| {
                checkpoint::load::<B>(&path, &mut s.params, ema.as_mut(), &device)
            })??;
            for inst in engine.plugins.borrow_mut().iter_mut() {
                if let Some((_, st)) = states.iter().find(|(n, _)| *n == inst.name) {
                    inst.state_load(st)?;
                }
            }
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
        let adam = AdamConfig {
            rule,
            lr: t.lr as f32,
            weight_decay: t.weight_decay as f32,
            ..Default::default()
        };
        let end = opts.stop_after.map(|s| s.min(t.steps)).unwrap_or(t.steps);
        let every = t.checkpoint_every.unwrap_or(t.steps.max(1));
        let report_every = (t.steps / 10).max(1);
        // A bar on a terminal; plain lines otherwise; nothing with --quiet.
        let bar = progress_bar(opts.quiet, end.saturating_sub(start), "train");
        for step in start..end {
            let timer = std::time::Instant::now();
            let mut rng = step_rng(m.run.seed, step);
            Session::<B>::with(|s| s.rng = StdRng::seed_from_u64(rng.random()))?;
            let b = { d.borrow_mut().0.iter.next_batch() };
            let (x0, labels) = d.borrow().0.target.to_tensor::<B>(&b.indices, &device);
            let n = b.indices.len();
            let x0r: Tensor<B, 2> = ranked(x0.clone());
            let dims = x0r.dims();
            let ts: Vec<i64> = (0..n)
                .map(|_| rng.random_range(0..timesteps as i64))
                .collect();
            let noise: Tensor<B, 2> = normal(&mut rng, dims, &device);
            let ab: Vec<f32> = ts.iter().map(|&i| alpha_bars[i as usize] as f32).collect();
            let ab_t = Tensor::<B, 1>::from_data(TensorData::new(ab, [n]), &device);
            let x_t = q_sample(x0r, noise.clone(), ab_t.clone());
            let tf =
                Tensor::<B, 1, Int>::from_data(TensorData::new(ts.clone(), [n]), &device).float();
            let params = engine.params();
            let out = ranked::<B, 2>(engine.student(
                &params,
                prim_f(x_t.clone()),
                prim_f(tf.clone()),
                labels.clone(),
                true,
            )?);
            // L_simple on what the network predicts; plugins see ε.
            let ab_b = BatchScalar::PerSample(ab_t.clone());
            let target = match prediction {
                Prediction::Epsilon => noise.clone(),
                Prediction::Sample => ranked::<B, 2>(x0.clone()),
                Prediction::VPrediction => {
                    v_from_eps_x0(noise.clone(), ranked::<B, 2>(x0.clone()), &ab_b)
                }
            };
            let simple = (out.clone() - target).powf_scalar(2.0).mean();
            let pred = prim_f(to_epsilon(out, x_t.clone(), &ab_b, prediction));
            let mut terms: Vec<(String, P<B>)> = vec![("loss.simple".into(), prim_f(simple))];
            let t_stored = Stored::Float(prim_f(tf));
            for inst in engine
                .plugins
                .borrow_mut()
                .iter_mut()
                .filter(|p| p.implements(Hook::Loss))
            {
                let (xt_p, noise_p) = (prim_f(x_t.clone()), prim_f(noise.clone()));
                terms.extend(inst.loss(LossArgs {
                    x0: &x0,
                    noise: &noise_p,
                    t: &t_stored,
                    x_t: &xt_p,
                    pred: &pred,
                    labels: labels.as_ref(),
                    step,
                })?);
            }
            let mut values = serde_json::Map::new();
            let mut total: Option<Tensor<B, 1>> = None;
            for (name, term) in &terms {
                let t1: Tensor<B, 1> = ranked::<B, 1>(term.clone()).reshape([1]);
                let v = scalar(&t1);
                if !f64::is_finite(v) {
                    let all: Vec<String> = terms
                        .iter()
                        .map(|(n, t)| {
                            format!("{n} = {}", scalar(&ranked::<B, 1>(t.clone()).reshape([1])))
                        })
                        .collect();
                    bail!(
                        "training stopped at step {step}: loss term `{name}` is {v} ({}); the last good checkpoint is `{}`",
                        all.join(", "),
                        dir.latest_checkpoint().display()
                    );
                }
                values.insert(name.clone(), serde_json::json!(v));
                total = Some(match total {
                    Some(acc) => acc + t1,
                    None => t1,
                });
            }
            let total = total.expect("L_simple is always there");
            let total_v = scalar(&total);
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
            values.insert("step".into(), serde_json::json!(step + 1));
            values.insert("loss".into(), serde_json::json!(total_v));
            values.insert("lr".into(), serde_json::json!(t.lr));
            values.insert(
                "samples_per_s".into(),
                serde_json::json!(n as f64 / timer.elapsed().as_secs_f64().max(1e-9)),
            );
            dir.log(&serde_json::Value::Object(values))?;
            summary.final_loss = Some(total_v);
            let done = step + 1;
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
                let states: Vec<(String, Vec<u8>)> = engine
                    .plugins
                    .borrow()
                    .iter()
                    .map(|p| Ok((p.name.clone(), p.state_save()?)))
                    .collect::<Result<_, crate::plugins::HookError>>()?;
                let pos = d.borrow().0.iter.position();
                let progress = Progress {
                    step: done,
                    epoch: pos.epoch,
                    index: pos.index,
                };
                Session::<B>::with(|s| {
                    checkpoint::save::<B>(
                        &dir.latest_checkpoint(),
                        &s.params,
                        ema.as_ref(),
                        &states,
                        &progress,
                    )
                })??;
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
        let cfg = SamplerConfig {
            sampler: match sm.sampler {
                SamplerKind::Ddpm => Sampler::Ddpm {
                    variance: crate::diffusion::sampler::VarianceType::FixedSmall,
                },
                _ => Sampler::Ddim { eta: sm.eta },
            },
            steps: sm.steps,
            ..Default::default()
        };
        let weights: HashMap<String, P<B>> = match &ema {
            Some(e) => Session::<B>::with(|s| e.values(&s.params))?
                .into_iter()
                .collect(),
            None => engine.params(),
        };
        let dim = engine.net.data_dim;
        let mut accepted: Vec<f32> = Vec::new();
        let mut rejected: HashMap<String, usize> = HashMap::new();
        let mut attempts = 0usize;
        let mut rng = step_rng(m.run.seed, u64::MAX - 1);
        let bar = progress_bar(opts.quiet, sm.count as u64, "sample");
        while accepted.len() / dim < sm.count && attempts < 10 * sm.count {
            let n = sm.batch.min(sm.count - accepted.len() / dim).max(1);
            attempts += n;
            let x_big_t: Tensor<B, 2> = normal(&mut rng, [n, dim], &device);
            let mut step_index = 0u64;
            let num_steps = sm.steps as u64;
            let eng = engine.clone();
            let samples = sample::<B, 2, anyhow::Error>(
                |x, ts| {
                    let tf = Tensor::<B, 1, Int>::from_data(
                        TensorData::new(ts.to_vec(), [ts.len()]),
                        &device,
                    )
                    .float();
                    let out = eng.student(
                        &weights,
                        B::float_detach(prim_f(x.clone())),
                        prim_f(tf.clone()),
                        None,
                        false,
                    )?;
                    let ab_s = BatchScalar::Shared(crate::diffusion::sampler::alpha_bar_at(
                        &alpha_bars,
                        ts[0],
                    ));
                    let mut eps = prim_f(to_epsilon(
                        ranked::<B, 2>(out),
                        x.clone(),
                        &ab_s,
                        prediction,
                    ));
                    let t_stored = Stored::Float(prim_f(tf));
                    for inst in eng
                        .plugins
                        .borrow_mut()
                        .iter_mut()
                        .filter(|p| p.implements(Hook::Score))
                    {
                        eps = inst.score(
                            &prim_f(x.clone()),
                            &t_stored,
                            &eps,
                            None,
                            step_index,
                            num_steps,
                        )?;
                    }
                    step_index += 1;
                    Ok(ranked::<B, 2>(B::float_detach(eps)))
                },
                x_big_t,
                &alpha_bars,
                &cfg,
                |shape| normal(&mut rng, shape, &device),
            )?;
            let sp = prim_f(samples.clone());
            let mut keep = vec![true; n];
            for inst in engine
                .plugins
                .borrow_mut()
                .iter_mut()
                .filter(|p| p.implements(Hook::Filter))
            {
                let out = inst.filter(&sp, None)?;
                for (i, k) in out.keep.iter().enumerate() {
                    if !k && keep[i] {
                        *rejected.entry(inst.name.clone()).or_default() += 1;
                    }
                    keep[i] &= *k;
                }
            }
            let values = samples
                .into_data()
                .to_vec::<f32>()
                .map_err(|e| anyhow!("{e:?}"))?;
            for (i, chunk) in values.chunks(dim).enumerate() {
                if keep[i] && accepted.len() / dim < sm.count {
                    accepted.extend_from_slice(chunk);
                    if let Some(b) = &bar {
                        b.inc(1);
                    }
                }
            }
        }
        let got = accepted.len() / dim;
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        writeln!(log, "sampled {got} of {} ({} drawn)", sm.count, attempts)?;
        for (p, r) in &rejected {
            writeln!(log, "  filter `{p}` rejected {r}")?;
        }
        dir.log(&serde_json::json!({"sample": {"requested": sm.count, "accepted": got, "drawn": attempts, "rejected": rejected}}))?;
        super::report::write_samples(&dir, &accepted, dim, target.as_ref())?;
        summary.samples = Some((accepted, vec![got, dim]));
    }
    super::report::write_report(&dir, plan, &summary)?;
    Ok(summary)
}
