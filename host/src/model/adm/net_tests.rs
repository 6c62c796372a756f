//! Parity with guided-diffusion's `UNetModel` and the injection behaviour of
//! [`AdmNet::forward`].
//!
//! Reference: `tests/fixtures/adm/<name>/io.safetensors`, written by
//! `tests/fixtures/adm/make_fixtures.py` (torch 2.15, guided-diffusion's
//! `UNetModel` restated there, f32 on CPU) from the weights saved beside it
//! and the flags in `config.toml`. Tolerance: 1e-4 max abs error on the
//! output and at every injection point.
//!
//! - `full`: learn_sigma, use_scale_shift_norm, class_cond, resblock_updown,
//!   attention at 4×4 with `num_head_channels` (2 heads), legacy head order;
//!   weights as `model.safetensors` and `model.pt` (float16 in both).
//! - `plain`: no scale-shift, conv down/upsamplers, `num_heads = 2`,
//!   `num_heads_upsample = 1`, attention at both levels, new head order;
//!   `model.safetensors` (bfloat16).

use super::*;
use crate::model::test_io::{
    Io, Trace, check_branch_points, check_recorded_branch, io, max_err, tensor_of, values,
    values_of,
};
use crate::model::torch_file::read_state_dict;
use crate::model::{Denoiser, ModelDescription, NoHooks, describe};
use crate::tensor_abi::{CpuBackend as B, ParamStore};
use burn::tensor::{Int, Tensor, TensorData};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::tensor_abi::Prim as P;

const TOLERANCE: f32 = 1e-4;

const POINTS: [&str; 9] = [
    "temb",
    "down.0.res.0",
    "down.1.res.0",
    "mid.res.0",
    "mid.res.1",
    "up.0.res.0",
    "up.0.res.1",
    "up.1.res.0",
    "up.1.res.1",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/adm")
        .join(name)
}

fn flags(name: &str) -> toml::Table {
    std::fs::read_to_string(fixture(name).join("config.toml"))
        .unwrap()
        .parse()
        .unwrap()
}

fn description(name: &str, weights: &str) -> ModelDescription {
    describe("adm", Some(&fixture(name).join(weights)), &flags(name)).unwrap()
}

fn load(net: &AdmNet, file: &Path, trainable: bool) -> Result<HashMap<String, P<B>>, AdmError> {
    let mut store = ParamStore::<B>::default();
    load_weights(
        file,
        &mut store,
        &Default::default(),
        &|_| trainable,
        net.catalogue().entries(),
    )?;
    Ok(store
        .entries()
        .iter()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect())
}

fn net_and_params(name: &str, weights: &str) -> (AdmNet, HashMap<String, P<B>>) {
    let net = AdmNet::from_description(&description(name, weights)).unwrap();
    let params = load(&net, &fixture(name).join(weights), false).unwrap();
    (net, params)
}

fn labels(io: &Io) -> Option<Tensor<B, 1, Int>> {
    io.get("y").map(|(_, v)| {
        let ints: Vec<i64> = v.iter().map(|&f| f as i64).collect();
        Tensor::<B, 1, Int>::from_data(TensorData::new(ints, [v.len()]), &Default::default())
    })
}

/// Runs the fixture's forward, recording every point (after `replace`
/// rewrites the one it names); returns the output.
fn run(
    net: &AdmNet,
    params: &HashMap<String, P<B>>,
    io: &Io,
    replace: Option<(&str, f32)>,
    seen: &mut Vec<(String, Vec<f32>)>,
) -> Vec<f32> {
    let (xs, xv) = &io["x"];
    let (ts, tv) = &io["timesteps"];
    let mut trace = Trace::new(replace);
    let (x, t) = (tensor_of(xs, xv), tensor_of(ts, tv));
    let w = net.weights(params).unwrap();
    let out = net.forward(&w, x, t, labels(io), &mut trace, None).unwrap();
    seen.extend(trace.block_outputs());
    values_of(&out)
}

/// Max abs error at every point and the output; asserts the tolerance.
fn parity(name: &str, weights: &str) -> f32 {
    let (net, params) = net_and_params(name, weights);
    let io = io(&fixture(name));
    let mut seen = Vec::new();
    let out = run(&net, &params, &io, None, &mut seen);
    let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, POINTS);
    let mut report: Vec<(String, f32)> = seen
        .iter()
        .map(|(point, got)| (point.clone(), max_err(got, &io[point].1)))
        .collect();
    report.push(("output".into(), max_err(&out, &io["output"].1)));
    eprintln!("{name}/{weights}: max abs errors {report:?}");
    for (what, err) in &report {
        assert!(
            *err <= TOLERANCE,
            "{name}/{weights}: {what}: max abs error {err} > {TOLERANCE}"
        );
    }
    report.iter().map(|(_, e)| *e).fold(0.0, f32::max)
}

