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
