//! Drawing samples at the end of a run (and in `dtx sample`): the sampler
//! loop with the plugins' `score` corrections at every step and their
//! `filter` decisions on every batch, until `sample.count` are accepted.

use super::drawn::{Batch, Drawn, FilterScores, record};
use super::error::{Result, RunError, run_error};
use super::student::Student;
use super::support::{batch_shape, normal, progress_bar, step_rng};
use crate::diffusion::prediction::{BatchScalar, to_epsilon};
use crate::diffusion::sampler::{Sampler, SamplerConfig, VarianceType, alpha_bar_at, sample};
use crate::manifest::{Sample, Sampler as SamplerKind};
use crate::model::{Denoiser, Weights};
use crate::tensor_abi::{Labels, Ranked, SampleService, Session};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use dtx_plugin_api::abi::{AbiError, Hook};
use std::collections::HashMap;

/// The student's samples at the end of a run, from its EMA weights when it
/// keeps an EMA (the plugins' already swapped in by the caller).
fn draw_stage<B: AutodiffBackend, const D: usize>(
    ctx: &super::context::RunContext<B>,
    sm: &Sample,
    seed: u64,
    quiet: bool,
) -> Result<Drawn> {
    let weights = sampled_base(&ctx.student, ctx.ema.as_ref())?;
    let with_source = ctx.eval_setup.as_ref().is_some_and(|e| e.wants_source());
    draw::<B, D>(
        &ctx.student,
        &weights,
        sm,
        seed,
        &ctx.device,
        quiet,
        with_source,
    )
}

/// The base weights sampling uses: the EMA averages when the run keeps an
/// EMA, else the trained values; untracked either way (no graph through
/// the weights while sampling).
pub(super) fn sampled_base<B: AutodiffBackend>(
    student: &Student<B>,
    ema: Option<&crate::train::ema::Ema<B>>,
) -> Result<Weights<B>> {
    Ok(match ema {
        Some(e) => {
            let values: HashMap<String, _> = Session::<B>::with(|s| e.values(&s.params))?
                .into_iter()
                .collect();
            student.net.weights(&values)?
        }
        None => student.params()?.untracked(),
    })
}

/// Runs `f` with the EMA averages of the plugins' parameters in the store
/// (their hooks read them there) when the run keeps an EMA, and puts the
/// trained values back after it, whatever `f` returned.
pub(super) fn with_plugin_averages<B: AutodiffBackend, T>(
    ema: Option<&crate::train::ema::Ema<B>>,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let live = match ema {
        Some(e) => Some(Session::<B>::with(|s| {
            swap_plugin_values(&mut s.params, e)
        })?),
        None => None,
    };
    let out = f();
    if let Some(live) = live {
        Session::<B>::with(|s| swap_back(&mut s.params, live))?;
    }
    out
}

/// Puts the EMA averages of the plugins' parameters (`plugin.…`) into the
/// store; returns the values they replace.
fn swap_plugin_values<B: AutodiffBackend>(
    store: &mut crate::tensor_abi::ParamStore<B>,
    ema: &crate::train::ema::Ema<B>,
) -> Vec<(usize, burn::tensor::ops::FloatTensor<B>)> {
    let mut live = Vec::new();
    for (i, e) in store.entries_mut().iter_mut().enumerate() {
        if !e.name.starts_with("plugin.") {
            continue;
        }
        if let Some(avg) = ema.shadow.get(&e.name) {
            live.push((
                i,
                std::mem::replace(&mut e.value, B::from_inner(avg.clone())),
            ));
        }
    }
    live
}

/// Puts back what [`swap_plugin_values`] replaced.
fn swap_back<B: AutodiffBackend>(
    store: &mut crate::tensor_abi::ParamStore<B>,
    live: Vec<(usize, burn::tensor::ops::FloatTensor<B>)>,
) {
    let entries = store.entries_mut();
    for (i, v) in live {
        entries[i].value = v;
    }
}

