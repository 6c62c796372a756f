//! `sdft`'s loss hook in process on `dtx-plugin-testing`, against the
//! definitions computed here in f64 (Eq. 3–6 of the paper): the host's
//! denoiser is a mock with known answers, the source ε_φ(x) = 0.5·x and the
//! student ε_θ(x) = 2·x, and the schedule has T = 5 steps.

use dtx_plugin_api::abi::Which;
use dtx_plugin_sdft::Sdft;
use dtx_plugin_testing::{Array, LossInputs, TestHost, TestPlugin};
use std::cell::RefCell;
use std::rc::Rc;

/// ᾱ_t of the mock schedule, T = 5.
const ALPHA_BAR: [f32; 5] = [0.9, 0.5, 0.2, 0.05, 0.01];

/// f32 arithmetic in the host against the f64 reference.
const REL_TOL: f64 = 1e-5;

/// One `denoise` call the plugin made: which model, input, timesteps.
#[derive(Debug, Clone, PartialEq)]
struct Call {
    source: bool,
    x: Vec<f32>,
    t: Vec<f32>,
}

type Calls = Rc<RefCell<Vec<Call>>>;

/// A host whose denoiser is the mock, recording each call.
fn host() -> (TestHost, Calls) {
    let calls: Calls = Rc::default();
    let record = calls.clone();
    let host = TestHost::mlp()
        .with_schedule(&ALPHA_BAR)
        .with_denoiser(move |x, t, which| {
            let source = matches!(which, Which::Source);
            record.borrow_mut().push(Call {
                source,
                x: x.values.clone(),
                t: t.to_vec(),
            });
            let scale = if source { 0.5 } else { 2.0 };
            Array::new(&x.shape, x.values.iter().map(|v| v * scale).collect())
        });
    (host, calls)
}

/// The step: 4 examples of 3 values at timesteps 1..4.
struct Step {
    noise: Array,
    x_t: Array,
    pred: Array,
    t: Vec<f32>,
}

fn step() -> Step {
    let noise: Vec<f32> = (0..12).map(|i| ((i * 7) % 5) as f32 / 5.0 - 0.4).collect();
    let x_t: Vec<f32> = (0..12).map(|i| i as f32 / 6.0 - 1.0).collect();
    let pred: Vec<f32> = (0..12).map(|i| ((i * 3) % 7) as f32 / 7.0 - 0.5).collect();
    Step {
        noise: Array::new(&[4, 3], noise),
        x_t: Array::new(&[4, 3], x_t),
        pred: Array::new(&[4, 3], pred),
        t: vec![1.0, 2.0, 3.0, 4.0],
    }
}

fn run_loss(p: &mut TestPlugin, s: &Step) -> Vec<(String, f64)> {
    p.loss_with(&LossInputs {
        x0: &s.x_t,
        noise: &s.noise,
        x_t: &s.x_t,
        pred: &s.pred,
        t: &s.t,
        labels: None,
        step: 0,
    })
    .expect("the loss hook runs")
    .into_iter()
    .map(|(k, v)| (k, f64::from(v)))
    .collect()
}

/// mean_i w(t_i) · mean_j (a_ij − b_ij)², w = 1/(k + SNR)^γ, in f64 from the
/// definitions (Eq. 3–5), independent of the plugin's code.
fn reference(a: &[f32], b: &[f32], ts: &[f32], k: f64, gamma: f64) -> f64 {
    let per = a.len() / ts.len();
    let mut total = 0.0;
    for (i, &t) in ts.iter().enumerate() {
        let ab = f64::from(ALPHA_BAR[t as usize]);
        let snr = ab / (1.0 - ab);
        let w = 1.0 / (k + snr).powf(gamma);
        let mse: f64 = (0..per)
            .map(|j| (f64::from(a[i * per + j]) - f64::from(b[i * per + j])).powi(2))
            .sum::<f64>()
            / per as f64;
        total += w * mse;
    }
    total / ts.len() as f64
}

fn scaled(a: &Array, s: f32) -> Vec<f32> {
    a.values.iter().map(|v| v * s).collect()
}

fn assert_close(name: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= REL_TOL * want.abs() + 1e-12,
        "{name}: got {got}, want {want}"
    );
}

fn logged(logs: &[(String, f64)], key: &str) -> f64 {
    logs.iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("{key} not logged: {logs:?}"))
        .1
}

