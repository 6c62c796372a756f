//! The `sdft` plugin (plugins/sdft, docs/plugins/sdft.md): its loss terms
//! against a direct computation through the real loader, and `dtx run` end
//! to end — zero distillation while student = source, bit-identical naive
//! fine-tuning when both λ are 0, a frozen source, resume with fresh
//! auxiliary noise, and the diffusers and ADM (learned sigma) models.

use burn::tensor::{Int, Tensor, TensorData};
use dtx::plugins::{Instance, LossArgs, load_library};
use dtx::tensor_abi::{CpuBackend, DenoiseService, Ranked, Session, SessionGuard, vtables};
use dtx_plugin_api::ModelInfo;
use dtx_plugin_api::abi::{AbiError, Which};
use dtx_tests::runs::{self, tensors};
use dtx_tests::{Output, plugin_path};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

type B = CpuBackend;

// --- the loss hook on a mock denoiser ---------------------------------------

fn tensor<const D: usize>(values: &[f32], shape: [usize; D]) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), &Default::default())
}

fn values<const D: usize>(t: &Tensor<B, D>) -> Vec<f32> {
    t.clone().into_data().to_vec().unwrap()
}

/// One `denoise` call the plugin made: which model, input, timesteps.
#[derive(Debug, Clone)]
struct Call {
    source: bool,
    x: Vec<f32>,
    t: Vec<f32>,
}

/// A denoiser with known answers: the source says ε_φ(x) = 0.5·x, the
/// student ε_θ(x) = 2·x; every call is recorded.
#[derive(Default)]
struct Mock {
    calls: RefCell<Vec<Call>>,
}

impl DenoiseService<B> for Mock {
    fn denoise(
        &self,
        x_t: Ranked<B>,
        t: Tensor<B, 1>,
        which: Which,
        _labels: Option<Tensor<B, 1, Int>>,
    ) -> Result<Ranked<B>, AbiError> {
        let x = x_t.at::<2>("mock: x_t")?;
        let source = matches!(which, Which::Source);
        self.calls.borrow_mut().push(Call {
            source,
            x: values(&x),
            t: values(&t),
        });
        Ok(Ranked::new(x.mul_scalar(if source { 0.5 } else { 2.0 })))
    }

    fn features(
        &self,
        _x: Ranked<B>,
        _t: Tensor<B, 1>,
        _points: &[String],
        _which: Which,
        _labels: Option<burn::tensor::Tensor<B, 1, burn::tensor::Int>>,
    ) -> Result<Vec<Ranked<B>>, AbiError> {
        Err(AbiError::other("mock: no features"))
    }
}

/// ᾱ_t of the mock schedule, T = 5.
const ALPHA_BAR: [f32; 5] = [0.9, 0.5, 0.2, 0.05, 0.01];

fn session_with(mock: Rc<Mock>) -> SessionGuard {
    let guard = Session::<B>::install(Default::default(), 7);
    Session::<B>::with(|s| {
        s.services.denoiser = Some(mock as Rc<dyn DenoiseService<B>>);
        s.services.alpha_bar = Some(ALPHA_BAR.to_vec());
    })
    .unwrap();
    guard
}

fn sdft(config: &str) -> Instance<B> {
    let lib = load_library(&plugin_path("dtx-plugin-sdft"), None, vtables::<B>())
        .expect("sdft plugin loads");
    let model = ModelInfo {
        kind: "mock".into(),
        data_channels: 2,
        resolution: 0,
        temb_channels: 8,
        points: Vec::new().into(),
    };
    Instance::<B>::new("sdft", lib, config, &model).expect("sdft builds")
}

/// The step: 4 examples of 3 values at timesteps 1..4.
struct Step {
    x0: Tensor<B, 2>,
    noise: Tensor<B, 2>,
    t: Tensor<B, 1>,
    x_t: Tensor<B, 2>,
    pred: Tensor<B, 2>,
    noise_v: Vec<f32>,
    x_t_v: Vec<f32>,
    pred_v: Vec<f32>,
    ts: Vec<usize>,
}

