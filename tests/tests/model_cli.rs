//! `dtx model inspect` and `dtx model forward`, through the command itself
//! (`dtx eval --features`: tests/tests/eval.rs).
//!
//! - inspect: snapshots of the shipped source model, the parity fixtures
//!   (diffusers, ADM safetensors and `.pt`), MLPs and a dtx run; a
//!   checkpoint with a missing, an unexpected and a misshaped key names all
//!   three.
//! - forward: output and every injection point against the reference
//!   implementations' fixtures (`tests/fixtures/{unet,adm}/*/io.safetensors`,
//!   diffusers 0.42.1 / guided-diffusion, max abs error ≤ 1e-4), a dtx run
//!   of the same weights, and an MLP run against a plain f64 implementation
//!   of docs/models.md's MLP (≤ 1e-4); each bad input is an error naming the
//!   key, expected and found, and writes nothing.

use dtx_tests::files::{Entry, f32_bytes, f32_tensors, fixture, i64_bytes, write_safetensors};
use dtx_tests::run_in_process as dtx;
use dtx_tests::runs::{dtx_run, out_dir};
use dtx_tests::workspace_root;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const TOLERANCE: f32 = 1e-4;

/// Paths differ between machines: show them relative.
fn stable(text: &str, run: Option<&Path>) -> String {
    let mut t = text.to_owned();
    if let Some(r) = run {
        t = t.replace(&r.display().to_string(), "[RUN]");
    }
    t.replace(&workspace_root().display().to_string(), "[ROOT]")
}

fn max_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The ADM fixture `name` (`plain`: safetensors, `full`: `.pt`) as args.
fn adm(name: &str) -> Vec<String> {
    let file = if name == "full" {
        "model.pt"
    } else {
        "model.safetensors"
    };
    vec![
        fixture(&format!("adm/{name}/{file}")),
        "--config".into(),
        fixture(&format!("adm/{name}/config.toml")),
    ]
}

#[test]
fn inspect_snapshots() {
    let root = workspace_root();
    let shipped = root
        .join("manifests/models/shapes-source")
        .display()
        .to_string();
    let mut cases: Vec<(&str, Vec<String>)> = vec![
        ("shapes-source", vec![shipped.clone()]),
        ("shapes-source-json", vec![shipped.clone(), "--json".into()]),
        (
            // the catalogue plugins read (api 0.4's model_details)
            "shapes-source-parameters",
            vec![shipped.clone(), "--parameters".into()],
        ),
        (
            "shapes-source-at-64",
            vec![shipped, "--resolution".into(), "64".into()],
        ),
        ("unet-small", vec![fixture("unet/small")]),
        (
            "unet-class-scale-shift",
            vec![fixture("unet/class-scale-shift")],
        ),
        ("adm-plain-safetensors", adm("plain")),
        ("adm-full-pt", adm("full")),
        ("mlp-defaults", vec!["--kind".into(), "mlp".into()]),
        (
            // manifests/example.toml's source
            "mlp-example",
            ["--kind", "mlp", "--set", "hidden=64", "--set", "blocks=2"]
                .map(String::from)
                .to_vec(),
        ),
    ];
    for (name, args) in cases.drain(..) {
        let mut all = vec!["model", "inspect"];
        all.extend(args.iter().map(String::as_str));
        let out = dtx(&all);
        out.ok();
        insta::assert_snapshot!(format!("inspect-{name}"), stable(&out.stdout, None));
    }
}

/// A dtx run of the diffusers fixture `unet/small` whose single step cannot
/// move a weight (lr 1e-30): its checkpoint holds the fixture's weights.
fn unet_run(name: &str) -> PathBuf {
    let out = out_dir("model-cli", name);
    let path = format!("source.path=\"{}\"", fixture("unet/small"));
    dtx_run(
        "shapes-unet.toml",
        &out,
        &[
            &path,
            "source.init=\"pretrained\"",
            "train.lr=1e-30",
            "train.steps=1",
            "sample.count=1",
            "sample.steps=1",
        ],
        &[],
    )
    .ok();
    out.join("shapes-unet")
}

