//! Trains the `dtx` feature extractor and writes its weights, the file the
//! host embeds (`host/assets/dtx-shapes-extractor.safetensors`):
//!
//! ```text
//! cargo run --release -p dtx --example train_extractor -- host/assets/dtx-shapes-extractor.safetensors
//! ```
//!
//! Deterministic for a given seed and burn version (CPU backend). Prints the
//! loss every 100 steps and the heads' accuracy on fresh shapes at the end.

use burn::backend::{Autodiff, Flex};
use dtx::eval::dtx_net::DtxNet;
use dtx::eval::train_extractor::{TrainSettings, accuracy, normalisation, train};
use std::collections::HashMap;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .ok_or("usage: train_extractor OUT.safetensors [STEPS]")?;
    let mut settings = TrainSettings::default();
    if let Some(steps) = std::env::args().nth(2) {
        settings.steps = steps.parse()?;
    }
    let device = Default::default();
    // DTX_EXTRACTOR_FROM=file skips training: the weights of `file` get
    // their feature statistics measured again (the same numbers for the
    // same weights) and are written to OUT.
    let mut weights = match std::env::var_os("DTX_EXTRACTOR_FROM") {
        Some(from) => {
            let net = DtxNet::<Flex>::from_safetensors(&std::fs::read(from)?, &device)?;
            net.values()
                .into_iter()
                .filter(|(name, _)| !name.starts_with("features."))
                .collect()
        }
        None => {
            let started = std::time::Instant::now();
            let w = train::<Autodiff<Flex>>(settings, &device, &mut |line| eprintln!("{line}"));
            eprintln!("trained in {:.0} s", started.elapsed().as_secs_f64());
            w
        }
    };
    let net = DtxNet::<Flex>::from_values(weights.clone(), &device);
    weights.extend(normalisation(&net, 54321, 2048, &device));
    for res in [16, 32] {
        let [k, c, t] = accuracy(&net, 12345, 512, res, &device);
        eprintln!(
            "accuracy at {res} px on fresh shapes: kind {k:.3}, colour {c:.3}, texture {t:.3}"
        );
    }
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = weights
        .iter()
        .map(|(name, v)| {
            let shape = net.shape_of(name);
            (
                name.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                shape,
            )
        })
        .collect();
    let views: HashMap<String, safetensors::tensor::TensorView<'_>> = bytes
        .iter()
        .map(|(name, b, shape)| {
            (
                name.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                    .expect("sizes match"),
            )
        })
        .collect();
    let meta = HashMap::from([
        ("steps".to_string(), settings.steps.to_string()),
        ("seed".to_string(), settings.seed.to_string()),
    ]);
    std::fs::write(&out, safetensors::serialize(views, Some(meta))?)?;
    eprintln!("wrote {out}");
    Ok(())
}
