//! Loads an ADM U-Net's weights into the host's
//! [`ParamStore`](crate::tensor_abi::ParamStore), as f32, under
//! guided-diffusion's `state_dict()` keys, from a `.safetensors` file or a
//! `torch.save` archive (`.pt`, `.pth`, `.ckpt`), through `model::weights`:
//! every key is checked first and all problems are reported together.

use super::AdmError;
use crate::model::torch_file::read_state_dict;
use crate::model::weights::{LoadFailure, load_safetensors_file, register_fitting};
use crate::tensor_abi::ParamStore;
use burn::tensor::backend::AutodiffBackend;
use std::collections::BTreeMap;
use std::path::Path;

/// Reads the checkpoint at `path` and registers each of `expected` (the
/// network's catalogue, [`AdmNet::catalogue`](super::AdmNet::catalogue))
/// as a base parameter of `store`, in that order, `trainable(key)` deciding
/// which train. The format follows the extension: `.safetensors`, or
/// `.pt` / `.pth` / `.ckpt` for `torch.save` archives.
///
/// Nothing is registered unless every key fits: the error lists every
/// missing key, unexpected key, shape mismatch and unsupported dtype, each
/// with the file, the key, and the expected and found shapes.
pub fn load_weights<B: AutodiffBackend>(
    path: &Path,
    store: &mut ParamStore<B>,
    device: &B::Device,
    trainable: &dyn Fn(&str) -> bool,
    expected: &[(String, Vec<usize>)],
) -> Result<(), AdmError> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let result = match ext {
        "safetensors" => {
            load_safetensors_file(path, &str::to_owned, expected, store, device, trainable)
        }
        "pt" | "pth" | "ckpt" => match read_state_dict(path) {
            Ok(tensors) => {
                let found: BTreeMap<_, _> = tensors.into_iter().collect();
                register_fitting(expected, found, store, device, trainable)
            }
            Err(reason) => Err(LoadFailure::Read(reason.to_string())),
        },
        _ => Err(LoadFailure::Read(
            "an ADM checkpoint ends in .pt (guided-diffusion's torch.save) or .safetensors".into(),
        )),
    };
    result.map_err(|failure| match failure {
        LoadFailure::Read(reason) => AdmError::Read {
            file: path.to_owned(),
            reason,
        },
        LoadFailure::Problems(problems) => AdmError::Weights {
            file: path.to_owned(),
            problems,
        },
        LoadFailure::Store(e) => AdmError::Store(e),
    })
}
