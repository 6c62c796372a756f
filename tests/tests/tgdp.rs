//! The `tgdp` plugin (plugins/tgdp, docs/plugins/tgdp.md) through the real
//! loader: the sign test with two Gaussians whose diffused density ratio is
//! closed-form, and `dtx run` / `dtx sample` end to end on the MLP denoiser
//! and on a tiny U-Net.

use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use dtx::plugins::{Instance, load_library};
use dtx::tensor_abi::{
    CpuBackend, DataService, DenoiseService, Session, SessionGuard, Stored, vtables,
};
use dtx_plugin_api::ModelInfo;
use dtx_plugin_api::abi::{AbiError, Which};
use dtx_tests::mock::{Normal, t_stored};
use dtx_tests::plugin_path;
use dtx_tests::runs::{self, tensors};
use std::cell::RefCell;
use std::rc::Rc;

type B = CpuBackend;
type Prim = burn::tensor::ops::FloatTensor<B>;

fn prim(values: &[f32], rows: usize) -> Prim {
    let d = values.len() / rows;
    Tensor::<B, 2>::from_data(
        TensorData::new(values.to_vec(), [rows, d]),
        &Default::default(),
    )
    .into_primitive()
    .tensor()
}

fn values(t: &Prim) -> Vec<f32> {
    Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(t.clone()))
        .into_data()
        .to_vec()
        .unwrap()
}

/// Source p = N(MU_P, S² I) and target q = N(MU_Q, S² I) in 2-D.
const MU_P: [f64; 2] = [0.0, 0.0];
const MU_Q: [f64; 2] = [0.6, -0.4];
const S: f64 = 0.8;
const T: usize = 100;

