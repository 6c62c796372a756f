//! [`Initializer`]: how an `nn` block's parameters start.

use crate::abi::ParamInit;

/// The law a block's parameters are drawn from. Every `nn` config has an
/// `initializer` field (and `with_initializer`); the block tells it the
/// parameter's fan-in.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Initializer {
    /// Uniform on ±1/√fan_in: PyTorch's default for `nn.Linear` and
    /// `nn.Conv2d` weights (`kaiming_uniform_` with `a = √5`) and biases.
    #[default]
    KaimingUniform,
    /// All zeros: a residual branch whose last layer starts at zero leaves
    /// the model it is added to unchanged at step 0.
    Zeros,
    /// Every value the same.
    Constant(f32),
    /// Uniform on `[lo, hi)`.
    Uniform {
        /// Lower bound.
        lo: f32,
        /// Upper bound (excluded).
        hi: f32,
    },
    /// Normal with mean 0 and standard deviation `std`.
    Normal {
        /// Standard deviation.
        std: f32,
    },
}

impl Initializer {
    /// The host's law for a parameter with `fan_in` inputs per output.
    pub fn law(self, fan_in: usize) -> ParamInit {
        match self {
            Initializer::KaimingUniform => {
                let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
                ParamInit::uniform(-bound, bound)
            }
            Initializer::Zeros => ParamInit::zeros(),
            Initializer::Constant(v) => ParamInit::constant(v),
            Initializer::Uniform { lo, hi } => ParamInit::uniform(lo, hi),
            Initializer::Normal { std } => ParamInit::normal(std),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kaiming_uniform_is_pytorchs_bound() {
        // nn.Linear(16, _): bound 1/sqrt(16) = 0.25
        assert_eq!(
            Initializer::KaimingUniform.law(16),
            ParamInit::uniform(-0.25, 0.25)
        );
        assert_eq!(Initializer::Zeros.law(16), ParamInit::zeros());
        assert_eq!(
            Initializer::Normal { std: 0.02 }.law(3),
            ParamInit::normal(0.02)
        );
    }
}
