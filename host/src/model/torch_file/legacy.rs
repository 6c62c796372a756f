//! The legacy format of `torch.save` (torch < 1.6, and later with
//! `_use_new_zipfile_serialization=False`), as `_legacy_save` in torch's
//! `serialization.py` writes it: five pickles back to back,
//!
//! 1. the magic number `0x1950a86a20f9469cfc6c`,
//! 2. the format's protocol version, 1001,
//! 3. `sys_info` (`little_endian`, `type_sizes`; torch's reader ignores it,
//!    and so does dtx: storage bytes are little-endian whatever the machine),
//! 4. the state dict, whose storages are the persistent ids
//!    `('storage', torch.<Type>Storage, key, location, numel, view_metadata)`,
//! 5. the storage keys, sorted,
//!
//! then, for each key in that order, its element count as a little-endian
//! `i64` and its elements, little-endian.

use super::TorchFileError;
use super::pickle::{Unpickler, Value, storage_key};
use super::{TorchTensor, element_size, state_dict_entries};
use std::collections::HashMap;
use std::path::Path;

/// The first pickle of a legacy file.
pub(super) const MAGIC_NUMBER: i128 = 0x1950_a86a_20f9_469c_fc6c;

/// The second pickle, the only version torch has written.
const PROTOCOL_VERSION: i128 = 1001;

/// The tensors of the legacy-format checkpoint `file`, in file order.
pub(super) fn read(file: &Path) -> Result<Vec<(String, TorchTensor)>, TorchFileError> {
    let bytes = crate::util::fs::read(file).map_err(|e| e.to_string())?;
    read_bytes(&bytes)
}

/// [`read`] of the file's bytes.
fn read_bytes(bytes: &[u8]) -> Result<Vec<(String, TorchTensor)>, TorchFileError> {
    let mut pickles = Unpickler::new(bytes, "legacy torch.save file");
    match pickles.load()? {
        Value::Int(MAGIC_NUMBER) => {}
        v => {
            return Err(bad!(
                "not a torch.save checkpoint: the legacy format starts with the magic \
                 number 0x1950a86a20f9469cfc6c, this file with {}",
                v.describe()
            ));
        }
    }
    match pickles.load()? {
        Value::Int(PROTOCOL_VERSION) => {}
        Value::Int(v) => {
            return Err(bad!(
                "legacy torch.save protocol version {v}; dtx reads {PROTOCOL_VERSION}"
            ));
        }
        v => {
            return Err(bad!(
                "the legacy format's protocol version is {}, not an int",
                v.describe()
            ));
        }
    }
    pickles.load()?; // sys_info
    let entries = state_dict_entries(pickles.load()?)?;
    let keys = match pickles.load()? {
        Value::List(keys) => keys,
        v => {
            return Err(bad!(
                "the list of storage keys after the state dict is {}",
                v.describe()
            ));
        }
    };

    let dtypes = pickles.storage_dtypes();
    let mut at = pickles.position();
    let mut storages: HashMap<String, &[u8]> = HashMap::with_capacity(keys.len());
    for key in &keys {
        let key = storage_key(key)?;
        let dtype = *dtypes.get(&key).ok_or_else(|| {
            format!("the storage list names `{key}`, which the pickle never refers to")
        })?;
        let (data, end) = storage_data(bytes, at, &key, dtype)?;
        storages.insert(key, data);
        at = end;
    }

    entries
        .into_iter()
        .map(|(key, t)| {
            let storage = storages.get(&t.storage).ok_or_else(|| {
                format!(
                    "`{key}`: its storage `{}` is not in the file's storage list",
                    t.storage
                )
            })?;
            let tensor = t.gather(storage).map_err(|e| format!("`{key}`: {e}"))?;
            Ok((key, tensor))
        })
        .collect()
}

/// The elements of storage `key`, whose count starts at byte `at`, and the
/// byte past them.
fn storage_data<'a>(
    bytes: &'a [u8],
    at: usize,
    key: &str,
    dtype: &str,
) -> Result<(&'a [u8], usize), TorchFileError> {
    let truncated = |what: String| {
        format!(
            "the file is truncated: storage `{key}` needs {what}, but the file ends at byte {}",
            bytes.len()
        )
    };
    let count: [u8; 8] = at
        .checked_add(8)
        .and_then(|end| bytes.get(at..end))
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| truncated(format!("its element count at byte {at}")))?;
    let count = u64::from_le_bytes(count);
    let start = at + 8;
    let end = usize::try_from(count)
        .ok()
        .and_then(|n| n.checked_mul(element_size(dtype)))
        .and_then(|len| start.checked_add(len))
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| truncated(format!("{count} {dtype} elements from byte {start}")))?;
    Ok((&bytes[start..end], end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn reader_legacy() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/adm/reader_legacy.pt")
    }

    /// Every cut of the fixture (inside a pickle, in the key list, in an
    /// element count, in the data) is an error, never a panic; a cut in the
    /// data names the storage.
    #[test]
    fn a_truncated_file_is_an_error_at_every_length() {
        let bytes = std::fs::read(reader_legacy()).unwrap();
        for len in 0..bytes.len() {
            assert!(read_bytes(&bytes[..len]).is_err(), "cut at {len}");
        }
        let err = read_bytes(&bytes[..bytes.len() - 1])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("the file is truncated: storage `")
                && err.ends_with(&format!("the file ends at byte {}", bytes.len() - 1)),
            "{err}"
        );
        // in sys_info: its BINUNICODE 'short' spans bytes 95 to 104
        let err = read_bytes(&bytes[..100]).unwrap_err().to_string();
        assert_eq!(
            err,
            "legacy torch.save file, opcode 0x58 at byte 95: the pickle ends early"
        );
    }

    #[test]
    fn a_wrong_magic_number_or_version_says_so() {
        // the magic number's pickle with its last byte changed
        let err = read_bytes(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x18.")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("not a torch.save checkpoint: the legacy format"),
            "{err}"
        );
        let mut bytes = std::fs::read(reader_legacy()).unwrap();
        // the version's BININT2 at bytes 17..19: 1001 → 1002
        assert_eq!(bytes[17..20], [b'M', 0xe9, 0x03]);
        bytes[18] = 0xea;
        let err = read_bytes(&bytes).unwrap_err().to_string();
        assert_eq!(
            err,
            "legacy torch.save protocol version 1002; dtx reads 1001"
        );
    }

    #[test]
    fn a_storage_whose_type_dtx_does_not_read_is_named() {
        let bytes = std::fs::read(reader_legacy()).unwrap();
        let at = bytes
            .windows(12)
            .position(|w| w == b"HalfStorage\n")
            .unwrap();
        let mut bytes = bytes.clone();
        bytes[at..at + 4].copy_from_slice(b"Dumb");
        let err = read_bytes(&bytes).unwrap_err().to_string();
        assert!(
            err.ends_with("unsupported storage type torch.DumbStorage"),
            "{err}"
        );
    }
}
