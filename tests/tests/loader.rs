//! Plugins built as `cdylib`s, unknown to the host at compile time, loaded
//! through the real loader: every hook runs on host tensors, their parameters
//! are trained by the host's autodiff, and every load failure is a clear error.

use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use dtx::plugins::{InjectArgs, Instance, LoadError, LossArgs, load_library, sha256_file};
use dtx::tensor_abi::{CpuBackend, Session, SessionGuard, vtables};
use dtx::train::optim::{AdamConfig, Optimizer};
use dtx_plugin_api::ModelInfo;
use dtx_plugin_api::abi::{ErrorKind, Hook, PointInfo};
use dtx_tests::plugin_path;
use std::sync::Arc;

type B = CpuBackend;

fn session() -> SessionGuard {
    let guard = Session::<B>::install(Default::default(), 0);
    dtx::train::optim::install::<B>(Default::default()).unwrap();
    guard
}

fn model() -> ModelInfo {
    ModelInfo {
        kind: "test".into(),
        data_channels: 2,
        resolution: 4,
        temb_channels: 8,
        points: vec![
            PointInfo {
                name: "temb".into(),
                channels: 8,
                height: 0,
                width: 0,
            },
            PointInfo {
                name: "mid.res.0".into(),
                channels: 2,
                height: 4,
                width: 4,
            },
        ]
        .into(),
    }
}

fn test_plugin(config: &str) -> Result<Instance<B>, dtx::plugins::HookError> {
    let lib = load_library(&plugin_path("dtx-test-plugin"), None, vtables::<B>())
        .expect("test plugin loads");
    Instance::<B>::new("test", lib, config, &model())
}

fn tensor<const D: usize>(values: &[f32], shape: [usize; D]) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), &Default::default())
}

fn values<const D: usize>(t: &Tensor<B, D>) -> Vec<f32> {
    t.clone().into_data().to_vec().unwrap()
}

fn scalar(t: Tensor<B, 1>) -> f32 {
    values(&t)[0]
}

/// The session's handle for a loss term (what the optimizer steps on).
fn loss_prim(t: &Tensor<B, 1>) -> burn::tensor::ops::FloatTensor<B> {
    t.clone().into_primitive().tensor()
}

fn param(name: &str) -> Vec<f32> {
    Session::<B>::with(|s| {
        let id = s
            .params
            .ids()
            .into_iter()
            .find(|&id| s.params.get(id).unwrap().name == name)
            .unwrap();
        let value = s.params.get(id).unwrap().value.clone();
        values(&Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(
            value,
        )))
    })
    .unwrap()
}

fn live() -> usize {
    Session::<B>::with(|s| s.live_handles()).unwrap()
}

struct Batch {
    x0: Tensor<B, 2>,
    noise: Tensor<B, 2>,
    t: Tensor<B, 1>,
    x_t: Tensor<B, 2>,
    pred: Tensor<B, 2>,
}

fn batch() -> Batch {
    let x0: Vec<f32> = (0..8).map(|i| i as f32 / 8.0).collect();
    let noise: Vec<f32> = (0..8).map(|i| ((i * 7) % 5) as f32 / 5.0 - 0.4).collect();
    Batch {
        x0: tensor(&x0, [4, 2]),
        noise: tensor(&noise, [4, 2]),
        t: tensor(&[1.0, 2.0, 3.0, 4.0], [4]),
        x_t: tensor(&x0, [4, 2]),
        pred: tensor(&x0.iter().map(|v| v * 0.5).collect::<Vec<_>>(), [4, 2]),
    }
}

fn loss_terms(inst: &mut Instance<B>, b: &Batch, step: u64) -> Vec<(String, Tensor<B, 1>)> {
    inst.loss(LossArgs {
        x0: &b.x0,
        noise: &b.noise,
        t: &b.t,
        x_t: &b.x_t,
        pred: &b.pred,
        labels: None,
        step,
    })
    .expect("loss hook")
}

