//! The real `dtx` binary: exit codes, no panics, plugin discovery.

use dtx_tests::{run_dtx, workspace_root};

#[test]
fn help_and_version_exit_zero() {
    let out = run_dtx(&["--help"], &workspace_root());
    assert_eq!(out.code, 0, "{}", out.stderr);
    for cmd in ["plan", "plugins", "list"] {
        assert!(out.stdout.contains(cmd), "{}", out.stdout);
    }
    let out = run_dtx(&["plugins", "inspect", "--help"], &workspace_root());
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains("config keys"), "{}", out.stdout);
}

#[test]
fn a_broken_manifest_exits_non_zero_with_one_clear_error() {
    let root = workspace_root();
    let out = run_dtx(
        &["plan", "tests/manifests/broken/sha256-mismatch.toml"],
        &root,
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("sha256"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    let out = run_dtx(&["plan", "no/such/manifest.toml"], &root);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("no/such/manifest.toml"),
        "{}",
        out.stderr
    );
    let out = run_dtx(&["plan"], &root);
    assert_eq!(out.code, 2, "usage error");
}

#[test]
fn plugins_list_finds_workspace_plugins_and_reports_refused_ones() {
    let out = run_dtx(&["plugins", "list"], &workspace_root());
    assert_eq!(out.code, 0, "{}", out.stderr);
    for name in ["example", "test", "block"] {
        assert!(
            out.stdout.lines().any(|l| l.starts_with(name)),
            "{name} missing:\n{}",
            out.stdout
        );
    }
    assert!(
        out.stdout.contains("(refused)") && out.stdout.contains("9.0.0"),
        "{}",
        out.stdout
    );
}

/// The lines after `head` up to the next blank line.
fn section<'a>(text: &'a str, head: &str) -> Vec<&'a str> {
    let at = text
        .find(head)
        .unwrap_or_else(|| panic!("no `{head}` in:\n{text}"));
    text[at..]
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect()
}

#[test]
fn plugins_inspect_with_a_model_lists_the_catalogue_model_inspect_lists() {
    let root = workspace_root();
    let model = root.join("manifests/models/shapes-source");
    let model = model.to_str().unwrap();
    let p = run_dtx(&["plugins", "inspect", "lora", "--model", model], &root);
    assert_eq!(p.code, 0, "{}", p.stderr);
    let m = run_dtx(&["model", "inspect", model, "--parameters"], &root);
    assert_eq!(m.code, 0, "{}", m.stderr);
    let from_plugins = section(&p.stdout, "as host.model_details() gives them");
    assert_eq!(from_plugins, section(&m.stdout, "base parameters (key"));
    // (an unconditional model: no class embedding)
    for role in ["conv", "linear", "norm", "bias"] {
        assert!(
            from_plugins
                .iter()
                .any(|l| l.split_whitespace().any(|w| w == role)),
            "no {role} parameter in:\n{}",
            p.stdout
        );
    }
    // a model that cannot be read is the error, alone
    let bad = run_dtx(
        &["plugins", "inspect", "lora", "--model", "no/such/model"],
        &root,
    );
    assert!(bad.failed().contains("no/such/model"), "{}", bad.stderr);
}

#[test]
fn plugins_inspect_shows_hooks_and_config_keys() {
    let out = run_dtx(&["plugins", "inspect", "example"], &workspace_root());
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("hooks: inject,loss"), "{}", out.stdout);
    assert!(
        out.stdout.contains("lambda") && out.stdout.contains("default 0.0"),
        "{}",
        out.stdout
    );
    let out = run_dtx(&["plugins", "inspect", "exampel"], &workspace_root());
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("did you mean `example`"),
        "{}",
        out.stderr
    );
}

#[test]
fn list_shows_registered_components() {
    let out = run_dtx(&["list"], &workspace_root());
    assert_eq!(out.code, 0);
    assert!(
        out.stdout.contains("schedule:") && out.stdout.contains("cosine"),
        "{}",
        out.stdout
    );
}

#[test]
fn set_overrides_reach_the_plan_and_the_plugin() {
    let root = workspace_root();
    let out = run_dtx(
        &[
            "plan",
            "manifests/example.toml",
            "--set",
            "train.steps=7",
            "--set",
            "plugin[0].config.bottleneck=0.5",
        ],
        &root,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("7 steps"), "{}", out.stdout);
    let out = run_dtx(
        &[
            "plan",
            "manifests/example.toml",
            "--set",
            "plugin[0].config.lambda=-2",
        ],
        &root,
    );
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("must be >= 0, got -2"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("--set"),
        "the note names the override: {}",
        out.stderr
    );
}