#[test]
fn the_loss_terms_are_eq_3_and_5_on_the_steps_sample() {
    let (host, calls) = host();
    let s = step();
    // γ = 2 and γ_a = 1 keep both terms well above f32 rounding
    let mut p = host
        .plugin::<Sdft>(
            "lambda_distill = 0.3\ngamma = 2.0\nlambda_aux = 0.7\ngamma_aux = 1.0\nk = 1.5",
        )
        .unwrap();
    let terms = run_loss(&mut p, &s);
    let logs = host.logs();
    // L_distill: the step's `pred` against the source on the step's x_t and t.
    let distill = reference(&s.pred.values, &scaled(&s.x_t, 0.5), &s.t, 1.5, 2.0);
    // L_aux: student and source on z = the step's ε at the step's t.
    let aux = reference(
        &scaled(&s.noise, 2.0),
        &scaled(&s.noise, 0.5),
        &s.t,
        1.5,
        1.0,
    );
    assert_close("sdft.l_distill", logged(&logs, "sdft.l_distill"), distill);
    assert_close("sdft.l_aux", logged(&logs, "sdft.l_aux"), aux);
    let names: Vec<&str> = terms.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["sdft.distill", "sdft.aux"]);
    assert_close("sdft.distill", terms[0].1, 0.3 * distill);
    assert_close("sdft.aux", terms[1].1, 0.7 * aux);
    // Three forwards: the source on x_t (no student forward: `pred` is
    // shared), then student and source on z = ε, all at the step's t.
    let calls = calls.borrow();
    let seen: Vec<(bool, &[f32])> = calls.iter().map(|c| (c.source, c.x.as_slice())).collect();
    assert_eq!(
        seen,
        [
            (true, s.x_t.values.as_slice()),
            (false, s.noise.values.as_slice()),
            (true, s.noise.values.as_slice())
        ]
    );
    assert!(calls.iter().all(|c| c.t == s.t));
}

#[test]
fn the_default_weights_follow_the_schedule() {
    // γ = 3, γ_a = 50, k = 1 (the defaults) on the same step.
    let (host, _) = host();
    let s = step();
    let mut p = host.plugin::<Sdft>("").unwrap();
    let terms = run_loss(&mut p, &s);
    let distill = reference(&s.pred.values, &scaled(&s.x_t, 0.5), &s.t, 1.0, 3.0);
    let aux = reference(
        &scaled(&s.noise, 2.0),
        &scaled(&s.noise, 0.5),
        &s.t,
        1.0,
        50.0,
    );
    assert_close("sdft.distill", terms[0].1, 0.1 * distill);
    assert_close("sdft.aux", terms[1].1, 0.1 * aux);
}

#[test]
fn a_zero_lambda_runs_no_forward_and_returns_no_term() {
    let (host, calls) = host();
    let s = step();
    let mut p = host
        .plugin::<Sdft>("lambda_distill = 0.0\nlambda_aux = 0.0")
        .unwrap();
    assert!(run_loss(&mut p, &s).is_empty());
    let mut p = host
        .plugin::<Sdft>("lambda_distill = 0.0\naux = false")
        .unwrap();
    assert!(run_loss(&mut p, &s).is_empty());
    assert!(calls.borrow().is_empty(), "{:?}", calls.borrow());
    assert!(host.logs().is_empty());
}

#[test]
fn fresh_auxiliary_noise_draws_z_and_t_over_the_whole_schedule() {
    let (host, calls) = host();
    let s = step();
    let mut p = host
        .plugin::<Sdft>("lambda_distill = 0.0\naux_noise = \"fresh\"\ngamma_aux = 0.0")
        .unwrap();
    let mut ts = std::collections::BTreeSet::new();
    for _ in 0..40 {
        calls.borrow_mut().clear();
        let terms = run_loss(&mut p, &s);
        let calls = calls.borrow();
        assert_eq!(calls.len(), 2, "{calls:?}");
        let (student, source) = (&calls[0], &calls[1]);
        assert!(!student.source && source.source);
        // one z for both models, not the step's ε, of the step's shape
        assert_eq!(student.x, source.x);
        assert_eq!(student.x.len(), s.noise.values.len());
        assert_ne!(student.x, s.noise.values);
        assert_eq!(student.t, source.t);
        for &t in &student.t {
            assert!(t.fract() == 0.0 && (0.0..5.0).contains(&t), "t = {t}");
            ts.insert(t as i64);
        }
        // γ_a = 0: L_aux = mean (2z − 0.5z)² = 2.25 · mean z²
        let z2 = student.x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / 12.0;
        assert_close("sdft.aux", terms[0].1, 0.1 * 2.25 * z2);
    }
    // 160 draws from U{0..4}: every timestep, T found from the schedule
    assert_eq!(ts.into_iter().collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
}

#[test]
fn bad_config_values_are_errors_naming_the_key() {
    let (host, _) = host();
    for (config, key) in [
        ("lambda_distill = -1.0", "lambda_distill"),
        ("k = 0.0", "k"),
        ("gamma_aux = -3.0", "gamma_aux"),
        ("aux_noise = \"pure\"", "aux_noise"),
        ("aux = \"yes\"", "aux"),
    ] {
        let err = host.plugin::<Sdft>(config).err().expect(config);
        assert!(
            err.contains(&format!("{key}:")) || err.contains(&format!("`{key}`")),
            "{config}: {err}"
        );
    }
}
