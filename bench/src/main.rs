//! The `dtx-bench` binary: what `dtx bench transfer|gmm|cas|anl …` runs
//! (the `dtx` binary forwards those subcommands here, arguments verbatim).
//! Diagnostics go to stderr through `tracing`, filtered by `DTX_LOG` as in
//! `dtx`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DTX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let code = dtx_bench::cli::main_with(
        std::env::args_os(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    ExitCode::from(code as u8)
}
