//! `sdft`: self-distillation fine-tuning, from "Expanding Expressiveness of
//! Diffusion Models with Limited Data via Self-Distillation based Fine-Tuning"
//! (Sections 3.2–3.5). While the student (initialised from the source) trains
//! on the small target set, the frozen source model teaches it through two
//! extra loss terms, added to the host's base objective as in Eq. 6:
//!
//! ```text
//! L = L_base + λ_distill · L_distill + λ_aux · L_aux                       (Eq. 6)
//! L_distill = mean_i w_γ(t_i)  · mean_elem (ε_θ(x_t,i, t_i) − ε_φ(x_t,i, t_i))²   (Eq. 3)
//! L_aux     = mean_i w_γa(t_i) · mean_elem (ε_θ(z_i, t_i)   − ε_φ(z_i, t_i))²     (Eq. 5)
//! w_γ(t)    = 1 / (k + SNR(t))^γ,   SNR(t) = ᾱ_t / (1 − ᾱ_t)                (Eq. 4)
//! ```
//!
//! ε_θ is the student, ε_φ the frozen source. Conventions (docs/plugins/sdft.md):
//!
//! - **Reduction**: each squared error is a per-element mean (over C·H·W),
//!   weighted per example, then averaged over the batch — the reduction of the
//!   host's L_simple, for which the paper's λ = 0.1 are tuned.
//! - **Shared sample**: L_distill uses the step's own `x_t`, `t` and the
//!   student's prediction `pred` (the forward that also feeds L_simple); only
//!   the source adds a forward pass.
//! - **Auxiliary input**: by default (`aux_noise = "step"`, the authors' code)
//!   z is the step's own noise ε at the step's t; `aux_noise = "fresh"` draws
//!   z ~ N(0, I) and t ~ U{0, …, T−1} from the host's seeded RNG (the paper's
//!   "pure noise"). The student's forward on z goes through
//!   `denoise(Which::Student)` and carries the gradient.
//! - A term whose λ is 0 (or `aux = false`) runs no forward pass and draws
//!   nothing: with both λ = 0 training is bit-identical to naive fine-tuning.
//!
//! Logged per step: `<instance>.l_distill`, `<instance>.l_aux` (unweighted);
//! returned terms `<instance>.distill` and `<instance>.aux` (weighted by λ).

use dtx_plugin_api::DType;
use dtx_plugin_api::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where the auxiliary input z of Eq. 5 comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuxNoise {
    /// The step's own noise ε at the step's timesteps (the authors' code).
    Step,
    /// Independent z ~ N(0, I) and t ~ U{0, …, T−1} (the paper's text).
    Fresh,
}

/// `[plugin.config]` of `sdft`. Defaults are the paper's MetFaces recipe
/// (its Table 5; AAHQ uses `lambda_aux = 0.3`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Weight λ_distill of the distillation term (Eq. 6, >= 0; 0 skips it).
    pub lambda_distill: f32,
    /// γ of the distillation weight 1/(k + SNR)^γ (Eq. 4, >= 0).
    pub gamma: f32,
    /// Weight λ_aux of the auxiliary-input term (Eq. 6, >= 0; 0 skips it).
    pub lambda_aux: f32,
    /// γ_a of the auxiliary weight 1/(k + SNR)^γ_a (Eq. 5, >= 0).
    pub gamma_aux: f32,
    /// k of the weight 1/(k + SNR)^γ (Eq. 4, > 0).
    pub k: f32,
    /// Whether the auxiliary-input term runs.
    pub aux: bool,
    /// Auxiliary input: "step" (the step's ε at its t, authors' code) or "fresh" (new z ~
    /// N(0, I), t uniform).
    pub aux_noise: AuxNoise,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            lambda_distill: 0.1,
            gamma: 3.0,
            lambda_aux: 0.1,
            gamma_aux: 50.0,
            k: 1.0,
            aux: true,
            aux_noise: AuxNoise::Step,
        }
    }
}

impl Config {
    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), AbiError> {
        let at_least_zero = [
            ("lambda_distill", self.lambda_distill),
            ("gamma", self.gamma),
            ("lambda_aux", self.lambda_aux),
            ("gamma_aux", self.gamma_aux),
        ];
        for (key, v) in at_least_zero {
            if !(v.is_finite() && v >= 0.0) {
                return Err(AbiError::config(
                    key,
                    format!("must be a finite number >= 0, got {v}"),
                ));
            }
        }
        if !(self.k.is_finite() && self.k > 0.0) {
            return Err(AbiError::config(
                "k",
                format!("must be a finite number > 0, got {}", self.k),
            ));
        }
        Ok(())
    }
}

