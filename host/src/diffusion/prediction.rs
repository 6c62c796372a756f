//! What a denoiser predicts, and the one place its output becomes ε.
//!
//! The forward process ("Denoising Diffusion Probabilistic Models", Ho et al.,
//! 2020, arXiv:2006.11239, Eq. 4) is x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε. A network
//! may predict ε, x0 itself, or the velocity v = √ᾱ_t ε − √(1 − ᾱ_t) x0
//! ("Progressive Distillation for Fast Sampling of Diffusion Models",
//! Salimans & Ho, 2022, arXiv:2202.00512, Sec. 4). Samplers and plugins' `score`
//! hooks see ε only: [`to_epsilon`] converts, once, and nothing else asks which
//! kind a model predicts.
//!
//! ᾱ_t is a [`BatchScalar`]: one value for the whole batch (a sampling step),
//! or one per sample (a training batch), broadcast over every other dimension,
//! so the same functions serve images `[B, C, H, W]` and vectors `[B, D]`.
//!
//! Learned variances (ADM, `learn_sigma`): the network outputs 2C channels,
//! ε and an interpolation value ([`split_learned_sigma`]), and the log
//! variance interpolates between β_t and β̃_t ([`learned_log_variance`]).

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// What a denoiser's output means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prediction {
    /// The noise ε (DDPM, ADM, most diffusers checkpoints: `"epsilon"`).
    #[default]
    Epsilon,
    /// The clean sample x0 (diffusers `"sample"`).
    Sample,
    /// The velocity v = √ᾱ_t ε − √(1 − ᾱ_t) x0 (diffusers `"v_prediction"`).
    VPrediction,
}

impl Prediction {
    /// The name diffusers writes in `scheduler_config.json`'s `prediction_type`.
    pub fn diffusers_name(self) -> &'static str {
        match self {
            Prediction::Epsilon => "epsilon",
            Prediction::Sample => "sample",
            Prediction::VPrediction => "v_prediction",
        }
    }

    /// Parses diffusers' `prediction_type` name; `None` for any other name.
    pub fn from_diffusers_name(name: &str) -> Option<Self> {
        match name {
            "epsilon" => Some(Prediction::Epsilon),
            "sample" => Some(Prediction::Sample),
            "v_prediction" => Some(Prediction::VPrediction),
            _ => None,
        }
    }
}

/// A per-step quantity (ᾱ_t, log β_t, …) for a batch: one value shared by
/// every sample, or one per sample.
///
/// # Shapes
/// `PerSample`: `[B]`, broadcast as `[B, 1, …, 1]` against a rank-D tensor.
#[derive(Debug, Clone)]
pub enum BatchScalar<B: Backend> {
    /// The same value for every sample (a sampling step: one t for the batch).
    Shared(f64),
    /// One value per sample (training: t drawn per sample), shape `[B]`.
    PerSample(Tensor<B, 1>),
}

impl<B: Backend> From<f64> for BatchScalar<B> {
    fn from(v: f64) -> Self {
        BatchScalar::Shared(v)
    }
}

impl<B: Backend> From<Tensor<B, 1>> for BatchScalar<B> {
    fn from(v: Tensor<B, 1>) -> Self {
        BatchScalar::PerSample(v)
    }
}

impl<B: Backend> BatchScalar<B> {
    /// Applies `f` to a shared value, or `g` (the same function on tensors)
    /// to per-sample values.
    fn map(&self, f: impl Fn(f64) -> f64, g: impl Fn(Tensor<B, 1>) -> Tensor<B, 1>) -> Self {
        match self {
            BatchScalar::Shared(v) => BatchScalar::Shared(f(*v)),
            BatchScalar::PerSample(t) => BatchScalar::PerSample(g(t.clone())),
        }
    }

    /// √a.
    fn sqrt(&self) -> Self {
        self.map(f64::sqrt, |t| t.sqrt())
    }

    /// 1 − a.
    fn one_minus(&self) -> Self {
        self.map(|v| 1.0 - v, |t| t.neg().add_scalar(1.0))
    }

    /// Per-sample values reshaped `[B] → [B, 1, …, 1]` to broadcast over rank D.
    fn broadcast<const D: usize>(t: &Tensor<B, 1>) -> Tensor<B, D> {
        let mut shape = [1usize; D];
        shape[0] = t.dims()[0];
        t.clone().reshape(shape)
    }

