//! [`RunError`]: why a run, a sampling or a stage of either stopped. Each
//! lower layer's typed error passes through unchanged (the plugin and hook
//! of a [`HookError`], the key of a [`DataError`], the path of a
//! [`RunDirError`], …); the run's own refusals are sentences; and
//! [`Context::context`] puts what the run was doing in front of a cause, as
//! `anyhow`'s context does, so the CLI prints the same chain.

use super::dir::RunDirError;
use crate::data::DataError;
use crate::model::{NetError, WeightsError};
use crate::plugins::HookError;
use crate::train::checkpoint::CheckpointError;
use crate::train::fit::FitError;
use dtx_plugin_api::abi::AbiError;

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The run's own refusal or failure, as a sentence.
    #[error("{0}")]
    Message(String),
    /// What the run was doing, in front of the cause.
    #[error("{context}")]
    Context {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: Box<RunError>,
    },
    /// The run folder.
    #[error(transparent)]
    Dir(#[from] RunDirError),
    /// A plugin's hook (names plugin and hook).
    #[error(transparent)]
    Hook(#[from] HookError),
    /// A host service or tensor operation.
    #[error(transparent)]
    Abi(#[from] AbiError),
    /// A training step.
    #[error(transparent)]
    Fit(#[from] FitError),
    /// The sampler's settings.
    #[error(transparent)]
    Sampler(#[from] crate::diffusion::sampler::SamplerError),
    /// A checkpoint.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A data set.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The network.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A feature extractor or metric.
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
    /// The network's weights table.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The model's description (a CLIP encoder's folder).
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// Writing the log, a report or an image.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Encoding a PNG.
    #[error(transparent)]
    Image(#[from] image::ImageError),
    /// Writing JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// The run's results.
pub type Result<T, E = RunError> = std::result::Result<T, E>;

/// Puts what the run was doing in front of an error.
pub trait Context<T> {
    /// `context` in front of the error.
    fn context(self, context: impl std::fmt::Display) -> Result<T>;
    /// The context `f` gives in front of the error (built only on error).
    fn with_context<C: std::fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: Into<RunError>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| RunError::Context {
            context: context.to_string(),
            source: Box::new(e.into()),
        })
    }

    fn with_context<C: std::fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| RunError::Context {
            context: f().to_string(),
            source: Box::new(e.into()),
        })
    }
}

/// A [`RunError::Message`] from a format string.
macro_rules! run_error {
    ($($arg:tt)*) => {
        $crate::run::error::RunError::Message(format!($($arg)*))
    };
}

/// Returns a [`RunError::Message`] from a format string.
macro_rules! fail {
    ($($arg:tt)*) => {
        return Err($crate::run::error::RunError::Message(format!($($arg)*)).into())
    };
}

pub(crate) use {fail, run_error};
