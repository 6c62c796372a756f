//! Parity with diffusers and the injection behaviour of [`UNet2D::forward`].
//!
//! Reference: `tests/fixtures/unet/<name>/io.safetensors`, written by
//! `tests/fixtures/unet/make_fixtures.py` (torch 2.15, diffusers 0.42.1, f32 on
//! CPU) from the model saved beside it. Tolerance: 1e-4 max abs error on the
//! output and at every injection point.

use super::*;
use crate::model::test_io::{
    Io, Trace, check_branch_points, check_recorded_branch, io, max_err, tensor_of, values_of,
};
use crate::model::{Denoiser, DropoutRng, NoHooks, Weights, describe};
use crate::tensor_abi::{CpuBackend as B, ParamStore};
use burn::tensor::{Int, Tensor, TensorData};
use std::collections::HashMap;

use crate::tensor_abi::Prim as P;
use std::path::{Path, PathBuf};

const TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/unet")
        .join(name)
}

fn net_and_params(dir: &Path) -> (UNet2D, Weights<B>) {
    let d = describe("diffusers", Some(dir), &toml::Table::new()).unwrap();
    let net = UNet2D::from_description(&d).unwrap();
    let mut store = ParamStore::<B>::default();
    load_safetensors(&net, dir, &mut store, &Default::default(), &|_| false).unwrap();
    let params: HashMap<String, P<B>> = store
        .entries()
        .iter()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    let weights = net.weights(&params).unwrap();
    (net, weights)
}

/// Runs the fixture's forward, recording every point; returns the output.
fn run(
    net: &UNet2D,
    params: &Weights<B>,
    io: &Io,
    zero: Option<&str>,
    seen: &mut Vec<(String, Vec<f32>)>,
) -> Vec<f32> {
    let (xs, xv) = &io["x"];
    let (ts, tv) = &io["timesteps"];
    let labels = io.get("class_labels").map(|(_, v)| {
        let ints: Vec<i64> = v.iter().map(|&f| f as i64).collect();
        Tensor::<B, 1, Int>::from_data(TensorData::new(ints, [v.len()]), &Default::default())
    });
    let mut trace = Trace::new(zero.map(|p| (p, 0.0)));
    let (x, t) = (tensor_of(xs, xv), tensor_of(ts, tv));
    let out = net.forward(params, x, t, labels, &mut trace, None).unwrap();
    seen.extend(trace.block_outputs());
    values_of(&out)
}

fn parity(name: &str) {
    let dir = fixture(name);
    let (net, params) = net_and_params(&dir);
    let io = io(&dir);
    let mut seen = Vec::new();
    let out = run(&net, &params, &io, None, &mut seen);
    let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "temb",
            "down.0.res.0",
            "down.1.res.0",
            "mid.res.0",
            "mid.res.1",
            "up.0.res.0",
            "up.0.res.1",
            "up.1.res.0",
            "up.1.res.1"
        ]
    );
    let mut report = Vec::new();
    for (point, got) in &seen {
        report.push((point.clone(), max_err(got, &io[point].1)));
    }
    report.push(("output".into(), max_err(&out, &io["output"].1)));
    eprintln!("{name}: max abs errors {report:?}");
    for (what, err) in report {
        assert!(
            err <= TOLERANCE,
            "{name}: {what}: max abs error {err} > {TOLERANCE}"
        );
    }
}

#[test]
fn matches_diffusers_on_the_small_unet() {
    parity("small");
}

#[test]
fn matches_diffusers_with_class_embedding_and_scale_shift() {
    parity("class-scale-shift");
}

#[test]
fn zeroing_mid_res_0_changes_the_output() {
    let dir = fixture("small");
    let (net, params) = net_and_params(&dir);
    let io = io(&dir);
    let plain = run(&net, &params, &io, None, &mut Vec::new());
    let zeroed = run(&net, &params, &io, Some("mid.res.0"), &mut Vec::new());
    assert!(max_err(&plain, &zeroed) > 1e-3);
}

/// The branch points (`….res.{j}.branch`, `….attn.{j}.branch`) come in the
/// description's order at its shapes; a hook there replaces the branch in
/// its residual sum (doubling changes the output, zeroing every branch
/// makes the middle blocks their shortcuts); a hook returning the branch
/// leaves the output bit-identical; a recorder records one when asked.
#[test]
fn branch_points_replace_the_residual_branches() {
    for name in ["small", "class-scale-shift"] {
        let dir = fixture(name);
        let d = describe("diffusers", Some(&dir), &toml::Table::new()).unwrap();
        let (net, params) = net_and_params(&dir);
        let io = io(&dir);
        let (xs, xv) = &io["x"];
        let (ts, tv) = &io["timesteps"];
        let fwd = |hooks: &mut dyn FnMut(Tensor<B, 4>, Tensor<B, 1>) -> Tensor<B, 4>| {
            values_of(&hooks(tensor_of(xs, xv), tensor_of(ts, tv)))
        };
        let plain = fwd(&mut |x, t| {
            net.forward(&params, x, t, None, &mut NoHooks, None)
                .unwrap()
        });
        check_branch_points(
            &d,
            |trace| fwd(&mut |x, t| net.forward(&params, x, t, None, trace, None).unwrap()),
            &plain,
        );
        for branch in ["up.0.attn.1.branch", "down.0.res.0.branch"] {
            check_recorded_branch(&d, branch, "mid.res.1", |rec| {
                fwd(&mut |x, t| net.forward(&params, x, t, None, rec, None).unwrap());
            });
        }
    }
}

