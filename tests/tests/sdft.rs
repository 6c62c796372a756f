//! The `sdft` plugin (plugins/sdft, docs/plugins/sdft.md) through `dtx
//! run` end to end — zero distillation while student = source,
//! bit-identical naive fine-tuning when both λ are 0, a frozen source,
//! resume with fresh auxiliary noise, and the diffusers and ADM (learned
//! sigma) models. Its loss terms against a direct computation are in
//! plugins/sdft/tests/in_process.rs.

use dtx_tests::Output;
use dtx_tests::runs::{self, tensors};
use std::path::{Path, PathBuf};

// --- dtx run end to end -----------------------------------------------------

fn out_dir(name: &str) -> PathBuf {
    runs::out_dir("sdft", name)
}

/// [`runs::dtx_run`], which must succeed.
fn dtx_run(manifest_name: &str, out: &Path, sets: &[&str], extra: &[&str]) -> Output {
    let r = runs::dtx_run(manifest_name, out, sets, extra);
    assert_eq!(r.code, 0, "{manifest_name}: {}", r.stderr);
    r
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v.get("step").is_some())
        .collect()
}

fn metric(m: &serde_json::Value, key: &str) -> f64 {
    m[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {m}"))
}

#[test]
fn with_both_lambdas_zero_training_is_bit_identical_to_naive_fine_tuning() {
    let out = out_dir("zero");
    let steps = ["train.steps=5", "sample.count=4"];
    dtx_run("gmm-mlp.toml", &out, &steps, &[]);
    let zero = [
        steps[0],
        steps[1],
        "plugin[0].config.lambda_distill=0.0",
        "plugin[0].config.lambda_aux=0.0",
    ];
    dtx_run("sdft-mlp.toml", &out, &zero, &[]);
    let (ma, a) = tensors(&out.join("gmm-mlp/checkpoints/latest.safetensors"));
    let (mb, b) = tensors(&out.join("sdft-mlp/checkpoints/latest.safetensors"));
    // Every weight, EMA value and Adam moment byte for byte; the sdft run's
    // checkpoint adds only the plugin's (empty) state.
    for (key, bytes) in &a {
        assert!(b.get(key) == Some(bytes), "`{key}` differs");
    }
    let extra: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    assert_eq!(extra, ["plugin_state/sdft"]);
    assert!(b["plugin_state/sdft"].is_empty());
    assert_eq!(ma["progress"], mb["progress"]);
    // The auxiliary term alone (γ_a = 0) does move the weights: its student
    // forward carries the gradient. (At step 0 student = source, so its
    // gradient is 0; from step 1 on it is not.)
    let aux_only = [
        steps[0],
        steps[1],
        "run.name=\"aux-only\"",
        "plugin[0].config.lambda_distill=0.0",
        "plugin[0].config.lambda_aux=1.0",
        "plugin[0].config.gamma_aux=0.0",
    ];
    dtx_run("sdft-mlp.toml", &out, &aux_only, &[]);
    let (_, c) = tensors(&out.join("aux-only/checkpoints/latest.safetensors"));
    let moved = a
        .iter()
        .filter(|(k, v)| k.starts_with("param/") && c.get(*k) != Some(*v))
        .count();
    assert!(moved > 0, "the auxiliary term trained nothing");
    // ... and with both λ = 0 no SDFT value was computed or logged.
    for m in metrics(&out.join("sdft-mlp")) {
        assert!(m.get("sdft.l_distill").is_none() && m.get("sdft.aux").is_none());
    }
}

#[test]
fn the_source_stays_frozen_while_the_student_moves_away_from_it() {
    // The source is a finished run on disk (kind = "dtx"); SDFT fine-tunes
    // from it for a few steps.
    let out = out_dir("frozen");
    dtx_run(
        "gmm-mlp.toml",
        &out,
        &["train.steps=3", "sample.count=4"],
        &[],
    );
    let first = out.join("gmm-mlp");
    let source_file = first.join("checkpoints/latest.safetensors");
    let before = std::fs::read(&source_file).unwrap();
    dtx_run(
        "sdft-mlp.toml",
        &out,
        &[
            "source.kind=\"dtx\"",
            &format!("source.path=\"{}\"", first.display()),
            "source.config={}",
            "train.steps=6",
            "train.lr=1e-2",
            "sample.count=4",
        ],
        &[],
    );
    assert_eq!(
        before,
        std::fs::read(&source_file).unwrap(),
        "the source file changed"
    );
    let ms = metrics(&out.join("sdft-mlp"));
    assert_eq!(ms.len(), 6);
    // Step 0: student = source, so both terms are exactly 0 (same weights,
    // same forward). Later the student has moved and the source has not: the
    // terms are > 0 (a source moving with the student would keep them 0).
    for key in ["sdft.l_distill", "sdft.l_aux"] {
        assert_eq!(metric(&ms[0], key), 0.0, "{key} at step 0: {}", ms[0]);
        for m in &ms[1..] {
            assert!(metric(m, key) > 0.0, "{key}: {m}");
        }
    }
    // The weighted terms are λ · the logged values.
    for m in &ms {
        let d = metric(m, "sdft.distill") - 0.1 * metric(m, "sdft.l_distill");
        assert!(
            d.abs() <= 1e-6 * metric(m, "sdft.distill").abs() + 1e-12,
            "{m}"
        );
    }
    let l: Vec<f64> = ms.iter().map(|m| metric(m, "sdft.l_distill")).collect();
    println!("l_distill per step: {l:?}");
    let (_, src) = tensors(&source_file);
    let (_, student) = tensors(&out.join("sdft-mlp/checkpoints/latest.safetensors"));
    let mut changed = 0;
    for (k, v) in &student {
        if let Some(name) = k.strip_prefix("param/") {
            let s = src
                .get(&format!("ema/{name}"))
                .unwrap_or_else(|| panic!("{name}"));
            changed += usize::from(s != v);
        }
    }
    assert!(changed > 0, "no student weight moved");
}

#[test]
fn fresh_auxiliary_noise_resumes_bit_identically() {
    let sets = [
        "train.steps=6",
        "sample.count=4",
        "plugin[0].config.aux_noise=\"fresh\"",
    ];
    let straight = out_dir("fresh-straight");
    dtx_run("sdft-mlp.toml", &straight, &sets, &[]);
    let split = out_dir("fresh-split");
    dtx_run("sdft-mlp.toml", &split, &sets, &["--stop-after", "3"]);
    dtx_run("sdft-mlp.toml", &split, &sets, &["--resume"]);
    let ckpt = "sdft-mlp/checkpoints/latest.safetensors";
    let (_, a) = tensors(&straight.join(ckpt));
    let (_, b) = tensors(&split.join(ckpt));
    assert_eq!(a, b, "checkpoints differ after 3 + resume + 3 steps");
    let ma = metrics(&straight.join("sdft-mlp"));
    let mb = metrics(&split.join("sdft-mlp"));
    assert_eq!(metric(&ma[5], "sdft.l_aux"), metric(&mb[5], "sdft.l_aux"));
}

#[test]
fn it_runs_on_a_diffusers_unet_and_an_adm_checkpoint_with_learned_sigma() {
    for (name, vlb) in [("sdft-unet", false), ("sdft-adm", true)] {
        let out = out_dir(name);
        dtx_run(&format!("{name}.toml"), &out, &[], &[]);
        let ms = metrics(&out.join(name));
        assert_eq!(ms.len(), 2);
        for m in &ms {
            for key in ["sdft.l_distill", "sdft.l_aux", "sdft.distill", "sdft.aux"] {
                let v = metric(m, key);
                assert!(v.is_finite() && v >= 0.0, "{name}: {key} in {m}");
            }
            assert_eq!(m.get("loss.vlb").is_some(), vlb, "{name}: {m}");
        }
        // step 1: the student has moved, the source has not
        assert!(metric(&ms[1], "sdft.l_distill") > 0.0, "{name}: {}", ms[1]);
        println!("{name}: {}", ms[1]);
    }
}
