//! What can go wrong building or loading a diffusers U-Net: a config value
//! the forward pass cannot run, an unreadable weights file, or weights that do
//! not fit the config (every problem listed at once, each naming its key).

pub use crate::model::weights::WeightProblem;
use std::path::PathBuf;

/// An error building a [`super::UNet2D`] or loading its weights.
#[derive(Debug, thiserror::Error)]
pub enum UNetError {
    /// A config value (as `dtx plan` lists it) the forward pass cannot use.
    ///
    /// ## Resolution
    /// Fix the key in the model's `config.json`.
    #[error("config.json: {key}: {reason}")]
    Config {
        /// The `config.json` key.
        key: String,
        /// What is wrong, naming the value.
        reason: String,
    },
    /// The weights file is absent or unreadable.
    #[error("{}: cannot read: {reason}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O or format error.
        reason: String,
    },
    /// The weights do not fit the config; every problem is listed.
    ///
    /// ## Resolution
    /// Check that `config.json` belongs to these weights (diffusers'
    /// `save_pretrained` writes both).
    #[error(
        "{}: the weights do not fit config.json {}",
        file.display(),
        crate::model::weights::problem_list(problems)
    )]
    Weights {
        /// The weights file.
        file: PathBuf,
        /// Every problem, in key order.
        problems: Vec<WeightProblem>,
    },
    /// Registering a parameter in the store failed (a name registered twice).
    #[error("registering the U-Net's weights: {0}")]
    Store(String),
}