#[test]
fn a_cdylib_unknown_to_the_host_loads_and_describes_itself() {
    let _s = session();
    let lib = load_library(&plugin_path("dtx-test-plugin"), None, vtables::<B>()).unwrap();
    let d = &lib.description;
    assert_eq!(d.name, "test");
    assert_eq!(d.api_version, dtx_plugin_api::abi::API_VERSION);
    for hook in Hook::ALL {
        assert!(d.hooks.contains(hook), "declares {hook}");
    }
    let keys: Vec<&str> = d.config.iter().map(|k| k.key.as_str()).collect();
    assert!(keys.contains(&"guidance"), "{keys:?}");
    let guidance = d.config.iter().find(|k| k.key == "guidance").unwrap();
    assert_eq!(guidance.default, "0.0");
}

#[test]
fn plugin_parameters_train_through_the_host_autodiff() {
    let _s = session();
    let mut inst = test_plugin("{}").unwrap();
    let ids = Session::<B>::with(|s| s.params.ids_of("test")).unwrap();
    assert_eq!(inst.parameters().len(), 4);
    let b = batch();
    let (s0, b0) = (param("plugin.test.s")[0], param("plugin.test.b")[0]);

    // One step through the plugin: loss hook -> host backward -> host Adam.
    let terms = loss_terms(&mut inst, &b, 0);
    assert_eq!(
        terms.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["test.fit"]
    );
    let loss0 = scalar(terms[0].1.clone());
    let cfg = AdamConfig {
        lr: 0.01,
        ..Default::default()
    };
    let mut optimizer = Optimizer::<B>::new();
    Session::<B>::with(|s| optimizer.step(&mut s.params, loss_prim(&terms[0].1), &ids, cfg))
        .unwrap()
        .unwrap();

    // The same loss written in burn: fit = mean((pred · softplus(s) + b − noise)²).
    let dev = Default::default();
    let s_t = Tensor::<B, 1>::from_floats([s0], &dev).require_grad();
    let b_t = Tensor::<B, 1>::from_floats([b0], &dev).require_grad();
    let (pred, noise) = (b.pred.clone(), b.noise.clone());
    let sp = burn::tensor::activation::softplus(s_t.clone(), 1.0);
    let fit = (pred * sp.unsqueeze() + b_t.clone().unsqueeze() - noise)
        .powf_scalar(2.0)
        .mean();
    let direct = fit.clone().into_scalar();
    assert!(
        (loss0 - direct).abs() <= 1e-6 * direct.abs(),
        "{loss0} vs {direct}"
    );
    let grads = fit.backward();
    // Adam's first step moves each parameter by lr · g / (|g| + ε) (m̂ = g, v̂ = g²).
    for (name, before, g) in [
        ("plugin.test.s", s0, s_t.grad(&grads).unwrap().into_scalar()),
        ("plugin.test.b", b0, b_t.grad(&grads).unwrap().into_scalar()),
    ] {
        let expected = before - 0.01 * g / (g.abs() + 1e-8);
        let got = param(name)[0];
        assert!(
            (got - expected).abs() < 1e-6,
            "{name}: {got} vs {expected} (grad {g})"
        );
    }
    // `gain` is not in the loss: no gradient, unchanged.
    assert_eq!(param("plugin.test.gain"), vec![0.0]);

    // Training keeps lowering the loss.
    for step in 1..60 {
        let terms = loss_terms(&mut inst, &b, step);
        Session::<B>::with(|s| optimizer.step(&mut s.params, loss_prim(&terms[0].1), &ids, cfg))
            .unwrap()
            .unwrap();
    }
    let last = scalar(loss_terms(&mut inst, &b, 60)[0].1.clone());
    assert!(last < 0.5 * loss0, "loss {loss0} -> {last}");
    // The plugin logged through the host, named `<plugin>.<name>`.
    let logs = Session::<B>::with(|s| s.services.take_logs()).unwrap();
    assert!(logs.iter().any(|(n, _)| n == "test.fit_value"), "{logs:?}");
}