    /// a · x.
    fn mul<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            BatchScalar::Shared(v) => x.mul_scalar(*v),
            BatchScalar::PerSample(t) => x * Self::broadcast::<D>(t),
        }
    }

    /// x / a.
    fn div<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            BatchScalar::Shared(v) => x.div_scalar(*v),
            BatchScalar::PerSample(t) => x / Self::broadcast::<D>(t),
        }
    }

    /// x + a.
    fn add<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            BatchScalar::Shared(v) => x.add_scalar(*v),
            BatchScalar::PerSample(t) => x + Self::broadcast::<D>(t),
        }
    }

    /// a − b.
    fn minus(&self, other: &Self) -> Self {
        match (self, other) {
            (BatchScalar::Shared(a), BatchScalar::Shared(b)) => BatchScalar::Shared(a - b),
            (BatchScalar::PerSample(a), BatchScalar::Shared(b)) => {
                BatchScalar::PerSample(a.clone().sub_scalar(*b))
            }
            (BatchScalar::Shared(a), BatchScalar::PerSample(b)) => {
                BatchScalar::PerSample(b.clone().neg().add_scalar(*a))
            }
            (BatchScalar::PerSample(a), BatchScalar::PerSample(b)) => {
                BatchScalar::PerSample(a.clone() - b.clone())
            }
        }
    }
}

/// x̂0 from ε: x̂0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t (DDPM Eq. 4 solved for x0;
/// DDIM, Song et al. 2021, arXiv:2010.02502, Eq. 9 / the "predicted x0" of
/// Eq. 12).
pub fn x0_from_eps<B: Backend, const D: usize>(
    x_t: Tensor<B, D>,
    eps: Tensor<B, D>,
    alpha_bar_t: &BatchScalar<B>,
) -> Tensor<B, D> {
    alpha_bar_t
        .sqrt()
        .div(x_t - alpha_bar_t.one_minus().sqrt().mul(eps))
}

/// ε from x̂0: ε = (x_t − √ᾱ_t x̂0) / √(1 − ᾱ_t) (DDPM Eq. 4 solved for ε).
pub fn eps_from_x0<B: Backend, const D: usize>(
    x_t: Tensor<B, D>,
    x0: Tensor<B, D>,
    alpha_bar_t: &BatchScalar<B>,
) -> Tensor<B, D> {
    alpha_bar_t
        .one_minus()
        .sqrt()
        .div(x_t - alpha_bar_t.sqrt().mul(x0))
}

/// ε from v: ε = √ᾱ_t v + √(1 − ᾱ_t) x_t (Salimans & Ho 2022, Sec. 4, with
/// v = √ᾱ_t ε − √(1 − ᾱ_t) x0).
pub fn eps_from_v<B: Backend, const D: usize>(
    x_t: Tensor<B, D>,
    v: Tensor<B, D>,
    alpha_bar_t: &BatchScalar<B>,
) -> Tensor<B, D> {
    alpha_bar_t.sqrt().mul(v) + alpha_bar_t.one_minus().sqrt().mul(x_t)
}

/// x̂0 from v: x̂0 = √ᾱ_t x_t − √(1 − ᾱ_t) v (Salimans & Ho 2022, Sec. 4).
pub fn x0_from_v<B: Backend, const D: usize>(
    x_t: Tensor<B, D>,
    v: Tensor<B, D>,
    alpha_bar_t: &BatchScalar<B>,
) -> Tensor<B, D> {
    alpha_bar_t.sqrt().mul(x_t) - alpha_bar_t.one_minus().sqrt().mul(v)
}

/// The v target: v = √ᾱ_t ε − √(1 − ᾱ_t) x0 (Salimans & Ho 2022, Sec. 4;
/// diffusers' `get_velocity`).
pub fn v_from_eps_x0<B: Backend, const D: usize>(
    eps: Tensor<B, D>,
    x0: Tensor<B, D>,
    alpha_bar_t: &BatchScalar<B>,
) -> Tensor<B, D> {
    alpha_bar_t.sqrt().mul(eps) - alpha_bar_t.one_minus().sqrt().mul(x0)
}

