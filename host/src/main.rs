//! The `dtx` binary: parses arguments, runs the command, prints any error
//! once (with the manifest excerpt when there is one) and exits non-zero.
//!
//! Diagnostics go through `tracing` to stderr, filtered by `DTX_LOG` (an
//! `EnvFilter` directive such as `info` or `dtx=debug`; default `warn`).
//! What a command reports to the user goes to stdout.

use std::process::ExitCode;

fn main() -> ExitCode {
    keep_freed_memory();
    dtx::cli::init_tracing();
    let code = dtx::cli::main_with(
        std::env::args_os(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    ExitCode::from(code as u8)
}

/// glibc gives every freed block above its mmap threshold (which it moves
/// up to at most 32 MiB) back to the kernel, so the activations of a 64²
/// U-Net step are mapped, faulted in and zeroed again on every step. Above
/// the threshold set here (1 GiB) they stay in the heap and are reused,
/// as is the memory freed at its top (docs/performance.md). Other
/// platforms keep their allocator's defaults.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's parameters, and runs here
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
