//! The `lora` plugin in runs: a run trains the factors alone (B at LoRA+'s
//! rate) and resumes bit-identically, and with an EMA it samples the
//! factors' averages. The update `W + (α/r)·B·A` against f64 loops, the
//! starting factors, the gradients and the config errors are tested in
//! process in the plugin's own crate (plugins/lora/tests/in_process.rs).

use dtx_tests::run_in_process;
use dtx_tests::runs::{dtx_run, out_dir, straight_and_resumed};

#[test]
fn a_run_trains_the_factors_alone_and_resumes_bit_identically() {
    let r = straight_and_resumed("lora", "lora-unet.toml", "lora-unet", 2);
    // every value, moments included, as the uninterrupted run's
    assert_eq!(r.straight, r.resumed);
    let params = |t: &std::collections::BTreeMap<String, Vec<u8>>, pre: &str| {
        t.iter()
            .filter(|(k, _)| k.starts_with(pre))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    // the factors trained: they moved between step 2 and step 4 …
    let factors = params(&r.straight, "param/plugin.lora.");
    assert!(
        !factors.is_empty(),
        "{:?}",
        r.straight.keys().take(8).collect::<Vec<_>>()
    );
    assert_ne!(factors, params(&r.half, "param/plugin.lora."));
    // … while every base weight stayed as it was
    let base = |t| {
        params(t, "param/")
            .into_iter()
            .filter(|(k, _)| !k.starts_with("param/plugin."))
            .collect::<Vec<_>>()
    };
    assert_eq!(base(&r.straight), base(&r.half));
}

/// Every file under `dir/samples`, by name.
fn sample_files(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir.join("samples"))
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// With an EMA, a run samples its plugin's parameters at their averages,
/// as it does the base weights (they were once sampled at their trained
/// values): with a decay that is 1 in f32 (0.99999999) the averages stay at
/// the start, B = 0, so the samples are the source model's, which a run
/// whose factors cannot move (lr 1e-30: `W + s·B·A` rounds to `W`) draws
/// too, while the factors themselves trained at lr 1e-2. `dtx sample` from
/// the checkpoint draws the same samples again.
#[test]
fn with_an_ema_a_run_samples_the_plugin_parameters_averages() {
    let averaged = out_dir("lora", "ema");
    let r = dtx_run(
        "lora-unet.toml",
        &averaged,
        &["train.ema={ decay = 0.99999999 }"],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let unmoved = out_dir("lora", "unmoved");
    let r = dtx_run("lora-unet.toml", &unmoved, &["train.lr=1e-30"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let dir = averaged.join("lora-unet");
    let ran = sample_files(&dir);
    assert!(!ran.is_empty());
    assert_eq!(ran, sample_files(&unmoved.join("lora-unet")));
    // the trained factors did move
    let (_, ckpt) = dtx_tests::runs::tensors(&dir.join("checkpoints/latest.safetensors"));
    let b = ckpt
        .iter()
        .find(|(k, _)| k.starts_with("param/plugin.lora.") && k.ends_with("lora_B.weight"))
        .unwrap();
    assert!(b.1.iter().any(|&x| x != 0), "{}", b.0);
    let again = averaged.join("again");
    let s = run_in_process(&[
        "sample",
        dir.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    assert_eq!(s.code, 0, "{}", s.stderr);
    assert_eq!(ran, sample_files(&again));
    let _ = std::fs::remove_dir_all(&averaged);
    let _ = std::fs::remove_dir_all(&unmoved);
}
