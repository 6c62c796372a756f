//! The `anl` plugin (plugins/anl, docs/plugins/anl.md) through the real
//! loader (its module's equations, zero initialisation, gradients and config
//! errors on the diffusers U-Net are plugins/anl/tests/in_process.rs): the
//! attention runs at every residual block of the ADM U-Net, conditional and
//! unconditional, and `dtx run` end to end: only the ANL parameters
//! change, masked sampling from held-out condition images, the
//! unconditional variant, and `--prompt` without a text tower.

use burn::tensor::{Tensor, TensorData};
use dtx::plugins::{InjectArgs, Instance, load_library};
use dtx::tensor_abi::{CpuBackend, Session, SessionGuard, vtables};
use dtx_plugin_api::ModelInfo;
use dtx_tests::mock::{Normal, timesteps};
use dtx_tests::runs::{self, tensors};
use dtx_tests::{plugin_path, workspace_root};
use std::collections::HashMap;

type B = CpuBackend;

fn tensor<const D: usize>(v: Vec<f32>, shape: [usize; D]) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v, shape), &Default::default())
}

fn values<const D: usize>(t: &Tensor<B, D>) -> Vec<f32> {
    t.clone().into_data().to_vec().unwrap()
}

/// A residual block's output point (`down.0.res.1`), not a branch point
/// (`down.0.res.1.branch`, `mid.attn.0.branch`).
fn is_block_output(point: &str) -> bool {
    point.contains(".res.") && !point.ends_with(".branch")
}

fn normal(rng: &mut Normal, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.sample() as f32).collect()
}

/// The ADM fixture's model info (tests/fixtures/adm/full), in a session
/// with condition shape `cond`.
fn adm_session(cond: Option<(usize, usize)>) -> (SessionGuard, ModelInfo) {
    let guard = Session::<B>::install(Default::default(), 12);
    Session::<B>::with(|s| s.services.condition_shape = cond).unwrap();
    let config: toml::Table = toml::from_str(
        r#"image_size = 8
num_channels = 32
num_res_blocks = 1
channel_mult = "1,1"
attention_resolutions = "4"
num_head_channels = 16
use_scale_shift_norm = true
resblock_updown = true
learn_sigma = true
class_cond = true
num_classes = 5"#,
    )
    .unwrap();
    let path = workspace_root().join("tests/fixtures/adm/full/model.pt");
    let desc = dtx::model::describe("adm", Some(&path), &config).unwrap();
    (guard, desc.to_model_info())
}

fn plugin(config: &str, model: &ModelInfo) -> Result<Instance<B>, String> {
    let lib = load_library(&plugin_path("dtx-plugin-anl"), None, vtables::<B>())
        .expect("anl plugin loads");
    Instance::<B>::new("anl", lib, config, model).map_err(|e| format!("{e:#}"))
}

