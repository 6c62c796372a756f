//! Training: the optimizer, the EMA, checkpoints, and the loop that trains the
//! base model and plugin parameters through the host's autodiff.

pub mod checkpoint;
pub mod ema;
pub mod optim;