#[test]
fn inspect_a_dtx_run() {
    let run = unet_run("inspect");
    let out = dtx(&["model", "inspect", run.to_str().unwrap()]);
    out.ok();
    insta::assert_snapshot!(stable(&out.stdout, Some(&run)));
    // One of its checkpoints, named directly, is the same model.
    let ckpt = run.join("checkpoints/latest.safetensors");
    let again = dtx(&["model", "inspect", ckpt.to_str().unwrap()]);
    again.ok();
    assert!(again.stdout.contains("(dtx, a diffusers model)"));
    std::fs::remove_dir_all(run.parent().unwrap()).unwrap();
}

/// Runs `dtx model forward` with `--points all` on the inputs in `io`;
/// checks every tensor against `reference` (the parity fixtures name the
/// output `output`).
fn forward_matches(model_args: &[String], io: &str, reference: &str, out_name: &str) {
    let dir = out_dir("model-cli", out_name);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("out.safetensors");
    let mut args = vec!["model", "forward"];
    args.extend(model_args.iter().map(String::as_str));
    args.extend([
        "--inputs",
        io,
        "--out",
        file.to_str().unwrap(),
        "--points",
        "all",
    ]);
    dtx(&args).ok();
    let got = f32_tensors(&file);
    let want = f32_tensors(Path::new(reference));
    let mut checked = 0;
    for (key, values) in &got {
        let name = match key.as_str() {
            "out" if !want.contains_key("out") => "output",
            k => k,
        };
        let err = max_err(values, &want[name]);
        assert!(err <= TOLERANCE, "{out_name}: {key}: max abs error {err}");
        checked += 1;
    }
    // out, temb and the eight residual blocks of each fixture.
    assert_eq!(checked, 10, "{out_name}: {:?}", got.keys());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn forward_matches_diffusers_and_guided_diffusion() {
    for name in ["small", "class-scale-shift"] {
        let io = fixture(&format!("unet/{name}/io.safetensors"));
        forward_matches(&[fixture(&format!("unet/{name}"))], &io, &io, name);
    }
    for name in ["plain", "full"] {
        let io = fixture(&format!("adm/{name}/io.safetensors"));
        forward_matches(&adm(name), &io, &io, &format!("adm-{name}"));
    }
    // The shipped source model against diffusers, as docs/cli.md's worked
    // example checks it (tests/fixtures/cli/check_diffusers.py wrote both).
    let shipped = workspace_root().join("manifests/models/shapes-source");
    forward_matches(
        &[shipped.display().to_string()],
        &fixture("cli/shapes-source/in.safetensors"),
        &fixture("cli/shapes-source/reference.safetensors"),
        "shapes-source",
    );
    let run = unet_run("forward");
    let io = fixture("unet/small/io.safetensors");
    forward_matches(&[run.display().to_string()], &io, &io, "dtx-run");
    std::fs::remove_dir_all(run.parent().unwrap()).unwrap();
}

#[test]
fn forward_writes_only_the_points_asked_for() {
    let dir = out_dir("model-cli", "points");
    let file = dir.join("sub/out.safetensors");
    let out = dtx(&[
        "model",
        "forward",
        &fixture("unet/small"),
        "--inputs",
        &fixture("unet/small/io.safetensors"),
        "--out",
        file.to_str().unwrap(),
        "--points",
        "mid.res.1,temb,mid.attn.0.branch",
    ]);
    out.ok();
    let got = f32_tensors(&file);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        ["mid.attn.0.branch", "mid.res.1", "out", "temb"]
    );
    // The attention's output before its residual sum: [B, 64, 8, 8].
    assert_eq!(got["mid.attn.0.branch"].len(), got["mid.res.1"].len());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// docs/models.md's MLP in f64 over the checkpoint's weights (EMA values,
/// as the run samples with them): `[B, D]` out for `x`, `t`.
fn mlp_reference(
    w: &BTreeMap<String, Vec<f32>>,
    x: &[f32],
    t: &[f32],
    d: usize,
    hidden: usize,
    blocks: usize,
) -> Vec<f32> {
    let p = |name: &str| -> Vec<f64> {
        let v = w
            .get(&format!("ema/{name}"))
            .or_else(|| w.get(&format!("param/{name}")))
            .unwrap_or_else(|| panic!("{name}"));
        v.iter().map(|&x| f64::from(x)).collect()
    };
    // weights are [in, out]
    let linear = |name: &str, x: &[f64]| -> Vec<f64> {
        let (wt, b) = (p(&format!("{name}.weight")), p(&format!("{name}.bias")));
        let o = b.len();
        (0..o)
            .map(|j| {
                b[j] + x
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v * wt[i * o + j])
                    .sum::<f64>()
            })
            .collect()
    };
    let silu =
        |v: Vec<f64>| -> Vec<f64> { v.into_iter().map(|z| z / (1.0 + (-z).exp())).collect() };
    let norm = |name: &str, x: &[f64]| -> Vec<f64> {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let (g, b) = (p(&format!("{name}.weight")), p(&format!("{name}.bias")));
        x.iter()
            .enumerate()
            .map(|(i, v)| (v - mean) / (var + 1e-5).sqrt() * g[i] + b[i])
            .collect()
    };
    let mut out = Vec::new();
    for (row, &ti) in t.iter().enumerate() {
        let half = hidden / 2;
        let f = |k: usize| (-(10000f64.ln()) * k as f64 / half as f64).exp();
        let mut e: Vec<f64> = (0..half).map(|k| (f64::from(ti) * f(k)).cos()).collect();
        e.extend((0..half).map(|k| (f64::from(ti) * f(k)).sin()));
        let temb = linear("time_embed.2", &silu(linear("time_embed.0", &e)));
        let xr: Vec<f64> = x[row * d..(row + 1) * d]
            .iter()
            .map(|&v| v.into())
            .collect();
        let mut h = linear("in_proj", &xr);
        let names = (0..blocks)
            .map(|i| format!("down.{i}.res.0"))
            .chain(["mid.res.0".to_owned()])
            .chain((0..blocks).map(|i| format!("up.{i}.res.0")));
        for blk in names {
            let a = linear(
                &format!("{blk}.fc1"),
                &silu(norm(&format!("{blk}.norm"), &h)),
            );
            let b = linear(&format!("{blk}.temb_proj"), &silu(temb.clone()));
            let u: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
            let r = linear(&format!("{blk}.fc2"), &silu(u));
            h = h.iter().zip(&r).map(|(x, y)| x + y).collect();
        }
        out.extend(
            linear("out_proj", &silu(norm("out_norm", &h)))
                .into_iter()
                .map(|v| v as f32),
        );
    }
    out
}

