//! Training: the optimizer, the EMA, checkpoints, and a training step's
//! mechanics (`fit`: the loss terms summed, the warmup schedule, one
//! optimizer step of the base model's and plugins' trainable parameters
//! through the host's autodiff). The run's loop that drives it is
//! `run/fit.rs`.

pub mod base_ref;
pub(crate) mod checkpoint;
pub(crate) mod ema;
pub(crate) mod fit;
pub mod optim;

pub use checkpoint::CheckpointError;
pub use fit::FitError;
