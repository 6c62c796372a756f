//! Crates outside this repository, as a plugin author has them: built with
//! plain `cargo` in their own folder against `dtx-plugin-api` by path
//! (`tests/tests/out_of_tree.rs`, `tests/tests/scaffold.rs`).

use crate::{build_plugins, profile_dir, workspace_root};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace's `dev` profile, appended to an outside crate's
/// Cargo.toml so its build reuses the dependencies the tests have already
/// compiled into the shared target folder (same settings, same artifacts);
/// the crate builds the same without it, only slower.
pub const DEV_PROFILE: &str = r#"
[profile.dev]
opt-level = 1
debug = "line-tables-only"

[profile.dev.package."*"]
opt-level = 3
debug = false

# dtx's own crates build as the workspace's members do
[profile.dev.package.dtx]
opt-level = 1
debug = "line-tables-only"

[profile.dev.package.dtx-plugin-testing]
opt-level = 1
debug = "line-tables-only"

[profile.dev.package.dtx-plugin-api]
opt-level = 1
debug = "line-tables-only"

[profile.release]
debug = false
"#;

/// Makes the crate in `dir` build like the workspace: appends
/// [`DEV_PROFILE`] to its Cargo.toml and copies the workspace's Cargo.lock
/// (the versions the host was built with).
pub fn share_workspace_build(dir: &Path) {
    let toml = dir.join("Cargo.toml");
    let mut text = std::fs::read_to_string(&toml).unwrap();
    text.push_str(DEV_PROFILE);
    std::fs::write(&toml, text).unwrap();
    std::fs::copy(workspace_root().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
}

/// `cargo <args>` in `dir` into the tests' target folder and profile;
/// panics with cargo's output when it fails.
pub fn cargo(dir: &Path, args: &[&str]) {
    let profile = build_plugins();
    let target = profile.parent().unwrap();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(dir)
        .args(args)
        .arg("--target-dir")
        .arg(target);
    if profile_dir().file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("running cargo");
    assert!(
        out.status.success(),
        "cargo {args:?} in {} failed:\n{}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The library `cargo build` made of the package `package`.
pub fn built_library(package: &str) -> PathBuf {
    let lib = build_plugins().join(dtx::plugins::library_file_name(package));
    assert!(lib.is_file(), "{} not built", lib.display());
    lib
}
