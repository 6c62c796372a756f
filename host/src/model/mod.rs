//! Denoisers, as far as they can be known without running them: [`describe`]
//! reads a model's config (a diffusers `config.json`, or the manifest's
//! `[source.config]`) and its checkpoint header, and returns a
//! [`ModelDescription`]: data shape, time-embedding width, every injection
//! point with its shape and checkpoint module, and every base parameter with
//! its shape. `dtx plan` prints it and plugins receive it as `ModelInfo`. One
//! file per kind (`diffusers`, `adm`, `mlp`), one reader for safetensors
//! headers. The forward passes and their weight loading: `unet` (diffusers),
//! `adm_net` (guided-diffusion), `mlp_net`, sharing `layers`; `weights`
//! fits a checkpoint to a network, `torch_file` reads `torch.save` archives.
//! `clip` is a CLIP image and text encoder (transformers `CLIPModel`
//! folders), for conditioning and guidance rather than denoising.
//! The user guide is `docs/models.md`.

pub mod adm;
pub mod adm_net;
pub mod clip;
mod config;
mod describe;
pub mod diffusers;
mod error;
pub(crate) mod layers;
pub mod mlp;
pub mod mlp_net;
pub mod net;
mod safetensors_header;
#[cfg(test)]
mod test_io;
pub(crate) mod torch_file;
pub mod unet;
pub mod weights;

pub use adm_net::{AdmNet, load_weights};
pub use describe::{
    ConfigProblem, ModelDescription, Point, describe, dtx_checkpoint, dtx_run_folder,
};
pub use error::{KeyLocation, ModelError, Origin};
pub use layers::DropoutRng;
pub use safetensors_header::{TensorHeader, read_safetensors_header};
