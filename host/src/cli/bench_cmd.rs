//! `dtx bench engine`: the engine's training and DDIM steps timed, alone or
//! against PyTorch + diffusers on the same U-Net (`--compare PYTHON`):
//! rounds interleaved in one invocation, each side's figures and the ratio.

use crate::bench::{BenchReport, EngineBench, median};
use crate::tensor_abi::CpuBackend;
use anyhow::{Context, bail};
use std::io::Write;
use std::path::Path;
use std::process::Command;

/// The PyTorch side, embedded so that `--compare` works from any folder.
const UNET_BENCH_PY: &str = include_str!("../../../tests/benches/python/unet_bench.py");

/// What the PyTorch side prints (one JSON line).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
struct TorchReport {
    parameters: usize,
    train_step_s: f64,
    ddim_step_s: f64,
    peak_rss_mib: f64,
    threads: usize,
    torch: String,
}

/// One interleaved round: dtx, then PyTorch.
#[derive(Debug, serde::Serialize)]
struct Round {
    dtx: BenchReport,
    pytorch: TorchReport,
}

/// dtx / PyTorch: the median over the rounds of each round's own ratio.
#[derive(Debug, serde::Serialize)]
struct Ratios {
    train_step: f64,
    ddim_step: f64,
    peak_memory: f64,
}

/// The backend `dtx bench engine` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineBackend {
    /// burn's flex CPU backend with dtx's kernels.
    Cpu,
    /// burn's CUDA backend (a build with the `cuda` feature).
    Cuda,
}

/// Whether `backend` can run here: a clear error for CUDA without the
/// feature, the driver or a device.
fn check_backend(backend: EngineBackend) -> anyhow::Result<()> {
    if backend == EngineBackend::Cpu {
        return Ok(());
    }
    if !crate::tensor_abi::HAS_CUDA {
        bail!(
            "dtx bench engine --backend cuda: this dtx was built without the CUDA backend; \
             rebuild with `cargo build --release -p dtx --features cuda`"
        );
    }
    crate::util::cuda::devices()
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("dtx bench engine --backend cuda: {e}"))
}

/// One timing of dtx on `backend` (checked by [`check_backend`]).
fn engine(cfg: &EngineBench, backend: EngineBackend) -> anyhow::Result<BenchReport> {
    match backend {
        EngineBackend::Cpu => crate::bench::engine::<CpuBackend>(cfg),
        #[cfg(feature = "cuda")]
        EngineBackend::Cuda => crate::bench::engine::<crate::tensor_abi::CudaBackend>(cfg),
        #[cfg(not(feature = "cuda"))]
        EngineBackend::Cuda => bail!("this dtx was built without the CUDA backend"),
    }
}

/// `dtx bench engine` at each image side of `sizes` in turn (the ladder;
/// `cfg.size` is ignored), alone or `--compare`d over `rounds` rounds.
/// With one size `--json` prints one object, with several an array.
pub(super) fn run(
    cfg: EngineBench,
    sizes: &[usize],
    json: bool,
    compare: Option<&Path>,
    rounds: usize,
    backend: EngineBackend,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    check_backend(backend)?;
    if cfg.batch == 0
        || sizes.is_empty()
        || sizes.iter().any(|&s| s < 4)
        || cfg.channels.is_empty()
        || cfg.layers == 0
        || cfg.iters == 0
        || rounds == 0
    {
        bail!(
            "dtx bench engine: batch, layers, iters and rounds must be positive, every size at least 4, channels non-empty"
        );
    }
    let mut reports = Vec::with_capacity(sizes.len());
    for (i, &size) in sizes.iter().enumerate() {
        if i > 0 && !json {
            writeln!(out)?;
        }
        let cfg = EngineBench {
            size,
            ..cfg.clone()
        };
        reports.push(match compare {
            Some(python) => compare_rounds(&cfg, python, rounds, json, backend, out)?,
            None => {
                let r = engine(&cfg, backend)?;
                if !json {
                    write_report(&cfg, &r, out)?;
                }
                serde_json::to_value(&r)?
            }
        });
    }
    if json {
        let v = match <[serde_json::Value; 1]>::try_from(reports) {
            Ok([one]) => one,
            Err(all) => serde_json::Value::Array(all),
        };
        writeln!(out, "{v}")?;
    }
    Ok(())
}

fn write_report(cfg: &EngineBench, r: &BenchReport, out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "U-Net {:?} x{} layers, {} parameters, batch {} at {}x{}, {} threads\n  training step (fwd+bwd+AdamW): {:.3} s\n  DDIM step:                     {:.3} s\n  DDIM step, ε tracked from x_t: {:.3} s (memory {:+.0} MiB over {} steps)\n  peak memory:                   {:.0} MiB",
        cfg.channels,
        cfg.layers,
        r.parameters,
        cfg.batch,
        cfg.size,
        cfg.size,
        r.threads,
        r.train_step_s,
        r.ddim_step_s,
        r.tracked_ddim_step_s,
        r.tracked_ddim_rss_growth_mib,
        cfg.iters.saturating_sub(1),
        r.peak_rss_mib
    )?;
    Ok(())
}

