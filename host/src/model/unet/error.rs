//! What can go wrong building or loading a diffusers U-Net: a config value
//! the forward pass cannot run, an unreadable weights file, or weights that do
//! not fit the config (every problem listed at once, each naming its key).

use std::fmt;
use std::path::PathBuf;

/// One way a checkpoint does not fit the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightProblem {
    /// The config needs `key`, the file lacks it.
    Missing {
        /// Checkpoint key.
        key: String,
        /// Shape the config implies.
        expected: Vec<usize>,
    },
    /// The file holds `key`, which the config does not use.
    Unexpected {
        /// Checkpoint key.
        key: String,
        /// Its shape in the file.
        found: Vec<usize>,
    },
    /// `key` is in both, with different shapes.
    Shape {
        /// Checkpoint key.
        key: String,
        /// Shape the config implies.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// `key` is stored in a dtype dtx does not convert (it reads F32, F16,
    /// BF16 and F64).
    Dtype {
        /// Checkpoint key.
        key: String,
        /// The dtype, as safetensors names it.
        dtype: String,
    },
}

impl fmt::Display for WeightProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightProblem::Missing { key, expected } => {
                write!(f, "missing key `{key}` (expected shape {expected:?})")
            }
            WeightProblem::Unexpected { key, found } => write!(
                f,
                "unexpected key `{key}` (shape {found:?}); the config has no such parameter"
            ),
            WeightProblem::Shape {
                key,
                expected,
                found,
            } => write!(f, "`{key}`: expected shape {expected:?}, found {found:?}"),
            WeightProblem::Dtype { key, dtype } => write!(
                f,
                "`{key}`: dtype {dtype} is not supported (F32, F16, BF16, F64 are)"
            ),
        }
    }
}

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
        "{}: the weights do not fit config.json ({} problem{}):\n  {}",
        file.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" },
        problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  ")
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
