//! Reads the tensors of a PyTorch checkpoint written by
//! `torch.save(model.state_dict(), path)`, in either of its formats: the zip
//! archive of torch ≥ 1.6 (`archive.rs`) and the legacy format before it,
//! pickles and storages back to back (`legacy.rs`), told apart by their first
//! bytes.
//!
//! In both, the state dict is a pickle in which each tensor is the call
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`,
//! whose `storage` is a persistent id `('storage', torch.FloatStorage, key,
//! location, numel, ...)`. This module runs just the pickle opcodes that such
//! a file uses (no Python objects are created: a global is a name, an unknown
//! call is an opaque value), then gathers each tensor from its storage by
//! offset and strides, so views and shared storages read correctly. The
//! pickle machine is `pickle.rs`.
//!
//! Not read: big-endian zip archives, the tar format of torch's first
//! releases, and anything a state dict does not contain (arbitrary Python
//! classes become opaque values and are skipped when they are not tensors).

/// A [`TorchFileError::Malformed`] with a formatted reason.
macro_rules! bad {
    ($($arg:tt)*) => {
        $crate::model::torch_file::TorchFileError::Malformed(format!($($arg)*))
    };
}

mod archive;
mod legacy;
mod pickle;

/// Why a `torch.save` checkpoint cannot be read: a sentence naming the key
/// where there is one (the caller adds the file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TorchFileError {
    /// The file cannot be opened or read.
    #[error("{0}")]
    Io(String),
    /// It is in neither `torch.save` format.
    #[error("not a torch.save checkpoint: {0}")]
    NotTorchSave(UnknownFormat),
    /// Its archive, pickle or storages are broken, or use what the reader
    /// does not support.
    #[error("{0}")]
    Malformed(String),
}

/// Why a file's first bytes are in neither `torch.save` format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UnknownFormat {
    /// A tar archive (`ustar` at byte 257), the format of torch's first
    /// releases.
    #[error(
        "a tar archive, the format of torch's first releases, which dtx does not read; \
         re-save it with a newer torch"
    )]
    Tar,
    /// No bytes at all.
    #[error("the file is empty")]
    Empty,
    /// Neither a zip archive's nor a legacy pickle's first bytes.
    #[error(
        "it starts neither as a zip archive (`PK\\x03\\x04`, torch ≥ 1.6) nor with the \
         pickled magic number of torch's legacy format"
    )]
    Neither,
}

impl From<String> for TorchFileError {
    fn from(reason: String) -> Self {
        TorchFileError::Malformed(reason)
    }
}

impl From<&str> for TorchFileError {
    fn from(reason: &str) -> Self {
        TorchFileError::Malformed(reason.to_owned())
    }
}

use crate::model::weights::{StoredTensor, le_bytes_to_f32};
use pickle::{TensorRef, Value};
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
/// them, from either format [`is_torch_save`] recognises. A checkpoint that
/// wraps its state dict (`{"state_dict": …}` or `{"model": …}`) is
/// unwrapped. Errors are a sentence naming the key where there is one; the
/// caller adds the file.
pub(crate) fn read_state_dict(file: &Path) -> Result<Vec<(String, TorchTensor)>, TorchFileError> {
    let head = head(file)?;
    match format(&head) {
        Ok(Format::Zip) => archive::read(file),
        Ok(Format::Legacy) => legacy::read(file),
        Err(reason) => Err(TorchFileError::NotTorchSave(reason)),
    }
}

/// Whether `file` starts as a `torch.save` checkpoint in either format does.
pub(crate) fn is_torch_save(file: &Path) -> Result<bool, TorchFileError> {
    Ok(format(&head(file)?).is_ok())
}

/// The two formats of `torch.save`.
enum Format {
    /// torch ≥ 1.6: a zip archive.
    Zip,
    /// torch < 1.6: pickles, the first of the magic number, and storages.
    Legacy,
}

/// The first 512 bytes of `file` (a tar header's length), or all of a
/// shorter one.
fn head(file: &Path) -> Result<Vec<u8>, TorchFileError> {
    let mut head = Vec::with_capacity(512);
    crate::util::fs::open(file)
        .and_then(|f| f.take(512).read_to_end(&mut head))
        .map_err(|e| TorchFileError::Io(e.to_string()))?;
    Ok(head)
}

/// The format whose start `head` is, or why it is neither.
fn format(head: &[u8]) -> Result<Format, UnknownFormat> {
    if head.starts_with(b"PK\x03\x04") {
        return Ok(Format::Zip);
    }
    // LONG1 of the magic number, after PROTO (and FRAME, for protocol ≥ 4)
    let mut magic = vec![0x8a, 10];
    magic.extend_from_slice(&legacy::MAGIC_NUMBER.to_le_bytes()[..10]);
    let start = &head[..head.len().min(32)];
    if start.first() == Some(&0x80) && start.windows(magic.len()).any(|w| w == magic) {
        return Ok(Format::Legacy);
    }
    if head.get(257..262) == Some(b"ustar") {
        return Err(UnknownFormat::Tar);
    }
    if head.is_empty() {
        return Err(UnknownFormat::Empty);
    }
    Err(UnknownFormat::Neither)
}

