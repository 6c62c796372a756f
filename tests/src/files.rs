//! Writing and reading the safetensors files the `dtx model` and `dtx eval
//! --features` tests hand to the commands.

use std::collections::BTreeMap;
use std::path::Path;

/// The path of `tests/fixtures/<rel>`, as text (for command arguments).
pub fn fixture(rel: &str) -> String {
    crate::workspace_root()
        .join("tests/fixtures")
        .join(rel)
        .display()
        .to_string()
}

/// One tensor to write: name, dtype, shape, little-endian bytes.
pub type Entry<'a> = (&'a str, safetensors::Dtype, Vec<usize>, Vec<u8>);

/// Writes `tensors` to `file`.
///
/// # Panics
/// When a tensor's bytes do not fit its dtype and shape, or the file
/// cannot be written (a test failure).
pub fn write_safetensors(file: &Path, tensors: &[Entry<'_>]) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, dt, s, b)| {
            let v = safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap();
            ((*n).to_owned(), v)
        })
        .collect();
    std::fs::write(file, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// Little-endian bytes of f32 values.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Little-endian bytes of i64 values.
pub fn i64_bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Every tensor of a safetensors file of F32 tensors, by name.
///
/// # Panics
/// When the file is missing or not safetensors (a test failure).
pub fn f32_tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
    crate::runs::tensors(path)
        .1
        .into_iter()
        .map(|(k, b)| {
            let v = b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (k, v)
        })
        .collect()
}