#[test]
fn forward_runs_a_trained_mlp_on_vectors() {
    use safetensors::Dtype::{F32, I64};
    let out = out_dir("model-cli", "mlp");
    dtx_run(
        "two-plugins.toml",
        &out,
        &["train.steps=3", "sample.count=4", "sample.steps=2"],
        &[],
    )
    .ok();
    let run = out.join("two-plugins");
    // The example plugin's adapters are in the checkpoint, apart from the
    // base model; forward runs the base model alone.
    let shown = dtx(&["model", "inspect", run.to_str().unwrap()]);
    shown.ok();
    assert!(
        shown.stdout.contains("(dtx, a mlp model)")
            && shown.stdout.contains("plugin parameters in the checkpoint")
            && shown.stdout.contains("  plugin.adapter  "),
        "{}",
        shown.stdout
    );
    // each plugin tensor with its shape and norm, the norm as the
    // checkpoint's bytes give it (f64 sum of squares; 1e-12 relative)
    let json = dtx(&["model", "inspect", run.to_str().unwrap(), "--json"]);
    json.ok();
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let listed = v["plugin_parameters"]["list"].as_array().unwrap();
    let (_, ckpt) = dtx_tests::runs::tensors(&run.join("checkpoints/latest.safetensors"));
    let stored: Vec<_> = ckpt
        .iter()
        .filter(|(k, _)| k.starts_with("param/plugin."))
        .collect();
    assert_eq!(listed.len(), stored.len());
    assert!(!stored.is_empty());
    for (key, bytes) in stored {
        let name = key.strip_prefix("param/").unwrap();
        let entry = listed.iter().find(|e| e["name"] == name).expect(name);
        let norm = bytes
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())).powi(2))
            .sum::<f64>()
            .sqrt();
        let shown_norm = entry["norm"].as_f64().unwrap();
        assert!((shown_norm - norm).abs() <= 1e-12 * norm.max(1.0), "{name}");
        assert_eq!(
            bytes.len() / 4,
            entry["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .product::<usize>()
        );
        assert!(
            shown.stdout.contains(name),
            "{name} not listed:\n{}",
            shown.stdout
        );
    }
    let x = [0.5f32, -1.0, 2.0, 0.25, -0.75, 1.5];
    let t = [0i64, 40, 99];
    let inputs = out.join("in.safetensors");
    write_safetensors(
        &inputs,
        &[
            ("x", F32, vec![3, 2], f32_bytes(&x)),
            ("timesteps", I64, vec![3], i64_bytes(&t)),
        ],
    );
    let file = out.join("out.safetensors");
    let forward = |points: &[&str]| {
        let mut args = vec!["model", "forward", run.to_str().unwrap()];
        args.extend(["--inputs", inputs.to_str().unwrap()]);
        args.extend(["--out", file.to_str().unwrap()]);
        args.extend(points);
        dtx(&args)
    };
    forward(&["--points", "temb,up.1.res.0"]).ok();
    let got = f32_tensors(&file);
    assert_eq!(got["temb"].len(), 3 * 64);
    assert_eq!(got["up.1.res.0"].len(), 3 * 64);
    let weights = f32_tensors(&run.join("checkpoints/latest.safetensors"));
    let tf: Vec<f32> = t.iter().map(|&v| v as f32).collect();
    let want = mlp_reference(&weights, &x, &tf, 2, 64, 2);
    let err = max_err(&got["out"], &want);
    assert!(err <= TOLERANCE, "MLP out: max abs error {err}");
    // x must be [B, 2] for this model.
    write_safetensors(
        &inputs,
        &[
            ("x", F32, vec![2, 3], f32_bytes(&x)),
            ("timesteps", I64, vec![2], i64_bytes(&t[..2])),
        ],
    );
    std::fs::remove_file(&file).unwrap();
    let res = forward(&[]);
    let err = res.failed();
    assert!(
        err.contains("`x`: expected shape F32 [B, 2], found [2, 3]"),
        "{err}"
    );
    assert!(!file.exists());
    std::fs::remove_dir_all(&out).unwrap();
}