/// The `(key, tensor)` items of the unpickled root: a dict of tensors, or a
/// dict holding one under `state_dict` or `model`. Non-tensor items (a
/// state dict has none, other dicts may) are skipped.
fn state_dict_entries(root: Value) -> Result<Vec<(String, TensorRef)>, TorchFileError> {
    let Value::Dict(items) = root else {
        return Err(bad!(
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
    fn gather(&self, storage: &[u8]) -> Result<TorchTensor, TorchFileError> {
        let size = element_size(self.dtype);
        if self.stride.len() != self.shape.len() {
            return Err(bad!(
                "size {:?} and stride {:?} differ in rank",
                self.shape,
                self.stride
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
                return Err(bad!(
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

    /// `tests/fixtures/adm/reader.pt` (zip) and `reader_legacy.pt` (legacy
    /// format) against `reader.safetensors`, all written by
    /// `make_fixtures.py` from one OrderedDict (see there): equal keys in
    /// file order, shapes, dtypes and values, bit for bit.
    #[test]
    fn reads_dtypes_views_and_shared_storages_like_safetensors() {
        let bytes = std::fs::read(fixture("reader.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let zip = read_state_dict(&fixture("reader.pt")).unwrap();
        let legacy = read_state_dict(&fixture("reader_legacy.pt")).unwrap();
        for (file, got) in [("reader.pt", &zip), ("reader_legacy.pt", &legacy)] {
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
                    "scalar",
                    "num_batches_tracked"
                ],
                "{file}: file order is kept"
            );
            for (key, t) in got {
                let want = st.tensor(key).unwrap();
                assert_eq!(t.shape, want.shape(), "{file} {key}");
                assert_eq!(t.dtype, StoredTensor::dtype(&want), "{file} {key}");
                assert_eq!(t.values, StoredTensor::to_f32(&want), "{file} {key}");
            }
            let (_, transposed) = &got[1];
            assert_eq!(transposed.shape, [3, 2], "{file}");
            assert_eq!(got[6].1.values, None, "{file}: ints are not converted");
            assert_eq!(got[8].1.shape, [0usize; 0], "{file}");
            assert_eq!(got[8].1.dtype, "I64", "{file}");
        }
        assert_eq!(zip, legacy);
    }

    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dtx-torch-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(name);
        std::fs::write(&file, bytes).unwrap();
        file
    }

    #[test]
    fn a_file_in_neither_format_says_so() {
        // bytes of a fixed xorshift, and the same behind a pickle's PROTO 2
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        noise[0] = b'N';
        let expected = "not a torch.save checkpoint: it starts neither as a zip archive \
                        (`PK\\x03\\x04`, torch ≥ 1.6) nor with the pickled magic number of \
                        torch's legacy format";
        for (name, head) in [("noise.pt", &b""[..]), ("pickle.pt", b"\x80\x02")] {
            noise[..head.len()].copy_from_slice(head);
            let file = temp_file(name, &noise);
            assert_eq!(read_state_dict(&file).unwrap_err().to_string(), expected);
            assert!(!is_torch_save(&file).unwrap());
        }
        let mut tar = vec![0u8; 1024];
        tar[257..263].copy_from_slice(b"ustar\0");
        let err = read_state_dict(&temp_file("tar.pt", &tar))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("not a torch.save checkpoint: a tar archive"),
            "{err}"
        );
        let err = read_state_dict(&temp_file("empty.pt", b""))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "not a torch.save checkpoint: the file is empty");
        let err = read_state_dict(&temp_file("zip.pt", b"PK\x03\x04 cut"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("not a torch.save checkpoint: a zip archive that cannot be read"),
            "{err}"
        );
    }

    #[test]
    fn a_truncated_legacy_file_names_what_is_cut() {
        let bytes = std::fs::read(fixture("reader_legacy.pt")).unwrap();
        assert!(is_torch_save(&fixture("reader_legacy.pt")).unwrap());
        let file = temp_file("cut.pt", &bytes[..bytes.len() - 3]);
        let err = read_state_dict(&file).unwrap_err().to_string();
        assert!(err.starts_with("the file is truncated: storage `"), "{err}");
        // inside the state dict's pickle
        let file = temp_file("cut-pickle.pt", &bytes[..600]);
        let err = read_state_dict(&file).unwrap_err().to_string();
        assert!(
            err.starts_with("legacy torch.save file, opcode")
                && err.ends_with("the pickle ends early"),
            "{err}"
        );
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
        let err = t.gather(&[0u8; 16]).unwrap_err().to_string();
        assert_eq!(
            err,
            "size [2, 2], stride [2, 1] and offset 2 reach element 5, past the end of its storage (4 elements)"
        );
    }
}
