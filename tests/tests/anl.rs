//! The `anl` plugin (plugins/anl, docs/plugins/anl.md) through the real
//! loader: zero-initialised adapters leave the source model's output
//! unchanged, the attention runs at every residual block of both U-Net
//! kinds (diffusers and ADM), conditional and unconditional, config errors
//! name their key, and `dtx run` end to end: only the ANL parameters
//! change, masked sampling from held-out condition images, the
//! unconditional variant, and `--prompt` without a text tower.

use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use dtx::model::{Denoiser, Hooks, Net};
use dtx::plugins::{InjectArgs, Instance, load_library};
use dtx::tensor_abi::{CpuBackend, Session, SessionGuard, vtables};
use dtx_plugin_api::ModelInfo;
use dtx_tests::mock::{Normal, timesteps};
use dtx_tests::runs::{self, tensors};
use dtx_tests::{plugin_path, workspace_root};
use std::collections::HashMap;

type B = CpuBackend;
/// The U-Net's weights by name, as the session's parameters hold them.
type Params = HashMap<String, burn::tensor::ops::FloatTensor<B>>;

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

/// A session whose condition embeddings are `cond` (`(N, D_c)`), with the
/// tiny diffusers U-Net's random weights registered; its net, weights and
/// model info.
fn diffusers_session(cond: Option<(usize, usize)>) -> (SessionGuard, Net, Params, ModelInfo) {
    let guard = Session::<B>::install(Default::default(), 11);
    Session::<B>::with(|s| s.services.condition_shape = cond).unwrap();
    let (net, params, info) = dtx_tests::mock::tiny_unet(3);
    (guard, net, params, info)
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

/// The U-Net's output with `inst` injecting at its points (`None`: none).
fn forward(
    net: &Net,
    params: &Params,
    inst: Option<&mut Instance<B>>,
    x: Tensor<B, 4>,
    t: usize,
    cond: Option<&Tensor<B, 3>>,
) -> Vec<f32> {
    let n = x.dims()[0];
    let tf = timesteps(t, n);
    let mut hooks = Injection {
        inst,
        t: tf.clone(),
        cond,
    };
    let weights = net.weights(params).unwrap();
    let out = net
        .forward(&weights, x, tf, None, &mut hooks, None)
        .unwrap();
    values(&out)
}

/// `inst`'s `inject` at each of its points (none without one).
struct Injection<'a> {
    inst: Option<&'a mut Instance<B>>,
    t: Tensor<B, 1>,
    cond: Option<&'a Tensor<B, 3>>,
}

impl Injection<'_> {
    fn at<const D: usize>(
        &mut self,
        point: &str,
        h: Tensor<B, D>,
        temb: &Tensor<B, 2>,
    ) -> Result<Tensor<B, D>, dtx_plugin_api::abi::AbiError> {
        match self.inst.as_deref_mut() {
            Some(i) if i.points().iter().any(|p| p == point) => i
                .inject(InjectArgs {
                    point,
                    h: &h,
                    t: &self.t,
                    temb,
                    cond: self.cond,
                    labels: None,
                    training: false,
                })
                .map_err(|e| dtx_plugin_api::abi::AbiError::other(e.to_string())),
            _ => Ok(h),
        }
    }
}

impl Hooks<B, 4> for Injection<'_> {
    type Error = dtx_plugin_api::abi::AbiError;

    fn temb(&mut self, temb: Tensor<B, 2>) -> Result<Tensor<B, 2>, Self::Error> {
        self.at("temb", temb.clone(), &temb)
    }

    fn block(
        &mut self,
        point: &str,
        h: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
    ) -> Result<Tensor<B, 4>, Self::Error> {
        self.at(point, h, temb)
    }
}

