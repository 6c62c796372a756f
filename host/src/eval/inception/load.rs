//! Reading the FID Inception weights: pytorch-fid's
//! `pt_inception-2015-12-05-6726825d.pth` (a `torch.save` of the state dict,
//! in either of its formats, read by `model::torch_file`) or a
//! `.safetensors` of the same keys, and what can go wrong doing so.

use super::InceptionV3;
use crate::model::torch_file::{is_torch_save, read_state_dict};
use crate::model::weights::{ReadTensor, WeightProblem, read_tensors};
use burn::tensor::backend::Backend;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// An error loading the FID Inception weights.
#[derive(Debug, thiserror::Error)]
pub enum InceptionError {
    /// The file is absent, unreadable, or in no format dtx reads.
    ///
    /// ## Resolution
    /// Point at pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (from
    /// its GitHub release `fid_weights`), or a `.safetensors` of its keys.
    /// Both formats of `torch.save` are read directly: the zip archive of
    /// torch ≥ 1.6 and the legacy format of older torch (as that 2019
    /// release file may be), so no conversion is needed. A `.pth` that
    /// fails anyway is cut short (compare its size with the release's) or
    /// not a checkpoint; the reason says which.
    #[error("{}: cannot read the Inception weights: {reason}", file.display())]
    Read {
        /// The weights file.
        file: PathBuf,
        /// The I/O or format error, naming the key where there is one.
        reason: String,
    },
    /// A named tensor whose values do not fill its shape.
    #[error(
        "Inception weight `{key}`: shape {shape:?} holds {} values, {len} given",
        shape.iter().product::<usize>()
    )]
    Length {
        /// The key.
        key: String,
        /// Its shape as given.
        shape: Vec<usize>,
        /// How many values came with it.
        len: usize,
    },
    /// The weights are not the FID Inception-v3's; every problem is listed.
    ///
    /// ## Resolution
    /// Use pytorch-fid's FID weights: torchvision's ImageNet Inception
    /// (`inception_v3_google-*.pth`) has other blocks (`AuxLogits`) and is
    /// not the network FID is defined with.
    #[error(
        "{}the weights are not pytorch-fid's FID Inception-v3 ({} problem{}):\n  {}",
        file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" },
        problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  ")
    )]
    Weights {
        /// The weights file; `None` for [`InceptionV3::from_named`].
        file: Option<PathBuf>,
        /// Every problem, in key order.
        problems: Vec<WeightProblem>,
    },
}

/// Keys of the checkpoint the feature extractor has no use for: the
/// classifier (`fc.weight` [1008, 2048], `fc.bias`) and batch norm's
/// `num_batches_tracked` counters (int64, written by torch ≥ 0.4.1).
pub(super) fn ignored(key: &str) -> bool {
    key.starts_with("fc.") || key.ends_with(".num_batches_tracked")
}

/// The needed tensors of `file`, by sniffing its first bytes: a
/// `torch.save` checkpoint in either format is read as one, anything else as
/// safetensors.
fn read(file: &Path) -> Result<BTreeMap<String, ReadTensor>, String> {
    if is_torch_save(file).map_err(|e| e.to_string())? {
        let tensors = read_state_dict(file).map_err(|e| e.to_string())?;
        return Ok(read_tensors(tensors, ignored));
    }
    let bytes = crate::util::fs::read(file).map_err(|e| e.to_string())?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("neither a torch.save checkpoint nor a safetensors file ({e})"))?;
    Ok(read_tensors(st.tensors(), ignored))
}

impl<B: Backend> InceptionV3<B> {
    /// Loads pytorch-fid's FID Inception weights
    /// (`pt_inception-2015-12-05-6726825d.pth`, torchvision key names such as
    /// `Conv2d_1a_3x3.conv.weight` and `Mixed_7c.branch_pool.bn.running_var`)
    /// from a `torch.save` checkpoint (`.pth`, the zip format of torch ≥ 1.6
    /// or the legacy format before it) or a `.safetensors` file; the format
    /// is recognised by content. F16, BF16 and F64 are converted to f32;
    /// `fc.*` and `num_batches_tracked` are skipped. Every other key must be one the network needs, with its
    /// shape; errors list every problem and name the file.
    pub fn load(path: &Path, device: &B::Device) -> Result<Self, InceptionError> {
        let tensors = read(path).map_err(|reason| InceptionError::Read {
            file: path.to_owned(),
            reason,
        })?;
        Self::from_stored(tensors, device).map_err(|problems| InceptionError::Weights {
            file: Some(path.to_owned()),
            problems,
        })
    }
}
