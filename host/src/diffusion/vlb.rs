//! The variational bound term that trains a learned variance
//! ("Improved Denoising Diffusion Probabilistic Models", Nichol & Dhariwal,
//! 2021, arXiv:2102.09672, Sec. 3.1): the hybrid objective is
//! L_hybrid = L_simple + λ L_vlb with λ = 0.001, where L_vlb = Σ_t L_t and
//! (Ho et al. 2020, Eq. 5)
//!
//! ```text
//! L_t = KL(q(x_{t−1} | x_t, x0) ‖ p_θ(x_{t−1} | x_t))      t > 0
//! L_0 = −log p_θ(x0 | x1)   (discretized Gaussian over 256 levels)
//! ```
//!
//! measured in bits per dimension. Drawing t uniformly, λ L_vlb is estimated
//! by (T / 1000) · L_t, as in the authors' code. The model mean enters with a
//! stop-gradient (Sec. 3.1: "we apply a stop-gradient to the μ_θ(x_t, t)
//! output for the L_vlb term"), so L_vlb trains only the variance channels v
//! and L_simple only the mean. The variance is Eq. 15,
//! Σ_θ = exp(v log β_t + (1 − v) log β̃_t) with v = (v_raw + 1) / 2 and β̃_0
//! replaced by β̃_1 (the log of a zero variance is not finite).

use super::sampler::{alpha_bar_at, posterior_mean_coefficients, posterior_variance, step_beta};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// A per-example value `[B]` as `[B, 1, …, 1]`, to broadcast over rank D.
fn per_example<B: Backend, const D: usize>(v: &[f64], device: &B::Device) -> Tensor<B, D> {
    let mut shape = [1usize; D];
    shape[0] = v.len();
    let data: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::<B, 1>::from_data(TensorData::new(data, [v.len()]), device).reshape(shape)
}

/// Mean over every dim but the first: `[B, …]` → `[B]`.
fn mean_per_example<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, 1> {
    let n = x.dims()[0];
    x.reshape([n as i32, -1]).mean_dim(1).reshape([n])
}

/// KL(N(μ1, e^{l1}) ‖ N(μ2, e^{l2})) elementwise, in nats:
/// ½ (−1 + l2 − l1 + e^{l1 − l2} + (μ1 − μ2)² e^{−l2}).
pub fn normal_kl<B: Backend, const D: usize>(
    mean1: Tensor<B, D>,
    logvar1: Tensor<B, D>,
    mean2: Tensor<B, D>,
    logvar2: Tensor<B, D>,
) -> Tensor<B, D> {
    let d = mean1 - mean2;
    ((logvar2.clone() - logvar1.clone()).add_scalar(-1.0)
        + (logvar1 - logvar2.clone()).exp()
        + d.clone() * d * logvar2.neg().exp())
    .mul_scalar(0.5)
}

/// The standard normal CDF by the tanh approximation the authors' code uses:
/// ½ (1 + tanh(√(2/π) (x + 0.044715 x³))).
pub fn approx_standard_normal_cdf<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let inner = (x.clone() + x.clone().powi_scalar(3).mul_scalar(0.044715)).mul_scalar(c);
    inner.tanh().add_scalar(1.0).mul_scalar(0.5)
}

/// log p(x) of data `x` in [−1, 1] quantised to 256 levels (bin width 2/255)
/// under N(mean, e^{2 log_scale}): the Gaussian mass of x's bin, with the
/// outer bins extended to ±∞ (Ho et al. 2020, Eq. 13); probabilities below
/// 1e-12 are clamped there, as the authors' code does.
pub fn discretized_gaussian_log_likelihood<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    mean: Tensor<B, D>,
    log_scale: Tensor<B, D>,
) -> Tensor<B, D> {
    let centered = x.clone() - mean;
    let inv_std = log_scale.neg().exp();
    let half_bin = 1.0 / 255.0;
    let cdf_plus =
        approx_standard_normal_cdf(centered.clone().add_scalar(half_bin) * inv_std.clone());
    let cdf_min = approx_standard_normal_cdf(centered.add_scalar(-half_bin) * inv_std);
    let log_cdf_plus = cdf_plus.clone().clamp_min(1e-12).log();
    let log_one_minus_cdf_min = cdf_min.clone().neg().add_scalar(1.0).clamp_min(1e-12).log();
    let log_delta = (cdf_plus - cdf_min).clamp_min(1e-12).log();
    log_delta
        .mask_where(x.clone().lower_elem(-0.999), log_cdf_plus)
        .mask_where(x.greater_elem(0.999), log_one_minus_cdf_min)
}