/// With f's last layer random (`zero_init = false`), each point's module
/// maps `[B, C, H, W]` to `[B, C, H, W]` and changes it, for every residual
/// block of the ADM U-Net, with several condition tokens
/// (real attention), one token (no W_Q, W_K) and self-attention.
#[test]
fn attention_shapes_fit_every_point_of_the_adm_unet() {
    // the diffusers U-Net: plugins/anl/tests/in_process.rs
    type Setup = Box<dyn Fn(Option<(usize, usize)>) -> (SessionGuard, ModelInfo)>;
    let kinds: Vec<(&str, Setup)> = vec![("adm", Box::new(adm_session))];
    for (kind, setup) in &kinds {
        for (mode, cond) in [
            ("conditional", Some((5usize, 12usize))),
            ("conditional", Some((1, 12))),
            ("unconditional", None),
        ] {
            let (_g, info) = setup(cond);
            let config =
                format!(r#"{{"mode":"{mode}","zero_init":false,"heads":2,"hidden_mult":2}}"#);
            let mut inst = plugin(&config, &info).unwrap();
            // every residual block's output (ANL's default points), not
            // the branch points inside the blocks
            let residual: Vec<&str> = info
                .points
                .iter()
                .map(|p| p.name.as_str())
                .filter(|p| is_block_output(p))
                .collect();
            assert_eq!(inst.points(), residual, "{kind} {mode}");
            let mut rng = Normal(1);
            for p in info.points.iter().filter(|p| is_block_output(&p.name)) {
                let shape = [2, p.channels, p.height, p.width];
                let h = tensor(normal(&mut rng, shape.iter().product()), shape);
                let c = cond.map(|(n, d)| tensor(normal(&mut rng, 2 * n * d), [2, n, d]));
                let t = timesteps(10, 2);
                let temb = tensor(vec![0.0; 2 * info.temb_channels], [2, info.temb_channels]);
                let out = inst
                    .inject(InjectArgs {
                        point: p.name.as_str(),
                        h: &h,
                        t: &t,
                        temb: &temb,
                        cond: c.as_ref(),
                        labels: None,
                        training: true,
                    })
                    .unwrap();
                assert_eq!(out.dims(), shape, "{kind} {mode} {}", p.name);
                assert_ne!(values(&out), values(&h), "{kind} {mode} {}", p.name);
            }
            // a single token: softmax over one key is 1, so no W_Q / W_K
            let per_point: usize = info
                .points
                .iter()
                .filter(|p| is_block_output(&p.name))
                .map(|p| {
                    let d = p.channels;
                    let (qk, dc) = match cond {
                        Some((1, dc)) => (0, dc),
                        Some((_, dc)) => (d * d + dc * d, dc),
                        None => (2 * d * d, d),
                    };
                    qk + dc * d + (d * 2 * d + 2 * d) + (2 * d * d + d)
                })
                .sum();
            let registered: usize = inst
                .parameters()
                .iter()
                .map(|p| p.shape.iter().product::<usize>())
                .sum();
            assert_eq!(registered, per_point, "{kind} {mode} {cond:?}");
        }
    }
}

/// `dtx run` of tests/manifests/ok/anl-unet.toml for `steps` steps; the
/// checkpoint's tensors.
fn run_steps(
    tag: &str,
    steps: u64,
    sets: &[&str],
) -> (std::path::PathBuf, HashMap<String, Vec<u8>>) {
    let out = runs::out_dir("anl", tag);
    let steps_set = format!("train.steps={steps}");
    let mut all = vec![steps_set.as_str()];
    all.extend_from_slice(sets);
    let o = runs::dtx_run("anl-unet.toml", &out, &all, &[]);
    assert!(o.code == 0, "{}", o.stderr);
    let run = out.join("anl-unet");
    let (_, t) = tensors(&run.join("checkpoints/latest.safetensors"));
    (run, t.into_iter().collect())
}

/// Only the ANL parameters train: after 1 and after 3 steps every base
/// tensor is the same, every adapter's last layer has left zero, and
/// samples are conditioned on held-out images with masks as the rule
/// draws them (conditions.csv).
#[test]
fn only_anl_parameters_change_and_masked_sampling_runs() {
    let (_, one) = run_steps("one", 1, &[]);
    let (run, three) = run_steps("three", 3, &[]);
    let mut base = 0;
    let mut moved = 0;
    for (k, v) in &three {
        let Some(name) = k.strip_prefix("param/") else {
            continue; // optimizer state, EMA
        };
        if name.starts_with("plugin.anl.") {
            if name.ends_with(".f.1.weight") {
                assert!(v.iter().any(|&b| b != 0), "{name} left zero");
                moved += 1;
            }
        } else {
            assert!(one[k] == *v, "base tensor {name} changed");
            base += 1;
        }
    }
    assert_eq!(moved, 8, "one adapter per residual block");
    assert!(base > 10, "base tensors compared: {base}");
    let csv = std::fs::read_to_string(run.join("samples/conditions.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "file,condition,image,top,left,height,width");
    assert_eq!(rows.len(), 3, "{csv}");
    for (i, row) in rows[1..].iter().enumerate() {
        let f: Vec<&str> = row.split(',').collect();
        assert_eq!(f[1], "held_out");
        assert_eq!(f[2], i.to_string());
        // δ = 0.5 on 16×16: an 8×8 rectangle inside the image
        assert_eq!((f[5], f[6]), ("8", "8"));
        assert!(f[3].parse::<usize>().unwrap() <= 8 && f[4].parse::<usize>().unwrap() <= 8);
    }
}

#[test]
fn the_unconditional_variant_runs_without_an_encoder() {
    let out = runs::out_dir("anl", "uncond");
    let o = runs::dtx_run("anl-unconditional-unet.toml", &out, &[], &[]);
    assert!(o.code == 0, "{}", o.stderr);
    let samples = std::fs::read_dir(out.join("anl-unconditional-unet/samples"))
        .unwrap()
        .count();
    assert_eq!(samples, 2);
}

#[test]
fn a_prompt_without_a_text_tower_is_a_clear_error() {
    let out = runs::out_dir("anl", "prompt");
    let o = runs::dtx_run(
        "anl-unet.toml",
        &out,
        &["sample.prompt=\"a red circle\""],
        &[],
    );
    assert_ne!(o.code, 0);
    assert!(
        o.stderr.contains("sample.prompt") && o.stderr.contains("text tower"),
        "{}",
        o.stderr
    );
}

/// A loaded ADM checkpoint trains with the base frozen and samples
/// conditioned on the training images.
#[test]
fn anl_trains_on_a_loaded_adm_checkpoint() {
    let out = runs::out_dir("anl", "adm");
    let o = runs::dtx_run("anl-adm.toml", &out, &[], &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let csv = std::fs::read_to_string(out.join("anl-adm/samples/conditions.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.lines().nth(1).unwrap().contains(",target,0,"), "{csv}");
    // `dtx sample --condition FILE --mask-rate 0`: one image, unmasked
    let image = workspace_root().join("tests/fixtures/data/shapes-preview.png");
    let dest = out.join("from-file");
    let run = out.join("anl-adm");
    let o = dtx_tests::run_in_process(&[
        "sample",
        run.to_str().unwrap(),
        "--condition",
        image.to_str().unwrap(),
        "--mask-rate",
        "0",
        "--out",
        dest.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let csv = std::fs::read_to_string(dest.join("samples/conditions.csv")).unwrap();
    let row: Vec<&str> = csv.lines().nth(2).unwrap().split(',').collect();
    assert!(row[1].ends_with("shapes-preview.png"), "{csv}");
    // image 0, a 0×0 rectangle (δ = 0 masks nothing, wherever it is drawn)
    assert_eq!((row[2], row[5], row[6]), ("0", "0", "0"), "{csv}");
}

/// CLIP conditioning end to end: training on pooled image embeddings of
/// the tiny CLIP fixture, then `dtx sample --prompt` through its text
/// tower, and patch tokens (images only) in training.
#[test]
fn clip_conditioning_trains_and_samples_from_a_prompt() {
    let out = runs::out_dir("anl", "clip");
    let o = runs::dtx_run("anl-clip-unet.toml", &out, &[], &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let run = out.join("anl-clip-unet");
    let dest = out.join("prompted");
    let o = dtx_tests::run_in_process(&[
        "sample",
        run.to_str().unwrap(),
        "--prompt",
        "a photo of a red circle",
        "--out",
        dest.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(dest.join("samples/00001.png").is_file());
    // a prompt leaves no condition images to list
    assert!(!dest.join("samples/conditions.csv").exists());
    let patches = runs::out_dir("anl", "clip-patches");
    let o = runs::dtx_run(
        "anl-clip-unet.toml",
        &patches,
        &["condition.tokens=\"patches\""],
        &[],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
}

/// The condition services as a plugin sees them (the test plugin calls
/// them from `loss`): the shape known at construction, `encode_image` of
/// the step's images with that shape, `encode_text` refused without a text
/// tower.
#[test]
fn plugins_reach_the_condition_services() {
    let out = runs::out_dir("anl", "probe");
    let o = runs::dtx_run("condition-probe.toml", &out, &[], &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let metrics = std::fs::read_to_string(out.join("condition-probe/metrics.jsonl")).unwrap();
    let step: serde_json::Value = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v.get("step").is_some())
        .unwrap();
    assert_eq!(step["probe.cond_tokens"], 4.0, "{step}");
    assert_eq!(step["probe.cond_shape_fits"], 1.0, "{step}");
    assert_eq!(step["probe.text_refused"], 1.0, "{step}");
}
