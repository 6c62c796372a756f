//! A method written outside this repository (issue 21's "done when"):
//! `plugins/lora`'s source copied into a fresh crate `my-lora` in a
//! temporary folder, renamed `mylora`, depending on `dtx-plugin-api` by path
//! as docs/plugin-authoring.md ("Outside this repository") says, built with
//! plain `cargo build`, then planned, trained, stopped and resumed
//! bit-identically, and sampled by the unchanged `dtx` binary, which finds
//! it by the path the manifest gives.

use dtx_tests::outside::{built_library, cargo, share_workspace_build};
use dtx_tests::runs::{out_dir, straight_and_resumed};
use dtx_tests::{run_dtx, workspace_root};
use std::path::Path;

/// The crate's Cargo.toml as the docs give it.
fn cargo_toml(api: &Path) -> String {
    format!(
        r#"[package]
name = "my-lora"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
dtx-plugin-api = {{ path = "{}" }}
serde = {{ version = "1", features = ["derive"] }}
schemars = "1"
"#,
        api.display()
    )
}

fn manifest(lib: &Path, model: &Path) -> String {
    format!(
        r#"[run]
name = "mylora-unet"
seed = 5

[source]
kind = "diffusers"
path = "{}"
init = "random"

[target]
dataset = "builtin:shapes"
limit = 8
config = {{ preset = "target" }}

[train]
steps = 4
batch = 4
lr = 1e-2
trainable = "none"
timesteps = 100
checkpoint_every = 2

[[plugin]]
name = "mylora"
library = "{}"
config = {{ rank = 2, alpha = 4.0, lr_ratio = 4.0 }}

[sample]
sampler = "ddim"
steps = 2
count = 2
batch = 2
"#,
        model.display(),
        lib.display()
    )
}

#[test]
fn lora_written_outside_the_repository_builds_plans_trains_resumes_and_samples() {
    let root = workspace_root();
    let dir = out_dir("out-of-tree", "crate");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("Cargo.toml"), cargo_toml(&root.join("plugin-api"))).unwrap();
    let src = std::fs::read_to_string(root.join("plugins/lora/src/lib.rs")).unwrap();
    let renamed = src.replace(
        r#"const NAME: &'static str = "lora";"#,
        r#"const NAME: &'static str = "mylora";"#,
    );
    assert_ne!(src, renamed, "plugins/lora names itself `lora`");
    std::fs::write(dir.join("src/lib.rs"), renamed).unwrap();
    share_workspace_build(&dir);
    cargo(&dir, &["build"]);
    let lib = built_library("my-lora");

    // the plugin as dtx sees it, from its file
    let out = run_dtx(&["plugins", "inspect", lib.to_str().unwrap()], &dir);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("mylora "), "{}", out.stdout);
    assert!(out.stdout.contains("hooks: weights"), "{}", out.stdout);

    let model = root.join("tests/fixtures/models/tiny-diffusers");
    let m = dir.join("mylora.toml");
    std::fs::write(&m, manifest(&lib, &model)).unwrap();
    let plan = run_dtx(&["plan", m.to_str().unwrap()], &dir);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    assert!(plan.stdout.contains("mylora"), "{}", plan.stdout);

    // trained straight, and stopped after 2 steps then resumed: the same
    // tensors, moments included, and the factors moved
    let r = straight_and_resumed("out-of-tree", m.to_str().unwrap(), "mylora-unet", 2);
    assert_eq!(r.straight, r.resumed);
    let factors = |t: &std::collections::BTreeMap<String, Vec<u8>>| {
        t.iter()
            .filter(|(k, _)| k.starts_with("param/plugin.mylora."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    assert!(!factors(&r.straight).is_empty());
    assert_ne!(factors(&r.straight), factors(&r.half));

    // sampled by the binary from a run it trained
    let runs = out_dir("out-of-tree", "runs");
    let set = format!("run.output_dir=\"{}\"", runs.display());
    let run = run_dtx(
        &["run", m.to_str().unwrap(), "--quiet", "--set", &set],
        &dir,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run_dir = runs.join("mylora-unet");
    let samples = dir.join("samples");
    let sample = run_dtx(
        &[
            "sample",
            run_dir.to_str().unwrap(),
            "--count",
            "2",
            "--out",
            samples.to_str().unwrap(),
        ],
        &dir,
    );
    assert_eq!(sample.code, 0, "{}", sample.stderr);
    // each accepted sample as samples/00000.png …
    let pngs = std::fs::read_dir(samples.join("samples"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "png"))
        })
        .count();
    assert_eq!(pngs, 2, "{}", sample.stdout);
    let _ = std::fs::remove_dir_all(&runs);
    let _ = std::fs::remove_dir_all(&dir);
}
