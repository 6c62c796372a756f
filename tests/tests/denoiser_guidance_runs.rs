//! The `denoiser-guidance` plugin through `dtx run` end to end (guidance +
//! rejection; class-conditional fine-tuning + CFG + rejection; mask
//! guidance), including the filter's counts and the resample cap. The
//! plugin's arithmetic against references is in
//! plugins/denoiser-guidance/tests/in_process.rs.

use dtx_tests::runs::{self, tensors};

fn sample_line(run: &std::path::Path) -> serde_json::Value {
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("{\"sample\""))
        .expect("a sample line");
    serde_json::from_str::<serde_json::Value>(line).unwrap()["sample"].clone()
}

/// Guidance + rejection without training on a tiny U-Net: the classifier's
/// accuracies are logged, and the filter's counts add up. Threshold 0
/// accepts everything at once; threshold 1 accepts nothing, and the host
/// stops at `max_attempts_factor × count` with the shortfall in the report.
#[test]
fn guidance_and_rejection_run_and_the_resample_loop_is_capped() {
    let out = runs::out_dir("dg", "accept-all");
    let o = runs::dtx_run(
        "denoiser-guidance-unet.toml",
        &out,
        &["sample.label=1"],
        &[],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let run = out.join("denoiser-guidance-unet");
    let s = sample_line(&run);
    assert_eq!(
        (s["accepted"].as_u64(), s["drawn"].as_u64()),
        (Some(2), Some(2))
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    for key in ["classifier_loss", "train_accuracy", "val_accuracy"] {
        assert!(
            metrics.contains(&format!("denoiser-guidance.{key}")),
            "{key}"
        );
    }
    let labels = std::fs::read_to_string(run.join("samples/labels.csv")).unwrap();
    assert_eq!(
        labels.lines().skip(1).filter(|l| l.contains(",1,")).count(),
        2,
        "{labels}"
    );

    let out = runs::out_dir("dg", "reject-all");
    let o = runs::dtx_run(
        "denoiser-guidance-unet.toml",
        &out,
        &[
            "plugin.0.config.threshold=1.0",
            "sample.max_attempts_factor=3",
        ],
        &[],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let run = out.join("denoiser-guidance-unet");
    let s = sample_line(&run);
    assert_eq!(s["accepted"].as_u64(), Some(0));
    assert_eq!(s["drawn"].as_u64(), Some(6), "3 × count drawn: {s}");
    assert_eq!(s["rejected"]["denoiser-guidance"].as_u64(), Some(6));
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("acceptance rate 0.0%"), "{report}");
    assert!(report.contains("short of the count"), "{report}");
}

/// Class-conditional fine-tuning + CFG + rejection: the class embedding
/// trains (it is in the checkpoint and moved from its initial value), the
/// counts add up (accepted + rejected = drawn), and the samples' classes
/// alternate.
#[test]
fn class_conditional_fine_tune_with_rejection_runs() {
    let out = runs::out_dir("dg", "rejection");
    let o = runs::dtx_run("rejection-unet.toml", &out, &[], &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let run = out.join("rejection-unet");
    let s = sample_line(&run);
    let (acc, drawn) = (
        s["accepted"].as_u64().unwrap(),
        s["drawn"].as_u64().unwrap(),
    );
    let rejected = s["rejected"]["denoiser-guidance"].as_u64().unwrap_or(0);
    assert_eq!(acc + rejected, drawn, "{s}");
    assert!(acc == 4 || drawn == 12, "{s}");
    let (_, t) = tensors(&run.join("checkpoints/latest.safetensors"));
    let key = "param/plugin.denoiser-guidance.class_embedding";
    assert!(t.contains_key(key), "{:?}", t.keys().collect::<Vec<_>>());
    // the same run stopped after its first step: the embedding moved since
    let first = runs::out_dir("dg", "rejection-step1");
    let o = runs::dtx_run("rejection-unet.toml", &first, &[], &["--stop-after", "1"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let (_, t1) = tensors(&first.join("rejection-unet/checkpoints/latest.safetensors"));
    assert_ne!(t1[key], t[key], "the class embedding trained in step 2");
}

/// Labels are required for `labels = "target"`: an unlabelled target stops
/// the run in `prepare` with an error saying how to label it; and
/// `sample.label` without any classes is a host error naming the key.
#[test]
fn an_unlabelled_target_is_an_error_naming_labels() {
    let out = runs::out_dir("dg", "unlabelled");
    let o = runs::dtx_run(
        "denoiser-guidance-unet.toml",
        &out,
        &["target.labels=false"],
        &[],
    );
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("target.labels = true"), "{}", o.stderr);
    let out = runs::out_dir("dg", "unlabelled-label");
    let o = runs::dtx_run(
        "denoiser-guidance-unet.toml",
        &out,
        &["target.labels=false", "sample.label=0"],
        &[],
    );
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("sample.label"), "{}", o.stderr);
    assert!(
        !out.join("denoiser-guidance-unet").exists(),
        "nothing written"
    );
}

/// Mask guidance end to end: the per-pixel classifier trains on the
/// shapes' masks (split `target:masks`), each sample follows a held-out
/// mask (`sample.masks`), and the masks are written next to the samples.
/// Without `sample.masks` the score hook says what to set.
#[test]
fn mask_guidance_runs_with_held_out_masks() {
    let sets = [
        "plugin.0.config.preset=\"mask\"",
        "plugin.0.config.reject=false",
        "sample.masks=\"held_out\"",
    ];
    let out = runs::out_dir("dg", "mask");
    let o = runs::dtx_run("denoiser-guidance-unet.toml", &out, &sets, &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let run = out.join("denoiser-guidance-unet");
    for i in 0..2 {
        assert!(
            run.join(format!("samples/masks/{i:05}.png")).is_file(),
            "mask {i}"
        );
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(
        metrics.contains("denoiser-guidance.val_accuracy"),
        "{metrics}"
    );

    let out = runs::out_dir("dg", "mask-missing");
    let o = runs::dtx_run("denoiser-guidance-unet.toml", &out, &sets[..2], &[]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("sample.masks"), "{}", o.stderr);
}
