//! Reads the tensors of a PyTorch checkpoint written by
//! `torch.save(model.state_dict(), path)` (torch ≥ 1.6, the zip format).
//!
//! The archive holds `<name>/data.pkl`, a pickle (protocol 2 by default) of
//! the state dict, and one `<name>/data/<key>` entry per storage, stored
//! uncompressed, little-endian. In the pickle each tensor is the call
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`,
//! whose `storage` is a persistent id `('storage', torch.FloatStorage, key,
//! location, numel)`. This module runs just the pickle opcodes that such a
//! file uses (no Python objects are created: a global is a name, an unknown
//! call is an opaque value), then gathers each tensor from its storage by
//! offset and strides, so views and shared storages read correctly. The
//! pickle machine is `pickle.rs`.
//!
//! Not read: the legacy pre-1.6 format, big-endian archives, and anything a
//! state dict does not contain (arbitrary Python classes become opaque
//! values and are skipped when they are not tensors).

mod pickle;

use crate::model::weights::{StoredTensor, le_bytes_to_f32};
use pickle::{TensorRef, Unpickler, Value};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// One tensor of a `torch.save` checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TorchTensor {
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its dtype, named as safetensors names them (`F32`, `I64`).
    pub dtype: &'static str,
    /// Its values in row-major order, for float dtypes.
    pub values: Option<Vec<f32>>,
}

impl StoredTensor for TorchTensor {
    fn shape(&self) -> Vec<usize> {
        self.shape.clone()
    }

    fn dtype(&self) -> String {
        self.dtype.to_owned()
    }

    fn to_f32(&self) -> Option<Vec<f32>> {
        self.values.clone()
    }
}

/// The tensors of the state dict in `file`, in the order the file holds
/// them. A checkpoint that wraps its state dict (`{"state_dict": …}` or
/// `{"model": …}`) is unwrapped. Errors are a sentence naming the key where
/// there is one; the caller adds the file.
pub(crate) fn read_state_dict(file: &Path) -> Result<Vec<(String, TorchTensor)>, String> {
    let f = std::fs::File::open(file).map_err(|e| e.to_string())?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(f)).map_err(|e| {
        format!(
            "not a torch.save zip archive ({e}); checkpoints in the legacy format of \
             torch < 1.6 must be re-saved with a newer torch, or converted to .safetensors"
        )
    })?;
    let pickle_name = zip
        .file_names()
        .find(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .map(str::to_owned)
        .ok_or("the archive has no data.pkl: not written by torch.save")?;
    let prefix = &pickle_name[..pickle_name.len() - "data.pkl".len()];
    let read_entry = |zip: &mut zip::ZipArchive<_>, name: &str| -> Result<Vec<u8>, String> {
        let mut entry = zip
            .by_name(name)
            .map_err(|e| format!("cannot read `{name}` in the archive: {e}"))?;
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read `{name}` in the archive: {e}"))?;
        Ok(bytes)
    };
    if let Ok(order) = read_entry(&mut zip, &format!("{prefix}byteorder")) {
        let order = String::from_utf8_lossy(&order);
        if order.trim() != "little" {
            return Err(format!(
                "the archive is `{}`-endian; dtx reads little-endian checkpoints",
                order.trim()
            ));
        }
    }
    let pickle = read_entry(&mut zip, &pickle_name)?;
    let root = Unpickler::new(&pickle).run()?;
    let entries = state_dict_entries(root)?;

    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut tensors = Vec::with_capacity(entries.len());
    for (key, t) in entries {
        if !storages.contains_key(&t.storage) {
            let bytes = read_entry(&mut zip, &format!("{prefix}data/{}", t.storage))
                .map_err(|e| format!("`{key}`: {e}"))?;
            storages.insert(t.storage.clone(), bytes);
        }
        let tensor = t
            .gather(&storages[&t.storage])
            .map_err(|e| format!("`{key}`: {e}"))?;
        tensors.push((key, tensor));
    }
    Ok(tensors)
}

/// The `(key, tensor)` items of the unpickled root: a dict of tensors, or a
/// dict holding one under `state_dict` or `model`. Non-tensor items (a
/// state dict has none, other dicts may) are skipped.
fn state_dict_entries(root: Value) -> Result<Vec<(String, TensorRef)>, String> {
    let Value::Dict(items) = root else {
        return Err(format!(
            "the pickle holds {}, not a state dict",
            root.describe()
        ));
    };
    let has_tensors = items.iter().any(|(_, v)| matches!(v, Value::Tensor(_)));
    if !has_tensors {
        for wrapper in ["state_dict", "model"] {
            if let Some((_, inner @ Value::Dict(_))) = items
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == wrapper))
            {
                return state_dict_entries(inner.clone());
            }
        }
    }
    Ok(items
        .into_iter()
        .filter_map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Tensor(t)) => Some((k, t)),
            _ => None,
        })
        .collect())
}
/// Bytes per element of a dtype.
fn element_size(dtype: &str) -> usize {
    match dtype {
        "F64" | "I64" => 8,
        "F32" | "I32" => 4,
        "F16" | "BF16" | "I16" => 2,
        _ => 1,
    }
}