fn step() -> Step {
    let noise_v: Vec<f32> = (0..12).map(|i| ((i * 7) % 5) as f32 / 5.0 - 0.4).collect();
    let x_t_v: Vec<f32> = (0..12).map(|i| i as f32 / 6.0 - 1.0).collect();
    let pred_v: Vec<f32> = (0..12).map(|i| ((i * 3) % 7) as f32 / 7.0 - 0.5).collect();
    let ts = vec![1, 2, 3, 4];
    let tf: Vec<f32> = ts.iter().map(|&t| t as f32).collect();
    Step {
        x0: tensor(&x_t_v, [4, 3]),
        noise: tensor(&noise_v, [4, 3]),
        t: tensor(&tf, [4]),
        x_t: tensor(&x_t_v, [4, 3]),
        pred: tensor(&pred_v, [4, 3]),
        noise_v,
        x_t_v,
        pred_v,
        ts,
    }
}

fn run_loss(inst: &mut Instance<B>, s: &Step) -> Vec<(String, f64)> {
    inst.loss(LossArgs {
        x0: &s.x0,
        noise: &s.noise,
        t: &s.t,
        x_t: &s.x_t,
        pred: &s.pred,
        labels: None,
        step: 0,
    })
    .expect("loss hook")
    .into_iter()
    .map(|(k, v)| (k, values(&v)[0] as f64))
    .collect()
}

/// mean_i w(t_i) · mean_j (a_ij − b_ij)², w = 1/(k + SNR)^γ, in f64 from the
/// definitions (Eq. 3–5), independent of the plugin's code.
fn reference(a: &[f32], b: &[f32], ts: &[usize], k: f64, gamma: f64) -> f64 {
    let per = a.len() / ts.len();
    let mut total = 0.0;
    for (i, &t) in ts.iter().enumerate() {
        let ab = ALPHA_BAR[t] as f64;
        let snr = ab / (1.0 - ab);
        let w = 1.0 / (k + snr).powf(gamma);
        let mse: f64 = (0..per)
            .map(|j| (a[i * per + j] as f64 - b[i * per + j] as f64).powi(2))
            .sum::<f64>()
            / per as f64;
        total += w * mse;
    }
    total / ts.len() as f64
}

/// f32 arithmetic in the host against the f64 reference.
const REL_TOL: f64 = 1e-5;

fn assert_close(name: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= REL_TOL * want.abs() + 1e-12,
        "{name}: got {got}, want {want}"
    );
}

fn logs() -> Vec<(String, f64)> {
    Session::<B>::with(|s| s.services.take_logs()).unwrap()
}

fn logged(logs: &[(String, f64)], key: &str) -> f64 {
    logs.iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("{key} not logged: {logs:?}"))
        .1
}

#[test]
fn the_loss_terms_are_eq_3_and_5_on_the_steps_sample() {
    let mock = Rc::new(Mock::default());
    let _s = session_with(mock.clone());
    let s = step();
    // γ = 2 and γ_a = 1 keep both terms well above f32 rounding
    let mut inst = sdft(
        r#"{"lambda_distill": 0.3, "gamma": 2.0, "lambda_aux": 0.7, "gamma_aux": 1.0, "k": 1.5}"#,
    );
    let terms = run_loss(&mut inst, &s);
    let logs = logs();
    // L_distill: the step's `pred` against the source on the step's x_t and t.
    let src: Vec<f32> = s.x_t_v.iter().map(|v| v * 0.5).collect();
    let distill = reference(&s.pred_v, &src, &s.ts, 1.5, 2.0);
    // L_aux: student and source on z = the step's ε at the step's t.
    let z_student: Vec<f32> = s.noise_v.iter().map(|v| v * 2.0).collect();
    let z_source: Vec<f32> = s.noise_v.iter().map(|v| v * 0.5).collect();
    let aux = reference(&z_student, &z_source, &s.ts, 1.5, 1.0);
    assert_close("sdft.l_distill", logged(&logs, "sdft.l_distill"), distill);
    assert_close("sdft.l_aux", logged(&logs, "sdft.l_aux"), aux);
    let names: Vec<&str> = terms.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["sdft.distill", "sdft.aux"]);
    assert_close("sdft.distill", terms[0].1, 0.3 * distill);
    assert_close("sdft.aux", terms[1].1, 0.7 * aux);
    // Three forwards: the source on x_t (no student forward: `pred` is
    // shared), then student and source on z = ε, all at the step's t.
    let calls = mock.calls.borrow();
    let seen: Vec<(bool, &[f32])> = calls.iter().map(|c| (c.source, c.x.as_slice())).collect();
    assert_eq!(
        seen,
        [
            (true, s.x_t_v.as_slice()),
            (false, s.noise_v.as_slice()),
            (true, s.noise_v.as_slice())
        ]
    );
    assert!(calls.iter().all(|c| c.t == [1.0, 2.0, 3.0, 4.0]));
    println!("l_distill = {distill:.6e}, l_aux = {aux:.6e}");
}

