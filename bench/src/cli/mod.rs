//! The `dtx-bench` command line: one subcommand per research benchmark.
//! Its usage reads `dtx bench <command>`, the way users reach it (the
//! `dtx` binary forwards `dtx bench transfer|gmm|cas|anl …` here).
//! Commands write to the `out` they are given, as `dtx`'s do.

pub mod anl;
pub mod cas;
pub mod gmm;
pub mod transfer;

use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::io::Write;

/// dtx's research benchmarks: transfer methods compared on the same
/// targets and seeds, with paired differences by seed (docs/results.md).
#[derive(Debug, Parser)]
#[command(name = "dtx-bench", bin_name = "dtx bench", version, about, long_about = None)]
pub struct BenchCli {
    /// The benchmark.
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// `dtx bench <command>` (all but `engine`, which the host runs).
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Runs transfer manifests (default: scratch, naive fine-tune, SDFT from
    /// `manifests/`) on the same target set and seeds and prints one table
    /// of their `[eval]` metrics and wall times, then each against naive
    /// fine-tuning paired by seed with 95 % intervals; per-seed values in
    /// `<runs>/bench-transfer/results.json`.
    Transfer(transfer::TransferArgs),
    /// The TGDP talk's Gaussian-mixture simulation: pretrains a source MLP
    /// on `builtin:gmm`, transfers it to n points of the reweighted target
    /// mixture with each method (source only, target only, fine-tune, SDFT,
    /// TGDP), scores the samples under the exact target density (mean
    /// density, mean log-density, component coverage) and draws them; one
    /// table, the paired differences by seed with 95 % intervals,
    /// results.json and scatter PNGs in `--out`.
    Gmm(gmm::GmmArgs),
    /// The classification accuracy score of class-conditional transfer:
    /// per seed, fine-tuning, + classifier-free guidance, + rejection and
    /// SDFT + rejection (manifests/rejection.toml, sdft-rejection.toml)
    /// sample equally many images per class; a small classifier trained on
    /// each arm's images, and on the real target images, is scored on real
    /// test images. One table, the paired CAS differences by seed with 95 %
    /// intervals, results.json and table.md in `<runs>/bench-cas/`.
    Cas(cas::CasArgs),
    /// ANL against naive fine-tuning: manifests/anl.toml,
    /// anl-unconditional.toml and naive-finetune.toml on the same target
    /// set, seeds and step counts (KID_dtx/FD_dtx, trainable parameters,
    /// wall time), then the conditional run sampled at mask rates δ = 0 …
    /// 0.9 (KID against the spread of samples sharing a condition image);
    /// paired differences by seed with 95 % intervals, results.json in
    /// `<runs>/bench-anl/`.
    Anl(anl::AnlArgs),
}

/// Runs a parsed benchmark, writing its output to `out`.
pub fn execute(cli: BenchCli, out: &mut dyn Write) -> anyhow::Result<()> {
    match cli.command {
        BenchCommand::Transfer(args) => transfer::run(&args, out),
        BenchCommand::Gmm(args) => gmm::run(&args, out),
        BenchCommand::Cas(args) => cas::run(&args, out),
        BenchCommand::Anl(args) => anl::run(&args, out),
    }
}

/// Parses `args` (including the program name) and runs the benchmark, as
/// [`dtx::cli::main_with`] does a `dtx` command: results to `out`, the
/// error (rendered once, whole) to `err`; returns the process exit code.
pub fn main_with(
    args: impl IntoIterator<Item = OsString>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let cli = match BenchCli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                dtx::cli::EXIT_USAGE
            } else {
                0
            };
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
            let _ = writeln!(err, "{}", dtx::cli::render_error(&e));
            dtx::cli::EXIT_FAILURE
        }
    }
}
