//! Samplers: one function per sampler step ([`ddim_step`], [`ddpm_step`]),
//! one helper per formula, and the loop that calls a denoiser once per step
//! ([`sample`]) over the timesteps [`timesteps`] picks.
//!
//! Steps see ε only (the denoiser closure converts with
//! [`to_epsilon`](super::prediction::to_epsilon)), take ᾱ from a schedule
//! ([`Schedule::alpha_bars`](super::schedule::Schedule::alpha_bars)), and never
//! draw noise: it is handed in, so a run is replayable and tests can feed
//! diffusers' recorded noise.
//!
//! Between two visited timesteps t > t_prev the step uses the respaced
//! β_t = 1 − ᾱ_t / ᾱ_{t_prev} ("Improved Denoising Diffusion Probabilistic
//! Models", Nichol & Dhariwal, 2021, arXiv:2102.09672, Sec. 4), and after the
//! last visited timestep ᾱ_{−1} = 1 (diffusers' `set_alpha_to_one = True`).
//! Checked step by step against diffusers' `DDIMScheduler` / `DDPMScheduler`
//! (see `docs/diffusion.md` and `tests/fixtures/diffusion/`).

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::prediction::{BatchScalar, learned_log_variance, split_learned_sigma, x0_from_eps};
use super::spacing::{Spacing, timesteps};

/// An invalid sampler setting; each variant names the value and the range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplerError {
    /// `steps` is 0 or more than the schedule has timesteps.
    ///
    /// ## Resolution
    /// Set `sample.steps` between 1 and the model's training timesteps.
    #[error(
        "sample.steps = {steps} is out of range: pick 1 to {train_timesteps} (the schedule's training timesteps)"
    )]
    Steps {
        /// Requested steps.
        steps: usize,
        /// Timesteps the schedule has.
        train_timesteps: usize,
    },
    /// η is negative or not finite.
    ///
    /// ## Resolution
    /// Set `sample.eta` ≥ 0: 0 is deterministic DDIM, 1 has DDPM's variance.
    #[error("sample.eta = {eta} is out of range: pick a finite value >= 0")]
    Eta {
        /// Requested η.
        eta: f64,
    },
    /// `clip_sample` is not a positive finite range.
    ///
    /// ## Resolution
    /// Leave clipping off, or give the data range (1.0 for images in [−1, 1]).
    #[error("clip_sample = {range} is out of range: pick a finite value > 0, or leave it off")]
    ClipRange {
        /// Requested clipping range.
        range: f64,
    },
}

/// ᾱ at timestep t, with ᾱ_{−1} = 1 after the last step (diffusers'
/// `final_alpha_cumprod` with `set_alpha_to_one = True`).
///
/// # Panics
/// When t ≥ T.
pub fn alpha_bar_at(alpha_bars: &[f64], t: i64) -> f64 {
    if t < 0 { 1.0 } else { alpha_bars[t as usize] }
}

/// The respaced β between two visited timesteps: β_t = 1 − ᾱ_t / ᾱ_{t_prev}
/// (Nichol & Dhariwal 2021, Sec. 4; equals the schedule's β_t when
/// t_prev = t − 1).
pub fn step_beta(alpha_bar_t: f64, alpha_bar_prev: f64) -> f64 {
    1.0 - alpha_bar_t / alpha_bar_prev
}

/// The posterior variance β̃_t = (1 − ᾱ_{t_prev}) / (1 − ᾱ_t) · β_t
/// ("Denoising Diffusion Probabilistic Models", Ho et al., 2020,
/// arXiv:2006.11239, Eq. 7).
pub fn posterior_variance(alpha_bar_t: f64, alpha_bar_prev: f64) -> f64 {
    (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t) * step_beta(alpha_bar_t, alpha_bar_prev)
}

/// The coefficients (c_x0, c_xt) of the posterior mean
/// μ̃_t(x_t, x0) = √ᾱ_{t_prev} β_t / (1 − ᾱ_t) · x0 + √α_t (1 − ᾱ_{t_prev}) / (1 − ᾱ_t) · x_t
/// (Ho et al. 2020, Eq. 7), with α_t = ᾱ_t / ᾱ_{t_prev}.
pub fn posterior_mean_coefficients(alpha_bar_t: f64, alpha_bar_prev: f64) -> (f64, f64) {
    let beta_t = step_beta(alpha_bar_t, alpha_bar_prev);
    let alpha_t = alpha_bar_t / alpha_bar_prev;
    (
        alpha_bar_prev.sqrt() * beta_t / (1.0 - alpha_bar_t),
        alpha_t.sqrt() * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t),
    )
}

