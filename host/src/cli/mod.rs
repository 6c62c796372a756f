//! The `dtx` command line: argument types (clap) and one function per
//! command. Commands write to the `out` they are given, so tests run them
//! in-process and snapshot what a user would see.

mod bench_cmd;
mod commands;
mod eval_cmd;
mod eval_features;
mod export_cmd;
pub(crate) mod forward;
mod model_cmd;
mod model_forward;
mod model_open;
mod plugins_cmd;
mod scaffold;

pub use commands::{
    BenchCommand, Cli, Command, FORWARDED_BENCHES, ForwardArgs, Job, PluginsCommand, execute,
    plan_and_run,
};

use std::ffi::OsString;
use std::io::Write;

/// Exit code of a failed command.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code of a usage error (bad arguments).
pub const EXIT_USAGE: i32 = 2;

/// Sends diagnostics through `tracing` to stderr, filtered by `DTX_LOG` (an
/// `EnvFilter` directive such as `info` or `dtx=debug`; default `warn`),
/// coloured on a terminal: what the `dtx` and `dtx-bench` binaries call
/// first.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DTX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Parses `args` (including the program name) and runs the command; writes
/// results to `out` and the error (rendered once, whole) to `err`. Returns the
/// process exit code. `dtx bench transfer|gmm|cas|anl` run the `dtx-bench`
/// executable ([`forward`]): its output goes to `out` and `err` as it comes,
/// and its exit status is returned.
pub fn main_with(
    args: impl IntoIterator<Item = OsString>,
    out: &mut dyn Write,
    err: &mut (dyn Write + Send),
) -> i32 {
    use clap::Parser;
    let args: Vec<OsString> = args.into_iter().collect();
    // `dtx bench help <name>` of a benchmark dtx-bench runs is that
    // benchmark's own `--help` (clap's help subcommand would describe the
    // forwarding stub).
    if let [_, b, h, name] = args.as_slice()
        && b == "bench"
        && h == "help"
        && let Some(name) = name.to_str().filter(|n| FORWARDED_BENCHES.contains(n))
    {
        return match forward::bench(name, &["--help".into()], out, Some(&mut *err)) {
            Ok(code) => code,
            Err(e) => {
                let _ = writeln!(err, "{}", render_error(&e));
                EXIT_FAILURE
            }
        };
    }
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let text = e.render().to_string();
            let _ = if e.use_stderr() {
                err.write_all(text.as_bytes())
            } else {
                out.write_all(text.as_bytes())
            };
            return code;
        }
    };
    if let Command::Bench { command } = &cli.command
        && let Some((name, forwarded)) = command.forwarded()
    {
        // Verbatim: what follows `bench <name>` on the command line (clap
        // drops a leading `--` from the parsed values).
        let tail = match args.get(1..3) {
            Some([b, n]) if b == "bench" && n == name => &args[3..],
            _ => forwarded,
        };
        return match forward::bench(name, tail, out, Some(&mut *err)) {
            Ok(code) => code,
            Err(e) => {
                let _ = writeln!(err, "{}", render_error(&e));
                EXIT_FAILURE
            }
        };
    }
    match execute(cli, out) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "{}", render_error(&e));
            EXIT_FAILURE
        }
    }
}

/// An error as the user sees it: manifest errors with their source excerpts,
/// anything else as its whole cause chain.
pub fn render_error(e: &anyhow::Error) -> String {
    if let Some(m) = e.downcast_ref::<crate::manifest::ManifestError>() {
        return m.render().trim_end().to_owned();
    }
    format!("error: {e:#}")
}
