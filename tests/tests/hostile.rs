//! Hostile and unlucky inputs at run time, each with the message a user
//! sees (insta snapshots, paths made stable): run folders owned by one
//! process, `--resume` that refuses a changed manifest and keeps the first
//! part's record, `metrics.jsonl` after a kill, damaged plugin libraries,
//! a library replaced under a running process, and a divergence before the
//! first checkpoint. Bad manifests are in `tests/manifests/broken`
//! (`snapshots.rs`).

use dtx::plugins::load_library;
use dtx::tensor_abi::{CpuBackend, vtables};
use dtx_tests::runs::{self, dtx_run};
use dtx_tests::{plugin_path, workspace_root};
use std::path::{Path, PathBuf};

fn out_dir(name: &str) -> PathBuf {
    runs::out_dir("hostile", name)
}

/// Temporary folders and the workspace differ between machines.
fn stable(text: &str, out: &Path) -> String {
    text.replace(&out.display().to_string(), "[OUT]")
        .replace(&workspace_root().display().to_string(), "[ROOT]")
        .replace(std::env::consts::DLL_SUFFIX, ".[DLL]")
}

/// `metrics.jsonl` without the fields that measure time.
fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if let Some(o) = v.as_object_mut() {
                o.remove("samples_per_s");
            }
            v
        })
        .collect()
}

