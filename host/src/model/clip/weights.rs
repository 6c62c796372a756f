//! Reading `model.safetensors` of a `CLIPModel` folder: the tensors the
//! towers ask for are taken out by key with their shape checked, and every
//! missing, unexpected, mis-shaped and unreadable key is collected, so one
//! error names them all (as `model::weights` does for the U-Nets, but onto
//! tensors of any backend instead of the host's parameter store).

use crate::model::ModelError;
use crate::model::weights::{TensorTaker, read_tensors};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use std::path::Path;

/// Keys a `CLIPModel` checkpoint may hold that the encoder does not read:
/// the `position_ids` buffers (int64; written by older transformers) and
/// `logit_scale`, the temperature of the contrastive loss, which no
/// embedding uses.
fn ignored(key: &str) -> bool {
    key == "logit_scale" || key.ends_with(".position_ids")
}

/// Takes the tensors the towers ask for out of the checkpoint, noting every
/// problem instead of stopping at the first; after a problem the towers get
/// placeholder tensors, never run, since [`Loader::finish`] then fails.
pub(super) struct Loader<'a, B: Backend> {
    taker: TensorTaker,
    device: &'a B::Device,
}

impl<'a, B: Backend> Loader<'a, B> {
    /// Reads `file` (safetensors; F32, F16, BF16 or F64 tensors).
    pub(super) fn open(file: &Path, device: &'a B::Device) -> Result<Self, ModelError> {
        let bytes = crate::util::fs::read(file).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ModelError::MissingFile {
                path: file.to_owned(),
                expected: "the CLIPModel weights, as `save_pretrained` writes them".into(),
            },
            _ => ModelError::Io {
                path: file.to_owned(),
                source,
            },
        })?;
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| ModelError::BadHeader {
                file: file.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            taker: TensorTaker::new(read_tensors(st.tensors(), ignored)),
            device,
        })
    }

    /// Tensor `key` of `shape`, or a placeholder of that shape (zeros) after
    /// noting why it does not fit.
    pub(super) fn tensor<const D: usize>(&mut self, key: &str, shape: [usize; D]) -> Tensor<B, D> {
        match self.taker.take(key, &shape) {
            Some(v) => Tensor::from_data(TensorData::new(v, shape), self.device),
            None => Tensor::zeros(shape, self.device),
        }
    }

    /// Every problem in key order, after noting the keys nobody asked for as
    /// unexpected; `Ok` when the checkpoint fits.
    pub(super) fn finish(self, file: &Path) -> Result<(), ModelError> {
        let problems = self.taker.finish();
        if problems.is_empty() {
            return Ok(());
        }
        Err(ModelError::Weights {
            file: file.to_owned(),
            problems,
        })
    }
}
