//! Reads the header of a `.safetensors` file: tensor names, dtypes, shapes and
//! byte ranges, without touching the tensor data.
//!
//! Format (<https://github.com/huggingface/safetensors>): an 8-byte
//! little-endian `u64` N, then N bytes of JSON mapping each tensor name to
//! `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets relative to the
//! end of the header), plus an optional `"__metadata__"` object of strings.

use super::ModelError;
use serde_json::Value;
use std::io::Read;
use std::path::Path;

/// Headers larger than this are refused as corrupt (the format's own limit).
const MAX_HEADER: u64 = 100 * 1024 * 1024;

/// One tensor entry of a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorHeader {
    /// The checkpoint key (`down_blocks.0.resnets.0.conv1.weight`).
    pub name: String,
    /// Element type as written (`F32`, `F16`, `BF16`, …).
    pub dtype: String,
    /// Shape, as stored (PyTorch order: `[out, in, kh, kw]` for a conv).
    pub shape: Vec<usize>,
    /// Byte range `[begin, end)` of the data, after the header.
    pub data_offsets: (u64, u64),
}

/// Every dtype the safetensors format defines (the crate refuses others).
const DTYPES: &[&str] = &[
    "BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16",
    "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64",
];

/// Bytes per element of a safetensors dtype, when known.
fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

/// Reads the header of `file`: every tensor, in the order of its data in the
/// file. Checks that byte ranges fit the file and match shape × dtype.
pub fn read_safetensors_header(file: &Path) -> Result<Vec<TensorHeader>, ModelError> {
    let bad = |reason: String| ModelError::BadHeader {
        file: file.to_owned(),
        reason,
    };
    let mut f = crate::util::fs::open(file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ModelError::MissingFile {
            path: file.to_owned(),
            expected: "a .safetensors checkpoint".into(),
        },
        _ => ModelError::Io {
            path: file.to_owned(),
            source: e,
        },
    })?;
    let file_len = f.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| {
        bad(format!(
            "the file has {file_len} bytes, fewer than the 8-byte length prefix"
        ))
    })?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER || n > file_len.saturating_sub(8) {
        return Err(bad(format!(
            "header length {n} does not fit the file ({file_len} bytes)"
        )));
    }
    let mut json = vec![0u8; n as usize];
    f.read_exact(&mut json).map_err(|e| bad(e.to_string()))?;
    let header: serde_json::Map<String, Value> =
        serde_json::from_slice(&json).map_err(|e| bad(format!("not a JSON object: {e}")))?;
    let data_len = file_len - 8 - n;

    let mut tensors = Vec::with_capacity(header.len());
    for (name, entry) in header {
        if name == "__metadata__" {
            // safetensors reads it as a map of strings, and refuses the file
            // otherwise
            let strings = entry
                .as_object()
                .is_some_and(|m| m.values().all(Value::is_string));
            if !strings {
                return Err(bad("`__metadata__` must map names to strings".into()));
            }
            continue;
        }
        let (dtype, shape, offsets) = (
            entry.get("dtype").and_then(Value::as_str),
            entry.get("shape").and_then(Value::as_array),
            entry.get("data_offsets").and_then(Value::as_array),
        );
        let (Some(dtype), Some(shape), Some([begin, end])) =
            (dtype, shape, offsets.map(Vec::as_slice))
        else {
            return Err(bad(format!(
                "entry `{name}` needs `dtype`, `shape` and two `data_offsets`"
            )));
        };
        let shape: Option<Vec<usize>> = shape
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect();
        let (Some(shape), Some(begin), Some(end)) = (shape, begin.as_u64(), end.as_u64()) else {
            return Err(bad(format!(
                "entry `{name}` has a non-integer shape or offset"
            )));
        };
        if begin > end || end > data_len {
            return Err(bad(format!(
                "entry `{name}` spans bytes {begin}..{end} but the data has {data_len} bytes"
            )));
        }
        if !DTYPES.contains(&dtype) {
            return Err(bad(format!(
                "entry `{name}` has dtype `{dtype}`, which is not a safetensors dtype"
            )));
        }
        if let Some(size) = dtype_size(dtype) {
            let want = shape
                .iter()
                .try_fold(size, |acc, &d| acc.checked_mul(d as u64))
                .unwrap_or(u64::MAX);
            if end - begin != want {
                return Err(bad(format!(
                    "entry `{name}` ({dtype} {shape:?}) needs {want} bytes but spans {}",
                    end - begin
                )));
            }
        }
        tensors.push(TensorHeader {
            name,
            dtype: dtype.to_owned(),
            shape,
            data_offsets: (begin, end),
        });
    }
    tensors.sort_by(|a, b| {
        a.data_offsets
            .cmp(&b.data_offsets)
            .then(a.name.cmp(&b.name))
    });
    check_coverage(&tensors, data_len).map_err(|e| bad(e.to_string()))?;
    Ok(tensors)
}