#[test]
fn the_default_weights_follow_the_schedule() {
    // γ = 3, γ_a = 50, k = 1 (the defaults) on the same step.
    let mock = Rc::new(Mock::default());
    let _s = session_with(mock);
    let s = step();
    let mut inst = sdft("{}");
    let terms = run_loss(&mut inst, &s);
    let src: Vec<f32> = s.x_t_v.iter().map(|v| v * 0.5).collect();
    let distill = reference(&s.pred_v, &src, &s.ts, 1.0, 3.0);
    let z_student: Vec<f32> = s.noise_v.iter().map(|v| v * 2.0).collect();
    let z_source: Vec<f32> = s.noise_v.iter().map(|v| v * 0.5).collect();
    let aux = reference(&z_student, &z_source, &s.ts, 1.0, 50.0);
    assert_close("sdft.distill", terms[0].1, 0.1 * distill);
    assert_close("sdft.aux", terms[1].1, 0.1 * aux);
}

#[test]
fn a_zero_lambda_runs_no_forward_and_returns_no_term() {
    let mock = Rc::new(Mock::default());
    let _s = session_with(mock.clone());
    let s = step();
    let mut inst = sdft(r#"{"lambda_distill": 0.0, "lambda_aux": 0.0}"#);
    assert!(run_loss(&mut inst, &s).is_empty());
    let mut inst = sdft(r#"{"lambda_distill": 0.0, "aux": false}"#);
    assert!(run_loss(&mut inst, &s).is_empty());
    assert!(mock.calls.borrow().is_empty(), "{:?}", mock.calls.borrow());
    assert!(logs().is_empty());
}

#[test]
fn fresh_auxiliary_noise_draws_z_and_t_over_the_whole_schedule() {
    let mock = Rc::new(Mock::default());
    let _s = session_with(mock.clone());
    let s = step();
    let mut inst = sdft(r#"{"lambda_distill": 0.0, "aux_noise": "fresh", "gamma_aux": 0.0}"#);
    let mut ts = std::collections::BTreeSet::new();
    for _ in 0..40 {
        mock.calls.borrow_mut().clear();
        let terms = run_loss(&mut inst, &s);
        let calls = mock.calls.borrow();
        assert_eq!(calls.len(), 2, "{calls:?}");
        let (student, source) = (&calls[0], &calls[1]);
        assert!(!student.source && source.source);
        // one z for both models, not the step's ε, of the step's shape
        assert_eq!(student.x, source.x);
        assert_eq!(student.x.len(), s.noise_v.len());
        assert_ne!(student.x, s.noise_v);
        assert_eq!(student.t, source.t);
        for &t in &student.t {
            assert!(t.fract() == 0.0 && (0.0..5.0).contains(&t), "t = {t}");
            ts.insert(t as i64);
        }
        // γ_a = 0: L_aux = mean (2z − 0.5z)² = 2.25 · mean z²
        let z2 = student.x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / 12.0;
        assert_close("sdft.aux", terms[0].1, 0.1 * 2.25 * z2);
    }
    // 160 draws from U{0..4}: every timestep, T found from the schedule
    assert_eq!(ts.into_iter().collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
}

#[test]
fn bad_config_values_are_errors_naming_the_key() {
    let _s = session_with(Rc::new(Mock::default()));
    for (config, key) in [
        (r#"{"lambda_distill": -1.0}"#, "lambda_distill"),
        (r#"{"k": 0.0}"#, "k"),
        (r#"{"gamma_aux": -3.0}"#, "gamma_aux"),
        (r#"{"aux_noise": "pure"}"#, "aux_noise"),
        (r#"{"aux": "yes"}"#, "aux"),
    ] {
        let lib = load_library(&plugin_path("dtx-plugin-sdft"), None, vtables::<B>()).unwrap();
        let model = ModelInfo {
            kind: "mock".into(),
            data_channels: 2,
            resolution: 0,
            temb_channels: 8,
            points: Vec::new().into(),
        };
        let err = match Instance::<B>::new("sdft", lib, config, &model) {
            Ok(_) => panic!("{config} was accepted"),
            Err(e) => e,
        };
        assert_eq!(err.error.key_path.as_str(), key, "{config}: {err}");
    }
}

// --- dtx run end to end -----------------------------------------------------

fn out_dir(name: &str) -> PathBuf {
    runs::out_dir("sdft", name)
}

/// [`runs::dtx_run`], which must succeed.
fn dtx_run(manifest_name: &str, out: &Path, sets: &[&str], extra: &[&str]) -> Output {
    let r = runs::dtx_run(manifest_name, out, sets, extra);
    assert_eq!(r.code, 0, "{manifest_name}: {}", r.stderr);
    r
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v.get("step").is_some())
        .collect()
}

fn metric(m: &serde_json::Value, key: &str) -> f64 {
    m[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {m}"))
}

#[test]
fn with_both_lambdas_zero_training_is_bit_identical_to_naive_fine_tuning() {
    let out = out_dir("zero");
    let steps = ["train.steps=5", "sample.count=4"];
    dtx_run("gmm-mlp.toml", &out, &steps, &[]);
    let zero = [
        steps[0],
        steps[1],
        "plugin[0].config.lambda_distill=0.0",
        "plugin[0].config.lambda_aux=0.0",
    ];
    dtx_run("sdft-mlp.toml", &out, &zero, &[]);
    let (ma, a) = tensors(&out.join("gmm-mlp/checkpoints/latest.safetensors"));
    let (mb, b) = tensors(&out.join("sdft-mlp/checkpoints/latest.safetensors"));
    // Every weight, EMA value and Adam moment byte for byte; the sdft run's
    // checkpoint adds only the plugin's (empty) state.
    for (key, bytes) in &a {
        assert!(b.get(key) == Some(bytes), "`{key}` differs");
    }
    let extra: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    assert_eq!(extra, ["plugin_state/sdft"]);
    assert!(b["plugin_state/sdft"].is_empty());
    assert_eq!(ma["progress"], mb["progress"]);
    // The auxiliary term alone (γ_a = 0) does move the weights: its student
    // forward carries the gradient. (At step 0 student = source, so its
    // gradient is 0; from step 1 on it is not.)
    let aux_only = [
        steps[0],
        steps[1],
        "run.name=\"aux-only\"",
        "plugin[0].config.lambda_distill=0.0",
        "plugin[0].config.lambda_aux=1.0",
        "plugin[0].config.gamma_aux=0.0",
    ];
    dtx_run("sdft-mlp.toml", &out, &aux_only, &[]);
    let (_, c) = tensors(&out.join("aux-only/checkpoints/latest.safetensors"));
    let moved = a
        .iter()
        .filter(|(k, v)| k.starts_with("param/") && c.get(*k) != Some(*v))
        .count();
    assert!(moved > 0, "the auxiliary term trained nothing");
    // ... and with both λ = 0 no SDFT value was computed or logged.
    for m in metrics(&out.join("sdft-mlp")) {
        assert!(m.get("sdft.l_distill").is_none() && m.get("sdft.aux").is_none());
    }
}

#[test]
fn the_source_stays_frozen_while_the_student_moves_away_from_it() {
    // The source is a finished run on disk (kind = "dtx"); SDFT fine-tunes
    // from it for a few steps.
    let out = out_dir("frozen");
    dtx_run(
        "gmm-mlp.toml",
        &out,
        &["train.steps=3", "sample.count=4"],
        &[],
    );
    let first = out.join("gmm-mlp");
    let source_file = first.join("checkpoints/latest.safetensors");
    let before = std::fs::read(&source_file).unwrap();
    dtx_run(
        "sdft-mlp.toml",
        &out,
        &[
            "source.kind=\"dtx\"",
            &format!("source.path=\"{}\"", first.display()),
            "source.config={}",
            "train.steps=6",
            "train.lr=1e-2",
            "sample.count=4",
        ],
        &[],
    );
    assert_eq!(
        before,
        std::fs::read(&source_file).unwrap(),
        "the source file changed"
    );
    let ms = metrics(&out.join("sdft-mlp"));
    assert_eq!(ms.len(), 6);
    // Step 0: student = source, so both terms are exactly 0 (same weights,
    // same forward). Later the student has moved and the source has not: the
    // terms are > 0 (a source moving with the student would keep them 0).
    for key in ["sdft.l_distill", "sdft.l_aux"] {
        assert_eq!(metric(&ms[0], key), 0.0, "{key} at step 0: {}", ms[0]);
        for m in &ms[1..] {
            assert!(metric(m, key) > 0.0, "{key}: {m}");
        }
    }
    // The weighted terms are λ · the logged values.
    for m in &ms {
        let d = metric(m, "sdft.distill") - 0.1 * metric(m, "sdft.l_distill");
        assert!(
            d.abs() <= 1e-6 * metric(m, "sdft.distill").abs() + 1e-12,
            "{m}"
        );
    }
    let l: Vec<f64> = ms.iter().map(|m| metric(m, "sdft.l_distill")).collect();
    println!("l_distill per step: {l:?}");
    let (_, src) = tensors(&source_file);
    let (_, student) = tensors(&out.join("sdft-mlp/checkpoints/latest.safetensors"));
    let mut changed = 0;
    for (k, v) in &student {
        if let Some(name) = k.strip_prefix("param/") {
            let s = src
                .get(&format!("ema/{name}"))
                .unwrap_or_else(|| panic!("{name}"));
            changed += usize::from(s != v);
        }
    }
    assert!(changed > 0, "no student weight moved");
}

#[test]
fn fresh_auxiliary_noise_resumes_bit_identically() {
    let sets = [
        "train.steps=6",
        "sample.count=4",
        "plugin[0].config.aux_noise=\"fresh\"",
    ];
    let straight = out_dir("fresh-straight");
    dtx_run("sdft-mlp.toml", &straight, &sets, &[]);
    let split = out_dir("fresh-split");
    dtx_run("sdft-mlp.toml", &split, &sets, &["--stop-after", "3"]);
    dtx_run("sdft-mlp.toml", &split, &sets, &["--resume"]);
    let ckpt = "sdft-mlp/checkpoints/latest.safetensors";
    let (_, a) = tensors(&straight.join(ckpt));
    let (_, b) = tensors(&split.join(ckpt));
    assert_eq!(a, b, "checkpoints differ after 3 + resume + 3 steps");
    let ma = metrics(&straight.join("sdft-mlp"));
    let mb = metrics(&split.join("sdft-mlp"));
    assert_eq!(metric(&ma[5], "sdft.l_aux"), metric(&mb[5], "sdft.l_aux"));
}

#[test]
fn it_runs_on_a_diffusers_unet_and_an_adm_checkpoint_with_learned_sigma() {
    for (name, vlb) in [("sdft-unet", false), ("sdft-adm", true)] {
        let out = out_dir(name);
        dtx_run(&format!("{name}.toml"), &out, &[], &[]);
        let ms = metrics(&out.join(name));
        assert_eq!(ms.len(), 2);
        for m in &ms {
            for key in ["sdft.l_distill", "sdft.l_aux", "sdft.distill", "sdft.aux"] {
                let v = metric(m, key);
                assert!(v.is_finite() && v >= 0.0, "{name}: {key} in {m}");
            }
            assert_eq!(m.get("loss.vlb").is_some(), vlb, "{name}: {m}");
        }
        // step 1: the student has moved, the source has not
        assert!(metric(&ms[1], "sdft.l_distill") > 0.0, "{name}: {}", ms[1]);
        println!("{name}: {}", ms[1]);
    }
}