#[test]
fn parameters_match_the_checkpoint_header() {
    for name in ["small", "class-scale-shift"] {
        let dir = fixture(name);
        let d = describe("diffusers", Some(&dir), &toml::Table::new()).unwrap();
        let mut want = d.parameters.clone();
        let mut got = UNet2D::from_description(&d).unwrap().parameters();
        want.sort();
        got.sort();
        assert_eq!(got, want, "{name}");
    }
}

/// With `dropout` in the config, a forward given a dropout stream differs
/// from the eval forward, repeats itself for the same stream, and a
/// forward without one is still diffusers' eval output; a config without
/// dropout ignores the stream.
#[test]
fn dropout_applies_only_in_training_and_only_when_configured() {
    let dir = fixture("small");
    let (net, params) = net_and_params(&dir);
    let io = io(&dir);
    let (xs, xv) = &io["x"];
    let (ts, tv) = &io["timesteps"];
    let fwd = |net: &UNet2D, rng: Option<&DropoutRng>| {
        let (x, t) = (tensor_of(xs, xv), tensor_of(ts, tv));
        let out = net.forward(&params, x, t, None, &mut NoHooks, rng);
        values_of(&out.unwrap())
    };
    let eval = fwd(&net, None);
    assert!(max_err(&eval, &io["output"].1) <= TOLERANCE);
    assert_eq!(fwd(&net, Some(&DropoutRng::new(1))), eval, "dropout 0");
    let mut config = net.config.clone();
    config.dropout = 0.3;
    let dropping = UNet2D::new(config);
    let a = fwd(&dropping, Some(&DropoutRng::new(1)));
    assert!(max_err(&a, &eval) > 1e-3);
    assert_eq!(a, fwd(&dropping, Some(&DropoutRng::new(1))));
    assert_eq!(fwd(&dropping, None), eval);
}

#[test]
fn a_missing_key_is_named_with_its_file() {
    let src = fixture("small");
    let dir = std::env::temp_dir().join(format!("dtx-unet-missing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(weights_file(&src)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<_> = st
        .tensors()
        .into_iter()
        .filter(|(k, _)| k != "mid_block.resnets.1.conv2.weight")
        .collect();
    let file = dir.join(crate::model::diffusers::WEIGHTS_FILE);
    std::fs::write(&file, safetensors::serialize(kept, None).unwrap()).unwrap();

    let d = describe("diffusers", Some(&dir), &toml::Table::new()).unwrap();
    let net = UNet2D::from_description(&d).unwrap();
    let mut store = ParamStore::<B>::default();
    let err = load_safetensors(&net, &dir, &mut store, &Default::default(), &|_| true)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "{}: the weights do not fit config.json (1 problem):\n  missing key `mid_block.resnets.1.conv2.weight` (expected shape [64, 64, 3, 3])",
            file.display()
        )
    );
    assert!(store.entries().is_empty(), "nothing is registered on error");
}

#[test]
fn unsupported_downsample_padding_names_the_key() {
    let d = describe("diffusers", Some(&fixture("small")), &toml::Table::new()).unwrap();
    let mut d2 = d.clone();
    for (k, v) in d2.config.iter_mut() {
        if k == "downsample_padding" {
            *v = "2".into();
        }
    }
    let err = UNet2D::from_description(&d2).unwrap_err().to_string();
    assert_eq!(
        err,
        "config.json: downsample_padding: unsupported value 2; dtx supports 0 and 1"
    );
}

#[test]
fn gradients_reach_the_weights_through_every_stage() {
    use burn::tensor::backend::AutodiffBackend;
    let dir = fixture("class-scale-shift");
    let d = describe("diffusers", Some(&dir), &toml::Table::new()).unwrap();
    let net = UNet2D::from_description(&d).unwrap();
    let mut store = ParamStore::<B>::default();
    load_safetensors(&net, &dir, &mut store, &Default::default(), &|_| true).unwrap();
    let params: HashMap<String, P<B>> = store
        .entries()
        .iter()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    let io = io(&dir);
    let (xs, xv) = &io["x"];
    let (ts, tv) = &io["timesteps"];
    let labels = Tensor::<B, 1, Int>::from_ints([1, 3], &Default::default());
    let w = net.weights(&params).unwrap();
    let out = net.predict(&w, tensor_of::<4>(xs, xv), tensor_of(ts, tv), Some(labels));
    let loss = out.powf_scalar(2.0).sum();
    let grads = loss.backward();
    for key in [
        "class_embedding.weight",
        "time_embedding.linear_1.weight",
        "down_blocks.0.downsamplers.0.conv.weight",
        "down_blocks.1.attentions.0.to_q.weight",
        "mid_block.attentions.0.to_k.weight",
        "up_blocks.0.upsamplers.0.conv.weight",
        "up_blocks.1.resnets.1.conv_shortcut.weight",
        "conv_in.weight",
    ] {
        let g = B::grad(&params[key], &grads).unwrap_or_else(|| panic!("no gradient for {key}"));
        use burn::tensor::ops::FloatTensorOps;
        type I = <B as AutodiffBackend>::InnerBackend;
        let n = burn::tensor::read_sync(I::float_into_data(I::float_abs(g)))
            .unwrap()
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .sum::<f32>();
        assert!(n > 0.0, "{key}: zero gradient");
    }
}
