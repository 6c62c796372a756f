//! The `tgdp` plugin (plugins/tgdp, docs/plugins/tgdp.md) through `dtx
//! run` / `dtx sample` end to end on the MLP denoiser and on a tiny U-Net.
//! The sign test with two Gaussians whose diffused density ratio is
//! closed-form, the loss terms and the networks' input gradients are in
//! plugins/tgdp/tests/in_process.rs.

use dtx_tests::runs::{self, tensors};

/// `dtx run` end to end on the toy MLP (source samples from
/// `[source.data]`) and on a tiny U-Net (source samples from the source
/// model: conv networks), then `dtx sample` reusing the saved networks.
#[test]
fn tgdp_runs_from_a_manifest_and_dtx_sample_reuses_its_networks() {
    for (manifest, from_model) in [("tgdp-mlp", 0.0), ("tgdp-unet", 1.0)] {
        let out = runs::out_dir("tgdp", manifest);
        let o = runs::dtx_run(&format!("{manifest}.toml"), &out, &[], &[]);
        assert_eq!(o.code, 0, "{manifest}: {}", o.stderr);
        let run = out.join(manifest);
        // the three networks are in the run's checkpoint
        let (_, t) = tensors(&run.join("checkpoints/latest.safetensors"));
        for net in ["classifier", "time_classifier", "guidance"] {
            assert!(
                t.keys()
                    .any(|k| k.starts_with(&format!("param/plugin.tgdp.{net}."))),
                "{manifest}: no {net} weights in {:?}",
                t.keys().collect::<Vec<_>>()
            );
        }
        // the choice of source samples is logged
        let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        let line = metrics
            .lines()
            .find(|l| l.contains("tgdp.source_from_model"))
            .expect("source choice logged");
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["value"].as_f64(), Some(from_model), "{manifest}: {line}");
        // dtx sample loads them and samples again
        let o = dtx_tests::run_in_process(&["sample", run.to_str().unwrap(), "--count", "2"]);
        assert_eq!(o.code, 0, "{manifest} sample: {}", o.stderr);
        assert!(o.stdout.contains("samples:"), "{}", o.stdout);
    }
}

/// A `[source.data]` the host cannot build stops the run before anything
/// is written, with an error naming the section and the nearest built-in.
#[test]
fn a_bad_source_data_set_is_named_in_the_error() {
    let out = runs::out_dir("tgdp", "bad-source-data");
    let o = runs::dtx_run(
        "tgdp-mlp.toml",
        &out,
        &["source.data.dataset=\"builtin:gmn\""],
        &[],
    );
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("[source.data]"), "{}", o.stderr);
    assert!(o.stderr.contains("gmm"), "{}", o.stderr);
    assert!(!out.join("tgdp-mlp").exists(), "nothing written");
}

/// The conditional variant end to end: a class-conditional MLP (8 classes,
/// the mixture's components), labels on both domains, `label_map` sending
/// every target class to source class 0…7 reversed, and `sample.label`
/// (prepare fails if either domain's batches lack labels). A missing
/// `num_classes` is a config error naming the key.
#[test]
fn the_conditional_variant_runs_with_labels_and_a_label_map() {
    let sets = [
        "source.config.num_classes=8",
        "target.labels=true",
        "source.data.labels=true",
        "plugin.0.config.conditional=true",
        "plugin.0.config.num_classes=8",
        "plugin.0.config.label_map=[7, 6, 5, 4, 3, 2, 1, 0]",
        "sample.label=2",
    ];
    let out = runs::out_dir("tgdp", "conditional");
    let o = runs::dtx_run("tgdp-mlp.toml", &out, &sets, &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let samples = out.join("tgdp-mlp/samples.json");
    assert!(samples.is_file(), "no samples");

    let out = runs::out_dir("tgdp", "conditional-bad");
    let o = runs::dtx_run("tgdp-mlp.toml", &out, &sets[..4], &[]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("num_classes"), "{}", o.stderr);
}
