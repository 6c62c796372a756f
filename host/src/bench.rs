//! `dtx bench engine`: times the engine's two hot loops on a diffusers
//! `UNet2DModel` — one training step (forward, ε-MSE, backward, AdamW) and
//! one DDIM sampling step (forward without a graph, the DDIM update) — the
//! same DDIM step with ε tracked from x_t as sampling with a `score` hook
//! runs it (timing, and how resident memory grows over the steps: flat
//! when each step's graph is released), and reads the process's peak
//! resident memory. `benches/python/unet_bench.py`
//! does the same in PyTorch + diffusers with the same architecture, batch
//! and thread count; docs/performance.md has both and how to reproduce.

use crate::diffusion::sampler::ddim_step;
use crate::diffusion::schedule::Schedule;
use crate::model::Denoiser;
use crate::model::Net;
use crate::tensor_abi::Session;
use crate::train::optim::{AdamConfig, Optimizer};
use anyhow::{Result, anyhow};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use rand::SeedableRng;
use std::collections::HashMap;
use std::time::Instant;

/// What to time.
#[derive(Debug, Clone)]
pub struct EngineBench {
    /// Examples per step.
    pub batch: usize,
    /// Image side.
    pub size: usize,
    /// `block_out_channels`.
    pub channels: Vec<usize>,
    /// `layers_per_block`.
    pub layers: usize,
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed steps (the median is reported).
    pub iters: usize,
}

impl Default for EngineBench {
    /// `dtx bench engine`'s defaults: diffusers' CIFAR-10 U-Net layout
    /// (channels 64,128,128, 2 layers per block), 32×32, batch 16.
    fn default() -> Self {
        EngineBench {
            batch: 16,
            size: 32,
            channels: vec![64, 128, 128],
            layers: 2,
            warmup: 2,
            iters: 10,
        }
    }
}

/// Timings in seconds (median over the timed steps) and peak memory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Base parameters of the U-Net.
    pub parameters: usize,
    /// Median seconds per training step.
    pub train_step_s: f64,
    /// Median seconds per DDIM step.
    pub ddim_step_s: f64,
    /// Median seconds per DDIM step with ε tracked from x_t, as sampling
    /// with a `score` hook runs it (x_t a leaf that requires gradients, the
    /// recorded graph released after the step).
    pub tracked_ddim_step_s: f64,
    /// Resident memory after the last tracked DDIM step minus after the
    /// first timed one, MiB: flat when each step's graph is released (it
    /// grows by the graph through the U-Net every step when it is kept).
    pub tracked_ddim_rss_growth_mib: f64,
    /// Peak resident set size of the process, MiB (Linux `VmHWM`; 0 elsewhere).
    pub peak_rss_mib: f64,
    /// Compute threads of the CPU backend: rayon's pool, which dtx's
    /// kernels and burn's flex backend share (`RAYON_NUM_THREADS`, else
    /// the cores the process may run on).
    pub threads: usize,
}

/// The diffusers config of the benchmark U-Net: attention at every level
/// but the first, as diffusers' `google/ddpm-cifar10-32` layout.
pub fn unet_config(b: &EngineBench) -> serde_json::Value {
    let n = b.channels.len();
    let down: Vec<&str> = (0..n)
        .map(|i| {
            if i == 0 {
                "DownBlock2D"
            } else {
                "AttnDownBlock2D"
            }
        })
        .collect();
    let up: Vec<&str> = (0..n)
        .map(|i| {
            if i + 1 == n {
                "UpBlock2D"
            } else {
                "AttnUpBlock2D"
            }
        })
        .collect();
    serde_json::json!({
        "_class_name": "UNet2DModel",
        "sample_size": b.size,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": b.channels,
        "layers_per_block": b.layers,
        "down_block_types": down,
        "up_block_types": up,
        "norm_num_groups": 32,
        "attention_head_dim": 32,
    })
}

/// The median of `v`: the middle value, or the mean of the two middle
/// ones for an even count (NaN for none). The upper one of the two, as
/// before, made a two-round `--compare` print the slower round.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A `/proc/self/status` memory field in MiB, 0 when unknown (not Linux).
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

/// Peak resident memory of this process in MiB (`VmHWM`), 0 when unknown.
pub fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// Resident memory of this process now, MiB (`VmRSS`).
pub fn current_rss_mib() -> f64 {
    status_mib("VmRSS:")
}