/// ᾱ_t of a cosine schedule with T = 100 steps.
fn alpha_bars() -> Vec<f64> {
    let f = |t: f64| {
        ((t / T as f64 + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
            .cos()
            .powi(2)
    };
    (0..T)
        .map(|t| (f(t as f64 + 1.0) / f(0.0)).max(1e-4))
        .collect()
}

/// How close (as a fraction of |μ_q − μ_p|) the plugin's guided samples
/// mean must land to μ_q.
const GUIDED_TOL: f64 = 0.25;

/// Both Gaussians diffused to t: N(√ᾱ μ, v_t I), v_t = ᾱ S² + 1 − ᾱ.
fn diffused_var(ab: f64) -> f64 {
    ab * S * S + 1.0 - ab
}

/// ∇ log (q_t / p_t)(x) = √ᾱ (μ_q − μ_p) / v_t: the exact guidance gradient
/// (constant in x for equal variances).
fn exact_grad(ab: f64) -> [f64; 2] {
    let v = diffused_var(ab);
    [0, 1].map(|i| ab.sqrt() * (MU_Q[i] - MU_P[i]) / v)
}

/// The exact source ε: ε(x_t, t) = −√(1 − ᾱ) ∇ log p_t(x_t)
/// = √(1 − ᾱ) (x_t − √ᾱ μ_p) / v_t.
struct ExactSource {
    alpha_bars: Vec<f64>,
}

impl ExactSource {
    fn eps(&self, x: &[f32], t: &[f32]) -> Vec<f32> {
        x.chunks(2)
            .zip(t)
            .flat_map(|(xi, &ti)| {
                let ab = self.alpha_bars[ti.round() as usize];
                let v = diffused_var(ab);
                (0..2).map(move |i| {
                    ((1.0 - ab).sqrt() * (xi[i] as f64 - ab.sqrt() * MU_P[i]) / v) as f32
                })
            })
            .collect()
    }
}

impl DenoiseService<B> for ExactSource {
    fn denoise(
        &self,
        x_t: Prim,
        t: Stored<B>,
        which: Which,
        _labels: Option<burn::tensor::ops::IntTensor<B>>,
    ) -> Result<Prim, AbiError> {
        assert!(matches!(which, Which::Source), "tgdp only asks the source");
        let Stored::Float(t) = t else {
            return Err(AbiError::other("float timesteps expected"));
        };
        let x = values(&x_t);
        let ts = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        Ok(prim(&self.eps(&x, &ts), ts.len()))
    }

    fn features(
        &self,
        _x: Prim,
        _t: Stored<B>,
        _points: &[String],
        _which: Which,
    ) -> Result<Vec<Prim>, AbiError> {
        Err(AbiError::other("no features"))
    }
}

/// Fresh samples of p (`source`) and q (`target`).
struct Gaussians(Normal);

impl DataService<B> for Gaussians {
    fn batch(
        &mut self,
        split: &str,
        n: usize,
    ) -> Result<(Prim, Option<burn::tensor::ops::IntTensor<B>>), AbiError> {
        let mu = match split {
            "source" => MU_P,
            "target" => MU_Q,
            other => return Err(AbiError::other(format!("no split {other}"))),
        };
        let v: Vec<f32> = (0..n * 2)
            .map(|k| (mu[k % 2] + S * self.0.sample()) as f32)
            .collect();
        Ok((prim(&v, n), None))
    }
}

fn session(source: Rc<ExactSource>) -> SessionGuard {
    let guard = Session::<B>::install(Default::default(), 11);
    Session::<B>::with(|s| {
        s.services.alpha_bar = Some(source.alpha_bars.iter().map(|&a| a as f32).collect());
        s.services.denoiser = Some(source as Rc<dyn DenoiseService<B>>);
        s.services.data = Some(Rc::new(RefCell::new(Gaussians(Normal(
            0x9e37_79b9_7f4a_7c15,
        )))));
    })
    .unwrap();
    guard
}

fn tgdp(config: &str) -> Instance<B> {
    let lib = load_library(&plugin_path("dtx-plugin-tgdp"), None, vtables::<B>())
        .expect("tgdp plugin loads");
    let model = ModelInfo {
        kind: "mock".into(),
        data_channels: 2,
        resolution: 0,
        temb_channels: 8,
        points: Vec::new().into(),
    };
    Instance::<B>::new("tgdp", lib, config, &model).expect("tgdp builds")
}

fn mean(x: &[f32]) -> [f64; 2] {
    let n = (x.len() / 2) as f64;
    [0, 1].map(|i| x.iter().skip(i).step_by(2).map(|&v| v as f64).sum::<f64>() / n)
}

/// Deterministic DDIM (η = 0) over all T steps from x_T ~ N(0, I), with the
/// exact source ε and `guide(ε, x_t, t) → ε'`.
fn ddim(
    source: &ExactSource,
    n: usize,
    mut guide: impl FnMut(&[f32], &[f32], usize) -> Vec<f32>,
) -> Vec<f32> {
    let mut rng = Normal(12345);
    let mut x: Vec<f32> = (0..n * 2).map(|_| rng.sample() as f32).collect();
    let ab = &source.alpha_bars;
    for t in (0..T).rev() {
        let eps = guide(&source.eps(&x, &vec![t as f32; n]), &x, t);
        let (a, a_prev) = (ab[t], if t == 0 { 1.0 } else { ab[t - 1] });
        for (xi, e) in x.iter_mut().zip(&eps) {
            let x0 = (*xi as f64 - (1.0 - a).sqrt() * *e as f64) / a.sqrt();
            *xi = (a_prev.sqrt() * x0 + (1.0 - a_prev).sqrt() * *e as f64) as f32;
        }
    }
    x
}

/// The sign test. With p and q Gaussian, the ideal guidance is closed-form
/// (∇ log q_t/p_t = √ᾱ (μ_q − μ_p)/v_t, both diffused to t), so:
///
/// 1. after `prepare`, the learned ∇ log h_ψ (read back through the score
///    hook: −(ε_guided − ε)/√(1 − ᾱ)) matches it on target-like points at
///    six timesteps: mean error within 30 % of its norm + 0.05 (a small
///    MLP trained for a few hundred steps; the norm falls to 0.045 at t = 95);
/// 2. DDIM from p's exact score with the plugin's guidance lands on q: the
///    sample mean is within GUIDED_TOL · |μ_q − μ_p| of μ_q (|μ_q − μ_p| =
///    0.72), while without guidance it stays within 0.1 of μ_p and with
///    the closed-form guidance within 0.1 of μ_q (sampler and formula are
///    right);
/// 3. the opposite sign (the authors' public code) moves the samples away
///    from q, past p: the test fails if the hook's sign flips.
#[test]
fn guided_sampling_from_p_lands_on_q() {
    let source = Rc::new(ExactSource {
        alpha_bars: alpha_bars(),
    });
    let _s = session(source.clone());
    // the plugin's defaults except sizes, step counts and a faster lr
    let cfg = r#"{"hidden": 64, "depth": 2, "time_dim": 16, "classifier_steps": 400,
        "time_classifier_steps": 400, "guidance_steps": 800, "lr": 0.003,
        "batch": 256, "source": "data"}"#;
    let mut inst = tgdp(cfg);
    inst.prepare("sample", "").expect("prepare");
    let logs = Session::<B>::with(|s| s.services.take_logs()).unwrap();
    let last = |k: &str| logs.iter().rev().find(|(n, _)| n == k).map(|(_, v)| *v);
    println!(
        "classifier acc {:?}, time classifier acc {:?}, l_guidance {:?}, l_cycle {:?}, l_consistence {:?}",
        last("tgdp.classifier_accuracy"),
        last("tgdp.time_classifier_accuracy"),
        last("tgdp.l_guidance"),
        last("tgdp.l_cycle"),
        last("tgdp.l_consistence")
    );

    // the guided ε through the real score hook
    let mut score = |eps: &[f32], x: &[f32], t: usize| -> Vec<f32> {
        let n = x.len() / 2;
        let out = inst
            .score(
                &prim(x, n),
                &t_stored(t, n),
                &prim(eps, n),
                None,
                0,
                T as u64,
            )
            .expect("score");
        values(&out)
    };

    // 1. the learned gradient against the closed form
    let mut rng = Normal(777);
    for t in [2, 10, 20, 50, 80, 95] {
        let ab = source.alpha_bars[t];
        let v = diffused_var(ab).sqrt();
        let n = 256;
        let x: Vec<f32> = (0..n * 2)
            .map(|k| (ab.sqrt() * MU_Q[k % 2] + v * rng.sample()) as f32)
            .collect();
        let eps = source.eps(&x, &vec![t as f32; n]);
        let guided = score(&eps, &x, t);
        let s1a = (1.0 - ab).sqrt();
        let learned: Vec<f64> = eps
            .iter()
            .zip(&guided)
            .map(|(e, g)| (*e as f64 - *g as f64) / s1a)
            .collect();
        let want = exact_grad(ab);
        let norm = (want[0].powi(2) + want[1].powi(2)).sqrt();
        let err = learned
            .chunks(2)
            .map(|g| ((g[0] - want[0]).powi(2) + (g[1] - want[1]).powi(2)).sqrt())
            .sum::<f64>()
            / n as f64;
        let got = mean(&learned.iter().map(|&v| v as f32).collect::<Vec<_>>());
        println!("t = {t}: mean learned ∇log h {got:?}, exact {want:?}, mean error {err:.3}");
        assert!(
            err < 0.3 * norm + 0.05,
            "t = {t}: learned ∇log h is {err:.3} from the exact {want:?} (norm {norm:.3}); mean learned {got:?}"
        );
    }

    // 2. guided sampling lands on q; unguided stays on p
    let n = 1000;
    let plain = mean(&ddim(&source, n, |eps, _, _| eps.to_vec()));
    let guided = mean(&ddim(&source, n, &mut score));
    let dist = |a: [f64; 2], b: [f64; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
    // the closed-form guidance, entered as the hook enters it
    let ab = source.alpha_bars.clone();
    let exact = mean(&ddim(&source, n, |eps, _, t| {
        let g = exact_grad(ab[t]);
        let s1a = (1.0 - ab[t]).sqrt();
        eps.iter()
            .enumerate()
            .map(|(k, e)| (*e as f64 - s1a * g[k % 2]) as f32)
            .collect()
    }));
    println!(
        "unguided mean {plain:?}, exact guidance {exact:?}, plugin guidance {guided:?}, μ_q {MU_Q:?}"
    );
    assert!(dist(plain, MU_P) < 0.1, "unguided mean {plain:?}");
    assert!(dist(exact, MU_Q) < 0.1, "exactly guided mean {exact:?}");
    let gap = dist(MU_P, MU_Q);
    assert!(
        dist(guided, MU_Q) < GUIDED_TOL * gap,
        "guided mean {guided:?} vs μ_q {MU_Q:?}"
    );

    // 3. the opposite sign: ε + w √(1 − ᾱ) ∇log h = 2ε − ε_guided
    let flipped = mean(&ddim(&source, n, |eps, x, t| {
        score(eps, x, t)
            .iter()
            .zip(eps)
            .map(|(g, e)| 2.0 * e - g)
            .collect()
    }));
    println!("opposite sign mean {flipped:?}");
    assert!(
        dist(flipped, MU_Q) > dist(MU_P, MU_Q) + 0.5,
        "the opposite sign should move away from q: {flipped:?}"
    );
}

/// `dtx run` end to end on the toy MLP (source samples from
/// `[source.data]`) and on a tiny U-Net (source samples from the source
/// model: conv networks), then `dtx sample` reusing the saved networks.
#[test]
fn tgdp_runs_from_a_manifest_and_dtx_sample_reuses_its_networks() {
    for (manifest, from_model) in [("tgdp-mlp", 0.0), ("tgdp-unet", 1.0)] {
        let out = runs::out_dir("tgdp", manifest);
        let o = runs::dtx_run(&format!("{manifest}.toml"), &out, &[], &[]);
        assert_eq!(o.code, 0, "{manifest}: {}", o.stderr);
        let run = out.join(manifest);
        // the three networks are in the run's checkpoint
        let (_, t) = tensors(&run.join("checkpoints/latest.safetensors"));
        for net in ["classifier", "time_classifier", "guidance"] {
            assert!(
                t.keys()
                    .any(|k| k.starts_with(&format!("param/plugin.tgdp.{net}."))),
                "{manifest}: no {net} weights in {:?}",
                t.keys().collect::<Vec<_>>()
            );
        }
        // the choice of source samples is logged
        let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        let line = metrics
            .lines()
            .find(|l| l.contains("tgdp.source_from_model"))
            .expect("source choice logged");
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["value"].as_f64(), Some(from_model), "{manifest}: {line}");
        // dtx sample loads them and samples again
        let o = dtx_tests::run_in_process(&["sample", run.to_str().unwrap(), "--count", "2"]);
        assert_eq!(o.code, 0, "{manifest} sample: {}", o.stderr);
        assert!(o.stdout.contains("samples:"), "{}", o.stdout);
    }
}

/// A `[source.data]` the host cannot build stops the run before anything
/// is written, with an error naming the section and the nearest built-in.
#[test]
fn a_bad_source_data_set_is_named_in_the_error() {
    let out = runs::out_dir("tgdp", "bad-source-data");
    let o = runs::dtx_run(
        "tgdp-mlp.toml",
        &out,
        &["source.data.dataset=\"builtin:gmn\""],
        &[],
    );
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("[source.data]"), "{}", o.stderr);
    assert!(o.stderr.contains("gmm"), "{}", o.stderr);
    assert!(!out.join("tgdp-mlp").exists(), "nothing written");
}

/// The conditional variant end to end: a class-conditional MLP (8 classes,
/// the mixture's components), labels on both domains, `label_map` sending
/// every target class to source class 0…7 reversed, and `sample.label`
/// (prepare fails if either domain's batches lack labels). A missing
/// `num_classes` is a config error naming the key.
#[test]
fn the_conditional_variant_runs_with_labels_and_a_label_map() {
    let sets = [
        "source.config.num_classes=8",
        "target.labels=true",
        "source.data.labels=true",
        "plugin.0.config.conditional=true",
        "plugin.0.config.num_classes=8",
        "plugin.0.config.label_map=[7, 6, 5, 4, 3, 2, 1, 0]",
        "sample.label=2",
    ];
    let out = runs::out_dir("tgdp", "conditional");
    let o = runs::dtx_run("tgdp-mlp.toml", &out, &sets, &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let samples = out.join("tgdp-mlp/samples.json");
    assert!(samples.is_file(), "no samples");

    let out = runs::out_dir("tgdp", "conditional-bad");
    let o = runs::dtx_run("tgdp-mlp.toml", &out, &sets[..4], &[]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("num_classes"), "{}", o.stderr);
}