/// `dtx model forward` of `model` on inputs `tensors`: the error, after
/// checking that nothing was written.
fn forward_error(model: &[String], tensors: &[Entry<'_>], points: &str, case: &str) -> String {
    let dir = out_dir("model-cli-err", case);
    std::fs::create_dir_all(&dir).unwrap();
    let inputs = dir.join("in.safetensors");
    write_safetensors(&inputs, tensors);
    let file = dir.join("out.safetensors");
    let mut args = vec!["model", "forward"];
    args.extend(model.iter().map(String::as_str));
    args.extend([
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        file.to_str().unwrap(),
    ]);
    if !points.is_empty() {
        args.extend(["--points", points]);
    }
    let out = dtx(&args);
    let err = out.failed().replace(&inputs.display().to_string(), "IN");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(left.len(), 1, "{case}: only the input file is there");
    std::fs::remove_dir_all(&dir).unwrap();
    err
}

#[test]
fn bad_forward_inputs_name_key_expected_and_found() {
    use safetensors::Dtype::{F32, I32, I64};
    let x = f32_bytes(&vec![0.1; 2 * 3 * 16 * 16]);
    let x_ok = ("x", F32, vec![2, 3, 16, 16], x.clone());
    let t_ok = ("timesteps", I64, vec![2], i64_bytes(&[10, 500]));
    let small = [fixture("unet/small")];
    let cond = [fixture("unet/class-scale-shift")];
    let cases: Vec<(&str, &[String], Vec<_>, &str, &str)> = vec![
        (
            "no-x",
            &small,
            vec![t_ok.clone()],
            "",
            "error: `IN`: no tensor `x` (expected F32 [B, 3, H, W]); the file holds: `timesteps`",
        ),
        (
            "x-dtype",
            &small,
            vec![
                (
                    "x",
                    I64,
                    vec![2, 3, 16, 16],
                    i64_bytes(&vec![0; 2 * 3 * 16 * 16]),
                ),
                t_ok.clone(),
            ],
            "",
            "error: `IN`: `x`: expected F32 [B, 3, H, W], found dtype I64",
        ),
        (
            "x-channels",
            &small,
            vec![("x", F32, vec![2, 4, 16, 12], x.clone()), t_ok.clone()],
            "",
            "error: `IN`: `x`: expected shape F32 [B, 3, H, W] (H and W multiples of 2, the \
             model's downsampling), found [2, 4, 16, 12]",
        ),
        (
            "x-odd-side",
            &small,
            vec![
                ("x", F32, vec![1, 3, 15, 15], f32_bytes(&vec![0.0; 675])),
                t_ok.clone(),
            ],
            "",
            "found [1, 3, 15, 15]",
        ),
        (
            "no-timesteps",
            &small,
            vec![x_ok.clone()],
            "",
            "error: `IN`: no tensor `timesteps` (expected I64 or F32 [2]); the file holds: `x`",
        ),
        (
            "timesteps-length",
            &small,
            vec![
                x_ok.clone(),
                ("timesteps", I64, vec![3], i64_bytes(&[1, 2, 3])),
            ],
            "",
            "error: `IN`: `timesteps`: expected shape [2] (one per row of `x`), found [3]",
        ),
        (
            "timesteps-dtype",
            &small,
            vec![
                x_ok.clone(),
                ("timesteps", safetensors::Dtype::U8, vec![2], vec![1, 2]),
            ],
            "",
            "error: `IN`: `timesteps`: expected I64 or F32 [2], found dtype U8",
        ),
        (
            "labels-on-unconditional",
            &small,
            vec![
                x_ok.clone(),
                t_ok.clone(),
                ("class_labels", I64, vec![2], i64_bytes(&[0, 1])),
            ],
            "",
            "error: `IN`: `class_labels`: the model is unconditional and takes no class labels",
        ),
        (
            "labels-missing",
            &cond,
            vec![x_ok.clone(), t_ok.clone()],
            "",
            "error: `IN`: no tensor `class_labels` (expected I64 [2], values 0 to 3): the model is \
             class-conditional",
        ),
        (
            "labels-range",
            &cond,
            vec![
                x_ok.clone(),
                t_ok.clone(),
                ("class_labels", I64, vec![2], i64_bytes(&[0, 4])),
            ],
            "",
            "error: `IN`: `class_labels`: label 4 is outside 0 to 3",
        ),
        (
            "labels-dtype",
            &cond,
            vec![
                x_ok.clone(),
                t_ok.clone(),
                ("class_labels", F32, vec![2], f32_bytes(&[0.0, 1.0])),
            ],
            "",
            "error: `IN`: `class_labels`: expected I64 [2], found dtype F32",
        ),
        (
            "labels-shape",
            &cond,
            vec![
                x_ok.clone(),
                t_ok.clone(),
                ("class_labels", I32, vec![1], vec![0; 4]),
            ],
            "",
            "error: `IN`: `class_labels`: expected shape [2] (one per row of `x`), found [1]",
        ),
        (
            "unknown-point",
            &small,
            vec![x_ok.clone(), t_ok.clone()],
            "temb,down.2.res.0",
            "error: --points: the model has no injection point `down.2.res.0`; did you mean \
             `down.0.res.0`? its points: all, temb, down.0.res.0.branch, down.0.res.0,",
        ),
    ];
    for (case, model, tensors, points, want) in cases {
        let err = forward_error(model, &tensors, points, case);
        assert!(err.contains(want), "{case}:\n{err}\nwanted: {want}");
    }
}

#[test]
fn a_checkpoint_that_does_not_fit_names_every_key() {
    let dir = out_dir("model-cli", "misfit");
    std::fs::create_dir_all(&dir).unwrap();
    let src = workspace_root().join("tests/fixtures/unet/small");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("diffusion_pytorch_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    // missing: conv_out.bias; misshaped: conv_in.bias [32] as [4, 8];
    // unexpected: extra.weight.
    let mut list: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .filter(|(k, _)| k != "conv_out.bias")
        .map(|(k, v)| {
            let shape = if k == "conv_in.bias" {
                vec![4, 8]
            } else {
                v.shape().to_vec()
            };
            (k, v.dtype(), shape, v.data().to_vec())
        })
        .collect();
    list.push((
        "extra.weight".into(),
        safetensors::Dtype::F32,
        vec![2],
        f32_bytes(&[1.0, 2.0]),
    ));
    let list: Vec<Entry<'_>> = list
        .iter()
        .map(|(k, d, s, b)| (k.as_str(), *d, s.clone(), b.clone()))
        .collect();
    write_safetensors(&dir.join("diffusion_pytorch_model.safetensors"), &list);
    let out = dtx(&["model", "inspect", dir.to_str().unwrap()]);
    let err = out.failed().replace(&dir.display().to_string(), "DIR");
    assert_eq!(
        err.trim_end(),
        "error: DIR/diffusion_pytorch_model.safetensors: the weights do not fit config.json (3 problems):\n  \
         `conv_in.bias`: expected shape [32], found [4, 8]\n  \
         missing key `conv_out.bias` (expected shape [3])\n  \
         unexpected key `extra.weight` (shape [2]); the config has no such parameter"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn inspect_errors_are_clear() {
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![fixture("eval")],
            "cannot tell what kind of model `[ROOT]/tests/fixtures/eval` is",
        ),
        (
            vec!["--kind".into(), "onnx".into(), fixture("eval")],
            "error: unknown model kind `onnx` (kinds: diffusers, adm, mlp, dtx)",
        ),
        (
            vec![fixture("adm/full/model.pt")],
            "error: --set image_size: missing required key",
        ),
        (
            vec![fixture("unet/small"), "--resolution".into(), "13".into()],
            "--resolution 13: the model downsamples by 2",
        ),
        (
            // the ADM fixture's checkpoint under flags of another model
            [adm("plain"), vec!["--set".into(), "num_channels=64".into()]].concat(),
            "model.safetensors: the weights do not fit the --set/--config values (",
        ),
        (
            vec![
                "--kind".into(),
                "mlp".into(),
                "--set".into(),
                "hiden=3".into(),
            ],
            "error: --set hiden: unknown key (did you mean `hidden`?)",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["model", "inspect"];
        all.extend(args.iter().map(String::as_str));
        let out = dtx(&all);
        let err = stable(out.failed(), None);
        assert!(err.contains(want), "{args:?}:\n{err}\nwanted: {want}");
    }
}
