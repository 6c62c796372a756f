//! The `lora` plugin through api 0.4's `weights` hook: the update is
//! `W + (α/r)·B·A` computed another way (loops in f64, tolerance 1e-5), the
//! untrained adapter leaves every weight as it is, and a run trains the
//! factors alone (B at LoRA+'s rate) and resumes bit-identically.

use burn::tensor::TensorData;
use burn::tensor::ops::FloatTensor;
use burn::tensor::ops::FloatTensorOps;
use dtx::plugins::{Instance, load_library};
use dtx::tensor_abi::{CpuBackend, Session, SessionGuard, vtables};
use dtx_plugin_api::ModelInfo;
use dtx_plugin_api::abi::{BaseParamInfo, ModelDetails, ParamRole};
use dtx_tests::runs::{dtx_run, out_dir, straight_and_resumed};
use dtx_tests::{plugin_path, run_in_process};

type B = CpuBackend;

const LINEAR: &str = "mid.attn.to_q.weight";
const CONV: &str = "down.conv1.weight";

fn session() -> SessionGuard {
    let guard = Session::<B>::install(Default::default(), 0);
    dtx::train::optim::install::<B>(Default::default()).unwrap();
    let param = |key: &str, shape: &[usize], role| BaseParamInfo {
        key: key.into(),
        shape: shape.to_vec().into(),
        role,
        block: "".into(),
    };
    let details = ModelDetails {
        prediction: "epsilon".into(),
        num_classes: 0,
        data_shape: vec![3, 8, 8].into(),
        parameters: vec![
            param(LINEAR, &[3, 5], ParamRole::LINEAR),
            param("mid.attn.to_q.bias", &[3], ParamRole::BIAS),
            param(CONV, &[2, 3, 3, 3], ParamRole::CONV),
            param("down.norm.weight", &[3], ParamRole::NORM),
        ]
        .into(),
    };
    Session::<B>::with(|s| s.services.model_details = Some(details)).unwrap();
    guard
}

fn lora(config: &str) -> Result<Instance<B>, dtx::plugins::HookError> {
    let lib = load_library(&plugin_path("dtx-plugin-lora"), None, vtables::<B>())
        .expect("lora plugin loads");
    Instance::<B>::new("lora", lib, config, &ModelInfo::default())
}

/// A deterministic pseudo-random vector.
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = ((i as u32).wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40503)) % 1000;
            x as f32 / 500.0 - 1.0
        })
        .collect()
}

fn prim(v: &[f32], shape: &[usize]) -> FloatTensor<B> {
    B::float_from_data(
        TensorData::new(v.to_vec(), shape.to_vec()),
        &Default::default(),
    )
}

fn read(p: FloatTensor<B>) -> Vec<f32> {
    burn::tensor::read_sync(B::float_into_data(p))
        .unwrap()
        .to_vec()
        .unwrap()
}

/// Sets the plugin parameter `name` to `v`.
fn set_param(name: &str, v: &[f32]) {
    Session::<B>::with(|s| {
        let id = s
            .params
            .by_name(&format!("plugin.lora.{name}"))
            .expect(name);
        let e = s.params.get_mut(id).unwrap();
        let shape = burn::tensor::TensorMetadata::shape(&e.value).to_vec();
        e.value = prim(v, &shape);
    })
    .unwrap();
}

/// `W + scale · B·A` by loops: `B [out, r]`, `A [r, fan_in]`, `W` flat.
fn reference(w: &[f32], b: &[f32], a: &[f32], out: usize, r: usize, scale: f64) -> Vec<f32> {
    let fan_in = w.len() / out;
    let mut o = Vec::with_capacity(w.len());
    for i in 0..out {
        for j in 0..fan_in {
            let mut d = 0f64;
            for k in 0..r {
                d += b[i * r + k] as f64 * a[k * fan_in + j] as f64;
            }
            o.push((w[i * fan_in + j] as f64 + scale * d) as f32);
        }
    }
    o
}