/// DDIM's σ_t(η) = η √((1 − ᾱ_{t_prev}) / (1 − ᾱ_t)) √(1 − ᾱ_t / ᾱ_{t_prev})
/// = η √β̃_t ("Denoising Diffusion Implicit Models", Song et al., 2021,
/// arXiv:2010.02502, Eq. 16).
pub fn ddim_sigma(alpha_bar_t: f64, alpha_bar_prev: f64, eta: f64) -> f64 {
    eta * posterior_variance(alpha_bar_t, alpha_bar_prev).sqrt()
}

/// x̂0 clipped to [−range, range] when `clip_sample` is set (diffusers'
/// `clip_sample` / `clip_sample_range`); unchanged when `None`.
fn clip_x0<B: Backend, const D: usize>(
    x0_hat: Tensor<B, D>,
    clip_sample: Option<f64>,
) -> Tensor<B, D> {
    match clip_sample {
        Some(r) => x0_hat.clamp(-r, r),
        None => x0_hat,
    }
}

/// What one sampler step returns.
#[derive(Debug, Clone)]
pub struct StepOutput<B: Backend, const D: usize> {
    /// x_{t_prev}, the input of the next step.
    pub x_prev: Tensor<B, D>,
    /// x̂0 predicted at this step (after clipping), for previews and guidance.
    pub x0_hat: Tensor<B, D>,
}

/// One DDIM step (Song et al. 2021, Eq. 12):
///
/// x_{t_prev} = √ᾱ_{t_prev} x̂0 + √(1 − ᾱ_{t_prev} − σ_t²) ε + σ_t z,
/// x̂0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t, σ_t = σ_t(η) of Eq. 16 ([`ddim_sigma`]).
///
/// `t_prev < 0` is the last step (ᾱ_{t_prev} = 1). `clip_sample`: clip x̂0 to
/// [−r, r] (off by default in dtx, on in diffusers); the direction term keeps
/// the unclipped ε, as diffusers' default `use_clipped_model_output = False`.
/// `noise` z is added when given (the loop gives it when η > 0 and
/// t_prev ≥ 0, where σ_t > 0). For η > 1, where 1 − ᾱ_{t_prev} − σ_t² < 0, the
/// direction term is dropped (diffusers would return NaN).
///
/// # Shapes
/// `eps`, `x_t`, `noise`: `[B, …]`; outputs the same.
#[allow(clippy::too_many_arguments)]
pub fn ddim_step<B: Backend, const D: usize>(
    eps: Tensor<B, D>,
    x_t: Tensor<B, D>,
    t: i64,
    t_prev: i64,
    alpha_bars: &[f64],
    eta: f64,
    clip_sample: Option<f64>,
    noise: Option<Tensor<B, D>>,
) -> StepOutput<B, D> {
    let alpha_bar_t = alpha_bar_at(alpha_bars, t);
    let alpha_bar_prev = alpha_bar_at(alpha_bars, t_prev);
    let sigma_t = ddim_sigma(alpha_bar_t, alpha_bar_prev, eta);
    // Predicted x0 (Eq. 12, first term)
    let x0_hat = clip_x0(
        x0_from_eps(x_t, eps.clone(), &BatchScalar::Shared(alpha_bar_t)),
        clip_sample,
    );
    // Direction pointing to x_t (Eq. 12, second term)
    let direction = eps.mul_scalar((1.0 - alpha_bar_prev - sigma_t * sigma_t).max(0.0).sqrt());
    let mut x_prev = x0_hat.clone().mul_scalar(alpha_bar_prev.sqrt()) + direction;
    // Random noise (Eq. 12, third term)
    if let Some(z) = noise {
        x_prev = x_prev + z.mul_scalar(sigma_t);
    }
    StepOutput { x_prev, x0_hat }
}

/// The variance of an ancestral DDPM step, as diffusers' `variance_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VarianceType {
    /// σ_t² = β̃_t, the posterior variance (Ho et al. 2020, Sec. 3.2; diffusers'
    /// default `"fixed_small"`).
    #[default]
    FixedSmall,
    /// σ_t² = β_t (Ho et al. 2020, Sec. 3.2; `"fixed_large"`).
    FixedLarge,
    /// log σ_t² = v log β_t + (1 − v) log β̃_t from the model's extra channels
    /// (Nichol & Dhariwal 2021, Eq. 15; `"learned_range"`).
    LearnedRange,
}

/// The variance of one DDPM step, with the model's values when learned.
#[derive(Debug, Clone)]
pub enum DdpmVariance<B: Backend, const D: usize> {
    /// σ_t² = β̃_t.
    FixedSmall,
    /// σ_t² = β_t.
    FixedLarge,
    /// The raw interpolation value v_raw ∈ [−1, 1] (ADM's second half of
    /// channels, see [`split_learned_sigma`]), same shape as x_t.
    LearnedRange(Tensor<B, D>),
}