/// Runs the benchmark on backend `B`.
pub fn engine<B: AutodiffBackend>(b: &EngineBench) -> Result<BenchReport> {
    let dir = std::env::temp_dir().join(format!("dtx-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("config.json"), unet_config(b).to_string())?;
    let desc = crate::model::describe("diffusers", Some(&dir), &toml::Table::new())?;
    let _ = std::fs::remove_dir_all(&dir);
    let net = Net::from_description(&desc).map_err(|e| anyhow!(e))?;
    let device: B::Device = Default::default();
    let _session = Session::<B>::install(device.clone(), 0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    Session::<B>::with(|s| net.init(&mut s.params, &mut rng, &device, &|_| true))?
        .map_err(|e| anyhow!(e))?;
    let parameters = net
        .parameters()
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    let shape = [b.batch, 3, b.size, b.size];
    let normal = || Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let t =
        Tensor::<B, 1, Int>::from_data(TensorData::new(vec![500i64; b.batch], [b.batch]), &device)
            .float();
    let params = || -> Result<HashMap<String, _>> {
        Ok(Session::<B>::with(|s| {
            s.params
                .entries()
                .iter()
                .map(|e| (e.name.clone(), e.value.clone()))
                .collect::<HashMap<_, _>>()
        })?)
    };
    let adam = AdamConfig {
        lr: 1e-4,
        ..Default::default()
    };

    let mut optimizer = Optimizer::<B>::new();
    let mut train = Vec::new();
    for i in 0..b.warmup + b.iters {
        let (x, eps) = (normal(), normal());
        let start = Instant::now();
        let p = net.weights(&params()?)?;
        let out: Tensor<B, 4> = net.predict(&p, x, t.clone(), None);
        let loss = (out - eps).powf_scalar(2.0).mean();
        Session::<B>::with(|s| {
            let ids = s.params.trainable_ids();
            optimizer.step(&mut s.params, loss.into_primitive().tensor(), &ids, adam)
        })??;
        if i >= b.warmup {
            train.push(start.elapsed().as_secs_f64());
        }
        tracing::debug!(step = i, rss_mib = current_rss_mib(), "bench train step");
    }

    let alpha_bars = Schedule::Linear.alpha_bars(1000);
    let weights = net
        .weights(&params()?)?
        .map(crate::tensor_abi::untracked::<B>);
    let mut x = normal();
    let mut ddim = Vec::new();
    for i in 0..b.warmup + b.iters {
        let start = Instant::now();
        let eps: Tensor<B, 4> = net.predict(&weights, x.clone().detach(), t.clone(), None);
        x = ddim_step(eps, x, 500, 480, &alpha_bars, 0.0, None, None).x_prev;
        // force the computation before stopping the clock
        let _ = x.clone().sum().into_scalar();
        if i >= b.warmup {
            ddim.push(start.elapsed().as_secs_f64());
        }
        tracing::debug!(step = i, rss_mib = current_rss_mib(), "bench ddim step");
    }
    // ε tracked from x_t (sampling with `score` hooks): the graph recorded
    // through the U-Net is released after each step (run/sampling.rs).
    let mut tracked = Vec::new();
    let mut rss_first = 0.0;
    for i in 0..b.warmup + b.iters {
        let start = Instant::now();
        let leaf = x.clone().detach().require_grad();
        let eps: Tensor<B, 4> = net.predict(&weights, leaf.clone(), t.clone(), None);
        let eps = Tensor::from_inner(eps.inner());
        x = ddim_step(eps, x, 500, 480, &alpha_bars, 0.0, None, None).x_prev;
        crate::tensor_abi::release_graph::<B, 4>(leaf);
        let _ = x.clone().sum().into_scalar();
        if i >= b.warmup {
            tracked.push(start.elapsed().as_secs_f64());
        }
        if i == b.warmup {
            rss_first = current_rss_mib();
        }
        tracing::debug!(
            step = i,
            rss_mib = current_rss_mib(),
            "bench tracked ddim step"
        );
    }
    let tracked_growth = current_rss_mib() - rss_first;
    Ok(BenchReport {
        parameters,
        train_step_s: median(train),
        ddim_step_s: median(ddim),
        tracked_ddim_step_s: median(tracked),
        tracked_ddim_rss_growth_mib: tracked_growth,
        peak_rss_mib: peak_rss_mib(),
        threads: rayon::current_num_threads(),
    })
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_is_the_middle_value_or_the_middle_pair_s_mean() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 2.5);
        assert_eq!(median(vec![1.0, 9.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![7.0]), 7.0);
        assert!(median(Vec::new()).is_nan());
    }
}