/// A stand-in for the PyTorch side of `dtx bench engine --compare`: a
/// shell script run as `PYTHON SCRIPT ARGS…` that records its arguments
/// and the script's first line, then prints `report` (or fails with
/// `error`).
fn fake_python(dir: &std::path::Path, report: &str, fail: bool) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("python");
    let body = if fail {
        "echo 'ModuleNotFoundError: No module named torch' >&2\nexit 1\n".to_owned()
    } else {
        format!("echo 'loading'\necho '{report}'\n")
    };
    let log = dir.join("args.txt");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nhead -n 1 \"$1\" >> '{}'\necho \"$@\" >> '{}'\n{body}",
            log.display(),
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// `--backend cuda` where CUDA cannot run (this build has no `cuda`
/// feature, or no driver or device: CI has neither) is a clear error and a
/// non-zero exit, not burn's panic inside its device channel.
#[test]
fn bench_engine_on_cuda_without_it_says_why() {
    let dir = std::env::temp_dir().join(format!("dtx-cuda-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = run_dtx(
        &["bench", "engine", "--backend", "cuda", "--iters", "1"],
        &dir,
    );
    if dtx::tensor_abi::HAS_CUDA && dtx::util::cuda::devices().is_ok() {
        return; // a machine with a GPU: nothing to refuse
    }
    assert_ne!(out.code, 0);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    let why = [
        "built without the CUDA backend",
        "no CUDA driver",
        "found no device",
        "CUDA error",
    ];
    assert!(why.iter().any(|w| out.stderr.contains(w)), "{}", out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `dtx bench engine --compare PYTHON`: two rounds, each dtx's own step
/// then the PyTorch script (the embedded `unet_bench.py`, given the same
/// U-Net, batch, steps and thread count), the medians and the ratios
/// dtx / PyTorch (the median of the rounds' own); a PyTorch side that fails, or that
/// builds another model, is a clear error.
#[test]
fn bench_engine_compare_interleaves_rounds_and_prints_ratios() {
    let dir = std::env::temp_dir().join(format!("dtx-compare-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tiny = [
        "bench",
        "engine",
        "--batch",
        "2",
        "--size",
        "8",
        "--channels",
        "32",
        "--layers",
        "1",
        "--warmup",
        "0",
        "--iters",
        "1",
    ];
    let alone = run_dtx(&[&tiny[..], &["--json"]].concat(), &dir);
    assert_eq!(alone.code, 0, "{}", alone.stderr);
    let own: serde_json::Value = serde_json::from_str(alone.stdout.trim()).unwrap();
    let (params, threads) = (
        own["parameters"].as_u64().unwrap(),
        own["threads"].as_u64().unwrap(),
    );
    let report = format!(
        r#"{{"parameters": {params}, "train_step_s": 0.5, "ddim_step_s": 0.25, "peak_rss_mib": 100.0, "threads": {threads}, "torch": "fake"}}"#
    );
    let python = fake_python(&dir, &report, false);
    let python_arg = python.display().to_string();
    let args = [
        &tiny[..],
        &["--compare", &python_arg, "--rounds", "2", "--json"],
    ]
    .concat();
    let out = run_dtx(&args, &dir);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let rounds = v["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    let dtx_train: Vec<f64> = rounds
        .iter()
        .map(|r| r["dtx"]["train_step_s"].as_f64().unwrap())
        .collect();
    // the median of the rounds' own ratios, the mean of the two for an
    // even count (dtx::bench::median)
    let want = (dtx_train[0] / 0.5 + dtx_train[1] / 0.5) / 2.0;
    let got = v["ratio"]["train_step"].as_f64().unwrap();
    assert!((got - want).abs() <= 1e-9 * want, "{got} vs {want}");
    // the embedded script ran, with the sizes and dtx's thread count
    let log = std::fs::read_to_string(dir.join("args.txt")).unwrap();
    assert!(log.contains("PyTorch + diffusers side"), "{log}");
    let expected = format!(
        "--batch 2 --size 8 --channels 32 --layers 1 --warmup 0 --iters 1 --threads {threads}"
    );
    assert_eq!(log.matches(&expected).count(), 2, "{log}");
    // text output: the ratio line, once per rung of a ladder
    let mut ladder = tiny.to_vec();
    ladder[5] = "8,16";
    let args = [&ladder[..], &["--compare", &python_arg, "--rounds", "1"]].concat();
    let out = run_dtx(&args, &dir);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.matches("training step: dtx").count(),
        2,
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("at 16x16"), "{}", out.stdout);
    // the ladder alone, as JSON: one report per rung
    let out = run_dtx(&[&ladder[..], &["--json"]].concat(), &dir);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");
    // another model on the PyTorch side
    let other = report.replace(&format!("\"parameters\": {params}"), "\"parameters\": 7");
    let python = fake_python(&dir, &other, false);
    let out = run_dtx(&[&tiny[..], &["--compare", &python_arg]].concat(), &dir);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stderr.contains("the two U-Nets differ"),
        "{}",
        out.stderr
    );
    // no torch
    fake_python(&dir, "", true);
    let out = run_dtx(&[&tiny[..], &["--compare", &python_arg]].concat(), &dir);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stderr.contains("needs torch and diffusers")
            && out.stderr.contains("No module named torch"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    let _ = (python, std::fs::remove_dir_all(&dir));
}