#[test]
fn the_update_is_w_plus_scaled_b_a_and_starts_at_zero() {
    let _s = session();
    let mut inst = lora(r#"{"rank": 2, "alpha": 3.0}"#).unwrap();
    // linear and conv weights are the targets; the bias and norm are not
    assert_eq!(inst.weight_targets(), [LINEAR.to_owned(), CONV.to_owned()]);
    let shapes: Vec<(String, Vec<usize>)> = inst
        .parameters()
        .iter()
        .map(|p| (p.name.to_string(), p.shape.to_vec()))
        .collect();
    assert_eq!(
        shapes,
        [
            ("mid.attn.to_q.lora_A.weight".to_owned(), vec![2, 5]),
            ("mid.attn.to_q.lora_B.weight".to_owned(), vec![3, 2]),
            ("down.conv1.lora_A.weight".to_owned(), vec![2, 3, 3, 3]),
            ("down.conv1.lora_B.weight".to_owned(), vec![2, 2, 1, 1]),
        ]
    );
    // A starts Kaiming-uniform (a = √5): on ±1/√fan_in, and not all zero;
    // B starts at zero
    for (module, fan_in) in [("mid.attn.to_q", 5.0f32), ("down.conv1", 27.0)] {
        let get = |name: String| {
            Session::<B>::with(|s| {
                let id = s.params.by_name(&format!("plugin.lora.{name}")).unwrap();
                read(s.params.get(id).unwrap().value.clone())
            })
            .unwrap()
        };
        let a = get(format!("{module}.lora_A.weight"));
        let bound = 1.0 / fan_in.sqrt();
        assert!(
            a.iter().all(|x| x.abs() <= bound) && a.iter().any(|&x| x != 0.0),
            "{a:?}"
        );
        assert!(
            get(format!("{module}.lora_B.weight"))
                .iter()
                .all(|&x| x == 0.0)
        );
    }
    for (key, shape, out) in [(LINEAR, vec![3, 5], 3), (CONV, vec![2, 3, 3, 3], 2)] {
        let n: usize = shape.iter().product();
        let w = values(n, 7);
        // untrained (B = 0): exactly the source's weight
        let same = inst.weights(key, &prim(&w, &shape), true).unwrap();
        assert_eq!(read(same), w, "{key}");
        let module = key.strip_suffix(".weight").unwrap();
        let (a, b) = (values(2 * n / out, 11), values(out * 2, 13));
        set_param(&format!("{module}.lora_A.weight"), &a);
        set_param(&format!("{module}.lora_B.weight"), &b);
        let got = read(inst.weights(key, &prim(&w, &shape), true).unwrap());
        let want = reference(&w, &b, &a, out, 2, 3.0 / 2.0);
        for (g, e) in got.iter().zip(&want) {
            assert!((g - e).abs() <= 1e-5, "{key}: {got:?} vs {want:?}");
        }
    }
}

#[test]
fn bad_configs_name_the_key() {
    let _s = session();
    for (config, key, says) in [
        (r#"{"rank": 0}"#, "rank", "at least 1"),
        (r#"{"alpha": -1.0}"#, "alpha", "must be > 0"),
        (
            r#"{"roles": ["norm"]}"#,
            "roles[0]",
            "not a role LoRA adapts",
        ),
        (
            r#"{"targets": ["nothing.*"]}"#,
            "targets",
            "select no base weight",
        ),
        (r#"{"lr_ratio": 0.0}"#, "lr_ratio", "must be > 0"),
    ] {
        let e = lora(config).err().expect(config);
        assert_eq!(e.error.key_path.as_str(), key, "{config}: {e}");
        assert!(e.error.message.contains(says), "{config}: {e}");
    }
}

#[test]
fn a_run_trains_the_factors_alone_and_resumes_bit_identically() {
    let r = straight_and_resumed("lora", "lora-unet.toml", "lora-unet", 2);
    // every value, moments included, as the uninterrupted run's
    assert_eq!(r.straight, r.resumed);
    let params = |t: &std::collections::BTreeMap<String, Vec<u8>>, pre: &str| {
        t.iter()
            .filter(|(k, _)| k.starts_with(pre))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    // the factors trained: they moved between step 2 and step 4 …
    let factors = params(&r.straight, "param/plugin.lora.");
    assert!(
        !factors.is_empty(),
        "{:?}",
        r.straight.keys().take(8).collect::<Vec<_>>()
    );
    assert_ne!(factors, params(&r.half, "param/plugin.lora."));
    // … while every base weight stayed as it was
    let base = |t| {
        params(t, "param/")
            .into_iter()
            .filter(|(k, _)| !k.starts_with("param/plugin."))
            .collect::<Vec<_>>()
    };
    assert_eq!(base(&r.straight), base(&r.half));
}

/// Every file under `dir/samples`, by name.
fn sample_files(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir.join("samples"))
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// With an EMA, a run samples its plugin's parameters at their averages,
/// as it does the base weights (they were once sampled at their trained
/// values): with a decay that is 1 in f32 (0.99999999) the averages stay at
/// the start, B = 0, so the samples are the source model's, which a run
/// whose factors cannot move (lr 1e-30: `W + s·B·A` rounds to `W`) draws
/// too, while the factors themselves trained at lr 1e-2. `dtx sample` from
/// the checkpoint draws the same samples again.
#[test]
fn with_an_ema_a_run_samples_the_plugin_parameters_averages() {
    let averaged = out_dir("lora", "ema");
    let r = dtx_run(
        "lora-unet.toml",
        &averaged,
        &["train.ema={ decay = 0.99999999 }"],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let unmoved = out_dir("lora", "unmoved");
    let r = dtx_run("lora-unet.toml", &unmoved, &["train.lr=1e-30"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let dir = averaged.join("lora-unet");
    let ran = sample_files(&dir);
    assert!(!ran.is_empty());
    assert_eq!(ran, sample_files(&unmoved.join("lora-unet")));
    // the trained factors did move
    let (_, ckpt) = dtx_tests::runs::tensors(&dir.join("checkpoints/latest.safetensors"));
    let b = ckpt
        .iter()
        .find(|(k, _)| k.starts_with("param/plugin.lora.") && k.ends_with("lora_B.weight"))
        .unwrap();
    assert!(b.1.iter().any(|&x| x != 0), "{}", b.0);
    let again = averaged.join("again");
    let s = run_in_process(&[
        "sample",
        dir.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    assert_eq!(s.code, 0, "{}", s.stderr);
    assert_eq!(ran, sample_files(&again));
    let _ = std::fs::remove_dir_all(&averaged);
    let _ = std::fs::remove_dir_all(&unmoved);
}