/// Why the tensors' data does not tile the bytes after the header, as the
/// safetensors crate requires.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum CoverageError {
    /// A tensor does not start where the one before it (in offset order)
    /// ends: a gap or an overlap.
    #[error(
        "entry `{name}` starts at data byte {start}, but the tensor before it ends at \
         {previous_end}; tensors must follow each other without gaps or overlaps"
    )]
    NotContiguous {
        /// The tensor's name.
        name: String,
        /// Its first data byte.
        start: u64,
        /// The end of the tensor before it (0 for the first).
        previous_end: u64,
    },
    /// The tensors end before the data does.
    #[error("the tensors cover {covered} of the {data_len} data bytes after the header")]
    Uncovered {
        /// Bytes the tensors span.
        covered: u64,
        /// Bytes after the header.
        data_len: u64,
    },
}

/// As the safetensors crate reads a file (and so as a run will): the
/// tensors' data, in offset order, is contiguous and covers the `data_len`
/// bytes after the header.
fn check_coverage(tensors: &[TensorHeader], data_len: u64) -> Result<(), CoverageError> {
    let mut covered = 0;
    for t in tensors {
        if t.data_offsets.0 != covered {
            return Err(CoverageError::NotContiguous {
                name: t.name.clone(),
                start: t.data_offsets.0,
                previous_end: covered,
            });
        }
        covered = t.data_offsets.1;
    }
    if covered != data_len {
        return Err(CoverageError::Uncovered { covered, data_len });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a safetensors file by hand: the header JSON, then `data_len`
    /// zero bytes.
    pub(crate) fn write_safetensors(path: &Path, header: &str, data_len: usize) {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data_len, 0);
        std::fs::write(path, bytes).unwrap();
    }

    pub(crate) fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("dtx-model-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn reads_names_shapes_in_data_order() {
        let dir = temp_dir("header");
        let file = dir.join("w.safetensors");
        // `b` comes first in the data although it sorts after `a` by name.
        write_safetensors(
            &file,
            r#"{"__metadata__":{"format":"pt"},
               "a.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[8,32]},
               "b.bias":{"dtype":"F16","shape":[4],"data_offsets":[0,8]}}"#,
            32,
        );
        let got = read_safetensors_header(&file).unwrap();
        let names: Vec<(&str, &[usize])> = got
            .iter()
            .map(|t| (t.name.as_str(), t.shape.as_slice()))
            .collect();
        assert_eq!(names, [("b.bias", &[4][..]), ("a.weight", &[2, 3][..])]);
        assert_eq!(got[1].dtype, "F32");
        assert_eq!(got[1].data_offsets, (8, 32));
    }

    #[test]
    fn truncated_files_and_bad_entries_are_named() {
        let dir = temp_dir("header-bad");
        let file = dir.join("w.safetensors");
        write_safetensors(
            &file,
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            8,
        );
        let err = read_safetensors_header(&file).unwrap_err().to_string();
        assert!(err.contains("cannot read the safetensors header"), "{err}");
        assert!(
            err.contains("entry `a` spans bytes 0..16 but the data has 8 bytes"),
            "{err}"
        );

        write_safetensors(
            &file,
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#,
            16,
        );
        let err = read_safetensors_header(&file).unwrap_err().to_string();
        assert!(err.contains("needs 12 bytes but spans 16"), "{err}");

        std::fs::write(&file, [200u8, 0, 0, 0, 0, 0, 0, 0, b'{']).unwrap();
        let err = read_safetensors_header(&file).unwrap_err().to_string();
        assert!(
            err.contains("header length 200 does not fit the file (9 bytes)"),
            "{err}"
        );

        std::fs::write(&file, [1u8, 2]).unwrap();
        let err = read_safetensors_header(&file).unwrap_err().to_string();
        assert!(err.contains("fewer than the 8-byte length prefix"), "{err}");
    }

    /// What the safetensors crate refuses when a run loads the file, the
    /// header check refuses too, so that `dtx plan` does (found by fuzzing).
    #[test]
    fn gaps_overlaps_uncovered_data_and_bad_metadata_are_refused() {
        let dir = temp_dir("header-cover");
        let file = dir.join("w.safetensors");
        let cases = [
            // a gap between two tensors
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
                    "b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
                12,
                "entry `b` starts at data byte 8, but the tensor before it ends at 4",
            ),
            // two tensors on the same bytes
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
                    "b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                4,
                "starts at data byte 0, but the tensor before it ends at 4",
            ),
            // bytes after the last tensor
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                12,
                "the tensors cover 4 of the 12 data bytes after the header",
            ),
            // metadata that is not a map of strings
            (
                r#"{"__metadata__":{"format":1},
                    "a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                4,
                "`__metadata__` must map names to strings",
            ),
            // a dtype the format does not define
            (
                r#"{"a":{"dtype":"","shape":[1],"data_offsets":[0,4]}}"#,
                4,
                "entry `a` has dtype ``, which is not a safetensors dtype",
            ),
            // a shape whose byte count overflows
            (
                r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#,
                4,
                "needs 18446744073709551615 bytes but spans 4",
            ),
        ];
        for (header, data, want) in cases {
            write_safetensors(&file, header, data);
            let err = read_safetensors_header(&file).unwrap_err().to_string();
            assert!(err.contains(want), "{header}: {err}");
            let bytes = std::fs::read(&file).unwrap();
            let crate_says = safetensors::SafeTensors::deserialize(&bytes);
            assert!(crate_says.is_err(), "safetensors accepts {header}");
        }
    }
}
