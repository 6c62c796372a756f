//! Runs: the run folder (manifest, metrics, checkpoints, samples, report) and
//! the engine that fills it (`dtx run`).

mod condition;
pub mod dir;
pub mod engine;
mod evaluation;
mod model;
mod objective;
mod plot;
mod prepare;
pub mod report;
mod sampling;

pub use engine::{RunOptions, RunSummary, run};
pub(crate) use model::load_target;
pub use sampling::SamplingStats;
