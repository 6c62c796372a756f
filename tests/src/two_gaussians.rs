//! The TGDP sign test's setting, used by the `tgdp_eta2` benchmark (the
//! test itself, plugins/tgdp/tests/in_process.rs, keeps a copy): two
//! Gaussians whose diffused density ratio is closed-form, the exact source
//! ε, fresh samples of both, a tensor session serving them, the plugin
//! built on a 2-D mock model, and a deterministic DDIM with a guidance
//! callback.

use crate::mock::Normal;
use crate::plugin_path;
use burn::tensor::{Int, Tensor, TensorData};
use dtx::plugins::{Instance, load_library};
use dtx::tensor_abi::{
    CpuBackend, DataService, DenoiseService, Labels, Ranked, Session, SessionGuard, vtables,
};
use dtx_plugin_api::ModelInfo;
use dtx_plugin_api::abi::{AbiError, Which};
use std::cell::RefCell;
use std::rc::Rc;

/// The backend.
pub type B = CpuBackend;

/// `values` as a `[rows, D]` tensor.
pub fn points(values: &[f32], rows: usize) -> Tensor<B, 2> {
    let d = values.len() / rows;
    Tensor::from_data(
        TensorData::new(values.to_vec(), [rows, d]),
        &Default::default(),
    )
}

/// A tensor's values.
pub fn values<const D: usize>(t: &Tensor<B, D>) -> Vec<f32> {
    t.clone().into_data().to_vec().unwrap()
}

/// Source p = N(MU_P, S² I) and target q = N(MU_Q, S² I) in 2-D.
pub const MU_P: [f64; 2] = [0.0, 0.0];
/// The target's mean.
pub const MU_Q: [f64; 2] = [0.6, -0.4];
/// Both Gaussians' standard deviation.
pub const S: f64 = 0.8;
/// Timesteps of the schedule.
pub const T: usize = 100;

