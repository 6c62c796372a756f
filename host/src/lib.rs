//! `dtx`: transfer pretrained diffusion models to small target datasets.
//!
//! The host owns manifests, plugin loading, tensors and the engine; transfer
//! methods are plugins built against `dtx-plugin-api`. See `docs/` for the user
//! guide and DESIGN.md for the architecture.
#![warn(missing_docs)]

pub mod bench;
pub mod cli;
pub(crate) mod condition;
pub mod data;
pub mod diffusion;
pub mod eval;
pub mod kernels;
pub mod manifest;
pub mod model;
pub mod plan;
pub mod plugins;
pub(crate) mod registry;
pub mod run;
pub mod tensor_abi;
pub mod train;
pub mod util;