/// β̃_t is clamped at this before its square root or log, as diffusers does
/// (β̃ is 0 when t_prev < 0).
const MIN_POSTERIOR_VARIANCE: f64 = 1e-20;

/// One ancestral DDPM step (Ho et al. 2020, Algorithm 2 with the posterior of
/// Eq. 6–7):
///
/// x_{t_prev} = μ̃_t(x_t, x̂0) + σ_t z,
/// μ̃_t = √ᾱ_{t_prev} β_t / (1 − ᾱ_t) x̂0 + √α_t (1 − ᾱ_{t_prev}) / (1 − ᾱ_t) x_t,
/// x̂0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t,
///
/// σ_t² from `variance` (β̃_t, β_t, or the learned interpolation). `t_prev < 0`
/// is the last step: μ̃ = x̂0, and the loop passes no noise. diffusers adds none
/// when that last t is 0 ("leading", "linspace"); after a "trailing" last step
/// (t > 0) it adds σ_t z with ᾱ_{t_prev} = 1: 1e-10 · z for fixed_small, but
/// √(1 − ᾱ_t) · z for fixed_large and learned_range, which dtx omits (the
/// final sample is x̂0). `clip_sample`: clip x̂0 to [−r, r] (off by default in
/// dtx, on in diffusers).
///
/// # Shapes
/// `eps`, `x_t`, `noise`, the learned `v_raw`: `[B, …]`; outputs the same.
#[allow(clippy::too_many_arguments)]
pub fn ddpm_step<B: Backend, const D: usize>(
    eps: Tensor<B, D>,
    x_t: Tensor<B, D>,
    t: i64,
    t_prev: i64,
    alpha_bars: &[f64],
    variance: DdpmVariance<B, D>,
    clip_sample: Option<f64>,
    noise: Option<Tensor<B, D>>,
) -> StepOutput<B, D> {
    let alpha_bar_t = alpha_bar_at(alpha_bars, t);
    let alpha_bar_prev = alpha_bar_at(alpha_bars, t_prev);
    let x0_hat = clip_x0(
        x0_from_eps(x_t.clone(), eps, &BatchScalar::Shared(alpha_bar_t)),
        clip_sample,
    );
    // Posterior mean (Eq. 7)
    let (c_x0, c_xt) = posterior_mean_coefficients(alpha_bar_t, alpha_bar_prev);
    let mut x_prev = x0_hat.clone().mul_scalar(c_x0) + x_t.mul_scalar(c_xt);
    // Ancestral noise
    if let Some(z) = noise {
        let beta_t = step_beta(alpha_bar_t, alpha_bar_prev);
        let beta_tilde_t =
            posterior_variance(alpha_bar_t, alpha_bar_prev).max(MIN_POSTERIOR_VARIANCE);
        x_prev = x_prev
            + match variance {
                DdpmVariance::FixedSmall => z.mul_scalar(beta_tilde_t.sqrt()),
                DdpmVariance::FixedLarge => z.mul_scalar(beta_t.sqrt()),
                DdpmVariance::LearnedRange(v_raw) => {
                    let log_var = learned_log_variance(
                        v_raw,
                        &BatchScalar::Shared(beta_t.ln()),
                        &BatchScalar::Shared(beta_tilde_t.ln()),
                    );
                    z * log_var.mul_scalar(0.5).exp()
                }
            };
    }
    StepOutput { x_prev, x0_hat }
}

/// Which sampler, with its own settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    /// DDIM ([`ddim_step`]); η = 0 is deterministic, η = 1 has DDPM's
    /// variance β̃_t.
    Ddim {
        /// η ≥ 0 of Eq. 16. Default: 0.0 (diffusers' `DDIMPipeline` default).
        eta: f64,
    },
    /// Ancestral DDPM ([`ddpm_step`]).
    Ddpm {
        /// σ_t². Default: fixed_small (diffusers' default).
        variance: VarianceType,
    },
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler::Ddim { eta: 0.0 }
    }
}

/// Everything [`sample`] needs besides the model, x_T and the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// Which sampler. Default: DDIM with η = 0.
    pub sampler: Sampler,
    /// Denoiser calls, 1 ≤ steps ≤ T. Default: 50 (diffusers' pipelines,
    /// `sample.steps`' default).
    pub steps: usize,
    /// Timestep spacing. Default: leading (diffusers' default).
    pub spacing: Spacing,
    /// Clip x̂0 to [−r, r] at every step. Default: `None`, off (diffusers'
    /// schedulers default to on with r = 1; dtx leaves it to the manifest
    /// because vector data and latents are not in [−1, 1]).
    pub clip_sample: Option<f64>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            sampler: Sampler::default(),
            steps: 50,
            spacing: Spacing::default(),
            clip_sample: None,
        }
    }
}

