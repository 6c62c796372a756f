//! `dtx run` end to end on the MLP and U-Net sources: a run folder with everything in
//! it, bit-identical resume, and a clean stop on a non-finite loss.

use dtx_tests::run_in_process;
use dtx_tests::runs::{self, dtx_run, tensors};
use std::path::PathBuf;

fn out_dir(name: &str) -> PathBuf {
    runs::out_dir("run", name)
}

fn manifest(name: &str) -> String {
    runs::ok_manifest(name)
}

#[test]
fn a_run_writes_its_folder() {
    let out = out_dir("folder");
    let r = dtx_run(
        "two-plugins.toml",
        &out,
        &["train.steps=6", "sample.count=8", "sample.steps=5"],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let dir = out.join("two-plugins");
    for f in [
        "manifest.toml",
        "metrics.jsonl",
        "report.md",
        "samples.json",
        "samples.png",
        "checkpoints/latest.safetensors",
    ] {
        assert!(dir.join(f).exists(), "{f} missing in {}", dir.display());
    }
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let first = first_step(&metrics);
    // Every loss term by name, each plugin's included, and what plugins logged.
    for key in [
        "loss",
        "loss.simple",
        "adapter.l2",
        "probe.fit",
        "probe.fit_value",
        "lr",
        "samples_per_s",
        "step",
    ] {
        assert!(first.get(key).is_some(), "{key} missing in {first}");
    }
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"step\"")).count(),
        6
    );
    // what `probe` logged in prepare has its own line, before the steps
    let prepare: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert_eq!(prepare["prepare"], "probe", "{prepare}");
    assert_eq!(prepare["key"], "probe.w_mean", "{prepare}");
    // `dtx sample` from the folder's checkpoint, with its plugins.
    let more = out.join("more");
    let (d, m) = (dir.display().to_string(), more.display().to_string());
    let s = run_in_process(&[
        "sample", &d, "--count", "5", "--steps", "4", "--seed", "9", "--out", &m,
    ]);
    assert_eq!(s.code, 0, "{}", s.stderr);
    let rows: Vec<Vec<f32>> =
        serde_json::from_str(&std::fs::read_to_string(more.join("samples.json")).unwrap()).unwrap();
    assert_eq!(rows.len(), 5);
    // `--set` changes a plugin (or sampling) key for one sampling: the
    // probe's score guidance moves every sample …
    let guided = out.join("guided").display().to_string();
    let g = run_in_process(&[
        "sample",
        &d,
        "--count",
        "5",
        "--steps",
        "4",
        "--seed",
        "9",
        "--out",
        &guided,
        "--set",
        "plugin[1].config.guidance=0.5",
    ]);
    assert_eq!(g.code, 0, "{}", g.stderr);
    let guided_rows: Vec<Vec<f32>> = serde_json::from_str(
        &std::fs::read_to_string(PathBuf::from(&guided).join("samples.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(guided_rows.len(), 5);
    assert_ne!(guided_rows, rows);
    // … and a key the checkpoint fixes is refused
    let fixed = run_in_process(&["sample", &d, "--set", "train.steps=3"]);
    assert!(
        fixed
            .failed()
            .contains("`train.steps` is not sampling or plugin key"),
        "{}",
        fixed.stderr
    );
    let nope = out.join("nope").display().to_string();
    let missing = run_in_process(&["sample", &nope]);
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("has no checkpoint"),
        "{}",
        missing.stderr
    );
    // A second run into the same folder is refused: no work is overwritten.
    let again = dtx_run("two-plugins.toml", &out, &[], &[]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("--resume"), "{}", again.stderr);
}

#[test]
fn resume_continues_bit_identically() {
    // The MLP on points, the U-Net on images (flips, EMA, warmup), and an
    // ADM checkpoint with dropout (its masks from the run's seed).
    let dropout: &[&str] = &["source.config.dropout=0.3", "train.ema={decay=0.9}"];
    for (name, steps, half, samples, sets) in [
        ("gmm-mlp", 20, 10, "samples.json", &[][..]),
        ("shapes-unet", 4, 2, "samples/00003.png", &[][..]),
        ("adm-pt", 4, 2, "samples/00001.png", dropout),
    ] {
        let run = |extra: &[&str], out: &PathBuf| {
            let steps = format!("train.steps={steps}");
            let mut all = vec![steps.as_str(), "sample.count=4"];
            all.extend(sets);
            let r = dtx_run(&format!("{name}.toml"), out, &all, extra);
            assert_eq!(r.code, 0, "{}", r.stderr);
            r
        };
        let straight = out_dir(&format!("straight-{name}"));
        run(&[], &straight);
        let split = out_dir(&format!("split-{name}"));
        run(&["--stop-after", &half.to_string()], &split);
        let r = run(&["--resume"], &split);
        assert!(
            r.stdout
                .contains(&format!("resumed `{name}` at step {half}")),
            "{}",
            r.stdout
        );
        let ckpt = format!("{name}/checkpoints/latest.safetensors");
        let (ma, a) = tensors(&straight.join(&ckpt));
        let (mb, b) = tensors(&split.join(&ckpt));
        // Every weight, EMA value and Adam moment byte for byte, and the same
        // progress record (step, data position) and Adam step counts.
        assert_eq!(a.len(), b.len());
        assert!(
            a.keys().any(|k| k.starts_with("ema/")) && a.keys().any(|k| k.starts_with("adam_m/"))
        );
        for (key, bytes) in &a {
            assert!(
                b.get(key) == Some(bytes),
                "{name}: `{key}` differs after {half} + resume + {half} steps"
            );
        }
        assert_eq!(ma["progress"], mb["progress"]);
        assert_eq!(ma["adam_k"], mb["adam_k"]);
        let sa = std::fs::read(straight.join(name).join(samples)).unwrap();
        let sb = std::fs::read(split.join(name).join(samples)).unwrap();
        assert_eq!(sa, sb, "{name}: samples differ");
    }
}

#[test]
fn an_image_run_validates_warms_up_and_writes_png_samples() {
    let out = out_dir("image");
    let r = dtx_run("shapes-unet.toml", &out, &[], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let dir = out.join("shapes-unet");
    let metrics: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v.get("step").is_some())
        .collect();
    assert_eq!(metrics.len(), 4);
    // warmup = 2: lr 0.5e-3, 1e-3, then constant
    let lrs: Vec<f64> = metrics.iter().map(|m| m["lr"].as_f64().unwrap()).collect();
    assert_eq!(lrs, [0.5e-3, 1e-3, 1e-3, 1e-3]);
    // validate_every = 2: steps 2 and 4 carry the held-out loss
    let val: Vec<bool> = metrics
        .iter()
        .map(|m| m.get("val.simple").is_some())
        .collect();
    assert_eq!(val, [false, true, false, true]);
    for i in 0..4 {
        let png = image::open(dir.join(format!("samples/{i:05}.png"))).unwrap();
        assert_eq!((png.width(), png.height()), (16, 16));
    }
    assert!(dir.join("samples.png").exists());
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(report.contains("samples.png"), "{report}");
    // `dtx sample` works from the run folder (its manifest copy has absolute paths).
    let more = out.join("more");
    let (d, m) = (dir.display().to_string(), more.display().to_string());
    let s = run_in_process(&["sample", &d, "--count", "2", "--steps", "2", "--out", &m]);
    assert_eq!(s.code, 0, "{}", s.stderr);
    assert!(more.join("samples/00001.png").exists());
}

#[test]
fn image_data_that_does_not_fit_the_model_is_refused_before_the_run_starts() {
    let out = out_dir("misfit");
    let r = dtx_run("shapes-unet.toml", &out, &["target.resolution=32"], &[]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("[3, 32, 32]") && r.stderr.contains("[3, 16, 16]"),
        "{}",
        r.stderr
    );
    assert!(
        !out.join("shapes-unet").exists(),
        "a failed start left a run folder"
    );
    let r = dtx_run("shapes-unet.toml", &out, &["target.holdout=0"], &[]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("target.holdout"), "{}", r.stderr);
}

#[test]
fn a_non_finite_loss_stops_the_run_naming_step_and_terms() {
    let out = out_dir("nan");
    let r = dtx_run(
        "two-plugins.toml",
        &out,
        &[
            "train.steps=8",
            "train.checkpoint_every=2",
            "plugin[1].config.nan_at_step=5",
        ],
        &[],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("training stopped at step 6: loss term `probe.fit` is NaN"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("loss.simple = "), "{}", r.stderr);
    // The last good checkpoint (after step 4) is kept.
    assert!(
        out.join("two-plugins/checkpoints/latest.safetensors")
            .exists()
    );
}

#[test]
fn prediction_types_and_clipping_run_and_unsupported_settings_are_refused() {
    for prediction in ["v_prediction", "sample"] {
        let out = out_dir(prediction);
        let prediction_set = format!("source.prediction=\"{prediction}\"");
        let r = dtx_run(
            "gmm-mlp.toml",
            &out,
            &[
                &prediction_set,
                "train.steps=3",
                "train.grad_clip=0.5",
                "train.optimizer=\"sgd\"",
                "sample.count=4",
            ],
            &[],
        );
        assert_eq!(r.code, 0, "{prediction}: {}", r.stderr);
        let metrics = std::fs::read_to_string(out.join("gmm-mlp/metrics.jsonl")).unwrap();
        assert!(metrics.contains("grad_norm"), "{metrics}");
    }
    let out = out_dir("unsupported");
    let r = dtx_run("gmm-mlp.toml", &out, &["sample.guidance=2.0"], &[]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("sample.guidance"), "{}", r.stderr);
}

#[test]
fn pretrain_exports_a_diffusers_folder_that_runs_as_a_pretrained_source() {
    let out = out_dir("pretrain");
    let model = out.join("model");
    let (o, m) = (out.display().to_string(), model.display().to_string());
    let r = run_in_process(&[
        "pretrain",
        &manifest("shapes-unet.toml"),
        "--quiet",
        "--set",
        &format!("run.output_dir=\"{o}\""),
        "--set",
        "train.steps=2",
        "--out",
        &m,
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("model: "), "{}", r.stdout);
    // The folder holds the config and the EMA weights, under their own keys.
    assert!(model.join("config.json").exists());
    let (_, exported) = tensors(&model.join("diffusion_pytorch_model.safetensors"));
    let (_, ckpt) = tensors(&out.join("shapes-unet/checkpoints/latest.safetensors"));
    assert!(exported.contains_key("conv_in.weight"));
    for (k, v) in &exported {
        assert_eq!(
            Some(v),
            ckpt.get(&format!("ema/{k}")),
            "`{k}` is not the EMA value"
        );
    }
    // ... and a run loads it as a pretrained source.
    let again = dtx_run(
        "shapes-unet.toml",
        &out.join("second"),
        &[
            &format!("source.path=\"{m}\""),
            "source.init=\"pretrained\"",
            "train.steps=1",
        ],
        &[],
    );
    assert_eq!(again.code, 0, "{}", again.stderr);
    // Plugins and non-diffusers sources are refused before any work.
    let mlp = run_in_process(&["pretrain", &manifest("gmm-mlp.toml")]);
    assert_eq!(mlp.code, 1);
    assert!(
        mlp.stderr.contains("kind = \"diffusers\""),
        "{}",
        mlp.stderr
    );
    let plugins = run_in_process(&["pretrain", &manifest("two-plugins.toml")]);
    assert_eq!(plugins.code, 1);
    assert!(plugins.stderr.contains("[[plugin]]"), "{}", plugins.stderr);
}

#[test]
fn an_adm_checkpoint_fine_tunes_class_conditionally_and_samples_with_learned_variance() {
    let out = out_dir("adm");
    let r = dtx_run("adm-pt.toml", &out, &[], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // the hybrid objective: L_simple on the mean, L_vlb on the variance
    let metrics = std::fs::read_to_string(out.join("adm-pt/metrics.jsonl")).unwrap();
    let first = first_step(&metrics);
    let vlb = first["loss.vlb"].as_f64().unwrap();
    assert!(vlb.is_finite() && vlb > 0.0, "{first}");
    for i in 0..2 {
        let png = image::open(out.join(format!("adm-pt/samples/{i:05}.png"))).unwrap();
        assert_eq!((png.width(), png.height()), (8, 8));
    }
    // Labels the model has no embedding for are refused, naming the numbers.
    let r = dtx_run(
        "adm-pt.toml",
        &out_dir("adm-label"),
        &["sample.label=7"],
        &[],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("`sample.label = 7`"), "{}", r.stderr);
    let r = dtx_run(
        "adm-pt.toml",
        &out_dir("adm-target"),
        &["target.config={preset=\"all\"}"],
        &[],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("has class label 5"), "{}", r.stderr);
}

/// A `dropout` in the ADM flags changes what a training step computes: the
/// first step's loss, from the same batch and noise, differs from the run
/// without dropout, and `dropout = 0` is that run exactly. (That the eval
/// forward ignores dropout is tested in `model::diffusers::net_tests`.)
#[test]
fn adm_dropout_changes_the_training_forward() {
    let loss = |sets: &[&str], name: &str| {
        let out = out_dir(name);
        let mut all = vec!["train.steps=1", "sample.count=2"];
        all.extend(sets);
        let r = dtx_run("adm-pt.toml", &out, &all, &[]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let metrics = std::fs::read_to_string(out.join("adm-pt/metrics.jsonl")).unwrap();
        first_step(&metrics)["loss.simple"].as_f64().unwrap()
    };
    let plain = loss(&[], "adm-no-dropout");
    let same = loss(&["source.config.dropout=0.0"], "adm-dropout-0");
    let dropped = loss(&["source.config.dropout=0.5"], "adm-dropout");
    assert_eq!(plain, same);
    assert!((plain - dropped).abs() > 1e-6, "{plain} vs {dropped}");
}

#[test]
fn a_finished_run_is_a_source_for_the_next_one() {
    // Train the MLP, then start a second run from its folder (`kind = "dtx"`):
    // the second run's base weights are the first run's EMA weights.
    let out = out_dir("dtx-source");
    let r = dtx_run(
        "gmm-mlp.toml",
        &out,
        &["train.steps=5", "sample.count=4"],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let first = out.join("gmm-mlp");
    let r = dtx_run(
        "gmm-mlp.toml",
        &out,
        &[
            "run.name=\"second\"",
            "source.kind=\"dtx\"",
            &format!("source.path=\"{}\"", first.display()),
            "source.config={}",
            // a step too small to move any weight: the checkpoint shows what was loaded
            "train.steps=1",
            "train.lr=1e-30",
            "sample.count=4",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (_, a) = tensors(&first.join("checkpoints/latest.safetensors"));
    let (_, b) = tensors(&out.join("second/checkpoints/latest.safetensors"));
    let mut n = 0;
    for (k, v) in &b {
        if let Some(name) = k.strip_prefix("param/") {
            assert_eq!(Some(v), a.get(&format!("ema/{name}")), "`{name}`");
            n += 1;
        }
    }
    assert!(n > 0);
    // A folder that is not a run is named.
    let r = dtx_run(
        "gmm-mlp.toml",
        &out,
        &[
            "run.name=\"third\"",
            "source.kind=\"dtx\"",
            &format!("source.path=\"{}\"", out.display()),
            "source.config={}",
        ],
        &[],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("latest.safetensors"), "{}", r.stderr);
}

#[test]
fn a_loss_hook_can_ask_for_the_students_prediction() {
    // The probe calls denoise(student) inside its own `loss`: the forward runs
    // (the adapter's modules in, the probe's own left out) and its term trains.
    let out = out_dir("student-in-loss");
    let r = dtx_run(
        "two-plugins.toml",
        &out,
        &[
            "train.steps=3",
            "train.trainable=\"all\"",
            "plugin[1].config.student_weight=1.0",
            "sample.count=4",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let metrics = std::fs::read_to_string(out.join("two-plugins/metrics.jsonl")).unwrap();
    let first = first_step(&metrics);
    for key in ["probe.student", "probe.student_gap"] {
        let v = first[key].as_f64().unwrap_or(f64::NAN);
        assert!(v.is_finite(), "{key} in {first}");
    }
}

#[test]
fn prepare_reports_the_optimizer_steps_a_plugin_took() {
    // The probe's `prepare` takes 7 optimizer steps through the host.
    let out = out_dir("prepare-progress");
    let r = run_in_process(&[
        "run",
        &manifest("two-plugins.toml"),
        "--set",
        &format!("run.output_dir=\"{}\"", out.display()),
        "--set",
        "train.steps=1",
        "--set",
        "plugin[1].config.prepare_steps=7",
        "--set",
        "sample.count=2",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("prepare `probe`: 7 optimizer steps in "),
        "{}",
        r.stdout
    );
}

/// The first training step's line of `metrics.jsonl` (prepare lines come
/// before it).
fn first_step(metrics: &str) -> serde_json::Value {
    metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v.get("step").is_some())
        .expect("a training step in metrics.jsonl")
}
