//! `dtx bench transfer|gmm|cas|anl …`: the research benchmarks are a
//! separate executable, `dtx-bench` (crate `bench/`, on top of this
//! library), which `dtx` runs git-style with the arguments verbatim and
//! whose exit status it returns. It is looked for next to the running
//! `dtx` first, then on `PATH`.

use anyhow::{Context, bail};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The executable's name (without the platform's suffix).
pub const BENCH_EXE: &str = "dtx-bench";

/// The file name of `dtx-bench` on this platform.
fn file_name() -> String {
    format!("{BENCH_EXE}{}", std::env::consts::EXE_SUFFIX)
}

/// The `dtx-bench` executable: next to the running one, else the first on
/// `PATH`. The error names what was looked for and how to build it.
pub fn find_bench() -> anyhow::Result<PathBuf> {
    let name = file_name();
    let beside = crate::util::exe_dir().map(|d| d.join(&name));
    if let Some(p) = beside.as_ref().filter(|p| p.is_file()) {
        return Ok(p.clone());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path).filter(|d| !d.as_os_str().is_empty()) {
            let p = dir.join(&name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let beside = beside.map_or_else(
        || "next to dtx (its folder is unknown)".to_owned(),
        |p| format!("`{}` (next to dtx)", p.display()),
    );
    bail!(
        "the research benchmarks are in the separate `{BENCH_EXE}` executable, which was not found: looked for {beside} and `{name}` on PATH. Build it with `cargo build --release -p {BENCH_EXE}` (cargo puts it next to dtx, in target/release/), or put it on PATH"
    )
}

/// Copies `from` to `to` as it comes, flushing after each read (progress
/// lines appear when the benchmark prints them); stops at the end or at the
/// first failed write (the child then sees a closed pipe).
fn pump(mut from: impl Read, to: &mut dyn Write) {
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Runs `dtx-bench <command> <args…>`: its standard output goes to `out`
/// and its standard error to `err` (the parent's standard error when
/// `None`), as they come; standard input is shared. Returns its exit
/// status (128 + the signal on Unix when a signal ended it).
pub fn bench(
    command: &str,
    args: &[OsString],
    out: &mut dyn Write,
    err: Option<&mut (dyn Write + Send)>,
) -> anyhow::Result<i32> {
    let exe = find_bench()?;
    run(&exe, command, args, out, err)
}

fn run(
    exe: &Path,
    command: &str,
    args: &[OsString],
    out: &mut dyn Write,
    err: Option<&mut (dyn Write + Send)>,
) -> anyhow::Result<i32> {
    let mut child = Command::new(exe)
        .arg(command)
        .args(args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(if err.is_some() {
            Stdio::piped()
        } else {
            Stdio::inherit()
        })
        .spawn()
        .with_context(|| format!("running `{}`", exe.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take();
    std::thread::scope(|s| {
        if let (Some(stderr), Some(err)) = (stderr, err) {
            s.spawn(move || pump(stderr, err));
        }
        pump(stdout, out);
    });
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{}`", exe.display()))?;
    Ok(exit_code(status))
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    if let Some(code) = status.code() {
        return code;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return 128 + signal;
        }
    }
    super::EXIT_FAILURE
}