impl SamplerConfig {
    /// Checks the settings against a schedule of `train_timesteps` and returns
    /// the timesteps to visit, descending.
    pub fn timesteps(&self, train_timesteps: usize) -> Result<Vec<i64>, SamplerError> {
        if let Sampler::Ddim { eta } = self.sampler
            && !(eta.is_finite() && eta >= 0.0)
        {
            return Err(SamplerError::Eta { eta });
        }
        if let Some(range) = self.clip_sample
            && !(range.is_finite() && range > 0.0)
        {
            return Err(SamplerError::ClipRange { range });
        }
        timesteps(self.spacing, train_timesteps, self.steps)
    }
}

/// Runs a sampler from x_T to x_0: one `denoise` call per visited timestep,
/// then one [`ddim_step`] or [`ddpm_step`].
///
/// - `denoise(x_t, t)` returns ε at x_t, already converted
///   ([`to_epsilon`](super::prediction::to_epsilon)) and with the plugins'
///   `score` corrections applied; `t` holds one timestep per sample (all
///   equal). With [`VarianceType::LearnedRange`] it returns 2C channels along
///   dim 1, ε then v_raw (ADM's layout, split by [`split_learned_sigma`]).
/// - `alpha_bars`: ᾱ_t for t = 0..T−1 ([`Schedule::alpha_bars`](super::schedule::Schedule::alpha_bars)).
/// - `noise(shape)` returns standard normal noise of x's shape; called once
///   per step that adds noise (DDIM with η > 0 and DDPM, except the last
///   step), in step order, so a recorded sequence replays a run.
///
/// # Shapes
/// `x_T`: `[B, …]`; returns x_0 `[B, …]`.
pub fn sample<B, const D: usize, E>(
    mut denoise: impl FnMut(&Tensor<B, D>, &[i64]) -> Result<Tensor<B, D>, E>,
    x_big_t: Tensor<B, D>,
    alpha_bars: &[f64],
    config: &SamplerConfig,
    mut noise: impl FnMut([usize; D]) -> Tensor<B, D>,
) -> Result<Tensor<B, D>, E>
where
    B: Backend,
    E: From<SamplerError>,
{
    let ts = config.timesteps(alpha_bars.len())?;
    let mut x = x_big_t;
    let channels = x.dims().get(1).copied().unwrap_or(1);
    for (i, &t) in ts.iter().enumerate() {
        let t_prev = ts.get(i + 1).copied().unwrap_or(-1);
        let batch_t = vec![t; x.dims()[0]];
        let out = denoise(&x, &batch_t)?;
        x = match config.sampler {
            Sampler::Ddim { eta } => {
                let z = (eta > 0.0 && t_prev >= 0).then(|| noise(x.dims()));
                ddim_step(out, x, t, t_prev, alpha_bars, eta, config.clip_sample, z).x_prev
            }
            Sampler::Ddpm { variance } => {
                let (eps, variance) = match variance {
                    VarianceType::FixedSmall => (out, DdpmVariance::FixedSmall),
                    VarianceType::FixedLarge => (out, DdpmVariance::FixedLarge),
                    VarianceType::LearnedRange => {
                        let (eps, v_raw) = split_learned_sigma(out, channels);
                        (eps, DdpmVariance::LearnedRange(v_raw))
                    }
                };
                let z = (t_prev >= 0).then(|| noise(x.dims()));
                ddpm_step(
                    eps,
                    x,
                    t,
                    t_prev,
                    alpha_bars,
                    variance,
                    config.clip_sample,
                    z,
                )
                .x_prev
            }
        };
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::schedule::Schedule;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    type B = Flex;

    fn tensor(values: Vec<f32>, shape: [usize; 2]) -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }

    fn values(t: Tensor<B, 2>) -> Vec<f32> {
        t.into_data().into_vec::<f32>().unwrap()
    }

    #[test]
    fn bad_settings_are_refused() {
        assert_eq!(
            timesteps(Spacing::Leading, 10, 11),
            Err(SamplerError::Steps {
                steps: 11,
                train_timesteps: 10
            })
        );
        let bad_eta = SamplerConfig {
            sampler: Sampler::Ddim { eta: -0.5 },
            ..Default::default()
        };
        assert_eq!(
            bad_eta.timesteps(1000),
            Err(SamplerError::Eta { eta: -0.5 })
        );
        let bad_clip = SamplerConfig {
            clip_sample: Some(0.0),
            ..Default::default()
        };
        assert!(bad_clip.timesteps(1000).is_err());
    }

    #[test]
    fn posterior_helpers_match_their_closed_forms() {
        // Consecutive steps: the respaced β is the schedule's β.
        let betas = Schedule::Linear.betas(1000);
        let ab = Schedule::Linear.alpha_bars(1000);
        assert!((step_beta(ab[500], ab[499]) - betas[500]).abs() < 1e-12);
        // β̃ ≤ β, and the mean coefficients reproduce x0 when x_t = √ᾱ x0
        // (no noise): μ̃ = √ᾱ_prev x0.
        let (a, p) = (ab[500], ab[400]);
        assert!(posterior_variance(a, p) <= step_beta(a, p));
        let (c0, ct) = posterior_mean_coefficients(a, p);
        assert!((c0 + ct * a.sqrt() - p.sqrt()).abs() < 1e-12);
        // The last step: ᾱ_prev = 1 gives μ̃ = x̂0, β̃ = 0, σ(η) = 0.
        assert_eq!(posterior_mean_coefficients(a, 1.0), (1.0, 0.0));
        assert_eq!(ddim_sigma(a, 1.0, 1.0), 0.0);
        // σ(η = 1)² = β̃ (DDIM Eq. 16 at η = 1 is DDPM's variance).
        assert!((ddim_sigma(a, p, 1.0).powi(2) - posterior_variance(a, p)).abs() < 1e-15);
    }

    #[test]
    fn ddim_with_the_true_noise_recovers_x0_in_one_step() {
        // x_t = √ᾱ x0 + √(1 − ᾱ) ε with the exact ε: a deterministic step to
        // t_prev = −1 returns x0 (ᾱ_prev = 1).
        let ab = Schedule::Linear.alpha_bars(1000);
        let x0 = tensor(vec![0.5, -1.0, 0.25, 2.0], [2, 2]);
        let eps = tensor(vec![1.0, 0.3, -0.7, 0.1], [2, 2]);
        let x_t =
            x0.clone().mul_scalar(ab[300].sqrt()) + eps.clone().mul_scalar((1.0 - ab[300]).sqrt());
        let out = ddim_step(eps, x_t, 300, -1, &ab, 0.0, None, None);
        for (a, b) in values(out.x_prev).iter().zip(values(x0)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn clip_sample_clamps_x0_hat() {
        let ab = Schedule::Linear.alpha_bars(1000);
        let x_t = tensor(vec![3.0, -3.0, 0.5, 0.0], [2, 2]);
        let eps = Tensor::<B, 2>::zeros([2, 2], &Default::default());
        let out = ddpm_step(
            eps,
            x_t,
            0,
            -1,
            &ab,
            DdpmVariance::FixedSmall,
            Some(1.0),
            None,
        );
        let v = values(out.x0_hat);
        assert!(v.iter().all(|x| x.abs() <= 1.0), "{v:?}");
        assert_eq!(values(out.x_prev), v);
    }

    #[test]
    fn sample_calls_the_denoiser_once_per_step_and_draws_noise_where_it_adds_some() {
        let ab = Schedule::Linear.alpha_bars(100);
        for (sampler, draws) in [
            (Sampler::Ddim { eta: 0.0 }, 0),
            (Sampler::Ddim { eta: 1.0 }, 9),
            (
                Sampler::Ddpm {
                    variance: VarianceType::FixedLarge,
                },
                9,
            ),
        ] {
            let config = SamplerConfig {
                sampler,
                steps: 10,
                ..Default::default()
            };
            let (mut calls, mut drawn) = (Vec::new(), 0);
            let x = sample::<B, 2, SamplerError>(
                |x, t| {
                    calls.push(t.to_vec());
                    Ok(x.clone().mul_scalar(0.1))
                },
                Tensor::ones([3, 2], &Default::default()),
                &ab,
                &config,
                |shape| {
                    drawn += 1;
                    Tensor::zeros(shape, &Default::default())
                },
            )
            .unwrap();
            assert_eq!(calls.len(), 10);
            assert_eq!(calls[0], vec![90; 3]);
            assert_eq!(calls[9], vec![0; 3]);
            assert_eq!(drawn, draws, "{sampler:?}");
            assert!(values(x).iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn sampler_registers_itself() {
        let names: Vec<&str> = crate::registry::of_kind("sampler")
            .iter()
            .map(|b| b.name)
            .collect();
        assert_eq!(names, ["ddim", "ddpm"]);
    }
}
