//! Drawing samples at the end of a run (and in `dtx sample`): the sampler
//! loop with the plugins' `score` corrections at every step and their
//! `filter` decisions on every batch, until `sample.count` are accepted.

use super::engine::{batch_shape, normal, prim_f, progress_bar, ranked, step_rng};
use super::model::Engine;
use super::objective::Objective;
use crate::diffusion::prediction::{BatchScalar, to_epsilon};
use crate::diffusion::sampler::{Sampler, SamplerConfig, VarianceType, alpha_bar_at, sample};
use crate::manifest::{Sample, Sampler as SamplerKind};
use crate::tensor_abi::Stored;
use anyhow::{Result, anyhow};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Int, Tensor, TensorData};
use dtx_plugin_api::abi::Hook;
use std::collections::HashMap;

type P<B> = FloatTensor<B>;

/// What sampling produced.
pub(super) struct Drawn {
    /// Accepted samples, flat, example after example.
    pub(super) accepted: Vec<f32>,
    /// The source model's samples from the accepted samples' initial noise
    /// (empty unless asked for).
    pub(super) source: Vec<f32>,
    /// Scalars per example.
    pub(super) per_example: usize,
    /// Examples drawn in all.
    pub(super) attempts: usize,
    /// Rejections per filter plugin.
    pub(super) rejected: HashMap<String, usize>,
}

impl Drawn {
    pub(super) fn accepted_count(&self) -> usize {
        self.accepted.len() / self.per_example.max(1)
    }
}

/// Class labels for a batch of `n` (a class-conditional net): `sample.label`
/// for all, else classes in turn.
fn batch_labels<B: AutodiffBackend>(
    engine: &Engine<B>,
    sm: &Sample,
    first: usize,
    n: usize,
    device: &B::Device,
) -> Option<IntTensor<B>> {
    let k = engine.net.num_classes();
    (k > 0).then(|| {
        let v: Vec<i64> = (0..n)
            .map(|i| match sm.label {
                Some(l) => l as i64,
                None => ((first + i) % k) as i64,
            })
            .collect();
        Tensor::<B, 1, Int>::from_data(TensorData::new(v, [n]), device).into_primitive()
    })
}

/// Samples `sm.count` examples from the student with weights `weights`.
/// With `with_source`, also denoises every batch's initial noise with the
/// source model alone (no plugin hooks): [`Drawn::source`] pairs each
/// accepted sample with the source's sample from the same noise (the same
/// trajectory for deterministic DDIM; for stochastic samplers the source's
/// step noise has its own stream, so the student's samples do not change).
#[allow(clippy::too_many_arguments)]
pub(super) fn draw<B: AutodiffBackend, const D: usize>(
    engine: &std::rc::Rc<Engine<B>>,
    weights: &HashMap<String, P<B>>,
    objective: &Objective<'_>,
    sm: &Sample,
    seed: u64,
    device: &B::Device,
    quiet: bool,
    with_source: bool,
) -> Result<Drawn> {
    let example = engine.net.data_shape();
    let per_example: usize = example.iter().product();
    let learned_sigma = D > 2 && engine.net.out_channels() == 2 * objective.data_channels;
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
    let alpha_bars = objective.alpha_bars;
    let mut out = Drawn {
        accepted: Vec::new(),
        source: Vec::new(),
        per_example,
        attempts: 0,
        rejected: HashMap::new(),
    };
    // One sampler run from `x_big_t`: the student with every `score` hook,
    // or the source model alone.
    let run = |x_big_t: Tensor<B, D>,
               labels: Option<IntTensor<B>>,
               source: bool,
               rng: &mut rand::rngs::StdRng|
     -> Result<Tensor<B, D>> {
        let mut step_index = 0u64;
        let num_steps = sm.steps as u64;
        sample::<B, D, anyhow::Error>(
            |x, ts| {
                let tf = Tensor::<B, 1, Int>::from_data(
                    TensorData::new(ts.to_vec(), [ts.len()]),
                    device,
                )
                .float();
                let xp = crate::tensor_abi::untracked::<B>(prim_f(x.clone()));
                let raw = ranked::<B, D>(if source {
                    engine.source_forward(xp, prim_f(tf.clone()), labels.clone())?
                } else {
                    engine.student(weights, xp, prim_f(tf.clone()), labels.clone(), false)?
                });
                let (mean, variance) = if learned_sigma {
                    let c = objective.data_channels;
                    (raw.clone().narrow(1, 0, c), Some(raw.narrow(1, c, c)))
                } else {
                    (raw, None)
                };
                let ab_s = BatchScalar::Shared(alpha_bar_at(alpha_bars, ts[0]));
                let mut eps = prim_f(to_epsilon(mean, x.clone(), &ab_s, objective.prediction));
                let t_stored = Stored::Float(prim_f(tf));
                for mut inst in engine.hooked(|p| !source && p.implements(Hook::Score)) {
                    eps = inst.score(
                        &prim_f(x.clone()),
                        &t_stored,
                        &eps,
                        labels.as_ref(),
                        step_index,
                        num_steps,
                    )?;
                }
                step_index += 1;
                let eps = ranked::<B, D>(crate::tensor_abi::untracked::<B>(eps));
                Ok(match (variance, cfg.sampler) {
                    (Some(v), Sampler::Ddpm { .. }) => Tensor::cat(vec![eps, v.detach()], 1),
                    _ => eps,
                })
            },
            x_big_t,
            alpha_bars,
            &cfg,
            |shape| normal(rng, shape, device),
        )
    };
    let mut rng = step_rng(seed, u64::MAX - 1);
    let mut source_rng = step_rng(seed, u64::MAX - 2);
    let bar = progress_bar(quiet, sm.count as u64, "sample");
    while out.accepted_count() < sm.count && out.attempts < 10 * sm.count {
        let n = sm.batch.min(sm.count - out.accepted_count()).max(1);
        let labels = batch_labels(engine, sm, out.attempts, n, device);
        out.attempts += n;
        let x_big_t: Tensor<B, D> = normal(&mut rng, batch_shape::<D>(n, &example), device);
        let from_source = if with_source {
            let s = run(x_big_t.clone(), labels.clone(), true, &mut source_rng)?;
            Some(
                s.into_data()
                    .to_vec::<f32>()
                    .map_err(|e| anyhow!("{e:?}"))?,
            )
        } else {
            None
        };
        let samples = run(x_big_t, labels.clone(), false, &mut rng)?;
        let sp = prim_f(samples.clone());
        let mut keep = vec![true; n];
        for mut inst in engine.hooked(|p| p.implements(Hook::Filter)) {
            let decision = inst.filter(&sp, labels.as_ref())?;
            for (i, k) in decision.keep.iter().enumerate() {
                if !k && keep[i] {
                    *out.rejected.entry(inst.name.clone()).or_default() += 1;
                }
                keep[i] &= *k;
            }
        }
        let values = samples
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| anyhow!("{e:?}"))?;
        for (i, chunk) in values.chunks(per_example).enumerate() {
            if keep[i] && out.accepted_count() < sm.count {
                out.accepted.extend_from_slice(chunk);
                if let Some(s) = &from_source {
                    out.source
                        .extend_from_slice(&s[i * per_example..(i + 1) * per_example]);
                }
                if let Some(b) = &bar {
                    b.inc(1);
                }
            }
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    Ok(out)
}
