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

/// The latest checkpoint's tensors of a run made three ways: straight,
/// stopped after `stop` steps, and that stopped run resumed to the end.
pub struct Resumed {
    /// The uninterrupted run's.
    pub straight: BTreeMap<String, Vec<u8>>,
    /// The run stopped after `stop` steps.
    pub half: BTreeMap<String, Vec<u8>>,
    /// The stopped run, resumed.
    pub resumed: BTreeMap<String, Vec<u8>>,
}

/// Runs `tests/manifests/ok/<manifest>` (run name `run`) straight, and
/// again with `--stop-after stop` then `--resume`, each in a fresh folder
/// under `prefix`; panics with stderr when a run fails. The folders are
/// removed afterwards.
pub fn straight_and_resumed(prefix: &str, manifest: &str, run: &str, stop: u64) -> Resumed {
    let ok = |r: Output| assert_eq!(r.code, 0, "{}", r.stderr);
    let ckpt = |d: &Path| tensors(&d.join(run).join("checkpoints/latest.safetensors")).1;
    let straight = out_dir(prefix, "straight");
    ok(dtx_run(manifest, &straight, &[], &[]));
    let split = out_dir(prefix, "split");
    ok(dtx_run(
        manifest,
        &split,
        &[],
        &["--stop-after", &stop.to_string()],
    ));
    let half = ckpt(&split);
    ok(dtx_run(manifest, &split, &[], &["--resume"]));
    let out = Resumed {
        straight: ckpt(&straight),
        half,
        resumed: ckpt(&split),
    };
    let _ = std::fs::remove_dir_all(&straight);
    let _ = std::fs::remove_dir_all(&split);
    out
}
