//! Checkpoints of a run with a frozen base from a weights file hold only
//! what trains (issue 22 item 4): a LoRA run on a copy of the shipped source
//! model writes a checkpoint under a tenth of the base's size that names
//! the base by path and SHA-256, resumes bit-identically, samples, inspects
//! and exports from it, and refuses to continue on a base whose bytes
//! changed.

use dtx_tests::run_in_process;
use dtx_tests::runs::{dtx_run, out_dir, tensors};
use dtx_tests::workspace_root;
use std::path::Path;

/// `lora-unet.toml` on the folder `model` (pretrained weights, not a
/// random init), LoRA on the attention projections (the usual setting),
/// into `out`, with `extra` arguments.
fn lora_on(model: &Path, out: &Path, extra: &[&str]) -> dtx_tests::Output {
    let path = format!("source.path=\"{}\"", model.display());
    let targets = r#"plugin[0].config.targets=["*.to_q.weight", "*.to_k.weight", "*.to_v.weight", "*.to_out.0.weight"]"#;
    dtx_run(
        "lora-unet.toml",
        out,
        &[&path, "source.init=\"pretrained\"", targets],
        extra,
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn a_lora_checkpoint_holds_what_trains_and_refers_to_its_base() {
    let root = out_dir("small-ckpt", "lora");
    let model = root.join("source");
    copy_dir(
        &workspace_root().join("manifests/models/shapes-source"),
        &model,
    );
    let weights = model.join("diffusion_pytorch_model.safetensors");

    let straight = root.join("straight");
    let r = lora_on(&model, &straight, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let run = straight.join("lora-unet");
    let ckpt = run.join("checkpoints/latest.safetensors");
    let (meta, t) = tensors(&ckpt);
    // no frozen base tensor in it; the factors, their moments and the base's
    // identity are
    assert!(
        t.keys()
            .all(|k| !k.starts_with("param/") || k.starts_with("param/plugin.")),
        "{:?}",
        t.keys().collect::<Vec<_>>()
    );
    assert!(t.keys().any(|k| k.starts_with("adam_m/plugin.lora.")));
    let base: serde_json::Value = serde_json::from_str(meta["base"].as_str().unwrap()).unwrap();
    assert_eq!(
        base["sha256"].as_str().unwrap(),
        dtx::train::base_ref::sha256_of(&weights).unwrap()
    );
    assert_eq!(base["frozen_tensors"], 144);
    let (small, full) = (
        std::fs::metadata(&ckpt).unwrap().len(),
        std::fs::metadata(&weights).unwrap().len(),
    );
    assert!(small * 10 < full, "{small} bytes against the base's {full}");

    // stopped and resumed: the same bytes as the uninterrupted run
    let split = root.join("split");
    let r = lora_on(&model, &split, &["--stop-after", "2"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = lora_on(&model, &split, &["--resume"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let resumed = split.join("lora-unet/checkpoints/latest.safetensors");
    assert_eq!(tensors(&resumed).1, t);

    // sampled, inspected and exported from the small checkpoint
    let again = root.join("again");
    let s = run_in_process(&[
        "sample",
        run.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    assert_eq!(s.code, 0, "{}", s.stderr);
    let ran = std::fs::read(run.join("samples/00000.png")).unwrap();
    assert_eq!(ran, std::fs::read(again.join("samples/00000.png")).unwrap());
    let i = run_in_process(&["model", "inspect", run.to_str().unwrap()]);
    assert_eq!(i.code, 0, "{}", i.stderr);
    assert!(i.stdout.contains("plugin.lora."), "{}", i.stdout);
    let merged = root.join("merged");
    let e = run_in_process(&[
        "export",
        run.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert_eq!(e.code, 0, "{}", e.stderr);

    // a base whose bytes changed: the run stopped at step 2 will not go on
    let stopped = root.join("stopped");
    let r = lora_on(&model, &stopped, &["--stop-after", "2"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01; // the lowest bit of the last value
    std::fs::write(&weights, bytes).unwrap();
    let r = lora_on(&model, &stopped, &["--resume"]);
    let msg = r.failed();
    assert!(
        msg.contains("the base changed") && msg.contains("diffusion_pytorch_model.safetensors"),
        "{msg}"
    );
    // and the finished run's checkpoint cannot be read on it either
    let i = run_in_process(&["model", "inspect", run.to_str().unwrap()]);
    assert!(
        i.failed().contains("changed since it was trained"),
        "{}",
        i.stderr
    );
    let _ = std::fs::remove_dir_all(&root);
}