/// Zero-initialised f (the default): before the first step the adapted
/// U-Net's output is the source's, exactly (every module adds 0), for the
/// conditional and the unconditional variant.
#[test]
fn zero_initialised_adapters_leave_the_source_output_unchanged() {
    for (config, cond_shape) in [
        (r#"{"mode":"conditional"}"#, Some((8usize, 64usize))),
        (r#"{"mode":"unconditional"}"#, None),
    ] {
        let (_g, net, params, info) = diffusers_session(cond_shape);
        let mut inst = plugin(config, &info).unwrap();
        assert_eq!(
            inst.points().len(),
            8,
            "every residual block: {:?}",
            inst.points()
        );
        let mut rng = Normal(7);
        let x = normal(&mut rng, 2 * 3 * 16 * 16);
        let cond = cond_shape.map(|(n, d)| tensor(normal(&mut rng, 2 * n * d), [2, n, d]));
        let source = forward(
            &net,
            &params,
            None,
            tensor(x.clone(), [2, 3, 16, 16]),
            500,
            None,
        );
        let adapted = forward(
            &net,
            &params,
            Some(&mut inst),
            tensor(x, [2, 3, 16, 16]),
            500,
            cond.as_ref(),
        );
        assert_eq!(source, adapted, "{config}");
    }
}

/// With f's last layer random (`zero_init = false`), each point's module
/// maps `[B, C, H, W]` to `[B, C, H, W]` and changes it, for every residual
/// block of the diffusers and the ADM U-Net, with several condition tokens
/// (real attention), one token (no W_Q, W_K) and self-attention.
#[test]
fn attention_shapes_fit_every_point_of_both_unet_kinds() {
    type Setup = Box<dyn Fn(Option<(usize, usize)>) -> (SessionGuard, ModelInfo)>;
    let kinds: Vec<(&str, Setup)> = vec![
        (
            "diffusers",
            Box::new(|c| {
                let (g, _, _, info) = diffusers_session(c);
                (g, info)
            }),
        ),
        ("adm", Box::new(adm_session)),
    ];
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

#[test]
fn config_errors_name_the_key() {
    let (_g, _, _, info) = diffusers_session(None);
    let e = plugin(r#"{"mode":"conditional"}"#, &info)
        .err()
        .expect("an error");
    assert!(e.contains("mode") && e.contains("[condition]"), "{e}");
    let e = plugin(r#"{"mode":"unconditional","points":["down.9.*"]}"#, &info)
        .err()
        .expect("an error");
    assert!(
        e.contains("points") && e.contains("select no residual block"),
        "{e}"
    );
    let e = plugin(r#"{"mode":"unconditional","heads":3}"#, &info)
        .err()
        .expect("an error");
    assert!(e.contains("heads"), "{e}");
    for huge in [
        r#"{"mode":"unconditional","hidden_mult":100000000}"#,
        r#"{"mode":"unconditional","d_attn":4000000000}"#,
        r#"{"mode":"unconditional","heads":1000000}"#,
    ] {
        let e = plugin(huge, &info).err().expect("an error");
        assert!(e.contains("must be at most"), "{huge}: {e}");
    }
    let e = plugin(r#"{"mode":"unconditional","points":["temb"]}"#, &info)
        .err()
        .expect("an error");
    assert!(e.contains("points"), "{e}");
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

/// The module's values, `h + f(softmax(Q Kᵀ / √d_head) V)` (Eq. 8–9, two
/// heads), at `mid.res.0` of the tiny U-Net with random weights and f's
/// last layer random (`zero_init = false`), against the same equations
/// written out in plain f64 loops from the registered parameters
/// (`Linear` weights are `[d_in, d_out]`). ReLU for f's activation, so
/// the reference needs no erf. Tolerance 1e-4 absolute (f32 forward).
/// Three condition tokens; and one, where softmax over a single key is 1,
/// A = W_V c, and the module has no W_Q or W_K to use.
#[test]
fn the_module_computes_eq_8_and_9() {
    eq_8_and_9_with_tokens(3);
    eq_8_and_9_with_tokens(1);
}

fn eq_8_and_9_with_tokens(tokens: usize) {
    let (_g, _, _, info) = diffusers_session(Some((tokens, 5)));
    let mut inst = plugin(
        r#"{"mode":"conditional","zero_init":false,"heads":2,"d_attn":8,"activation":"relu","points":["mid.res.0"]}"#,
        &info,
    )
    .unwrap();
    let p = info.points.iter().find(|p| p.name == "mid.res.0").unwrap();
    let (b, c, hw) = (2usize, p.channels, p.height * p.width);
    let mut rng = Normal(9);
    let h = normal(&mut rng, b * c * hw);
    let cond = normal(&mut rng, b * tokens * 5);
    let t = timesteps(10, b);
    let temb = tensor(vec![0.0; b * info.temb_channels], [b, info.temb_channels]);
    let out = inst
        .inject(InjectArgs {
            point: "mid.res.0",
            h: &tensor(h.clone(), [b, c, p.height, p.width]),
            t: &t,
            temb: &temb,
            cond: Some(&tensor(cond.clone(), [b, tokens, 5])),
            labels: None,
            training: false,
        })
        .unwrap();
    let got = values(&out);
    // the registered parameters by name
    let w: HashMap<String, Vec<f64>> = inst
        .parameters()
        .iter()
        .map(|pi| {
            let v = Session::<B>::with(|s| s.params.get(pi.id).unwrap().value.clone()).unwrap();
            let n: usize = pi.shape.iter().product();
            let flat =
                values(&Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(v)).reshape([n]));
            (
                pi.name.to_string(),
                flat.into_iter().map(f64::from).collect(),
            )
        })
        .collect();
    let lin = |x: &[f64], name: &str, din: usize, dout: usize| -> Vec<f64> {
        let wt = &w[&format!("mid.res.0.{name}.weight")];
        let bias = w.get(&format!("mid.res.0.{name}.bias"));
        (0..dout)
            .map(|o| {
                (0..din).map(|i| x[i] * wt[i * dout + o]).sum::<f64>()
                    + bias.map_or(0.0, |bv| bv[o])
            })
            .collect()
    };
    let (dk, heads, dh) = (8usize, 2usize, 4usize);
    let mut max_err = 0f64;
    for bi in 0..b {
        let token = |m: usize| -> Vec<f64> {
            (0..5)
                .map(|j| cond[(bi * tokens + m) * 5 + j] as f64)
                .collect()
        };
        let vals: Vec<Vec<f64>> = (0..tokens).map(|m| lin(&token(m), "v", 5, dk)).collect();
        // One token: no W_K (nor W_Q) is registered, and none is needed.
        let keys: Vec<Vec<f64>> = if tokens == 1 {
            assert!(!w.contains_key("mid.res.0.k.weight"));
            assert!(!w.contains_key("mid.res.0.q.weight"));
            Vec::new()
        } else {
            (0..tokens).map(|m| lin(&token(m), "k", 5, dk)).collect()
        };
        for pos in 0..hw {
            let x: Vec<f64> = (0..c)
                .map(|ch| h[(bi * c + ch) * hw + pos] as f64)
                .collect();
            let mut a = vals[0].clone();
            if tokens > 1 {
                let q = lin(&x, "q", c, dk);
                for hd in 0..heads {
                    let r = hd * dh..(hd + 1) * dh;
                    let s: Vec<f64> = keys
                        .iter()
                        .map(|k| r.clone().map(|i| q[i] * k[i]).sum::<f64>() / (dh as f64).sqrt())
                        .collect();
                    let top = s.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = s.iter().map(|v| (v - top).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for i in r {
                        a[i] = (0..tokens).map(|m| e[m] / z * vals[m][i]).sum();
                    }
                }
            }
            let hidden: Vec<f64> = lin(&a, "f.0", dk, c)
                .into_iter()
                .map(|v| v.max(0.0))
                .collect();
            let f = lin(&hidden, "f.1", c, c);
            for ch in 0..c {
                let want = x[ch] + f[ch];
                let g = got[(bi * c + ch) * hw + pos] as f64;
                max_err = max_err.max((g - want).abs());
            }
        }
    }
    assert!(
        max_err < 1e-4,
        "{tokens} token(s): max |ANL − reference| = {max_err}"
    );
}
