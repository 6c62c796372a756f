//! The `dtx` binary: parses arguments, runs the command, prints any error
//! once (with the manifest excerpt when there is one) and exits non-zero.

use std::process::ExitCode;

fn main() -> ExitCode {
    let code = dtx::cli::main_with(
        std::env::args_os(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    ExitCode::from(code as u8)
}