/// A model's output as ε: the identity for [`Prediction::Epsilon`],
/// [`eps_from_x0`] for [`Prediction::Sample`], [`eps_from_v`] for
/// [`Prediction::VPrediction`].
///
/// The single place where the ε convention that samplers and plugins' `score`
/// hooks see is produced.
pub fn to_epsilon<B: Backend, const D: usize>(
    model_output: Tensor<B, D>,
    x_t: Tensor<B, D>,
    alpha_bar_t: &BatchScalar<B>,
    prediction: Prediction,
) -> Tensor<B, D> {
    match prediction {
        Prediction::Epsilon => model_output,
        Prediction::Sample => eps_from_x0(x_t, model_output, alpha_bar_t),
        Prediction::VPrediction => eps_from_v(x_t, model_output, alpha_bar_t),
    }
}

/// Forward process q(x_t | x0): x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε (DDPM Eq. 4;
/// diffusers' `add_noise`).
///
/// # Shapes
/// `x0`, `noise`: `[B, …]`; `alpha_bar_t`: `[B]`, one ᾱ per sample; returns `[B, …]`.
pub fn q_sample<B: Backend, const D: usize>(
    x0: Tensor<B, D>,
    noise: Tensor<B, D>,
    alpha_bar_t: Tensor<B, 1>,
) -> Tensor<B, D> {
    let alpha_bar_t = BatchScalar::PerSample(alpha_bar_t);
    alpha_bar_t.sqrt().mul(x0) + alpha_bar_t.one_minus().sqrt().mul(noise)
}

/// Splits an ADM `learn_sigma` output (2C channels along dim 1) into the
/// model's mean output (channels `0..C`: ε, x0 or v as the model predicts) and
/// the raw variance interpolation value (channels `C..2C`).
///
/// # Shapes
/// `output`: `[B, 2C, …]`; returns (`[B, C, …]`, `[B, C, …]`).
///
/// # Panics
/// When dim 1 is not `2 * channels`.
pub fn split_learned_sigma<B: Backend, const D: usize>(
    output: Tensor<B, D>,
    channels: usize,
) -> (Tensor<B, D>, Tensor<B, D>) {
    let got = output.dims()[1];
    assert_eq!(
        got,
        2 * channels,
        "a learned-sigma output has 2C = {} channels along dim 1, got {got}",
        2 * channels
    );
    let mean = output.clone().narrow(1, 0, channels);
    let v = output.narrow(1, channels, channels);
    (mean, v)
}

