//! Helpers for tests that run `dtx run` on the manifests in
//! `tests/manifests/ok` and read what the run folder holds.

use crate::{Output, run_in_process, workspace_root};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A fresh temporary folder `dtx-<prefix>-<name>-<pid>` (removed first).
pub fn out_dir(prefix: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dtx-{prefix}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The path of `tests/manifests/ok/<name>`, as text.
pub fn ok_manifest(name: &str) -> String {
    workspace_root()
        .join("tests/manifests/ok")
        .join(name)
        .display()
        .to_string()
}

/// `dtx run tests/manifests/ok/<manifest> --quiet` into `out`, each of `sets`
/// as a `--set`, then `extra` arguments, in process.
pub fn dtx_run(manifest_name: &str, out: &Path, sets: &[&str], extra: &[&str]) -> Output {
    let mut args = vec![
        "run".to_string(),
        ok_manifest(manifest_name),
        "--quiet".into(),
        "--set".into(),
        format!("run.output_dir=\"{}\"", out.display()),
    ];
    for s in sets {
        args.extend(["--set".to_string(), s.to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run_in_process(&refs)
}

/// A safetensors file's metadata and tensors (name → raw bytes), read
/// without the safetensors crate so byte-for-byte comparisons see the file.
///
/// # Panics
/// When the file is missing or not safetensors (a test failure).
pub fn tensors(path: &Path) -> (serde_json::Value, BTreeMap<String, Vec<u8>>) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = BTreeMap::new();
    let mut meta = serde_json::Value::Null;
    for (k, v) in header {
        if k == "__metadata__" {
            meta = v;
            continue;
        }
        let off = v["data_offsets"].as_array().unwrap();
        let (s, e) = (
            off[0].as_u64().unwrap() as usize,
            off[1].as_u64().unwrap() as usize,
        );
        out.insert(k, data[s..e].to_vec());
    }
    (meta, out)
}
