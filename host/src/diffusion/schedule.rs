//! Noise schedules: β_t for t = 0..T−1 and ᾱ_t = Π_{s≤t} (1 − β_s).
//!
//! The three schedules of diffusers' `DDPMScheduler` (`beta_schedule`
//! "linear", "scaled_linear", "squaredcos_cap_v2"), with its default
//! `beta_start = 1e-4`, `beta_end = 0.02`:
//!
//! - linear ("Denoising Diffusion Probabilistic Models", Ho et al., 2020,
//!   arXiv:2006.11239, Sec. 4): β_t = linspace(β_start, β_end, T)_t;
//! - scaled linear (latent diffusion): β_t = linspace(√β_start, √β_end, T)_t²;
//! - cosine ("Improved Denoising Diffusion Probabilistic Models", Nichol &
//!   Dhariwal, 2021, arXiv:2102.09672, Eq. 17):
//!   f(u) = cos²((u + 0.008) / 1.008 · π/2), β_t = min(1 − f((t+1)/T) / f(t/T), 0.999).

/// A noise schedule by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Linear β.
    Linear,
    /// Linear in √β.
    ScaledLinear,
    /// Cosine ᾱ (squaredcos_cap_v2).
    Cosine,
}

const BETA_START: f64 = 1e-4;
const BETA_END: f64 = 0.02;

fn linspace(a: f64, b: f64, n: usize) -> impl Iterator<Item = f64> {
    (0..n).map(move |i| {
        if n == 1 {
            a
        } else {
            a + (b - a) * i as f64 / (n - 1) as f64
        }
    })
}

/// f(u) = cos²((u + 0.008) / 1.008 · π/2), the cosine schedule's ᾱ at u = t/T.
fn cosine_alpha_bar(u: f64) -> f64 {
    ((u + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
        .cos()
        .powi(2)
}

impl Schedule {
    /// β_t for t = 0..T−1.
    pub fn betas(self, timesteps: usize) -> Vec<f64> {
        let t = timesteps;
        match self {
            Schedule::Linear => linspace(BETA_START, BETA_END, t).collect(),
            Schedule::ScaledLinear => linspace(BETA_START.sqrt(), BETA_END.sqrt(), t)
                .map(|b| b * b)
                .collect(),
            Schedule::Cosine => (0..t)
                .map(|i| {
                    (1.0 - cosine_alpha_bar((i + 1) as f64 / t as f64)
                        / cosine_alpha_bar(i as f64 / t as f64))
                    .min(0.999)
                })
                .collect(),
        }
    }

    /// ᾱ_t = Π_{s≤t} (1 − β_s) for t = 0..T−1.
    pub fn alpha_bars(self, timesteps: usize) -> Vec<f64> {
        let mut acc = 1.0;
        self.betas(timesteps)
            .into_iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect()
    }
}

/// SNR(t) = ᾱ_t / (1 − ᾱ_t).
pub fn snr(alpha_bar: f64) -> f64 {
    alpha_bar / (1.0 - alpha_bar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_its_endpoints_and_product() {
        let b = Schedule::Linear.betas(1000);
        assert_eq!(b[0], 1e-4);
        assert!((b[999] - 0.02).abs() < 1e-15);
        let a = Schedule::Linear.alpha_bars(1000);
        assert!((a[0] - (1.0 - 1e-4)).abs() < 1e-15);
        // ᾱ_1 = (1 − β_0)(1 − β_1), β_1 = 1e-4 + 0.0199 / 999.
        let b1 = 1e-4 + (0.02 - 1e-4) / 999.0;
        assert!((a[1] - (1.0 - 1e-4) * (1.0 - b1)).abs() < 1e-15);
        // Reference from Python floats: prod(1 - (1e-4 + 0.0199 * i / 999) for i in range(1000)).
        assert!(
            (a[999] - 4.0358297653756754e-05).abs() < 1e-15,
            "{}",
            a[999]
        );
    }

    #[test]
    fn cosine_alpha_bar_telescopes_to_the_closed_form() {
        // Without clipping, Π (1 − β_s) = f((t+1)/T) / f(0).
        let a = Schedule::Cosine.alpha_bars(1000);
        for t in [0usize, 10, 500, 900] {
            let closed = cosine_alpha_bar((t + 1) as f64 / 1000.0) / cosine_alpha_bar(0.0);
            assert!((a[t] - closed).abs() < 1e-12, "t={t}: {} vs {closed}", a[t]);
        }
        // The last β is clipped at 0.999.
        assert_eq!(*Schedule::Cosine.betas(1000).last().unwrap(), 0.999);
    }

    #[test]
    fn scaled_linear_is_linear_in_sqrt_beta() {
        let b = Schedule::ScaledLinear.betas(3);
        let mid = ((1e-4f64).sqrt() + (0.02f64).sqrt()) / 2.0;
        assert!((b[1] - mid * mid).abs() < 1e-15);
    }

    #[test]
    fn snr_is_the_ratio() {
        assert_eq!(snr(0.5), 1.0);
        assert!((snr(0.8) - 4.0).abs() < 1e-12);
    }
}
