//! Loads a diffusers `UNet2DModel`'s weights
//! (`diffusion_pytorch_model.safetensors`) into the host's
//! [`ParamStore`](crate::tensor_abi::ParamStore), as f32 (F16, BF16 and F64
//! tensors are converted), under their checkpoint keys. Every key the config
//! needs is checked against the file first (older checkpoints' attention
//! names `query`/`key`/`value`/`proj_attn` are read as
//! `to_q`/`to_k`/`to_v`/`to_out.0`); all missing keys, unexpected keys, shape
//! and dtype mismatches are reported together.

use super::{UNet2D, UNetError, WeightProblem};
use crate::model::diffusers::WEIGHTS_FILE;
use crate::tensor_abi::ParamStore;
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::BTreeMap;
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

/// IEEE half to single precision (exact: every f16 is an f32).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // subnormal: frac · 2^-24, renormalised
            let (mut e, mut f) = (127 - 15 + 1, frac);
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((f & 0x3ff) << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// The values of `view` as f32, or `None` for a dtype dtx does not convert.
fn to_f32(view: &TensorView<'_>) -> Option<Vec<f32>> {
    let d = view.data();
    Some(match view.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
            .collect(),
        Dtype::F64 => d
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        _ => return None,
    })
}

/// Reads the weights of `net` from the model folder `folder` (see
/// [`weights_file`]) and registers each as a base parameter of `store`, in
/// [`UNet2D::parameters`] order, `trainable(key)` deciding which train.
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
    let read = |reason: String| UNetError::Read {
        file: file.clone(),
        reason,
    };
    let bytes = std::fs::read(&file).map_err(|e| read(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| read(format!("not a safetensors file: {e}")))?;
    let expected = net.parameters();
    let mut found: BTreeMap<String, TensorView<'_>> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (current_name(&k), v))
        .collect();

    let mut problems = Vec::new();
    let mut values = Vec::with_capacity(expected.len());
    for (key, shape) in &expected {
        match found.remove(key) {
            None => problems.push(WeightProblem::Missing {
                key: key.clone(),
                expected: shape.clone(),
            }),
            Some(view) if view.shape() != shape.as_slice() => problems.push(WeightProblem::Shape {
                key: key.clone(),
                expected: shape.clone(),
                found: view.shape().to_vec(),
            }),
            Some(view) => match to_f32(&view) {
                Some(v) => values.push((key, shape, v)),
                None => problems.push(WeightProblem::Dtype {
                    key: key.clone(),
                    dtype: format!("{:?}", view.dtype()),
                }),
            },
        }
    }
    for (key, view) in found {
        problems.push(WeightProblem::Unexpected {
            key,
            found: view.shape().to_vec(),
        });
    }
    if !problems.is_empty() {
        problems.sort_by(|a, b| problem_key(a).cmp(problem_key(b)));
        return Err(UNetError::Weights { file, problems });
    }
    for (key, shape, v) in values {
        let prim = B::float_from_data(TensorData::new(v, shape.clone()), device);
        store
            .register_base(key, prim, trainable(key))
            .map_err(|e| UNetError::Store(format!("{e:?}")))?;
    }
    Ok(())
}

/// The current diffusers name of checkpoint key `key`: older checkpoints
/// (written with diffusers' deprecated `AttentionBlock`) name the attention
/// projections `query`, `key`, `value` and `proj_attn`; diffusers renames
/// them on load (`ModelMixin._convert_deprecated_attention_blocks`) to `to_q`,
/// `to_k`, `to_v` and `to_out.0`, with the same shapes. Other keys are kept.
fn current_name(key: &str) -> String {
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

fn problem_key(p: &WeightProblem) -> &str {
    match p {
        WeightProblem::Missing { key, .. }
        | WeightProblem::Unexpected { key, .. }
        | WeightProblem::Shape { key, .. }
        | WeightProblem::Dtype { key, .. } => key,
    }
}

#[cfg(test)]
mod tests {
    use super::{current_name, f16_to_f32};

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

    #[test]
    fn f16_conversion_covers_normal_subnormal_and_special_values() {
        // Bit patterns from IEEE 754 binary16 tables.
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x0200), 2f32.powi(-15));
        assert_eq!(f16_to_f32(0x8000), -0.0);
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
    }
}
