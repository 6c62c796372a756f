//! Reading `model.safetensors` of a `CLIPModel` folder: the tensors the
//! towers ask for are taken out by key with their shape checked, and every
//! missing, unexpected, mis-shaped and unreadable key is collected, so one
//! error names them all (as `model::weights` does for the U-Nets, but onto
//! tensors of any backend instead of the host's parameter store).

use crate::model::ModelError;
use crate::model::weights::{StoredTensor, WeightProblem};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use std::collections::BTreeMap;
use std::path::Path;

/// Keys a `CLIPModel` checkpoint may hold that the encoder does not read:
/// the `position_ids` buffers (int64; written by older transformers) and
/// `logit_scale`, the temperature of the contrastive loss, which no
/// embedding uses.
fn ignored(key: &str) -> bool {
    key == "logit_scale" || key.ends_with(".position_ids")
}

/// A checkpoint tensor as read: its shape, and its values as f32 or the
/// dtype it is stored in when dtx does not convert that dtype.
struct Stored {
    shape: Vec<usize>,
    values: Result<Vec<f32>, String>,
}

/// Takes the tensors the towers ask for out of the checkpoint, noting every
/// problem instead of stopping at the first; after a problem the towers get
/// placeholder tensors, never run, since [`Loader::finish`] then fails.
pub(super) struct Loader<'a, B: Backend> {
    found: BTreeMap<String, Stored>,
    problems: Vec<WeightProblem>,
    device: &'a B::Device,
}

impl<'a, B: Backend> Loader<'a, B> {
    /// Reads `file` (safetensors; F32, F16, BF16 or F64 tensors).
    pub(super) fn open(file: &Path, device: &'a B::Device) -> Result<Self, ModelError> {
        let bytes = std::fs::read(file).map_err(|source| match source.kind() {
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
        let found = st
            .tensors()
            .into_iter()
            .filter(|(key, _)| !ignored(key))
            .map(|(key, t)| {
                let values = t.to_f32().ok_or_else(|| StoredTensor::dtype(&t));
                let shape = StoredTensor::shape(&t);
                (key, Stored { shape, values })
            })
            .collect();
        Ok(Self {
            found,
            problems: Vec::new(),
            device,
        })
    }

    /// Tensor `key` of `shape`, or a placeholder of that shape (zeros) after
    /// noting why it does not fit.
    pub(super) fn tensor<const D: usize>(&mut self, key: &str, shape: [usize; D]) -> Tensor<B, D> {
        let problem = match self.found.remove(key) {
            None => WeightProblem::Missing {
                key: key.to_owned(),
                expected: shape.to_vec(),
            },
            Some(t) if t.shape != shape => WeightProblem::Shape {
                key: key.to_owned(),
                expected: shape.to_vec(),
                found: t.shape,
            },
            Some(Stored {
                values: Err(dtype), ..
            }) => WeightProblem::Dtype {
                key: key.to_owned(),
                dtype,
            },
            Some(Stored { values: Ok(v), .. }) => {
                return Tensor::from_data(TensorData::new(v, shape), self.device);
            }
        };
        self.problems.push(problem);
        Tensor::zeros(shape, self.device)
    }

    /// Every problem in key order, after noting the keys nobody asked for as
    /// unexpected; `Ok` when the checkpoint fits.
    pub(super) fn finish(self, file: &Path) -> Result<(), ModelError> {
        let Loader {
            found,
            mut problems,
            ..
        } = self;
        problems.extend(found.into_iter().map(|(key, t)| WeightProblem::Unexpected {
            key,
            found: t.shape,
        }));
        if problems.is_empty() {
            return Ok(());
        }
        problems.sort_by(|a, b| a.key().cmp(b.key()));
        Err(ModelError::Weights {
            file: file.to_owned(),
            problems,
        })
    }
}
