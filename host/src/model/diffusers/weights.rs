//! Loads a diffusers `UNet2DModel`'s weights
//! (`diffusion_pytorch_model.safetensors`) into the host's
//! [`ParamStore`](crate::tensor_abi::ParamStore), as f32, under their
//! checkpoint keys, through `model::weights` (every key checked first, all
//! problems reported together). Older checkpoints' attention names
//! `query`/`key`/`value`/`proj_attn` are read as
//! `to_q`/`to_k`/`to_v`/`to_out.0`.

use super::WEIGHTS_FILE;
use super::{UNet2D, UNetError};
use crate::model::weights::{LoadFailure, load_safetensors_file};
use crate::tensor_abi::ParamStore;
use burn::tensor::backend::AutodiffBackend;
use std::path::{Path, PathBuf};

/// The weights file of the model in `folder`: `folder/WEIGHTS_FILE`, or
/// `folder/unet/WEIGHTS_FILE` for a pipeline folder without its own (as
/// `model::diffusers` finds `config.json`).
pub fn weights_file(folder: &Path) -> PathBuf {
    let direct = folder.join(WEIGHTS_FILE);
    let in_pipeline = folder.join("unet").join(WEIGHTS_FILE);
    if !direct.exists() && in_pipeline.exists() {
        in_pipeline
    } else {
        direct
    }
}

/// Reads the weights of `net` from the model folder `folder` (see
/// [`weights_file`]) and registers each as a base parameter of `store`, in
/// the order of its catalogue, `trainable(key)` deciding which train.
///
/// Nothing is registered unless every key fits: the error lists every
/// missing key, unexpected key, shape mismatch and unsupported dtype, each
/// with the file, the key, and the expected and found shapes.
pub fn load_safetensors<B: AutodiffBackend>(
    net: &UNet2D,
    folder: &Path,
    store: &mut ParamStore<B>,
    device: &B::Device,
    trainable: &dyn Fn(&str) -> bool,
) -> Result<(), UNetError> {
    let file = weights_file(folder);
    load_safetensors_file(
        &file,
        &current_name,
        net.catalogue().entries(),
        store,
        device,
        trainable,
    )
    .map_err(|failure| match failure {
        LoadFailure::Read(reason) => UNetError::Read { file, reason },
        LoadFailure::Problems(problems) => UNetError::Weights { file, problems },
        LoadFailure::Store(e) => UNetError::Store(e),
    })
}

/// The current diffusers name of checkpoint key `key`: older checkpoints
/// (written with diffusers' deprecated `AttentionBlock`) name the attention
/// projections `query`, `key`, `value` and `proj_attn`; diffusers renames
/// them on load (`ModelMixin._convert_deprecated_attention_blocks`) to `to_q`,
/// `to_k`, `to_v` and `to_out.0`, with the same shapes. Other keys are kept.
pub(crate) fn current_name(key: &str) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    let n = parts.len();
    if n >= 4 && parts[n - 4] == "attentions" {
        let new = match parts[n - 2] {
            "query" => "to_q",
            "key" => "to_k",
            "value" => "to_v",
            "proj_attn" => "to_out.0",
            _ => return key.to_owned(),
        };
        return format!("{}.{new}.{}", parts[..n - 2].join("."), parts[n - 1]);
    }
    key.to_owned()
}

#[cfg(test)]
mod tests {
    use super::current_name;

    #[test]
    fn deprecated_attention_names_are_renamed() {
        assert_eq!(
            current_name("mid_block.attentions.0.proj_attn.weight"),
            "mid_block.attentions.0.to_out.0.weight"
        );
        assert_eq!(
            current_name("down_blocks.1.attentions.0.query.bias"),
            "down_blocks.1.attentions.0.to_q.bias"
        );
        assert_eq!(
            current_name("down_blocks.1.attentions.0.group_norm.weight"),
            "down_blocks.1.attentions.0.group_norm.weight"
        );
        assert_eq!(
            current_name("down_blocks.1.resnets.0.conv1.weight"),
            "down_blocks.1.resnets.0.conv1.weight"
        );
    }
}
