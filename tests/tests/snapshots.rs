//! Snapshots of what users see: `dtx plan` for every shipped manifest and every
//! valid test manifest, and the error for every broken one (each a mistake a
//! user makes). A new case is a new `.toml` file; review changes with
//! `cargo insta review` and commit the `.snap` files.

use dtx_tests::{Output, build_plugins, run_in_process, workspace_root};
use std::path::Path;

/// Paths differ between machines and folders: show them relative.
fn stable(text: &str) -> String {
    let root = workspace_root();
    let plugins = build_plugins();
    text.replace(&plugins.display().to_string(), "[PLUGINS]")
        .replace(&root.display().to_string(), "[ROOT]")
        .replace(std::env::consts::DLL_SUFFIX, ".[DLL]")
}

/// `dtx plan PATH`. manifests/anl-clip.toml names the user's CLIP folder,
/// which dtx does not ship: its plan is taken with the parity fixture's
/// tiny CLIP in its place.
fn plan(path: &Path) -> Output {
    let p = path.to_str().unwrap();
    if path.file_name().is_some_and(|f| f == "anl-clip.toml") {
        let clip = workspace_root().join("tests/fixtures/clip/tiny-clip");
        let set = format!("condition.path=\"{}\"", clip.display());
        return run_in_process(&["plan", p, "--set", &set]);
    }
    run_in_process(&["plan", p])
}

/// A plugin file's hash changes with every build.
fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.add_filter(r"actual   [0-9a-f]{64}", "actual   [SHA256]");
    // The memory estimate is compared with this machine's memory.
    s.add_filter(r"this machine's [0-9.]+ GiB", "this machine's [MEM] GiB");
    s
}

#[test]
fn shipped_manifests_plan() {
    insta::glob!("../../manifests", "*.toml", |path| {
        let out = plan(path);
        assert_eq!(out.code, 0, "{}:\n{}", path.display(), out.stderr);
        insta::assert_snapshot!(stable(&out.stdout));
    });
}

#[test]
fn valid_test_manifests_plan() {
    insta::glob!("../manifests/ok", "*.toml", |path| {
        let out = plan(path);
        assert_eq!(out.code, 0, "{}:\n{}", path.display(), out.stderr);
        insta::assert_snapshot!(stable(&out.stdout));
    });
}

#[test]
fn broken_manifests_are_clear_errors() {
    insta::glob!("../manifests/broken", "*.toml", |path| {
        let out = plan(path);
        assert_eq!(
            out.code,
            dtx::cli::EXIT_FAILURE,
            "{} should fail",
            path.display()
        );
        assert!(out.stdout.is_empty(), "nothing on stdout: {}", out.stdout);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
        settings().bind(|| insta::assert_snapshot!(stable(&out.stderr)));
    });
}