#[test]
fn matches_guided_diffusion_with_every_option_from_safetensors() {
    parity("full", "model.safetensors");
}

#[test]
fn matches_guided_diffusion_with_every_option_from_torch_save() {
    parity("full", "model.pt");
}

#[test]
fn matches_guided_diffusion_with_plain_resampling_and_num_heads() {
    parity("plain", "model.safetensors");
}

#[test]
fn both_formats_load_the_same_weights() {
    let (_, a) = net_and_params("full", "model.safetensors");
    let (_, b) = net_and_params("full", "model.pt");
    assert_eq!(a.len(), b.len());
    for (key, v) in &a {
        assert_eq!(values(v), values(&b[key]), "{key}");
    }
}

#[test]
fn parameters_are_guided_diffusions_state_dict() {
    // In order, against the state_dict torch.save wrote.
    let net = AdmNet::from_description(&description("full", "model.pt")).unwrap();
    let want: Vec<(String, Vec<usize>)> = read_state_dict(&fixture("full").join("model.pt"))
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.shape))
        .collect();
    assert_eq!(net.parameters(), want);
    // As a set, against the safetensors header that `describe` reads.
    for name in ["full", "plain"] {
        let d = description(name, "model.safetensors");
        let mut got = AdmNet::from_description(&d).unwrap().parameters();
        let mut want = d.parameters.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn hook_results_flow_downstream_through_the_skips() {
    let (net, params) = net_and_params("full", "model.safetensors");
    let io = io(&fixture("full"));
    let mut plain_points = Vec::new();
    let plain = run(&net, &params, &io, None, &mut plain_points);
    // Halving the first down point changes the output, and every later point.
    let mut seen = Vec::new();
    let halved = run(&net, &params, &io, Some(("down.0.res.0", 0.5)), &mut seen);
    assert!(max_err(&plain, &halved) > 1e-3);
    for ((point, a), (_, b)) in plain_points.iter().zip(&seen).skip(2) {
        assert!(
            max_err(a, b) > 1e-4,
            "{point} did not see the hook's result"
        );
    }
    // Zeroing the time embedding, the middle or the last point changes it
    // too (zeroing: the out layers' group norm undoes a scaling).
    for point in ["up.1.res.1", "mid.res.1", "temb"] {
        let changed = run(&net, &params, &io, Some((point, 0.0)), &mut Vec::new());
        assert!(max_err(&plain, &changed) > 1e-3, "{point}");
    }
}

/// The branch points (`….res.{j}.branch` at `out_layers.3`,
/// `….attn.{j}.branch` at `proj_out`) come in the description's order at
/// its shapes; a hook there replaces the branch in its residual sum; a hook
/// returning the branch leaves the output bit-identical; a recorder records
/// one when asked. `full` resamples with ResBlocks, which have no points.
#[test]
fn branch_points_replace_the_residual_branches() {
    for name in ["full", "plain"] {
        let d = description(name, "model.safetensors");
        let (net, params) = net_and_params(name, "model.safetensors");
        let w = net.weights(&params).unwrap();
        let io = io(&fixture(name));
        let (xs, xv) = &io["x"];
        let (ts, tv) = &io["timesteps"];
        let fwd = |hooks: &mut dyn FnMut(Tensor<B, 4>, Tensor<B, 1>) -> Tensor<B, 4>| {
            values_of(&hooks(tensor_of(xs, xv), tensor_of(ts, tv)))
        };
        let plain = fwd(&mut |x, t| {
            net.forward(&w, x, t, labels(&io), &mut NoHooks, None)
                .unwrap()
        });
        check_branch_points(
            &d,
            |trace| fwd(&mut |x, t| net.forward(&w, x, t, labels(&io), trace, None).unwrap()),
            &plain,
        );
        for branch in ["mid.attn.0.branch", "up.0.res.1.branch"] {
            check_recorded_branch(&d, branch, "down.0.res.0", |rec| {
                fwd(&mut |x, t| net.forward(&w, x, t, labels(&io), rec, None).unwrap());
            });
        }
    }
}

#[test]
fn gradients_reach_the_weights_through_every_stage() {
    use burn::tensor::backend::AutodiffBackend;
    let d = description("full", "model.safetensors");
    let net = AdmNet::from_description(&d).unwrap();
    let params = load(&net, &fixture("full").join("model.safetensors"), true).unwrap();
    let io = io(&fixture("full"));
    let (xs, xv) = &io["x"];
    let (ts, tv) = &io["timesteps"];
    let w = net.weights(&params).unwrap();
    let out = net.predict(&w, tensor_of::<4>(xs, xv), tensor_of(ts, tv), labels(&io));
    let grads = out.powf_scalar(2.0).sum().backward();
    for key in [
        "label_emb.weight",
        "time_embed.0.weight",
        "input_blocks.0.0.weight",
        "input_blocks.2.0.in_layers.2.weight", // the downsampling ResBlock
        "input_blocks.3.1.qkv.weight",
        "middle_block.1.proj_out.weight",
        "output_blocks.1.2.emb_layers.1.weight", // the upsampling ResBlock
        "output_blocks.2.0.skip_connection.weight",
        "out.2.weight",
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

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dtx-adm-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `full`'s safetensors with `edit` applied to its tensors.
fn edited_checkpoint(
    tag: &str,
    edit: impl FnOnce(&mut Vec<(String, safetensors::tensor::TensorView<'_>)>),
) -> PathBuf {
    let bytes = std::fs::read(fixture("full").join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = st.tensors();
    edit(&mut tensors);
    let file = temp_dir(tag).join("model.safetensors");
    std::fs::write(&file, safetensors::serialize(tensors, None).unwrap()).unwrap();
    file
}

#[test]
fn a_missing_tensor_is_named_with_its_file() {
    let file = edited_checkpoint("missing", |t| {
        t.retain(|(k, _)| k != "middle_block.2.out_layers.3.weight")
    });
    let net = AdmNet::from_description(&description("full", "model.safetensors")).unwrap();
    let err = load(&net, &file, true).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: the weights do not fit [source.config] (1 problem):\n  missing key `middle_block.2.out_layers.3.weight` (expected shape [32, 32, 3, 3])",
            file.display()
        )
    );
}

#[test]
fn a_misshaped_tensor_is_named_with_both_shapes() {
    use safetensors::tensor::TensorView;
    let file = edited_checkpoint("shape", |t| {
        let (_, v) = t.iter_mut().find(|(k, _)| k == "out.2.weight").unwrap();
        // [6, 32, 3, 3] read as [3, 64, 3, 3]: a checkpoint without learn_sigma.
        *v = TensorView::new(v.dtype(), vec![3, 64, 3, 3], v.data()).unwrap();
    });
    let net = AdmNet::from_description(&description("full", "model.safetensors")).unwrap();
    let err = load(&net, &file, true).unwrap_err().to_string();
    assert!(
        err.ends_with("`out.2.weight`: expected shape [6, 32, 3, 3], found [3, 64, 3, 3]"),
        "{err}"
    );
}

#[test]
fn flags_that_do_not_match_the_checkpoint_list_every_key() {
    // `full`'s .pt under `plain`'s flags: no label_emb, no scale-shift, ...
    let net = AdmNet::from_description(&description("plain", "model.safetensors")).unwrap();
    let file = fixture("full").join("model.pt");
    let AdmError::Weights { problems, .. } = load(&net, &file, true).unwrap_err() else {
        panic!("expected a weights error")
    };
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(
        text.contains(
            &"unexpected key `label_emb.weight` (shape [5, 128]); the config has no such parameter"
                .to_owned()
        ),
        "{text:#?}"
    );
    assert!(
        text.contains(
            &"`input_blocks.1.0.emb_layers.1.weight`: expected shape [32, 128], found [64, 128]"
                .to_owned()
        ),
        "{text:#?}"
    );
}

#[test]
fn unreadable_checkpoints_name_the_file() {
    let net = AdmNet::from_description(&description("full", "model.safetensors")).unwrap();
    let dir = temp_dir("unreadable");
    let pt = dir.join("model.pt");
    std::fs::write(&pt, b"not a zip").unwrap();
    let err = load(&net, &pt, true).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "{}: cannot read: not a torch.save checkpoint",
            pt.display()
        )),
        "{err}"
    );
    let bin = dir.join("model.bin");
    let err = load(&net, &bin, true).unwrap_err().to_string();
    assert!(err.contains("ends in .pt"), "{err}");
}

#[test]
fn unknown_and_unusable_flags_name_the_key() {
    let mut config = flags("full");
    config.insert("num_head_channel".into(), toml::Value::Integer(16));
    let err = describe("adm", Some(&fixture("full").join("model.pt")), &config)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "[source.config].num_head_channel: unknown key (did you mean `num_head_channels`?)"
        ),
        "{err}"
    );
    // A hand-made description the forward pass cannot run.
    let mut d = description("full", "model.pt");
    for (k, v) in d.config.iter_mut() {
        if k == "num_head_channels" {
            *v = "0".into();
        }
    }
    let err = AdmNet::from_description(&d).unwrap_err().to_string();
    assert_eq!(
        err,
        "[source.config].num_head_channels: must be -1 (unset) or positive, found 0"
    );
    let mut d = description("plain", "model.safetensors");
    for (k, v) in d.config.iter_mut() {
        if k == "num_heads_upsample" {
            *v = "3".into();
        }
    }
    let err = AdmNet::from_description(&d).unwrap_err().to_string();
    assert_eq!(
        err,
        "[source.config].num_heads_upsample: an attention block with 32 channels cannot be split into these heads"
    );
}
