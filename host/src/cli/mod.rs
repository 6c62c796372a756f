//! The `dtx` command line: argument types (clap) and one function per
//! command. Commands write to the `out` they are given, so tests run them
//! in-process and snapshot what a user would see.

mod bench_anl;
mod bench_cas;
mod bench_gmm;
mod bench_transfer;
mod commands;
mod eval_cmd;
mod eval_features;
mod model_cmd;
mod model_forward;
mod model_open;

pub use commands::{BenchCommand, Cli, Command, PluginsCommand, execute};

use std::ffi::OsString;
use std::io::Write;

/// Exit code of a failed command.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code of a usage error (bad arguments).
pub const EXIT_USAGE: i32 = 2;

/// Parses `args` (including the program name) and runs the command; writes
/// results to `out` and the error (rendered once, whole) to `err`. Returns the
/// process exit code.
pub fn main_with(
    args: impl IntoIterator<Item = OsString>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    use clap::Parser;
    let cli = match Cli::try_parse_from(args) {
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
