//! What can go wrong building an ADM U-Net or loading its weights: a flag the
//! forward pass cannot run, an unreadable checkpoint, or weights that do not
//! fit the flags (every problem listed at once, each naming its key).

use crate::model::ConfigProblem;
use crate::model::weights::WeightProblem;
use std::path::PathBuf;

/// An error building an [`super::AdmNet`] or loading its weights.
#[derive(Debug, thiserror::Error)]
pub enum AdmError {
    /// A flag (as `dtx plan` lists it) the forward pass cannot use.
    ///
    /// ## Resolution
    /// Fix the flag in the manifest's `[source.config]`.
    #[error("[source.config].{key}: {reason}")]
    Config {
        /// The flag.
        key: String,
        /// What is wrong, naming the value.
        reason: String,
    },
    /// The checkpoint is absent, unreadable, or in no format dtx reads.
    ///
    /// ## Resolution
    /// Point `path` at guided-diffusion's `.pt` (`torch.save` of the
    /// `state_dict()`, torch ≥ 1.6) or a `.safetensors` of the same keys.
    #[error("{}: cannot read: {reason}", file.display())]
    Read {
        /// The checkpoint.
        file: PathBuf,
        /// The I/O or format error, naming the key where there is one.
        reason: String,
    },
    /// The weights do not fit the flags; every problem is listed.
    ///
    /// ## Resolution
    /// Set `[source.config]` to the `MODEL_FLAGS` the checkpoint was trained
    /// with (guided-diffusion's README lists them for its releases).
    #[error(
        "{}: the weights do not fit [source.config] {}",
        file.display(),
        crate::model::weights::problem_list(problems)
    )]
    Weights {
        /// The checkpoint.
        file: PathBuf,
        /// Every problem, in key order.
        problems: Vec<WeightProblem>,
    },
    /// Registering a parameter in the store failed (a name registered twice).
    #[error("registering the ADM U-Net's weights: {0}")]
    Store(String),
}

impl From<ConfigProblem> for AdmError {
    fn from(p: ConfigProblem) -> Self {
        AdmError::Config {
            key: p.key,
            reason: p.reason,
        }
    }
}