/// Stage 4 of a run, sampling: `sample.count` samples from the student
/// (its EMA weights when the run keeps an EMA), filtered, written to the run
/// folder, and evaluated when the manifest has `[eval]`; what it produced goes
/// into `summary`. Nothing without a `[sample]` section.
pub(super) fn sample_stage<B: AutodiffBackend, const D: usize>(
    ctx: &mut super::context::RunContext<B>,
    plan: &crate::plan::Plan,
    quiet: bool,
    log: &mut dyn std::io::Write,
    summary: &mut super::RunSummary,
) -> Result<()> {
    let m = &plan.manifest.manifest;
    let Some(sm) = &m.sample else {
        return Ok(());
    };
    // With an EMA every averaged parameter is sampled at its average, as
    // `dtx sample` loads a checkpoint: the base through the weights table,
    // the plugins' own (which their hooks read from the store) swapped into
    // the store for this stage and the trained values put back after it.
    let drawn = with_plugin_averages(ctx.ema.as_ref(), || {
        draw_stage::<B, D>(ctx, sm, m.run.seed, quiet)
    })?;
    let (stats, labels) = record(
        &drawn,
        sm,
        &mut ctx.dir,
        log,
        &ctx.example,
        ctx.target.as_ref(),
    )?;
    summary.sampling = Some(stats);
    summary.sample_labels = labels;
    if let Some(e) = &ctx.eval_setup {
        let evaluation = e.record(
            &drawn,
            &ctx.example,
            m.run.seed,
            &ctx.device,
            &mut ctx.dir,
            log,
        )?;
        summary.evaluation = Some(evaluation);
    }
    let mut shape = vec![drawn.accepted_count()];
    shape.extend_from_slice(&ctx.example);
    summary.samples = Some((drawn.accepted, shape));
    Ok(())
}

/// Class labels for a batch of `n` when the run has classes (a
/// class-conditional net, or a labelled target that plugins condition on):
/// `sample.label` for all, else classes in turn.
fn batch_labels(classes: usize, sm: &Sample, first: usize, n: usize) -> Option<Vec<i64>> {
    (classes > 0).then(|| {
        (0..n)
            .map(|i| match sm.label {
                Some(l) => l as i64,
                None => ((first + i) % classes) as i64,
            })
            .collect()
    })
}

/// The sampler settings of `sm` for `student`'s network.
fn sampler_config<B: AutodiffBackend, const D: usize>(
    student: &Student<B>,
    sm: &Sample,
) -> (SamplerConfig, bool) {
    let learned_sigma = D > 2 && student.net.out_channels() == 2 * student.data_channels;
    let cfg = SamplerConfig {
        sampler: match sm.sampler {
            SamplerKind::Ddpm => Sampler::Ddpm {
                variance: if learned_sigma {
                    VarianceType::LearnedRange
                } else {
                    VarianceType::FixedSmall
                },
            },
            _ => Sampler::Ddim { eta: sm.eta },
        },
        steps: sm.steps,
        // images live in [-1, 1]: clip x̂0 there unless told otherwise
        clip_sample: sm.clip_sample.unwrap_or(D > 2).then_some(sm.clip_range),
        ..Default::default()
    };
    (cfg, learned_sigma)
}

