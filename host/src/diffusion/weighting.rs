//! Per-timestep weights of the denoising loss, as functions of
//! SNR(t) = ᾱ_t / (1 − ᾱ_t) ([`snr`](super::schedule::snr)).
//!
//! - `none`: w = 1, the simple loss of Ho et al. 2020 (arXiv:2006.11239,
//!   Eq. 14).
//! - P2, "Perception Prioritized Training of Diffusion Models" (Choi et al.,
//!   2022, arXiv:2204.00227, Eq. 8): w(t) = 1 / (k + SNR(t))^γ on the
//!   ε objective. It is applied as written whatever the network predicts.
//! - min-SNR-γ, "Efficient Diffusion Training via Min-SNR Weighting
//!   Strategy" (Hang et al., 2023, arXiv:2303.09556, Sec. 3.4): the weight
//!   min(SNR(t), γ) on the x0 objective, which in the network's own
//!   objective is min(SNR, γ) / SNR for ε-prediction, min(SNR, γ) / (SNR + 1)
//!   for v-prediction and min(SNR, γ) for x0-prediction.

use super::prediction::Prediction;

/// The weighting in force, with its constants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Weighting {
    /// w = 1.
    None,
    /// w = 1 / (k + SNR)^γ.
    P2 {
        /// k.
        k: f64,
        /// γ.
        gamma: f64,
    },
    /// min-SNR-γ.
    MinSnr {
        /// γ.
        gamma: f64,
    },
}

impl Weighting {
    /// The weight of a sample at signal-to-noise ratio `snr` for a network
    /// predicting `prediction`.
    pub fn weight(self, snr: f64, prediction: Prediction) -> f64 {
        match self {
            Weighting::None => 1.0,
            Weighting::P2 { k, gamma } => (k + snr).powf(-gamma),
            Weighting::MinSnr { gamma } => {
                let clipped = snr.min(gamma);
                match prediction {
                    Prediction::Epsilon => clipped / snr,
                    Prediction::VPrediction => clipped / (snr + 1.0),
                    Prediction::Sample => clipped,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Hand-computed values; tolerance 1e-12 (f64 rounding only).
    #[test]
    fn p2_matches_hand_values() {
        let w = Weighting::P2 { k: 1.0, gamma: 1.0 };
        assert!((w.weight(3.0, Prediction::Epsilon) - 0.25).abs() < 1e-12);
        let w = Weighting::P2 { k: 1.0, gamma: 0.5 };
        assert!((w.weight(8.0, Prediction::Epsilon) - 1.0 / 3.0).abs() < 1e-12);
        // γ = 0 is the simple loss
        let w = Weighting::P2 { k: 1.0, gamma: 0.0 };
        assert_eq!(w.weight(123.0, Prediction::Epsilon), 1.0);
    }

    #[test]
    fn min_snr_matches_hand_values_for_each_prediction() {
        let w = Weighting::MinSnr { gamma: 5.0 };
        // high SNR (20): clipped to 5
        assert!((w.weight(20.0, Prediction::Epsilon) - 0.25).abs() < 1e-12);
        assert!((w.weight(20.0, Prediction::VPrediction) - 5.0 / 21.0).abs() < 1e-12);
        assert!((w.weight(20.0, Prediction::Sample) - 5.0).abs() < 1e-12);
        // low SNR (0.5): not clipped; ε weight is 1
        assert!((w.weight(0.5, Prediction::Epsilon) - 1.0).abs() < 1e-12);
        assert!((w.weight(0.5, Prediction::VPrediction) - 0.5 / 1.5).abs() < 1e-12);
    }

    #[test]
    fn min_snr_on_v_equals_min_snr_on_x0_rescaled() {
        // ‖v − v̂‖² = (1 + SNR) ᾱ⁻¹ … in x0 units: ‖v − v̂‖² = ‖x0 − x̂0‖² / (1 − ᾱ)
        // and SNR + 1 = 1 / (1 − ᾱ), so w_v · (SNR + 1) = w_x0.
        let w = Weighting::MinSnr { gamma: 5.0 };
        for snr in [0.1, 1.0, 4.9, 5.1, 100.0] {
            let v = w.weight(snr, Prediction::VPrediction) * (snr + 1.0);
            let x0 = w.weight(snr, Prediction::Sample);
            assert!((v - x0).abs() < 1e-12, "snr {snr}");
        }
    }
}
