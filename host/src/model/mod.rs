//! Denoisers, as far as they can be known without running them: [`describe`]
//! reads a model's config (a diffusers `config.json`, or the manifest's
//! `[source.config]`) and its checkpoint header, and returns a
//! [`ModelDescription`]: data shape, time-embedding width, every injection
//! point with its shape and checkpoint module, and every base parameter with
//! its shape. `dtx plan` prints it and plugins receive it as `ModelInfo`. One
//! folder per kind of denoiser (`diffusers/`, `adm/`, `mlp/`), each with its
//! description, its config, its network and its weight loading; `nn` is what
//! the networks are built from (typed parameter handles, the weights table,
//! the shared layers) and `denoiser` the one trait they run behind, with
//! [`Net`], the enum the engine holds. `weights` fits a checkpoint to a
//! network, `torch_file` reads `torch.save` archives, and one reader serves
//! safetensors headers.
//! `clip` is a CLIP image and text encoder (transformers `CLIPModel`
//! folders), for conditioning and guidance rather than denoising.
//! The user guide is `docs/models.md`.

pub mod adm;
pub mod clip;
mod config;
pub(crate) mod denoiser;
mod describe;
mod details;
pub mod diffusers;
mod error;
pub(crate) mod mlp;
pub(crate) mod nn;
mod safetensors_header;
#[cfg(test)]
mod test_io;
pub(crate) mod torch_file;
pub(crate) mod weights;

pub use denoiser::{Denoiser, Net, NetError};
pub use describe::{
    ConfigProblem, ModelDescription, Point, describe, dtx_checkpoint, dtx_run_folder,
};
pub use details::{base_parameters, details, details_of};
pub use error::{KeyLocation, ModelError, Origin};
pub use nn::hooks::{Hooks, NoHooks, Recorder};
pub use nn::layers::DropoutRng;
pub use nn::{Catalogue, Weights, WeightsError};
pub use safetensors_header::{TensorHeader, read_safetensors_header};