/// One sampler run from `x_big_t`: the student with `weights` and every
/// `score` hook, or (`weights = None`) the source model alone.
#[allow(clippy::too_many_arguments)]
fn trajectory<B: AutodiffBackend, const D: usize>(
    student: &Student<B>,
    weights: Option<&Weights<B>>,
    cfg: &SamplerConfig,
    learned_sigma: bool,
    x_big_t: Tensor<B, D>,
    labels: Option<Tensor<B, 1, Int>>,
    hook_labels: Option<Labels<B>>,
    rng: &mut rand::rngs::StdRng,
    device: &B::Device,
) -> Result<Tensor<B, D>> {
    // what `score` hooks aim for: the masks when sampling by mask, else the classes
    let hook_labels = hook_labels.or_else(|| labels.clone().map(Labels::Classes));
    let alpha_bars = &student.alpha_bars;
    // (the source alone is sampled from inside plugins' hooks too, with
    // their cells borrowed: it runs no hook and asks none)
    let has_score = weights.is_some() && student.others_implement(Hook::Score);
    let mut step_index = 0u64;
    let num_steps = cfg.steps as u64;
    sample::<B, D, RunError>(
        |x, ts| {
            let tf =
                Tensor::<B, 1, Int>::from_data(TensorData::new(ts.to_vec(), [ts.len()]), device)
                    .float();
            // With `score` hooks, x_t is a leaf that ε is tracked from, so a
            // hook can differentiate through the ε actually being sampled
            // (every plugin's injection included, its own too: Eq. 13 of
            // denoiser-guidance builds x̂0 from it). The graph is released
            // at the end of the step (`tensor_abi::release_graph`).
            let x = Tensor::<B, D>::from_inner(x.clone().inner());
            let x = if has_score { x.require_grad() } else { x };
            let raw = match weights {
                None => student.source_forward(x.clone(), tf.clone(), labels.clone()),
                Some(w) => student.forward(w, x.clone(), tf.clone(), labels.clone(), false)?,
            };
            let (mean, variance) = if learned_sigma {
                let c = student.data_channels;
                (
                    raw.clone().narrow(1, 0, c),
                    Some(raw.narrow(1, c, c).detach()),
                )
            } else {
                (raw, None)
            };
            let ab_s = BatchScalar::Shared(alpha_bar_at(alpha_bars, ts[0]));
            let mut eps = to_epsilon(mean, x.clone(), &ab_s, student.prediction);
            // the source alone runs no hook (and may be sampled from inside
            // a plugin's own hook, whose cell is borrowed)
            if weights.is_some() {
                student.each_hooked(
                    |p| p.implements(Hook::Score),
                    |inst| -> Result<()> {
                        eps =
                            inst.score(&x, &tf, &eps, hook_labels.as_ref(), step_index, num_steps)?;
                        Ok(())
                    },
                )?;
            }
            step_index += 1;
            let eps = Tensor::<B, D>::from_inner(eps.inner());
            if has_score {
                // nothing tracked from x_t is kept past this step
                crate::tensor_abi::release_graph::<B, D>(x);
            }
            Ok(match (variance, cfg.sampler) {
                (Some(v), Sampler::Ddpm { .. }) => Tensor::cat(vec![eps, v], 1),
                _ => eps,
            })
        },
        x_big_t,
        alpha_bars,
        cfg,
        |shape| normal(rng, shape, device),
    )
}

/// Sets [`Student::sampling_weights`] while alive.
pub(super) struct SamplingWeights<'a, B: AutodiffBackend>(&'a Student<B>);

impl<'a, B: AutodiffBackend> SamplingWeights<'a, B> {
    /// `weights` with every plugin's `weights` hook, set as the sampled
    /// weights.
    pub(super) fn set(student: &'a Student<B>, weights: &Weights<B>) -> Result<(Self, Weights<B>)> {
        // no graph through plugin parameters while sampling: nothing trains,
        // and graphs that never reach a backward pile up in memory
        Session::<B>::with(|s| s.services.frozen_params = true)?;
        let guard = SamplingWeights(student);
        let adapted = student.adapted(weights.clone(), false)?.untracked();
        *student.sampling_weights.borrow_mut() = Some(adapted.clone());
        Ok((guard, adapted))
    }
}

impl<B: AutodiffBackend> Drop for SamplingWeights<'_, B> {
    fn drop(&mut self) {
        self.0.sampling_weights.borrow_mut().take();
        let _ = Session::<B>::with(|s| s.services.frozen_params = false);
    }
}

