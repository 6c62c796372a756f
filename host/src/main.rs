//! The `dtx` binary: parses arguments, runs the command, prints any error
//! once (with the manifest excerpt when there is one) and exits non-zero.
//!
//! Diagnostics go through `tracing` to stderr, filtered by `DTX_LOG` (an
//! `EnvFilter` directive such as `info` or `dtx=debug`; default `warn`).
//! What a command reports to the user goes to stdout.

use std::process::ExitCode;

fn main() -> ExitCode {
    dtx::util::keep_freed_memory();
    dtx::cli::init_tracing();
    // The whole command runs on a thread of the kernels' pool
    // (`util::in_thread_pool` says why).
    let code = dtx::util::in_thread_pool(|| {
        dtx::cli::main_with(
            std::env::args_os(),
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )
    });
    ExitCode::from(code as u8)
}
