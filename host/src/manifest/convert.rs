//! From manifest values to the engine's own types. The manifest layer sits
//! above diffusion, data and train (docs/architecture.md), so the conversions
//! live here and the lower layers never see a manifest type.

use super::{LossWeight, Train};
use crate::diffusion::Weighting;

impl Train {
    /// The loss weighting of `loss_weight` with its constants (`p2_k`,
    /// `p2_gamma`, `snr_gamma`).
    pub fn weighting(&self) -> Weighting {
        match self.loss_weight {
            LossWeight::None => Weighting::None,
            LossWeight::P2 => Weighting::P2 {
                k: self.p2_k,
                gamma: self.p2_gamma,
            },
            LossWeight::MinSnr => Weighting::MinSnr {
                gamma: self.snr_gamma,
            },
        }
    }
}