#[test]
fn every_hook_runs_on_host_tensors_and_every_op_is_touched() {
    let _s = session();
    let mut inst = test_plugin(
        r#"{"exercise_weight": 1.0, "guidance": 2.0, "threshold": 0.3, "prepare_steps": 200}"#,
    )
    .unwrap();
    assert_eq!(inst.points(), vec!["mid.res.0".to_string()]);
    let before = live();

    // prepare: trains w towards mean 1 with the host's optimizer_step.
    inst.prepare("train", "/tmp").unwrap();
    let w = param("plugin.test.w");
    assert!((w.iter().sum::<f32>() / 4.0 - 1.0).abs() < 1e-2, "{w:?}");

    // inject: h + gain · tanh(h) with gain = 0 is h itself.
    let h = tensor(
        &(0..32).map(|i| i as f32 / 32.0).collect::<Vec<_>>(),
        [1, 2, 4, 4],
    );
    let temb = tensor(&[0.0; 8], [1, 8]);
    let t = tensor(&[5.0], [1]);
    let out = inst
        .inject(InjectArgs {
            point: "mid.res.0",
            h: &h,
            t: &t,
            temb: &temb,
            cond: None,
            labels: None,
            training: true,
        })
        .unwrap();
    assert_eq!(values(&out), values(&h));

    // loss with the exercise term: every tensor op runs inside the plugin.
    let terms = loss_terms(&mut inst, &batch(), 0);
    assert_eq!(terms.len(), 2);
    assert!(scalar(terms[1].1.clone()).is_finite());

    // score: eps + guidance · ∇(½ Σ x²) = eps + 2 x (gradient taken by the host).
    let x = tensor(&[1.0, -2.0], [1, 2]);
    let eps = tensor(&[0.5, 0.5], [1, 2]);
    let guided = inst.score(&x, &t, &eps, None, 0, 10).unwrap();
    assert_eq!(values(&guided), vec![2.5, -3.5]);

    // filter: keep the samples whose mean is above 0.3.
    let samples = tensor(&[0.0, 0.1, 1.0, 0.9], [2, 2]);
    let f = inst.filter(&samples, None).unwrap();
    assert_eq!(f.keep.as_slice(), [false, true]);

    // state round trip.
    let state = inst.state_save().unwrap();
    inst.state_load(&state).unwrap();
    assert!(inst.state_load(&[1, 2]).is_err());

    drop((terms, guided, out));
    assert_eq!(live(), before, "hooks release every handle they take");
}

