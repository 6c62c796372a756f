//! What the `weights` hook costs a training step: the `dtx bench engine`
//! U-Net (channels 64,128,128, 2 layers per block, attention at the two
//! lower levels, 32×32, batch 16) trained one step — forward, ε-MSE,
//! backward, AdamW on every base weight — without a plugin, and with the
//! `lora` plugin at rank 4 on every attention projection and every 3×3
//! convolution (W' = W + B·A computed by the plugin through the ABI in the
//! forward, its backward, A and B stepped too). Interleaved, medians over
//! `ITERS` steps each after one untimed step. Also the LoRA step with the
//! base frozen, as a LoRA run trains. Run with
//! `RAYON_NUM_THREADS=2 cargo bench -p dtx-tests --bench lora_step`;
//! figures go in docs/performance.md.

use burn::tensor::{Distribution, Int, Tensor, TensorData};
use dtx::bench::{EngineBench, median, unet_config};
use dtx::model::{Denoiser, Net};
use dtx::plugins::{Instance, load_library};
use dtx::tensor_abi::{CpuBackend, Session, vtables};
use dtx::train::optim::{AdamConfig, Optimizer};
use rand::SeedableRng;
use std::collections::HashMap;
use std::time::Instant;

type B = CpuBackend;
const ITERS: usize = 5;

fn unet(bench: &EngineBench) -> Net {
    let dir = std::env::temp_dir().join(format!("dtx-lora-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), unet_config(bench).to_string()).unwrap();
    let desc = dtx::model::describe("diffusers", Some(&dir), &toml::Table::new()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let net = Net::from_description(&desc).unwrap();
    let details = dtx::model::details_of(&net, &desc, "epsilon");
    Session::<B>::with(|s| s.services.model_details = Some(details)).unwrap();
    net
}

fn main() {
    let _session = Session::<B>::install(Default::default(), 0);
    dtx::train::optim::install::<B>(AdamConfig::default()).unwrap();
    let bench = EngineBench::default();
    let net = unet(&bench);
    let (n, side) = (bench.batch, bench.size);
    let device = Default::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    Session::<B>::with(|s| net.init(&mut s.params, &mut rng, &device, &|_| true))
        .unwrap()
        .unwrap();
    // every attention projection and every 3×3 convolution
    let targets: Vec<String> = net
        .catalogue()
        .entries()
        .iter()
        .filter(|(k, s)| {
            let attention = [".to_q.", ".to_k.", ".to_v.", ".to_out.0."]
                .iter()
                .any(|p| k.contains(p));
            k.ends_with(".weight") && (attention || (s.len() == 4 && s[2..] == [3, 3]))
        })
        .map(|(k, _)| k.clone())
        .collect();
    let config = serde_json::json!({"rank": 4, "targets": targets}).to_string();
    let lib = load_library(
        &dtx_tests::plugin_path("dtx-plugin-lora"),
        None,
        vtables::<B>(),
    )
    .expect("lora plugin");
    let mut lora = Instance::<B>::new("lora", lib, &config, &Default::default()).unwrap();
    let factors: usize = lora
        .parameters()
        .iter()
        .map(|p| p.shape.iter().product::<usize>())
        .sum();
    let base: usize = net
        .parameters()
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();

    let t = Tensor::<B, 1, Int>::from_data(TensorData::new(vec![500i64; n], [n]), &device).float();
    let normal =
        || Tensor::<B, 4>::random([n, 3, side, side], Distribution::Normal(0.0, 1.0), &device);
    let adam = AdamConfig {
        lr: 1e-4,
        ..Default::default()
    };
    let mut optimizer = Optimizer::<B>::new();
    let catalogue = net.catalogue().clone();
    let lora_ids: Vec<_> = lora.parameters().iter().map(|p| p.id).collect();
    // one training step; `hook`: through the lora plugin; `base`: the base weights train
    let mut step = |hook: bool, train_base: bool| -> f64 {
        let (x, eps) = (normal(), normal());
        let start = Instant::now();
        let params: HashMap<String, _> = Session::<B>::with(|s| {
            s.params
                .entries()
                .iter()
                .map(|e| (e.name.clone(), e.value.clone()))
                .collect()
        })
        .unwrap();
        let mut w = net.weights(&params).unwrap();
        if hook {
            for key in lora.weight_targets().to_vec() {
                let i = catalogue.index_of(&key).unwrap();
                let new = lora.weights(&key, w.tensor(i), true).unwrap();
                w.set(i, new);
            }
        }
        let out: Tensor<B, 4> = net.predict(&w, x, t.clone(), None);
        let loss = (out - eps).powf_scalar(2.0).mean();
        Session::<B>::with(|s| {
            let mut ids: Vec<_> = if train_base {
                s.params
                    .trainable_ids()
                    .into_iter()
                    .filter(|i| !lora_ids.contains(i))
                    .collect()
            } else {
                Vec::new()
            };
            if hook {
                ids.extend(lora_ids.iter().copied());
            }
            optimizer.step(&mut s.params, loss.into_primitive().tensor(), &ids, adam)
        })
        .unwrap()
        .unwrap();
        start.elapsed().as_secs_f64()
    };
    let (mut plain, mut with, mut frozen) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..=ITERS {
        let (a, b, c) = (step(false, true), step(true, true), step(true, false));
        if i > 0 {
            plain.push(a);
            with.push(b);
            frozen.push(c);
        }
    }
    let (a, b, c) = (median(plain), median(with), median(frozen));
    println!(
        "lora_step: {} base parameters, {} LoRA targets, {} factor parameters (rank 4); threads {}",
        base,
        targets.len(),
        factors,
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into())
    );
    println!("  training step, no plugin:                  {a:.3} s");
    println!(
        "  training step, lora weights hook:          {b:.3} s  ({:+.1} %)",
        100.0 * (b / a - 1.0)
    );
    println!("  training step, lora, base frozen:          {c:.3} s");
}
