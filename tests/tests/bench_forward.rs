//! `dtx bench transfer|gmm|cas|anl` run the separate `dtx-bench`
//! executable (crate `bench/`): found next to `dtx` (else on PATH), given
//! the arguments verbatim, its output and exit status passed on; a clear
//! error when it is missing. `dtx bench --help` still lists all five
//! benchmarks, and the forwarded `--help` is dtx-bench's own, read as
//! `dtx bench <command>`. Everything here runs outside the repository.

use dtx_tests::{build_plugins, dtx_bin, run_dtx};
use std::path::{Path, PathBuf};
use std::process::Command;

const FORWARDED: [&str; 4] = ["transfer", "gmm", "cas", "anl"];

fn outside() -> PathBuf {
    std::env::temp_dir()
}

/// The `  <name>  <description>` line of `name` in a help text's command list.
fn command_line<'a>(help: &'a str, name: &str) -> &'a str {
    help.lines()
        .find(|l| l.trim_start().starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no `{name}` in:\n{help}"))
}

#[test]
fn bench_help_lists_every_benchmark_with_dtx_bench_s_descriptions() {
    let dtx = run_dtx(&["bench", "--help"], &outside());
    assert_eq!(dtx.code, 0, "{}", dtx.stderr);
    assert!(
        command_line(&dtx.stdout, "engine").contains("training step"),
        "{}",
        dtx.stdout
    );
    let bench = Command::new(build_plugins().join("dtx-bench"))
        .arg("--help")
        .current_dir(outside())
        .output()
        .unwrap();
    assert!(bench.status.success());
    let bench = String::from_utf8(bench.stdout).unwrap();
    assert!(bench.contains("Usage: dtx bench <COMMAND>"), "{bench}");
    for name in FORWARDED {
        assert_eq!(
            command_line(&dtx.stdout, name).trim(),
            command_line(&bench, name).trim(),
            "`dtx bench --help` and `dtx-bench --help` describe `{name}` alike"
        );
    }
}

#[test]
fn a_forwarded_help_is_dtx_bench_s_from_any_folder() {
    for name in FORWARDED {
        let r = run_dtx(&["bench", name, "--help"], &outside());
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        assert!(
            r.stdout
                .contains(&format!("Usage: dtx bench {name} [OPTIONS]")),
            "{name}: {}",
            r.stdout
        );
        let short = run_dtx(&["bench", name, "-h"], &outside());
        assert!(short.stdout.contains("-h, --help"), "{}", short.stdout);
    }
    let r = run_dtx(&["bench", "transfer", "--help"], &outside());
    assert!(r.stdout.contains("--manifests <DIR>"), "{}", r.stdout);
    assert!(r.stdout.contains("--runs <DIR>"), "{}", r.stdout);
}

/// `dtx bench help <name>` prints the same help as `dtx bench <name>
/// --help`, dtx-bench's, not the forwarding stub's.
#[test]
fn bench_help_name_is_the_forwarded_help() {
    for name in FORWARDED {
        let help = run_dtx(&["bench", "help", name], &outside());
        let flag = run_dtx(&["bench", name, "--help"], &outside());
        assert_eq!(help.code, 0, "{name}: {}", help.stderr);
        assert_eq!(help.stdout, flag.stdout, "{name}");
    }
}

#[test]
fn exit_status_and_errors_pass_through() {
    // a failed benchmark: exit 1, the error once on stderr
    let r = run_dtx(&["bench", "gmm", "--methods", "finetun"], &outside());
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert_eq!(
        r.stderr.matches("did you mean `finetune`?").count(),
        1,
        "{}",
        r.stderr
    );
    // a usage error: exit 2, clap's message with dtx-bench's usage
    let r = run_dtx(&["bench", "cas", "--bogus"], &outside());
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(r.stderr.contains("'--bogus'"), "{}", r.stderr);
    assert!(r.stderr.contains("Usage: dtx bench cas"), "{}", r.stderr);
}

#[test]
fn a_manifests_folder_without_the_manifests_is_refused_with_the_places_tried() {
    let missing = outside().join(format!("dtx-no-manifests-{}", std::process::id()));
    let m = missing.display().to_string();
    let r = run_dtx(
        &["bench", "cas", "--seeds", "0", "--manifests", &m],
        &outside(),
    );
    let e = r.failed();
    assert!(
        e.contains("no manifests folder holding rejection.toml, sdft-rejection.toml"),
        "{e}"
    );
    assert!(
        e.contains(&format!("{m} (--manifests): no such folder")),
        "{e}"
    );
}

/// A folder holding a copy of `dtx` and, when given, a `dtx-bench`.
#[cfg(unix)]
fn lone_dtx(name: &str, bench_script: Option<&str>) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = dtx_tests::runs::out_dir("bench-forward", name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(dtx_bin(), dir.join("dtx")).unwrap();
    if let Some(script) = bench_script {
        let p = dir.join("dtx-bench");
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

#[cfg(unix)]
fn run_in(dir: &Path, args: &[&str], path: &Path) -> std::process::Output {
    Command::new(dir.join("dtx"))
        .args(args)
        .current_dir(outside())
        .env("PATH", path)
        .output()
        .unwrap()
}

#[cfg(unix)]
#[test]
fn arguments_go_verbatim_and_the_exit_status_comes_back() {
    let dir = lone_dtx(
        "verbatim",
        Some(
            "#!/bin/sh\nfor a in \"$@\"; do printf '[%s]' \"$a\"; done\necho\necho to-stderr >&2\nexit 7\n",
        ),
    );
    let o = run_in(
        &dir,
        &[
            "bench", "transfer", "--", "a", "--b", "-c", "x y", "--help", "--",
        ],
        &dir,
    );
    assert_eq!(o.status.code(), Some(7));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "[transfer][--][a][--b][-c][x y][--help][--]\n"
    );
    assert_eq!(String::from_utf8_lossy(&o.stderr), "to-stderr\n");
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(unix)]
#[test]
fn a_missing_dtx_bench_is_a_clear_error() {
    let dir = lone_dtx("missing", None);
    let empty = dir.join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let o = run_in(&dir, &["bench", "gmm", "--quick"], &empty);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains(&format!(
            "`{}` (next to dtx)",
            dir.join("dtx-bench").display()
        )),
        "{e}"
    );
    assert!(e.contains("`dtx-bench` on PATH"), "{e}");
    assert!(e.contains("cargo build --release -p dtx-bench"), "{e}");
    // `dtx bench engine` stays in dtx
    let o = run_in(&dir, &["bench", "engine", "--help"], &empty);
    assert_eq!(o.status.code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
