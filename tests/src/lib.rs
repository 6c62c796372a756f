//! Support for the end-to-end tests and benchmarks: build the workspace's
//! plugins and the `dtx` binary (a nested `cargo build`, once per test
//! process, into the same target folder and profile as the running test), then
//! load them through the real loader or run the real binary.
//!
//! `cargo test --workspace` needs no manual build step first: the first test
//! that asks for a plugin builds them.

pub mod block;
pub mod files;
pub mod mock;
pub mod outside;

pub mod runs;
pub mod two_gaussians;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Crates built for the tests: the workspace's method plugins, the test
/// plugins (and, by [`build_plugins`], `dtx` and `dtx-bench`).
pub const PLUGIN_CRATES: &[&str] = &[
    "dtx-plugin-example",
    "dtx-plugin-sdft",
    "dtx-plugin-tgdp",
    "dtx-plugin-denoiser-guidance",
    "dtx-plugin-anl",
    "dtx-plugin-lora",
    "dtx-plugin-difffit",
    "dtx-test-plugin",
    "dtx-test-plugin-incompatible",
    "dtx-test-plugin-block",
];

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// The folder of the running test's profile (`target/debug`, `target/release`):
/// test executables live in `<profile>/deps`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("exe folder");
    let dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().unwrap()
    } else {
        deps
    };
    dir.to_path_buf()
}

/// Builds the plugins and the `dtx` and `dtx-bench` binaries once per
/// process; returns the folder holding them. Panics with cargo's output when
/// the build fails.
pub fn build_plugins() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let profile = profile_dir();
        let target = profile.parent().expect("target folder").to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root())
            .arg("build")
            .arg("--target-dir")
            .arg(&target);
        if profile.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        for c in PLUGIN_CRATES {
            cmd.args(["-p", c]);
        }
        // No target filter (`--bin` would apply to every package and build no
        // plugin at all): each package's default targets. `dtx bench
        // transfer|gmm|cas|anl` run the `dtx-bench` executable beside `dtx`.
        cmd.args(["-p", "dtx", "-p", "dtx-bench"]);
        let out = cmd
            .output()
            .expect("running cargo build for the test plugins");
        if std::env::var_os("DTX_TESTS_VERBOSE").is_some() {
            eprintln!("{cmd:?}\n{}", String::from_utf8_lossy(&out.stderr));
        }
        assert!(
            out.status.success(),
            "building the test plugins failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // a plugin built against dtx-plugin-api 0.3 (a workspace of its own:
        // tests/compat), into the same folder
        let mut compat = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        compat
            .current_dir(workspace_root())
            .args(["build", "--manifest-path", "tests/compat/Cargo.toml"])
            .arg("--target-dir")
            .arg(&target);
        if profile.file_name().is_some_and(|n| n == "release") {
            compat.arg("--release");
        }
        let out = compat
            .output()
            .expect("running cargo build for the 0.3 compatibility plugin");
        assert!(
            out.status.success(),
            "building tests/compat failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        profile
    })
}

/// Path of the built library of `crate_name` (`dtx-test-plugin` →
/// `target/debug/libdtx_test_plugin.so`).
pub fn plugin_path(crate_name: &str) -> PathBuf {
    build_plugins().join(dtx::plugins::library_file_name(crate_name))
}

/// Path of the built `dtx` binary.
pub fn dtx_bin() -> PathBuf {
    build_plugins().join(format!("dtx{}", std::env::consts::EXE_SUFFIX))
}

/// What a command printed.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Checks that the command succeeded.
    ///
    /// # Panics
    /// With its stderr when it did not (a test failure).
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "stderr:\n{}", self.stderr);
        self
    }

    /// Checks that the command failed as a user error should: exit code 1,
    /// nothing on stdout, no panic; returns the error text.
    ///
    /// # Panics
    /// When it did otherwise (a test failure).
    pub fn failed(&self) -> &str {
        assert_eq!(
            self.code,
            dtx::cli::EXIT_FAILURE,
            "stdout:\n{}",
            self.stdout
        );
        assert!(self.stdout.is_empty(), "{}", self.stdout);
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        &self.stderr
    }
}

/// Runs the real `dtx` binary with `args` in `cwd`, plugins found through
/// `DTX_PLUGIN_PATH`.
pub fn run_dtx(args: &[&str], cwd: &Path) -> Output {
    let dir = build_plugins();
    let out = Command::new(dtx_bin())
        .args(args)
        .current_dir(cwd)
        .env("DTX_PLUGIN_PATH", dir)
        .output()
        .expect("running dtx");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `dtx` in-process (same code as the binary) with `args`; `bench
/// transfer|gmm|cas|anl` run the built `dtx-bench` beside `dtx`, as the
/// binary does.
pub fn run_in_process(args: &[&str]) -> Output {
    build_plugins();
    let mut out = Vec::new();
    let mut err = Vec::new();
    let argv = std::iter::once("dtx")
        .chain(args.iter().copied())
        .map(Into::into);
    let code = dtx::cli::main_with(argv, &mut out, &mut err);
    Output {
        code,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
    }
}