/// The distillation weight of Eq. 4 at one timestep, in f64:
/// w_γ(t) = 1 / (k + SNR(t))^γ with SNR(t) = ᾱ_t / (1 − ᾱ_t).
///
/// Written as ((1 − ᾱ) / (k (1 − ᾱ) + ᾱ))^γ, which is the same number and
/// stays finite at ᾱ = 1 (SNR = ∞, w = 0). [`Sdft`] computes this same form on
/// host tensors.
pub fn weight(alpha_bar: f64, k: f64, gamma: f64) -> f64 {
    let one_minus = 1.0 - alpha_bar;
    (one_minus / (k * one_minus + alpha_bar)).powf(gamma)
}

/// The SDFT plugin.
pub struct Sdft {
    config: Config,
    /// T, the number of training timesteps, found on first use by
    /// `aux_noise = "fresh"` (see [`Sdft::timesteps`]).
    timesteps: Option<usize>,
}

impl Sdft {
    /// w of Eq. 4 for timesteps `t` `[B]`, from the host's ᾱ_t: `[B]`.
    fn weights(host: &Host, t: &Tensor, k: f32, gamma: f32) -> Result<Tensor, AbiError> {
        let ab = host.alpha_bar(t)?; // [B]
        let one_minus = ab.rsub(1.0); // 1 − ᾱ
        let base = &one_minus / ((&one_minus * k) + &ab); // 1 / (k + SNR)
        Ok(base.powf(gamma))
    }

    /// mean_i w_i · mean_elem (a_i − b_i)²: `[B, …]`, `[B, …]`, `[B]` → `[1]`.
    fn weighted_mse(a: &Tensor, b: &Tensor, w: &Tensor) -> Tensor {
        let per_example = (a - b).square().flatten(1).mean_dims(&[1], false); // [B]
        (per_example * w).mean()
    }

    /// T of the run's schedule. The plugin api has no service that reports
    /// it, so it is found once from `alpha_bar`, which answers for
    /// `0 ≤ t < T` and refuses larger t: doubling, then bisection
    /// (2·log₂ T calls on one-element tensors).
    fn timesteps(&mut self, host: &Host) -> Result<usize, AbiError> {
        if let Some(t) = self.timesteps {
            return Ok(t);
        }
        let valid = |t: usize| host.alpha_bar(&Tensor::from_f32(&[t as f32], &[1])).is_ok();
        // t = 0 must answer; if it does not, report the host's own error.
        host.alpha_bar(&Tensor::from_f32(&[0.0], &[1]))?;
        let (mut lo, mut hi) = (0usize, 1usize); // lo valid, hi unknown
        while valid(hi) {
            lo = hi;
            hi *= 2;
            if hi > 1 << 24 {
                return Err(AbiError::other(
                    "sdft: the noise schedule answers for more than 2^24 timesteps",
                ));
            }
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if valid(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        self.timesteps = Some(lo + 1);
        Ok(lo + 1)
    }
}

#[hooks]
impl Plugin for Sdft {
    type Config = Config;
    const NAME: &'static str = "sdft";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Self-distillation fine-tuning: SNR-weighted distillation of the frozen source's ε on target and auxiliary inputs";

    fn new(config: Config, _host: &Host, _model: &ModelInfo) -> Result<Self, AbiError> {
        config.validate()?;
        Ok(Sdft {
            config,
            timesteps: None,
        })
    }

    fn loss(&mut self, ctx: &Loss<'_>) -> Result<Vec<(String, Tensor)>, AbiError> {
        let c = self.config.clone();
        let host = ctx.host;
        let labels = ctx.labels.as_deref();
        let mut terms = Vec::new();

        // Eq. 3 on the step's own sample: the student's `pred` (with gradient)
        // against one frozen source forward on the same x_t, t.
        if c.lambda_distill > 0.0 {
            let eps_src = host.denoise(&ctx.x_t, &ctx.t, Which::Source, labels)?; // [B, …]
            let w = Self::weights(host, &ctx.t, c.k, c.gamma)?; // [B]
            let l = Self::weighted_mse(&ctx.pred, &eps_src, &w); // [1]
            host.log_scalar("l_distill", l.item() as f64);
            terms.push(("distill".to_owned(), l * c.lambda_distill));
        }

        // Eq. 5 on the auxiliary input z: a student forward (with gradient)
        // and a source forward.
        if c.aux && c.lambda_aux > 0.0 {
            let (z, t): (Tensor, Tensor) = match c.aux_noise {
                AuxNoise::Step => ((*ctx.noise).clone(), (*ctx.t).clone()),
                AuxNoise::Fresh => {
                    let big_t = self.timesteps(host)?;
                    let b = ctx.noise.dim(0);
                    let z = Tensor::randn(&ctx.noise.shape());
                    // ⌊U[0, T)⌋, kept in 0..T−1 against rounding at the top
                    let t = Tensor::rand(&[b], 0.0, big_t as f32)
                        .cast(DType::I64)
                        .cast(DType::F32)
                        .clamp(0.0, (big_t - 1) as f32);
                    (z, t)
                }
            };
            let eps_student = host.denoise(&z, &t, Which::Student, labels)?;
            let eps_src = host.denoise(&z, &t, Which::Source, labels)?;
            let w = Self::weights(host, &t, c.k, c.gamma_aux)?;
            let l = Self::weighted_mse(&eps_student, &eps_src, &w);
            host.log_scalar("l_aux", l.item() as f64);
            terms.push(("aux".to_owned(), l * c.lambda_aux));
        }
        Ok(terms)
    }
}

export_plugin!(Sdft);

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative tolerance for f64 comparisons with hand-computed values.
    const REL: f64 = 1e-12;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= REL * b.abs().max(1e-300)
    }

