//! Training: the optimizer, the EMA, checkpoints, and the loop that trains the
//! base model and plugin parameters through the host's autodiff.

pub mod checkpoint;
pub mod ema;
/// The optimizer, kept with the parameter store in `tensor_abi` until the
/// store moves here (docs/architecture.md).
pub use crate::tensor_abi::optim;