impl TensorRef {
    /// The tensor's values, gathered from its storage's bytes.
    fn gather(&self, storage: &[u8]) -> Result<TorchTensor, String> {
        let size = element_size(self.dtype);
        if self.stride.len() != self.shape.len() {
            return Err(format!(
                "size {:?} and stride {:?} differ in rank",
                self.shape, self.stride
            ));
        }
        let too_large = || format!("size {:?} is too large", self.shape);
        let numel = self
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(too_large)?;
        let values = if !matches!(self.dtype, "F32" | "F16" | "BF16" | "F64") {
            None
        } else if numel == 0 {
            Some(Vec::new())
        } else {
            // the storage element of the last index, offset + Σ (n_d − 1) s_d
            let last = self
                .shape
                .iter()
                .zip(&self.stride)
                .try_fold(self.offset, |acc, (&n, &s)| {
                    (n - 1).checked_mul(s).and_then(|x| acc.checked_add(x))
                })
                .ok_or_else(too_large)?;
            if last >= storage.len() / size {
                return Err(format!(
                    "size {:?}, stride {:?} and offset {} reach element {last}, past the \
                     end of its storage ({} elements)",
                    self.shape,
                    self.stride,
                    self.offset,
                    storage.len() / size
                ));
            }
            let mut bytes = Vec::with_capacity(numel.saturating_mul(size).min(storage.len()));
            let mut index = vec![0usize; self.shape.len()];
            for _ in 0..numel {
                let at = self.offset
                    + index
                        .iter()
                        .zip(&self.stride)
                        .map(|(i, s)| i * s)
                        .sum::<usize>();
                bytes.extend_from_slice(&storage[at * size..(at + 1) * size]);
                // next row-major index
                for d in (0..index.len()).rev() {
                    index[d] += 1;
                    if index[d] < self.shape[d] {
                        break;
                    }
                    index[d] = 0;
                }
            }
            le_bytes_to_f32(self.dtype, &bytes)
        };
        Ok(TorchTensor {
            shape: self.shape.clone(),
            dtype: self.dtype,
            values,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/adm")
            .join(name)
    }

    /// `tests/fixtures/adm/reader.pt` against `reader.safetensors`, both
    /// written by `make_fixtures.py` from one dict (see there).
    #[test]
    fn reads_dtypes_views_and_shared_storages_like_safetensors() {
        let got = read_state_dict(&fixture("reader.pt")).unwrap();
        let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "f32",
                "f32_transposed",
                "f32_row",
                "f16",
                "bf16",
                "f64",
                "i64",
                "scalar"
            ],
            "file order is kept"
        );
        let bytes = std::fs::read(fixture("reader.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (key, t) in &got {
            let want = st.tensor(key).unwrap();
            assert_eq!(t.shape, want.shape(), "{key}");
            assert_eq!(t.dtype, StoredTensor::dtype(&want), "{key}");
            assert_eq!(t.values, StoredTensor::to_f32(&want), "{key}");
        }
        let (_, transposed) = &got[1];
        assert_eq!(transposed.shape, [3, 2]);
        assert_eq!(got[6].1.values, None, "ints are not converted");
    }

    #[test]
    fn a_file_that_is_not_a_zip_archive_says_so() {
        let dir = std::env::temp_dir().join(format!("dtx-torch-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("legacy.pt");
        std::fs::write(&file, b"\x80\x02\x8a\x0a").unwrap();
        let err = read_state_dict(&file).unwrap_err();
        assert!(err.starts_with("not a torch.save zip archive"), "{err}");
        assert!(err.contains("torch < 1.6"), "{err}");
    }

    #[test]
    fn a_view_past_its_storage_names_the_numbers() {
        let t = TensorRef {
            storage: "0".into(),
            dtype: "F32",
            offset: 2,
            shape: vec![2, 2],
            stride: vec![2, 1],
        };
        let err = t.gather(&[0u8; 16]).unwrap_err();
        assert_eq!(
            err,
            "size [2, 2], stride [2, 1] and offset 2 reach element 5, past the end of its storage (4 elements)"
        );
    }
}