    #[test]
    fn weight_matches_hand_computed_values() {
        // ᾱ = 0.5: SNR = 1, w = 1 / (1 + 1)^3 = 1/8.
        assert!(close(weight(0.5, 1.0, 3.0), 0.125));
        // ᾱ = 0.8: SNR = 4, w = 1 / (1 + 4)^3 = 1/125 = 0.008.
        assert!(close(weight(0.8, 1.0, 3.0), 0.008));
        // ᾱ = 0.2: SNR = 0.25, w = 1 / 1.25^3 = 0.512.
        assert!(close(weight(0.2, 1.0, 3.0), 0.512));
        // k = 2, γ = 1, ᾱ = 0.75: SNR = 3, w = 1/5.
        assert!(close(weight(0.75, 2.0, 1.0), 0.2));
        // γ_a = 50, ᾱ = 0.5: 2^-50.
        assert!(close(weight(0.5, 1.0, 50.0), 2f64.powi(-50)));
        // ᾱ = 0.02 (SNR = 1/49): w = (49/50)^50 = 0.36417…
        assert!(close(weight(0.02, 1.0, 50.0), (49.0f64 / 50.0).powi(50)));
        // γ = 0 weighs every timestep 1.
        assert!(close(weight(0.9, 1.0, 0.0), 1.0));
    }

    #[test]
    fn weight_is_finite_at_the_ends_of_the_schedule() {
        // ᾱ = 1: SNR = ∞, w = 0; ᾱ = 0: SNR = 0, w = k^−γ.
        assert_eq!(weight(1.0, 1.0, 3.0), 0.0);
        assert!(close(weight(0.0, 1.0, 3.0), 1.0));
        assert!(close(weight(0.0, 0.5, 2.0), 4.0));
    }

    #[test]
    fn weight_falls_as_snr_rises() {
        let ws: Vec<f64> = [0.01, 0.1, 0.5, 0.9, 0.999]
            .iter()
            .map(|&a| weight(a, 1.0, 3.0))
            .collect();
        assert!(ws.windows(2).all(|p| p[0] > p[1]), "{ws:?}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: [(&str, Config); 5] = [
            (
                "lambda_distill",
                Config {
                    lambda_distill: -0.1,
                    ..Config::default()
                },
            ),
            (
                "gamma",
                Config {
                    gamma: f32::NAN,
                    ..Config::default()
                },
            ),
            (
                "lambda_aux",
                Config {
                    lambda_aux: f32::INFINITY,
                    ..Config::default()
                },
            ),
            (
                "gamma_aux",
                Config {
                    gamma_aux: -1.0,
                    ..Config::default()
                },
            ),
            (
                "k",
                Config {
                    k: 0.0,
                    ..Config::default()
                },
            ),
        ];
        for (key, cfg) in cases {
            let err = cfg.validate().unwrap_err();
            assert_eq!(err.key_path.as_str(), key, "{err:?}");
        }
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn config_parses_with_defaults_and_rejects_unknown_values() {
        let c: Config = dtx_plugin_api::config::parse(r#"{"aux_noise": "fresh"}"#).unwrap();
        assert_eq!(c.aux_noise, AuxNoise::Fresh);
        assert_eq!((c.lambda_distill, c.gamma, c.k), (0.1, 3.0, 1.0));
        let err = dtx_plugin_api::config::parse::<Config>(r#"{"aux_noise": "pure"}"#).unwrap_err();
        assert_eq!(err.key_path.as_str(), "aux_noise", "{err:?}");
        let err = dtx_plugin_api::config::parse::<Config>(r#"{"lamda_aux": 1}"#).unwrap_err();
        assert!(err.message.contains("lamda_aux"), "{err:?}");
    }
}