/// `rounds` rounds of dtx then PyTorch (`python` running the embedded
/// script with the same U-Net, batch, steps and thread count), each side's
/// figures per round, their medians and the ratios dtx / PyTorch.
fn compare_rounds(
    cfg: &EngineBench,
    python: &Path,
    rounds: usize,
    json: bool,
    backend: EngineBackend,
    out: &mut dyn Write,
) -> anyhow::Result<serde_json::Value> {
    let script = std::env::temp_dir().join(format!("dtx-unet-bench-{}.py", std::process::id()));
    std::fs::write(&script, UNET_BENCH_PY)
        .with_context(|| format!("writing {}", script.display()))?;
    let mut all = Vec::with_capacity(rounds);
    let result = (|| -> anyhow::Result<()> {
        for i in 0..rounds {
            let dtx = engine(cfg, backend)?;
            let pytorch = pytorch_round(cfg, python, &script, dtx.threads, backend)?;
            if pytorch.parameters != dtx.parameters {
                bail!(
                    "the two U-Nets differ: dtx's has {} parameters, PyTorch's {} (diffusers {}): \
                     the script and `dtx bench engine` build different models",
                    dtx.parameters,
                    pytorch.parameters,
                    pytorch.torch
                );
            }
            if !json {
                writeln!(
                    out,
                    "round {}: training step dtx {:.3} s, PyTorch {:.3} s; DDIM step dtx {:.3} s, PyTorch {:.3} s",
                    i + 1,
                    dtx.train_step_s,
                    pytorch.train_step_s,
                    dtx.ddim_step_s,
                    pytorch.ddim_step_s
                )?;
            }
            all.push(Round { dtx, pytorch });
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&script);
    result?;
    let side = |f: &dyn Fn(&Round) -> f64| median(all.iter().map(f).collect());
    let (dtx_train, torch_train) = (
        side(&|r| r.dtx.train_step_s),
        side(&|r| r.pytorch.train_step_s),
    );
    let (dtx_ddim, torch_ddim) = (
        side(&|r| r.dtx.ddim_step_s),
        side(&|r| r.pytorch.ddim_step_s),
    );
    let (dtx_mem, torch_mem) = (
        side(&|r| r.dtx.peak_rss_mib),
        side(&|r| r.pytorch.peak_rss_mib),
    );
    // Each round's ratio, then their median: the two sides of a round ran
    // back to back, so a ratio is paired against the machine's drift,
    // where a ratio of the medians could pair one side's fast round with
    // the other's slow one.
    let ratio =
        |f: &dyn Fn(&Round) -> (f64, f64)| median(all.iter().map(f).map(|(a, b)| a / b).collect());
    let ratios = Ratios {
        train_step: ratio(&|r| (r.dtx.train_step_s, r.pytorch.train_step_s)),
        ddim_step: ratio(&|r| (r.dtx.ddim_step_s, r.pytorch.ddim_step_s)),
        peak_memory: ratio(&|r| (r.dtx.peak_rss_mib, r.pytorch.peak_rss_mib)),
    };
    let v = serde_json::json!({ "size": cfg.size, "rounds": all, "ratio": ratios });
    if json {
        return Ok(v);
    }
    let first = &all[0];
    writeln!(
        out,
        "U-Net {:?} x{} layers, {} parameters, batch {} at {}x{}, {} threads each; torch {}; medians of {rounds} round(s), ratios the median of the rounds' own\n  training step: dtx {dtx_train:.3} s, PyTorch {torch_train:.3} s: {:.2}x\n  DDIM step:     dtx {dtx_ddim:.3} s, PyTorch {torch_ddim:.3} s: {:.2}x\n  peak memory:   dtx {dtx_mem:.0} MiB, PyTorch {torch_mem:.0} MiB: {:.2}x",
        cfg.channels,
        cfg.layers,
        first.dtx.parameters,
        cfg.batch,
        cfg.size,
        cfg.size,
        first.dtx.threads,
        first.pytorch.torch,
        ratios.train_step,
        ratios.ddim_step,
        ratios.peak_memory
    )?;
    Ok(v)
}

/// One run of the PyTorch side with `cfg`'s sizes on `threads` threads.
fn pytorch_round(
    cfg: &EngineBench,
    python: &Path,
    script: &Path,
    threads: usize,
    backend: EngineBackend,
) -> anyhow::Result<TorchReport> {
    let channels: Vec<String> = cfg.channels.iter().map(|c| c.to_string()).collect();
    let device = match backend {
        EngineBackend::Cpu => "cpu",
        EngineBackend::Cuda => "cuda",
    };
    let output = Command::new(python)
        .arg(script)
        .args(["--batch", &cfg.batch.to_string()])
        .args(["--size", &cfg.size.to_string()])
        .args(["--channels", &channels.join(",")])
        .args(["--layers", &cfg.layers.to_string()])
        .args(["--warmup", &cfg.warmup.to_string()])
        .args(["--iters", &cfg.iters.to_string()])
        .args(["--threads", &threads.to_string()])
        .args(["--device", device])
        .env("OMP_NUM_THREADS", threads.to_string())
        .output()
        .with_context(|| {
            format!(
                "--compare {}: cannot start it (a Python interpreter with torch and diffusers)",
                python.display()
            )
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "--compare {}: the PyTorch side failed ({}); it needs torch and diffusers \
             (pip install torch diffusers):\n{}",
            python.display(),
            output.status,
            tail.join("\n")
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    serde_json::from_str(line).with_context(|| {
        format!(
            "--compare {}: the PyTorch side printed no report (its last line: {line:?})",
            python.display()
        )
    })
}