/// L_t of each example, in bits per dimension, `[B]`: the KL term at t > 0,
/// the decoder NLL at t = 0. `eps` is the model's ε (give it detached for
/// the stop-gradient), `v_raw` its variance output in [−1, 1], `ts` one
/// timestep per example, `alpha_bars` ᾱ_t for t = 0..T−1 (T ≥ 2).
///
/// # Shapes
/// `x0`, `x_t`, `eps`, `v_raw`: `[B, …]`; returns `[B]`.
pub fn vlb_terms<B: Backend, const D: usize>(
    x0: Tensor<B, D>,
    x_t: Tensor<B, D>,
    eps: Tensor<B, D>,
    v_raw: Tensor<B, D>,
    ts: &[i64],
    alpha_bars: &[f64],
) -> Tensor<B, 1> {
    let dev = x0.device();
    let mut sqrt_ab = Vec::new();
    let mut sqrt_1m_ab = Vec::new();
    let (mut c_x0, mut c_xt) = (Vec::new(), Vec::new());
    let (mut min_log, mut max_log, mut is_first) = (Vec::new(), Vec::new(), Vec::new());
    for &t in ts {
        let (ab, ab_prev) = (alpha_bar_at(alpha_bars, t), alpha_bar_at(alpha_bars, t - 1));
        sqrt_ab.push(ab.sqrt());
        sqrt_1m_ab.push((1.0 - ab).sqrt());
        let (a, b) = posterior_mean_coefficients(ab, ab_prev);
        c_x0.push(a);
        c_xt.push(b);
        // β̃_0 = 0: use β̃_1, as ADM's `posterior_log_variance_clipped`
        let tilde = if t == 0 {
            posterior_variance(alpha_bars[1], alpha_bars[0])
        } else {
            posterior_variance(ab, ab_prev)
        };
        min_log.push(tilde.ln());
        max_log.push(step_beta(ab, ab_prev).ln());
        is_first.push(if t == 0 { 1.0 } else { 0.0 });
    }
    let pe = |v: &[f64]| per_example::<B, D>(v, &dev);
    let x0_hat = (x_t.clone() - eps * pe(&sqrt_1m_ab)) / pe(&sqrt_ab);
    let model_mean = x0_hat * pe(&c_x0) + x_t.clone() * pe(&c_xt);
    let frac = v_raw.add_scalar(1.0).mul_scalar(0.5);
    let (lo, hi) = (pe(&min_log), pe(&max_log));
    let model_logvar = lo.clone() + frac * (hi - lo.clone());
    let true_mean = x0.clone() * pe(&c_x0) + x_t * pe(&c_xt);
    let ln2 = std::f64::consts::LN_2;
    let kl = mean_per_example(normal_kl(
        true_mean,
        lo,
        model_mean.clone(),
        model_logvar.clone(),
    ))
    .div_scalar(ln2);
    let nll = mean_per_example(
        discretized_gaussian_log_likelihood(x0, model_mean, model_logvar.mul_scalar(0.5)).neg(),
    )
    .div_scalar(ln2);
    let first = Tensor::<B, 1>::from_data(
        TensorData::new(
            is_first.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            [ts.len()],
        ),
        &dev,
    );
    nll * first.clone() + kl * first.neg().add_scalar(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::schedule::Schedule;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    type B = Flex;

    fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().into_vec::<f32>().unwrap()
    }

    fn full<const D: usize>(v: f32, shape: [usize; D]) -> Tensor<B, D> {
        Tensor::full(shape, v, &Default::default())
    }

    #[test]
    fn kl_matches_the_closed_form_and_vanishes_for_equal_gaussians() {
        // KL(N(0.3, e^-1) ‖ N(-0.2, e^0.5)) by hand, in f64; f32 tolerance 1e-6.
        let (m1, l1, m2, l2) = (0.3f64, -1.0f64, -0.2f64, 0.5f64);
        let want = 0.5 * (-1.0 + l2 - l1 + (l1 - l2).exp() + (m1 - m2).powi(2) * (-l2).exp());
        let got = values(normal_kl(
            full(0.3, [1]),
            full(-1.0, [1]),
            full(-0.2, [1]),
            full(0.5, [1]),
        ))[0];
        assert!((got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        let same = values(normal_kl(
            full(0.3, [1]),
            full(-1.0, [1]),
            full(0.3, [1]),
            full(-1.0, [1]),
        ))[0];
        assert!(same.abs() < 1e-7);
    }

    #[test]
    fn the_discretized_likelihood_sums_to_one_over_the_256_levels() {
        // The bins tile the real line, so the masses telescope to 1; the
        // approximate CDF is monotone, so this holds to f32 round-off (1e-4
        // over 256 terms).
        for (mean, log_scale) in [(0.0f32, -2.0f32), (0.7, -4.0), (-0.95, -1.0)] {
            let levels: Vec<f32> = (0..256).map(|k| -1.0 + 2.0 * k as f32 / 255.0).collect();
            let x = Tensor::<B, 1>::from_data(TensorData::new(levels, [256]), &Default::default());
            let lp =
                discretized_gaussian_log_likelihood(x, full(mean, [256]), full(log_scale, [256]));
            let total: f32 = values(lp.exp()).iter().sum();
            assert!(
                (total - 1.0).abs() < 1e-4,
                "mean {mean}, log σ {log_scale}: {total}"
            );
        }
    }

    #[test]
    fn the_kl_term_is_zero_for_the_true_noise_and_posterior_variance() {
        // ε equal to the noise that made x_t gives x̂0 = x0, so the model mean
        // is the posterior mean; v_raw = −1 gives Σ = β̃_t: L_t = 0 at t > 0.
        let ab = Schedule::Linear.alpha_bars(100);
        let dev = Default::default();
        let x0 = Tensor::<B, 4>::random([2, 3, 4, 4], Distribution::Uniform(-1.0, 1.0), &dev);
        let eps = Tensor::<B, 4>::random([2, 3, 4, 4], Distribution::Normal(0.0, 1.0), &dev);
        let ts = [10i64, 99];
        let a = per_example::<B, 4>(&ts.map(|t| ab[t as usize].sqrt()), &dev);
        let s = per_example::<B, 4>(&ts.map(|t| (1.0 - ab[t as usize]).sqrt()), &dev);
        let x_t = x0.clone() * a + eps.clone() * s;
        let l = vlb_terms(
            x0.clone(),
            x_t.clone(),
            eps.clone(),
            full(-1.0, [2, 3, 4, 4]),
            &ts,
            &ab,
        );
        for v in values(l) {
            assert!(v.abs() < 1e-4, "{v}");
        }
        // v_raw = +1 (Σ = β_t) costs bits where β_t and β̃_t differ most (small t).
        let ts = [1i64, 2];
        let a = per_example::<B, 4>(&ts.map(|t| ab[t as usize].sqrt()), &dev);
        let s = per_example::<B, 4>(&ts.map(|t| (1.0 - ab[t as usize]).sqrt()), &dev);
        let x_t = x0.clone() * a + eps.clone() * s;
        let l = vlb_terms(x0, x_t, eps, full(1.0, [2, 3, 4, 4]), &ts, &ab);
        assert!(values(l).iter().all(|&v| v > 1e-3));
    }

    #[test]
    fn at_t_zero_the_term_is_the_decoder_nll() {
        let ab = Schedule::Linear.alpha_bars(100);
        let x0 = full::<4>(0.5, [1, 1, 1, 1]);
        let eps = full::<4>(0.0, [1, 1, 1, 1]);
        let x_t = x0.clone().mul_scalar(ab[0].sqrt() as f32);
        let got = values(vlb_terms(
            x0.clone(),
            x_t.clone(),
            eps.clone(),
            full(-1.0, [1, 1, 1, 1]),
            &[0],
            &ab,
        ))[0];
        // by hand: mean = c_x0 x̂0 + c_xt x_t with ᾱ_prev = 1, log σ = ½ log β̃_1
        let (c0, c1) = posterior_mean_coefficients(ab[0], 1.0);
        let xh = x_t.clone().div_scalar(ab[0].sqrt() as f32);
        let mean = xh.mul_scalar(c0 as f32) + x_t.mul_scalar(c1 as f32);
        let ls = 0.5 * posterior_variance(ab[1], ab[0]).ln();
        let want = -values(discretized_gaussian_log_likelihood(
            x0,
            mean,
            full(ls as f32, [1, 1, 1, 1]),
        ))[0]
            / std::f32::consts::LN_2;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
}
