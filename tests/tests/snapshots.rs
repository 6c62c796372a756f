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

fn plan(path: &Path) -> Output {
    run_in_process(&["plan", path.to_str().unwrap()])
}

/// A plugin file's hash changes with every build.
fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.add_filter(r"actual   [0-9a-f]{64}", "actual   [SHA256]");
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
