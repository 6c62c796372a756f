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

impl From<super::Schedule> for crate::diffusion::schedule::Schedule {
    fn from(kind: super::Schedule) -> Self {
        use crate::diffusion::schedule::Schedule as S;
        match kind {
            super::Schedule::Linear => S::Linear,
            super::Schedule::ScaledLinear => S::ScaledLinear,
            super::Schedule::Cosine => S::Cosine,
        }
    }
}

impl From<super::Prediction> for crate::diffusion::prediction::Prediction {
    fn from(kind: super::Prediction) -> Self {
        use crate::diffusion::prediction::Prediction as P;
        match kind {
            super::Prediction::Epsilon => P::Epsilon,
            super::Prediction::VPrediction => P::VPrediction,
            super::Prediction::Sample => P::Sample,
        }
    }
}

impl From<super::Optimizer> for crate::train::optim::Rule {
    fn from(kind: super::Optimizer) -> Self {
        use crate::train::optim::Rule;
        match kind {
            super::Optimizer::AdamW => Rule::AdamW,
            super::Optimizer::Adam => Rule::Adam,
            super::Optimizer::Sgd => Rule::Sgd,
        }
    }
}