#[test]
fn a_locked_run_folder_refuses_a_second_run_and_touches_nothing() {
    let out = out_dir("lock");
    let folder = out.join("gmm-mlp");
    // Another process holds the folder (here: this one, through the same lock).
    let held = dtx::run::dir::lock(&folder).unwrap();
    let r = dtx_run("gmm-mlp.toml", &out, &["train.steps=2"], &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let pid = format!("pid {}", std::process::id());
    insta::assert_snapshot!(stable(&r.stderr, &out).replace(&pid, "pid [PID]"));
    let left: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [".lock"], "the refused run wrote into the folder");
    // Released (as when the holder exits, even by kill -9), the folder is free.
    drop(held);
    let r = dtx_run(
        "gmm-mlp.toml",
        &out,
        &["train.steps=2", "sample.count=4"],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn resume_refuses_a_changed_manifest_and_keeps_the_first_record() {
    let out = out_dir("resume");
    let dir = out.join("gmm-mlp");
    let first = ["train.steps=6", "sample.count=4"];
    let nothing = dtx_run("gmm-mlp.toml", &out, &first, &["--resume"]);
    assert_eq!(nothing.code, 1);
    insta::assert_snapshot!("resume_without_checkpoint", stable(&nothing.stderr, &out));
    assert!(!dir.exists(), "a refused resume created the run folder");
    let r = dtx_run("gmm-mlp.toml", &out, &first, &["--stop-after", "3"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let record = std::fs::read_to_string(dir.join("manifest.toml")).unwrap();
    let changed = dtx_run(
        "gmm-mlp.toml",
        &out,
        &[
            "train.steps=6",
            "sample.count=4",
            "train.lr=2e-3",
            "run.seed=7",
            "train.trainable=\"none\"",
        ],
        &["--resume"],
    );
    assert_eq!(changed.code, 1);
    insta::assert_snapshot!("resume_changed_manifest", stable(&changed.stderr, &out));
    assert_eq!(
        std::fs::read_to_string(dir.join("manifest.toml")).unwrap(),
        record
    );
    // Training longer and sampling more are allowed, and recorded apart.
    let longer = dtx_run(
        "gmm-mlp.toml",
        &out,
        &["train.steps=8", "sample.count=6"],
        &["--resume"],
    );
    assert_eq!(longer.code, 0, "{}", longer.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.join("manifest.toml")).unwrap(),
        record,
        "--resume rewrote the first part's manifest"
    );
    let resumed = std::fs::read_to_string(dir.join("manifest.resume-1.toml")).unwrap();
    assert!(resumed.contains("steps = 8"), "{resumed}");
}

#[test]
fn metrics_after_a_kill_and_resume_equal_an_uninterrupted_run() {
    let sets = [
        "train.steps=6",
        "train.checkpoint_every=2",
        "sample.count=4",
    ];
    let straight = out_dir("metrics-straight");
    assert_eq!(dtx_run("gmm-mlp.toml", &straight, &sets, &[]).code, 0);
    let split = out_dir("metrics-split");
    let r = dtx_run("gmm-mlp.toml", &split, &sets, &["--stop-after", "4"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // What a kill -9 after step 5 leaves: step 5's line (its checkpoint never
    // written) and half of step 6's.
    let dir = split.join("gmm-mlp");
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let last = text
        .lines()
        .last()
        .unwrap()
        .replace("\"step\":4", "\"step\":5");
    std::fs::write(&path, format!("{text}{last}\n{{\"grad_norm\":0.1,\"ste")).unwrap();
    let r = dtx_run("gmm-mlp.toml", &split, &sets, &["--resume"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(metrics(&dir), metrics(&straight.join("gmm-mlp")));
}

#[test]
fn a_divergence_before_the_first_checkpoint_says_nothing_is_kept() {
    let out = out_dir("diverge");
    let r = dtx_run(
        "two-plugins.toml",
        &out,
        &[
            "train.steps=8",
            "train.checkpoint_every=4",
            "plugin[1].config.nan_at_step=1",
        ],
        &[],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("training stopped at step 2: loss term `probe.fit` is NaN"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("no checkpoint was written yet (the first comes after 4 steps)"),
        "{}",
        r.stderr
    );
}

/// A copy of the test plugin in `dir`, then changed by `damage`.
fn damaged_copy(dir: &Path, name: &str, damage: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(plugin_path("dtx-test-plugin")).unwrap();
    damage(&mut bytes);
    let p = dir.join(format!("{name}{}", std::env::consts::DLL_SUFFIX));
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn damaged_plugin_libraries_are_errors_naming_the_file_never_signals() {
    let out = out_dir("damaged");
    std::fs::create_dir_all(&out).unwrap();
    let cases: Vec<(&str, PathBuf)> = vec![
        (
            "truncated",
            damaged_copy(&out, "truncated", |b| b.truncate(b.len() / 2)),
        ),
        ("empty", damaged_copy(&out, "empty", Vec::clear)),
        (
            "text",
            damaged_copy(&out, "text", |b| *b = b"not a library\n".repeat(40)),
        ),
        (
            "bad-magic",
            damaged_copy(&out, "bad-magic", |b| b[1] ^= 0xff),
        ),
        (
            "header-offsets",
            damaged_copy(&out, "header-offsets", |b| {
                // e_phoff (ELF64) pointed far past the end of the file
                b[32..40].copy_from_slice(&u64::MAX.to_le_bytes()[..]);
            }),
        ),
    ];
    let manifest = workspace_root().join("tests/manifests/ok/two-plugins.toml");
    let m = manifest.display().to_string();
    for (name, lib) in cases {
        let set = format!("plugin[1].library=\"{}\"", lib.display());
        // The real binary: a signal would show as no exit code at all.
        let r = dtx_tests::run_dtx(&["plan", &m, "--set", &set], &out);
        assert_eq!(r.code, 1, "{name}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{name}: {}", r.stderr);
        insta::assert_snapshot!(format!("damaged_plugin_{name}"), stable(&r.stderr, &out));
    }
}

#[test]
fn a_library_replaced_under_a_running_process_keeps_running_and_is_reported() {
    let out = out_dir("replaced");
    std::fs::create_dir_all(&out).unwrap();
    let lib = damaged_copy(&out, "replaced", |_| {});
    let loaded = load_library(&lib, None, vtables::<CpuBackend>()).unwrap();
    assert_eq!(loaded.changed_on_disk(), None);
    // Truncated in place: the process runs a private copy, so no SIGBUS.
    std::fs::write(&lib, b"gone").unwrap();
    let name = loaded.description.name.clone();
    assert_eq!(name, "test");
    let said = loaded.changed_on_disk().expect("the change is noticed");
    assert!(said.contains("changed on disk"), "{said}");
}

/// A finished run used as a `kind = "dtx"` source whose checkpoint no longer
/// fits the model its run trained: `dtx plan` lists every key from the
/// header (it used to pass the plan and fail at load).
#[test]
fn a_dtx_source_whose_checkpoint_does_not_fit_fails_the_plan() {
    let out = out_dir("dtx-source");
    let r = dtx_run(
        "gmm-mlp.toml",
        &out,
        &["train.steps=2", "sample.count=4"],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let run = out.join("gmm-mlp");
    let manifest = out.join("next.toml");
    std::fs::write(
        &manifest,
        format!(
            "[run]\nname = \"next\"\n[source]\nkind = \"dtx\"\npath = \"{}\"\n[target]\ndataset = \"builtin:gmm\"\n[train]\nsteps = 2\n",
            run.display()
        ),
    )
    .unwrap();
    let m = manifest.display().to_string();
    dtx_tests::run_in_process(&["plan", &m]).ok();
    // An EMA value (which the run would load) of the wrong shape: the plan
    // reads `ema/` tensors too (found by fuzzing).
    let ckpt = run.join("checkpoints/latest.safetensors");
    let bytes = std::fs::read(&ckpt).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut entries: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("ema/"))
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let (key, dtype, shape, data) = entries
        .iter()
        .find(|(n, ..)| n.starts_with("param/") && !n.starts_with("param/plugin."))
        .cloned()
        .unwrap();
    let numel = shape.iter().product::<usize>();
    let ema_key = key.replacen("param/", "ema/", 1);
    entries.push((ema_key, dtype, vec![numel, 1], data));
    let refs: Vec<dtx_tests::files::Entry<'_>> = entries
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
        .collect();
    dtx_tests::files::write_safetensors(&ckpt, &refs);
    let bad_ema = dtx_tests::run_in_process(&["plan", &m]);
    assert_eq!(bad_ema.code, 1, "{}", bad_ema.stderr);
    let plain = key.trim_start_matches("param/");
    assert!(
        bad_ema.stderr.contains(plain) && bad_ema.stderr.contains(&format!("found [{numel}, 1]")),
        "{}",
        bad_ema.stderr
    );
    dtx_tests::files::write_safetensors(
        &run.join("checkpoints/latest.safetensors"),
        &[(
            "param/foo",
            safetensors::Dtype::F32,
            vec![2],
            dtx_tests::files::f32_bytes(&[1.0, 2.0]),
        )],
    );
    let bad = dtx_tests::run_in_process(&["plan", &m]);
    assert_eq!(bad.code, 1, "{}", bad.stderr);
    for want in [
        "its base-model weights do not fit the run's model",
        "unexpected key `foo`",
        "missing key",
    ] {
        assert!(bad.stderr.contains(want), "{want}:\n{}", bad.stderr);
    }
}

/// Runs `args` in-process on a thread, failing the test (rather than
/// hanging it) when the command does not return within two minutes.
fn in_process_within_two_minutes(args: Vec<String>) -> dtx_tests::Output {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = tx.send(dtx_tests::run_in_process(&args));
    });
    rx.recv_timeout(std::time::Duration::from_secs(120))
        .expect("dtx hung on a FIFO instead of refusing it")
}

#[cfg(unix)]
#[test]
fn a_fifo_in_place_of_a_weights_file_is_refused_without_hanging() {
    let out = out_dir("fifo-weights");
    let model = out.join("model");
    std::fs::create_dir_all(&model).unwrap();
    let small = workspace_root().join("tests/fixtures/unet/small");
    std::fs::copy(small.join("config.json"), model.join("config.json")).unwrap();
    let weights = model.join("diffusion_pytorch_model.safetensors");
    let _ = std::fs::remove_file(&weights);
    let made = std::process::Command::new("mkfifo").arg(&weights).status();
    if !made.is_ok_and(|s| s.success()) {
        return; // no mkfifo on this machine
    }
    let inspect = in_process_within_two_minutes(vec![
        "model".into(),
        "inspect".into(),
        model.display().to_string(),
    ]);
    insta::assert_snapshot!("fifo_weights_inspect", stable(inspect.failed(), &out));
    let manifest = workspace_root().join("tests/manifests/ok/shapes-unet.toml");
    let plan = in_process_within_two_minutes(vec![
        "plan".into(),
        manifest.display().to_string(),
        "--set".into(),
        format!("source.path={:?}", model.display().to_string()),
        "--set".into(),
        "source.init=\"pretrained\"".into(),
    ]);
    let err = plan.failed();
    assert!(
        err.contains("diffusion_pytorch_model.safetensors")
            && err.contains("a FIFO (named pipe), not a regular file"),
        "{err}"
    );
}

#[test]
fn a_truncated_clip_folder_fails_the_plan() {
    let out = out_dir("clip-truncated");
    let clip = out.join("tiny-clip");
    std::fs::create_dir_all(&clip).unwrap();
    let fixture = workspace_root().join("tests/fixtures/clip/tiny-clip");
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, clip.join(p.file_name().unwrap())).unwrap();
    }
    let manifest = workspace_root().join("tests/manifests/ok/anl-clip-unet.toml");
    let m = manifest.display().to_string();
    let set = format!("condition.path={:?}", clip.display().to_string());
    dtx_tests::run_in_process(&["plan", &m, "--set", &set]).ok();
    // cut the weights file short (found by fuzzing: the plan passed, the run failed)
    let weights = clip.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..1000.min(bytes.len() / 2)]).unwrap();
    let bad = dtx_tests::run_in_process(&["plan", &m, "--set", &set]);
    let err = bad.failed();
    assert!(
        err.contains("condition.path") && err.contains("model.safetensors"),
        "{err}"
    );
}
