//! Diffusion maths: noise schedules, what a denoiser predicts and its
//! conversion to ε, timestep spacing, and the DDIM / DDPM samplers. Every
//! formula is a small function with its equation written in its doc comment;
//! `docs/diffusion.md` collects them with their papers and what was checked
//! against diffusers.

pub mod prediction;
pub mod sampler;
pub(crate) mod schedule;
pub(crate) mod spacing;
pub(crate) mod vlb;
pub(crate) mod weighting;

#[cfg(test)]
mod diffusers_parity;

pub use prediction::{BatchScalar, Prediction, q_sample, to_epsilon};
pub use sampler::{Sampler, SamplerConfig, SamplerError, VarianceType, sample};
pub use schedule::Schedule;
pub use spacing::{Spacing, timesteps};
pub use weighting::Weighting;
