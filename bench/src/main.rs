//! The `dtx-bench` binary: what `dtx bench transfer|gmm|cas|anl …` runs
//! (the `dtx` binary forwards those subcommands here, arguments verbatim).
//! Diagnostics go to stderr through `tracing`, filtered by `DTX_LOG` as in
//! `dtx`.

use std::process::ExitCode;

fn main() -> ExitCode {
    dtx::cli::init_tracing();
    let code = dtx_bench::cli::main_with(
        std::env::args_os(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    ExitCode::from(code as u8)
}