/// Learned log variance ("Improved Denoising Diffusion Probabilistic Models",
/// Nichol & Dhariwal, 2021, arXiv:2102.09672, Eq. 15):
/// log Σ = v log β_t + (1 − v) log β̃_t, with v = (v_raw + 1) / 2 mapping the
/// network's output from [−1, 1] to [0, 1] as ADM's code (and diffusers'
/// `learned_range`) do.
///
/// `log_beta_t` is log β_t, `log_beta_tilde_t` is log β̃_t (the posterior
/// variance of DDPM Eq. 7, clipped away from 0 by the caller: ADM replaces
/// β̃_0 by β̃_1, diffusers clamps at 1e-20).
pub fn learned_log_variance<B: Backend, const D: usize>(
    v_raw: Tensor<B, D>,
    log_beta_t: &BatchScalar<B>,
    log_beta_tilde_t: &BatchScalar<B>,
) -> Tensor<B, D> {
    let v = v_raw.add_scalar(1.0).div_scalar(2.0);
    // v max_log + (1 − v) min_log = min_log + v (max_log − min_log)
    log_beta_tilde_t.add(log_beta_t.minus(log_beta_tilde_t).mul(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::{Distribution, TensorData};

    type B = Flex;

    /// Round-off of a few f32 ops on O(1) values.
    const TOL: f32 = 1e-5;

    fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<B, D> {
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }

    fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().into_vec::<f32>().unwrap()
    }

    fn assert_close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol, "[{i}]: {x} vs {y} (tol {tol})");
        }
    }

    fn randn<const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    #[test]
    fn x0_eps_x0_round_trips_for_shared_and_per_sample_alpha_bar() {
        let x_t = randn([2, 3, 4, 4]);
        let x0 = randn([2, 3, 4, 4]);
        let per_sample = BatchScalar::PerSample(tensor(vec![0.9, 0.05], [2]));
        for ab in [BatchScalar::Shared(0.3), per_sample] {
            let eps = eps_from_x0(x_t.clone(), x0.clone(), &ab);
            let back = x0_from_eps(x_t.clone(), eps, &ab);
            assert_close(&values(back), &values(x0.clone()), TOL);
        }
    }

    #[test]
    fn v_conversions_agree_with_their_definition() {
        // Build x_t from known x0 and ε, then v from its definition; both
        // conversions from v must recover x0 and ε.
        let x0 = randn([4, 5]);
        let eps = randn([4, 5]);
        let ab = BatchScalar::PerSample(tensor(vec![0.99, 0.5, 0.1, 1e-3], [4]));
        let x_t = q_sample(
            x0.clone(),
            eps.clone(),
            tensor(vec![0.99, 0.5, 0.1, 1e-3], [4]),
        );
        let v = v_from_eps_x0(eps.clone(), x0.clone(), &ab);
        assert_close(
            &values(eps_from_v(x_t.clone(), v.clone(), &ab)),
            &values(eps.clone()),
            TOL,
        );
        assert_close(
            &values(x0_from_v(x_t.clone(), v.clone(), &ab)),
            &values(x0.clone()),
            TOL,
        );
        // to_epsilon agrees for all three kinds.
        for (out, kind) in [
            (eps.clone(), Prediction::Epsilon),
            (x0.clone(), Prediction::Sample),
            (v, Prediction::VPrediction),
        ] {
            let e = to_epsilon(out, x_t.clone(), &ab, kind);
            // ε from x0 divides by √(1 − ᾱ) ≥ 0.0999: error ×10.
            assert_close(&values(e), &values(eps.clone()), 10.0 * TOL);
        }
    }

    #[test]
    fn v_at_known_point() {
        // ᾱ = 0.36: √ᾱ = 0.6, √(1 − ᾱ) = 0.8; v = 0.6·1 − 0.8·2 = −1.
        let v = v_from_eps_x0(
            tensor(vec![1.0], [1, 1]),
            tensor(vec![2.0], [1, 1]),
            &BatchScalar::Shared(0.36),
        );
        assert_close(&values(v), &[-1.0], 1e-6);
    }

    #[test]
    fn q_sample_has_the_forward_moments() {
        // x0 = 1 everywhere, ε ~ N(0, 1): x_t ~ N(√ᾱ, 1 − ᾱ) per sample.
        // 20 000 draws per sample: standard error of the mean ≈ 0.007·σ,
        // of the variance ≈ 0.01·σ²; tolerance 0.03 is > 4 standard errors.
        let n = 20_000;
        let x0 = Tensor::<B, 2>::ones([2, n], &Default::default());
        let noise = randn([2, n]);
        let x_t = q_sample(x0, noise, tensor(vec![0.81, 0.04], [2]));
        let v = values(x_t);
        for (row, ab) in [(0usize, 0.81f64), (1, 0.04)] {
            let xs = &v[row * n..(row + 1) * n];
            let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
            let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
            assert!(
                (mean - ab.sqrt()).abs() < 0.03,
                "mean {mean} vs {}",
                ab.sqrt()
            );
            assert!((var - (1.0 - ab)).abs() < 0.03, "var {var} vs {}", 1.0 - ab);
        }
    }

    #[test]
    fn learned_sigma_splits_channels_and_interpolates_log_variance() {
        // [1, 4, 1, 1]: channels 0..2 are ε, 2..4 the interpolation value.
        let out = tensor(vec![0.1, 0.2, -1.0, 1.0], [1, 4, 1, 1]);
        let (eps, v_raw) = split_learned_sigma(out, 2);
        assert_close(&values(eps), &[0.1, 0.2], 0.0);
        let (lb, lbt) = ((0.02f64).ln(), (0.01f64).ln());
        let lv = learned_log_variance(v_raw, &BatchScalar::Shared(lb), &BatchScalar::Shared(lbt));
        // v_raw = −1 → v = 0 → log β̃; v_raw = 1 → v = 1 → log β.
        assert_close(&values(lv), &[lbt as f32, lb as f32], 1e-6);
        // Midpoint: the geometric mean of β and β̃.
        let mid = learned_log_variance(
            tensor(vec![0.0], [1, 1]),
            &BatchScalar::PerSample(tensor(vec![lb as f32], [1])),
            &BatchScalar::Shared(lbt),
        );
        assert_close(&values(mid), &[((lb + lbt) / 2.0) as f32], 1e-6);
    }

    #[test]
    fn prediction_names_round_trip() {
        for p in [
            Prediction::Epsilon,
            Prediction::Sample,
            Prediction::VPrediction,
        ] {
            assert_eq!(Prediction::from_diffusers_name(p.diffusers_name()), Some(p));
        }
        assert_eq!(Prediction::from_diffusers_name("eps"), None);
    }
}