/// ᾱ_t of a cosine schedule with T = 100 steps.
pub fn alpha_bars() -> Vec<f64> {
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
pub const GUIDED_TOL: f64 = 0.25;

/// Both Gaussians diffused to t: N(√ᾱ μ, v_t I), v_t = ᾱ S² + 1 − ᾱ.
pub fn diffused_var(ab: f64) -> f64 {
    ab * S * S + 1.0 - ab
}

/// ∇ log (q_t / p_t)(x) = √ᾱ (μ_q − μ_p) / v_t: the exact guidance gradient
/// (constant in x for equal variances).
pub fn exact_grad(ab: f64) -> [f64; 2] {
    let v = diffused_var(ab);
    [0, 1].map(|i| ab.sqrt() * (MU_Q[i] - MU_P[i]) / v)
}

/// The exact source ε: ε(x_t, t) = −√(1 − ᾱ) ∇ log p_t(x_t)
/// = √(1 − ᾱ) (x_t − √ᾱ μ_p) / v_t.
pub struct ExactSource {
    /// ᾱ_t of the schedule.
    pub alpha_bars: Vec<f64>,
}

impl ExactSource {
    /// ε at each row of `x` `[n·2]`, timesteps `t` `[n]`.
    pub fn eps(&self, x: &[f32], t: &[f32]) -> Vec<f32> {
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
        x_t: Ranked<B>,
        t: Tensor<B, 1>,
        which: Which,
        _labels: Option<Tensor<B, 1, Int>>,
    ) -> Result<Ranked<B>, AbiError> {
        assert!(matches!(which, Which::Source), "tgdp only asks the source");
        let x = values(&x_t.at::<2>("denoise: x_t")?);
        let ts = values(&t);
        Ok(Ranked::new(points(&self.eps(&x, &ts), ts.len())))
    }

    fn features(
        &self,
        _x: Ranked<B>,
        _t: Tensor<B, 1>,
        _points: &[String],
        _which: Which,
        _labels: Option<burn::tensor::Tensor<B, 1, burn::tensor::Int>>,
    ) -> Result<Vec<Ranked<B>>, AbiError> {
        Err(AbiError::other("no features"))
    }
}

/// Fresh samples of p (`source`) and q (`target`).
pub struct Gaussians(Normal);

impl DataService<B> for Gaussians {
    fn batch(&mut self, split: &str, n: usize) -> Result<(Ranked<B>, Option<Labels<B>>), AbiError> {
        let mu = match split {
            "source" => MU_P,
            "target" => MU_Q,
            other => return Err(AbiError::other(format!("no split {other}"))),
        };
        let v: Vec<f32> = (0..n * 2)
            .map(|k| (mu[k % 2] + S * self.0.sample()) as f32)
            .collect();
        Ok((Ranked::new(points(&v, n)), None))
    }
}

/// A tensor session serving the exact source and both Gaussians.
pub fn session(source: Rc<ExactSource>) -> SessionGuard {
    session_seeded(source, 11)
}

/// [`session`] with the session's random stream seeded by `seed`.
pub fn session_seeded(source: Rc<ExactSource>, seed: u64) -> SessionGuard {
    let guard = Session::<B>::install(Default::default(), seed);
    dtx::train::optim::install::<B>(Default::default()).unwrap();
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

/// The tgdp plugin with `config` (JSON) on a 2-D mock model.
pub fn tgdp(config: &str) -> Instance<B> {
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

/// The mean of `[n·2]` points.
pub fn mean(x: &[f32]) -> [f64; 2] {
    let n = (x.len() / 2) as f64;
    [0, 1].map(|i| x.iter().skip(i).step_by(2).map(|&v| v as f64).sum::<f64>() / n)
}

/// Deterministic DDIM (η = 0) over all T steps from x_T ~ N(0, I), with the
/// exact source ε and `guide(ε, x_t, t) → ε'`.
pub fn ddim(
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

/// The plugin's `score` hook as `(ε, x_t, t) → guided ε` on `[n·2]` points.
pub fn score_fn(inst: &mut Instance<B>) -> impl FnMut(&[f32], &[f32], usize) -> Vec<f32> + '_ {
    move |eps, x, t| {
        let n = x.len() / 2;
        let out = inst
            .score(
                &points(x, n),
                &crate::mock::timesteps(t, n),
                &points(eps, n),
                None,
                0,
                T as u64,
            )
            .expect("score");
        values(&out)
    }
}

/// The learned ∇ log h at 256 target-like points diffused to `t` (drawn
/// from `rng`), read back through `score`: −(ε_guided − ε)/√(1 − ᾱ) per
/// point, with the exact gradient there.
pub fn learned_grads(
    source: &ExactSource,
    score: &mut impl FnMut(&[f32], &[f32], usize) -> Vec<f32>,
    t: usize,
    rng: &mut Normal,
) -> (Vec<[f64; 2]>, [f64; 2]) {
    let ab = source.alpha_bars[t];
    let v = diffused_var(ab).sqrt();
    let n = 256;
    let x: Vec<f32> = (0..n * 2)
        .map(|k| (ab.sqrt() * MU_Q[k % 2] + v * rng.sample()) as f32)
        .collect();
    let eps = source.eps(&x, &vec![t as f32; n]);
    let guided = score(&eps, &x, t);
    let s1a = (1.0 - ab).sqrt();
    let learned = eps
        .chunks(2)
        .zip(guided.chunks(2))
        .map(|(e, g)| [0, 1].map(|i| (e[i] as f64 - g[i] as f64) / s1a))
        .collect();
    (learned, exact_grad(ab))
}

/// The mean distance of `learned` gradients from `want`.
pub fn mean_error(learned: &[[f64; 2]], want: [f64; 2]) -> f64 {
    learned
        .iter()
        .map(|g| ((g[0] - want[0]).powi(2) + (g[1] - want[1]).powi(2)).sqrt())
        .sum::<f64>()
        / learned.len() as f64
}