/// Samples `sm.count` examples from the student with weights `weights`.
/// With `with_source`, also denoises every batch's initial noise with the
/// source model alone (no plugin hooks): [`Drawn::source`] pairs each
/// accepted sample with the source's sample from the same noise (the same
/// trajectory for deterministic DDIM; for stochastic samplers the source's
/// step noise has its own stream, so the student's samples do not change).
#[allow(clippy::too_many_arguments)]
pub(super) fn draw<B: AutodiffBackend, const D: usize>(
    student: &std::rc::Rc<Student<B>>,
    weights: &Weights<B>,
    sm: &Sample,
    seed: u64,
    device: &B::Device,
    quiet: bool,
    with_source: bool,
) -> Result<Drawn> {
    let example = student.net.data_shape();
    let per_example: usize = example.iter().product();
    let (cfg, learned_sigma) = sampler_config::<B, D>(student, sm);
    let mut out = Drawn {
        accepted: Vec::new(),
        source: Vec::new(),
        per_example,
        attempts: 0,
        rejected: HashMap::new(),
        labels: Vec::new(),
        masks: Vec::new(),
        conditions: Vec::new(),
        condition_source: student.condition_source(),
        scores: Vec::new(),
        logs: Vec::new(),
    };
    // what was logged before sampling belongs to the stages that took it
    let _ = Session::<B>::with(|s| s.services.take_logs())?;
    let mut batch_index = 0;
    // sampled with every plugin's `weights` hook, applied once for the
    // whole run; hooks that call `denoise(student)` see these weights
    let (_sampling, adapted) = SamplingWeights::set(student, weights)?;
    let weights = &adapted;
    let run = |x_big_t: Tensor<B, D>,
               labels: Option<Tensor<B, 1, Int>>,
               masks: Option<Labels<B>>,
               source: bool,
               rng: &mut rand::rngs::StdRng| {
        let w = (!source).then_some(weights);
        trajectory::<B, D>(
            student,
            w,
            &cfg,
            learned_sigma,
            x_big_t,
            labels,
            masks,
            rng,
            device,
        )
    };
    let mut rng = step_rng(seed, u64::MAX - 1);
    let mut source_rng = step_rng(seed, u64::MAX - 2);
    // the masks of masked sampling have their own stream
    let mut condition_rng = step_rng(seed, u64::MAX - 3);
    let bar = progress_bar(quiet, sm.count as u64, "sample");
    let max_attempts = sm.max_attempts_factor.max(1) * sm.count;
    while out.accepted_count() < sm.count && out.attempts < max_attempts {
        let n = sm.batch.min(sm.count - out.accepted_count()).max(1);
        let label_values = batch_labels(student.classes, sm, out.attempts, n);
        let labels = label_values
            .as_ref()
            .map(|v| Tensor::<B, 1, Int>::from_data(TensorData::new(v.clone(), [n]), device));
        // sample k of the run is conditioned on mask k (cycling)
        let mask_idx: Vec<usize> = match &student.sample_masks {
            Some(m) => (0..n).map(|i| (out.attempts + i) % m.len()).collect(),
            None => Vec::new(),
        };
        let masks = student
            .sample_masks
            .as_ref()
            .and_then(|m| m.mask_tensor::<B>(&mask_idx, device))
            .map(Labels::Masks);
        let conditions = student.condition_samples(out.attempts, n, &mut condition_rng, device)?;
        out.attempts += n;
        let x_big_t: Tensor<B, D> = normal(&mut rng, batch_shape::<D>(n, &example), device);
        let from_source = if with_source {
            let s = run(x_big_t.clone(), labels.clone(), None, true, &mut source_rng)?;
            Some(
                s.into_data()
                    .to_vec::<f32>()
                    .map_err(|e| run_error!("{e:?}"))?,
            )
        } else {
            None
        };
        let samples = run(x_big_t, labels.clone(), masks.clone(), false, &mut rng)?;
        let filter_labels = masks
            .clone()
            .or_else(|| labels.clone().map(Labels::Classes));
        let (keep, filters) =
            filter_batch(student, &samples, filter_labels.as_ref(), &mut out.rejected)?;
        let values = samples
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| run_error!("{e:?}"))?;
        let batch = Batch {
            values: &values,
            keep: &keep,
            filters: &filters,
            labels: label_values.as_deref(),
            mask_idx: &mask_idx,
            conditions: &conditions,
            source: from_source.as_deref(),
        };
        let accepted = out.accept(&batch, student.sample_masks.as_ref(), sm.count);
        let logs = Session::<B>::with(|s| s.services.take_logs())?;
        out.logs
            .extend(logs.into_iter().map(|(k, v)| (batch_index, k, v)));
        batch_index += 1;
        if let Some(b) = &bar {
            b.inc(accepted as u64);
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    Ok(out)
}

/// The `sample_source` service: the source model alone, with the run's
/// sampler settings (`[sample]`, else 50 DDIM steps). Each call draws from
/// its own stream of the run's seed, so a run's source samples repeat.
pub(super) struct SourceSampler<B: AutodiffBackend, const D: usize> {
    pub(super) student: std::rc::Rc<Student<B>>,
    pub(super) settings: Sample,
    pub(super) seed: u64,
    pub(super) calls: std::cell::Cell<u64>,
    pub(super) device: B::Device,
}

impl<B: AutodiffBackend, const D: usize> SampleService<B> for SourceSampler<B, D> {
    fn sample_source(
        &self,
        count: usize,
        labels: Option<Tensor<B, 1, Int>>,
    ) -> Result<Ranked<B>, AbiError> {
        let example = self.student.net.data_shape();
        if let Some(l) = &labels {
            let n = l.dims()[0];
            if n != count {
                return Err(AbiError::other(format!(
                    "sample_source: {n} labels for {count} samples"
                )));
            }
        }
        let (cfg, learned_sigma) = sampler_config::<B, D>(&self.student, &self.settings);
        let call = self.calls.get();
        self.calls.set(call + 1);
        let mut rng = step_rng(self.seed, u64::MAX - 16 - call);
        let mut parts = Vec::new();
        let mut done = 0;
        while done < count {
            let n = self.settings.batch.max(1).min(count - done);
            let x_big_t: Tensor<B, D> =
                normal(&mut rng, batch_shape::<D>(n, &example), &self.device);
            let l = labels.as_ref().map(|l| l.clone().narrow(0, done, n));
            let x = trajectory::<B, D>(
                &self.student,
                None,
                &cfg,
                learned_sigma,
                x_big_t,
                l,
                None,
                &mut rng,
                &self.device,
            )
            .map_err(|e| AbiError::other(format!("sample_source: {e:#}")))?;
            parts.push(x.detach());
            done += n;
        }
        if parts.is_empty() {
            return Err(AbiError::other("sample_source: count must be at least 1"));
        }
        Ok(Ranked::new(Tensor::cat(parts, 0)))
    }
}

/// Every `filter` hook's decisions on the batch `samples`, in manifest
/// order: which samples all of them keep, and each one's scores and
/// decisions. Rejections are counted per plugin in `rejected` (a sample
/// counts against the first that rejects it).
fn filter_batch<B: AutodiffBackend, const D: usize>(
    student: &Student<B>,
    samples: &Tensor<B, D>,
    labels: Option<&Labels<B>>,
    rejected: &mut HashMap<String, usize>,
) -> Result<(Vec<bool>, Vec<FilterScores>)> {
    let n = samples.dims()[0];
    let mut keep = vec![true; n];
    let mut filters = Vec::new();
    student.each_hooked(
        |p| p.implements(Hook::Filter),
        |inst| -> Result<()> {
            let decision = inst.filter(samples, labels)?;
            for (i, k) in decision.keep.iter().enumerate() {
                if !k && keep[i] {
                    *rejected.entry(inst.name.clone()).or_default() += 1;
                }
                keep[i] &= *k;
            }
            filters.push(FilterScores {
                plugin: inst.name.clone(),
                scores: decision.scores.to_vec(),
                keep: decision.keep.to_vec(),
            });
            Ok(())
        },
    )?;
    Ok((keep, filters))
}