#[test]
fn a_panicking_hook_is_an_error_naming_plugin_and_hook_and_the_host_goes_on() {
    let _s = session();
    let mut inst = test_plugin(r#"{"panic_in": "loss"}"#).unwrap();
    let b = batch();
    let err = inst
        .loss(LossArgs {
            x0: &b.x0,
            noise: &b.noise,
            t: &b.t,
            x_t: &b.x_t,
            pred: &b.pred,
            labels: None,
            step: 0,
        })
        .unwrap_err();
    assert_eq!(err.error.kind, ErrorKind::PANIC);
    let msg = err.to_string();
    assert!(
        msg.contains("plugin `test` panicked in hook `loss`: deliberate panic in loss"),
        "{msg}"
    );
    // The same instance still serves its other hooks.
    let samples = tensor(&[0.0, 1.0], [2, 1]);
    assert_eq!(inst.filter(&samples, None).unwrap().keep.len(), 2);
    // A panic in the constructor is reported the same way.
    let err = test_plugin(r#"{"panic_in": "new"}"#)
        .err()
        .expect("constructor panics");
    assert!(
        err.to_string()
            .contains("plugin `test` panicked in hook `new`"),
        "{err}"
    );
}

#[test]
fn a_bad_config_is_an_error_with_the_key_path() {
    let _s = session();
    let err = test_plugin(r#"{"guidance": "lots"}"#).err().unwrap();
    assert_eq!(err.error.kind, ErrorKind::CONFIG);
    assert_eq!(err.error.key_path.as_str(), "guidance");
    let err = test_plugin(r#"{"points": ["down.9.res.0"]}"#)
        .err()
        .unwrap();
    assert!(
        err.error
            .message
            .contains("`down.9.res.0` is not an injection point"),
        "{}",
        err.error.message
    );
}

#[test]
fn a_plugin_built_against_an_incompatible_api_is_refused() {
    let _s = session();
    let path = plugin_path("dtx-test-plugin-incompatible");
    let err = load_library(&path, None, vtables::<B>()).unwrap_err();
    match &err {
        LoadError::IncompatibleApi {
            plugin_api,
            host_api,
            ..
        } => {
            assert_eq!(plugin_api, "9.0.0");
            assert_eq!(host_api, dtx_plugin_api::abi::API_VERSION);
        }
        other => panic!("expected an api refusal, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(
        msg.contains("9.0.0") && msg.contains(dtx_plugin_api::abi::API_VERSION),
        "{msg}"
    );
}

#[test]
fn a_tampered_file_fails_its_sha256_pin() {
    let _s = session();
    let original = plugin_path("dtx-plugin-example");
    let dir = std::env::temp_dir().join(format!("dtx-sha-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join(dtx::plugins::library_file_name("dtx-plugin-example"));
    let mut bytes = std::fs::read(&original).unwrap();
    let good = sha256_file(&original).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&copy, &bytes).unwrap();
    let err = load_library(&copy, Some(&good), vtables::<B>()).unwrap_err();
    match &err {
        LoadError::Sha256Mismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &good);
            assert_ne!(actual, &good);
        }
        other => panic!("expected a sha256 refusal, got {other:?}"),
    }
    assert!(err.to_string().contains(&good));
    // The untouched file passes the same pin.
    assert!(load_library(&original, Some(&good), vtables::<B>()).is_ok());
}

#[test]
fn the_block_plugin_computes_what_burn_computes() {
    let _s = session();
    let lib = load_library(&plugin_path("dtx-test-plugin-block"), None, vtables::<B>()).unwrap();
    let model = ModelInfo {
        points: vec![PointInfo {
            name: "mid.res.0".into(),
            channels: 8,
            height: 4,
            width: 4,
        }]
        .into(),
        ..Default::default()
    };
    let mut inst = Instance::<B>::new("block", Arc::clone(&lib), "{}", &model).unwrap();
    let p = dtx_tests::block::BlockParams::<B>::from_session();
    let dev = Default::default();
    let h = Tensor::<B, 4>::random(
        [2, 8, 4, 4],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &dev,
    );
    let cond = Tensor::<B, 3>::random(
        [2, 3, 8],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &dev,
    );
    let direct = dtx_tests::block::block(h.clone(), cond.clone(), &p)
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let t = tensor(&[0.0, 0.0], [2]);
    let temb = tensor(&[0.0; 16], [2, 8]);
    let via = inst
        .inject(InjectArgs {
            point: "mid.res.0",
            h: &h,
            t: &t,
            temb: &temb,
            cond: Some(&cond),
            labels: None,
            training: false,
        })
        .unwrap();
    let via = values(&via);
    // Same ops in the same order: equal up to rounding (1e-5 relative).
    for (a, b) in via.iter().zip(&direct) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

#[test]
fn a_plugin_named_in_a_manifest_is_planned_and_its_parameters_train() {
    let _s = session();
    // Resolve a manifest the way `dtx plan` does: find, check and build plugins.
    let file = dtx_tests::workspace_root().join("tests/manifests/ok/two-plugins.toml");
    let loaded = dtx::manifest::load(&file, &[]).unwrap();
    let plan = dtx::plan::resolve(loaded).unwrap();
    let probe = plan
        .plugins
        .iter()
        .find(|p| p.name == "probe")
        .expect("planned");
    assert_eq!(probe.library.description.name, "test");
    assert_eq!(probe.points, vec!["mid.res.0".to_string()]);
    // Build it for a run (planning left this test's session in place) and
    // train it through the host.
    let model = plan.model.as_ref().unwrap().to_model_info();
    let mut inst = Instance::<B>::new(
        &probe.name,
        Arc::clone(&probe.library),
        &probe.config_json,
        &model,
    )
    .unwrap();
    let ids = Session::<B>::with(|s| s.params.ids_of("probe")).unwrap();
    let before = param("plugin.probe.b");
    let terms = loss_terms(&mut inst, &batch(), 0);
    assert_eq!(terms[0].0, "probe.fit");
    Session::<B>::with(|s| {
        let loss = loss_prim(&terms[0].1);
        Optimizer::new().step(&mut s.params, loss, &ids, AdamConfig::default())
    })
    .unwrap()
    .unwrap();
    assert_ne!(param("plugin.probe.b"), before);
}
