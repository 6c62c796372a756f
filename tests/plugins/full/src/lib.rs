//! `test`: a plugin for the host's tests. It implements all five hooks and,
//! across them, calls every entry of the tensor-op and host-service vtables.
//!
//! - `inject`: `h + gain · tanh(h)`, `gain` a parameter initialised to 0.
//! - `loss`: `fit = mean((pred · softplus(s) + b − noise)²)` with parameters
//!   `s` `[1]` and `b` `[1]` (a closed form the tests recompute in burn), plus
//!   `exercise`, a scalar built from every tensor op (weight 0 by default).
//! - `score`: `eps + guidance · ∇_x (½ Σ x²)`, the gradient taken with the
//!   host's `grad` entry (so it equals `eps + guidance · x_t`).
//! - `filter`: score = per-sample mean; keep when above `threshold`.
//! - `prepare`: trains `w` `[4]` towards 1 with `optimizer_step`.
//! - `panic_in = "<hook>"` panics in that hook, to test the guard.

use dtx_plugin_api::DType;
use dtx_plugin_api::abi::{CompareOp, InterpolateMode, SliceRange};
use dtx_plugin_api::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `[plugin.config]` of the test plugin.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Injection points.
    pub points: Vec<String>,
    /// Hook to panic in ("" for none).
    pub panic_in: String,
    /// Weight of the `exercise` loss term.
    pub exercise_weight: f32,
    /// Weight of the `student` term: the squared difference between the
    /// host's `denoise(student)` on the step's x_t (asked for inside `loss`)
    /// and the step's prediction.
    pub student_weight: f32,
    /// Guidance scale of `score`.
    pub guidance: f32,
    /// Filter threshold on the per-sample mean.
    pub threshold: f32,
    /// Steps of `prepare`.
    pub prepare_steps: usize,
    /// Training step at which `loss` returns NaN (-1: never), to test the
    /// host's stop.
    pub nan_at_step: i64,
    /// In `loss`, call the condition services (`condition_shape`,
    /// `encode_image` on x0, `encode_text`) and log what they answer.
    pub probe_condition: bool,
    /// A malformed value to hand back, to test the host's checks ("" for
    /// none): `inject_channels` (half of `h`'s channels), `inject_batch`
    /// (one example), `inject_dtype` (i64), `loss_vector` (a `[B]` term),
    /// `score_short` (ε one sample short), `filter_short` (one decision
    /// short).
    pub malform: String,
    /// Weight of the `feature` term: the squared gap between the student's
    /// and the source's `features` at the first of `points` on the step's
    /// x_t (logged as `feature_gap`).
    pub feature_weight: f32,
    /// In `score` and `filter`, log a value (`eps_norm`, `filter_mean`).
    pub log_sampling: bool,
    /// Base weights its `weights` hook returns unchanged (or, with
    /// `malform = "weights_shape"`, one row short).
    pub weights: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            points: vec!["mid.*".into()],
            panic_in: String::new(),
            exercise_weight: 0.0,
            student_weight: 0.0,
            guidance: 0.0,
            threshold: f32::NEG_INFINITY,
            prepare_steps: 20,
            nan_at_step: -1,
            probe_condition: false,
            malform: String::new(),
            feature_weight: 0.0,
            log_sampling: false,
            weights: Vec::new(),
        }
    }
}

/// The test plugin.
pub struct TestPlugin {
    cfg: Config,
    gain: Param,
    s: Param,
    b: Param,
    w: Param,
    calls: u64,
}

impl TestPlugin {
    fn maybe_panic(&mut self, hook: &str) {
        self.calls += 1;
        if self.cfg.panic_in == hook {
            panic!("deliberate panic in {hook}");
        }
    }
}

/// A scalar computed with every tensor op; finite for finite `x`. Its value is
/// `mean(x)`-dependent so gradients reach `x`.
pub fn exercise(x: &Tensor) -> Tensor {
    let flat = x.flatten(0);
    let n = flat.dim(0);
    let m = Tensor::from_f32(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    assert_eq!(m.shape(), vec![2, 3]);
    assert_eq!(m.dtype(), DType::F32);
    assert!(!m.device().is_empty());
    assert_eq!(m.clone().to_f32_vec()[5], 6.0);
    let idx = Tensor::from_i64(&[2, 0], &[2]);
    assert_eq!(idx.to_i64_vec(), vec![2, 0]);
    let sel = m.index_select(1, &idx); // [2, 2]
    let gidx = Tensor::full(&[2, 1], 1.0, DType::I64);
    let gat = m.gather(1, &gidx); // [2, 1]
    let noise = Tensor::randn(&[2, 3]) * 0.0 + Tensor::rand(&[2, 3], 0.0, 1.0) * 0.0;
    let casted = m.cast(DType::I64).cast(DType::F32);
    let un = [
        m.exp(),
        m.log(),
        m.sqrt(),
        m.abs(),
        m.tanh(),
        m.sigmoid(),
        m.relu(),
        m.silu(),
        m.gelu(),
        m.sin(),
        m.cos(),
        m.recip(),
        m.softplus(),
        m.square(),
        -&m,
    ];
    let mut acc = Tensor::zeros(&[2, 3]);
    for u in &un {
        acc = acc + u;
    }
    let bin = m.pow(&Tensor::ones(&[2, 3]))
        + m.maximum(&casted)
        + m.minimum(&noise)
        + (&m / &casted)
        + (&m - &casted);
    let sc = m.powf(2.0).rsub(100.0).rdiv(1.0) + (m.clamp(2.0, 5.0) + 1.0) * 2.0 - 1.0;
    let mask = m.compare(CompareOp::GT, &casted).cast(DType::F32)
        + m.compare_scalar(CompareOp::LE, 3.0).cast(DType::F32);
    let wh = m
        .compare_scalar(CompareOp::GE, 3.0)
        .where_(&m, &Tensor::zeros(&[1]));
    let mm = m.matmul(&m.transpose(0, 1)); // [2, 2]
    let red = m.sum_dims(&[1], true)
        + m.mean_dims(&[1], true)
        + m.max_dims(&[1], true)
        + m.min_dims(&[1], true);
    let am = m.argmax(1).cast(DType::F32); // [2, 1]
    let sm = m.softmax(-1) + m.log_softmax(-1);
    let pe = m.permute(&[1, 0]).reshape(&[2, 3]);
    let sl = m
        .slice(&[SliceRange {
            start: 0,
            end: 1,
            step: 1,
        }])
        .narrow(1, 1, 2); // [1, 2]
    let ca = Tensor::cat(&[&m, &m], 0).narrow(0, 0, 2);
    let st = Tensor::stack(&[&m, &m], 0).mean_dims(&[0], false);
    let ex = Tensor::ones(&[1, 3]).expand(&[2, 3]);
    let img = Tensor::from_f32(
        &(0..16).map(|i| i as f32 / 16.0).collect::<Vec<_>>(),
        &[1, 1, 4, 4],
    );
    let k = Tensor::ones(&[2, 1, 3, 3]) * 0.1;
    let conv = img.conv2d(
        &k,
        Some(&Tensor::zeros(&[2])),
        Conv2dOptions {
            padding: [1, 1],
            ..Default::default()
        },
    ); // [1, 2, 4, 4]
    let kt = Tensor::ones(&[2, 1, 2, 2]) * 0.1;
    let convt = conv.conv_transpose2d(
        &kt,
        None,
        Conv2dOptions {
            stride: [2, 2],
            ..Default::default()
        },
    ); // [1, 1, 8, 8]
    let up = img.interpolate([8, 8], InterpolateMode::BILINEAR)
        + img.interpolate([8, 8], InterpolateMode::NEAREST);
    let gn = conv.group_norm(
        2,
        Some(&Tensor::ones(&[2])),
        Some(&Tensor::zeros(&[2])),
        1e-5,
    );
    let ln = m.layer_norm(Some(&Tensor::ones(&[3])), None, 1e-5);
    let leaf = m.require_grad();
    let g = (&leaf * &leaf).sum().grad(&[&leaf]).remove(0); // 2m
    let parts = [
        acc.mean(),
        bin.mean(),
        sc.mean(),
        mask.mean(),
        wh.mean(),
        mm.mean(),
        red.mean(),
        am.mean(),
        sm.mean(),
        pe.mean(),
        sl.mean(),
        ca.mean(),
        st.mean(),
        ex.mean(),
        sel.mean(),
        gat.mean(),
        convt.mean(),
        up.mean(),
        gn.mean(),
        ln.mean(),
        g.mean(),
        m.detach().mean(),
    ];
    let mut total = flat.sum() * (1.0 / n as f32);
    for p in &parts {
        total = total + p.detach() * 1e-3;
    }
    total
}

#[hooks]
impl Plugin for TestPlugin {
    type Config = Config;
    const NAME: &'static str = "test";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "Implements every hook and touches every tensor op (for the host's tests)";

    fn injection_points() -> Vec<String> {
        Config::default().points
    }

    fn new(cfg: Config, host: &Host, _model: &ModelInfo) -> Result<Self, AbiError> {
        if cfg.panic_in == "new" {
            panic!("deliberate panic in new");
        }
        Ok(TestPlugin {
            gain: host.param("gain", &[1], ParamInit::zeros())?,
            s: host.param("s", &[1], ParamInit::constant(0.5))?,
            b: host.param("b", &[1], ParamInit::constant(0.1))?,
            w: host.param("w", &[4], ParamInit::uniform(-1.0, 1.0))?,
            cfg,
            calls: 0,
        })
    }

    fn points(&self) -> Vec<String> {
        self.cfg.points.clone()
    }

    fn weight_targets(&self) -> Vec<String> {
        self.cfg.weights.clone()
    }

    fn weights(&mut self, ctx: &Weights<'_>) -> Result<Tensor, AbiError> {
        let w: Tensor = (*ctx.w).clone();
        Ok(if self.cfg.malform == "weights_shape" {
            w.narrow(0, 0, w.dim(0) - 1)
        } else {
            w
        })
    }

    fn inject(&mut self, ctx: &Inject<'_>) -> Result<Tensor, AbiError> {
        self.maybe_panic("inject");
        let h = &*ctx.h + self.gain.value() * ctx.h.tanh();
        Ok(match self.cfg.malform.as_str() {
            "inject_channels" => h.narrow(1, 0, h.dim(1) / 2),
            "inject_batch" => h.narrow(0, 0, 1),
            "inject_dtype" => h.cast(DType::I64),
            _ => h,
        })
    }

    fn loss(&mut self, ctx: &Loss<'_>) -> Result<Vec<(String, Tensor)>, AbiError> {
        self.maybe_panic("loss");
        let fit = (ctx.pred.clone() * self.s.value().softplus() + self.b.value() - &*ctx.noise)
            .square()
            .mean();
        let fit = if ctx.step as i64 == self.cfg.nan_at_step {
            fit * f32::NAN
        } else {
            fit
        };
        ctx.host.log_scalar("fit_value", fit.item() as f64);
        let mut terms = vec![("fit".to_string(), fit)];
        if self.cfg.probe_condition {
            let (n, d) = ctx.host.condition_shape()?.unwrap_or((0, 0));
            let c = ctx.host.encode_image(&ctx.x0)?;
            let fits = c.shape() == [ctx.x0.dim(0), n, d];
            ctx.host.log_scalar("cond_tokens", n as f64);
            ctx.host.log_scalar("cond_shape_fits", fits as u8 as f64);
            // the same images through the service and the forward's `cond`
            // are the same embedding only without flips; log its mean
            ctx.host.log_scalar("cond_mean", c.mean().item() as f64);
            let text = ctx.host.encode_text("a circle");
            ctx.host
                .log_scalar("text_refused", text.is_err() as u8 as f64);
        }
        if self.cfg.student_weight != 0.0 {
            let again = ctx.host.denoise(&ctx.x_t, &ctx.t, Which::Student, None)?;
            let gap = (again - &*ctx.pred).square().mean();
            ctx.host.log_scalar("student_gap", gap.item() as f64);
            terms.push(("student".into(), gap * self.cfg.student_weight));
        }
        if self.cfg.exercise_weight != 0.0 {
            terms.push((
                "exercise".into(),
                exercise(&ctx.pred) * self.cfg.exercise_weight,
            ));
        }
        if self.cfg.feature_weight != 0.0 {
            let p = [self.cfg.points[0].as_str()];
            let student = ctx.host.features(&ctx.x_t, &ctx.t, &p, Which::Student)?;
            let source = ctx.host.features(&ctx.x_t, &ctx.t, &p, Which::Source)?;
            let gap = (&student[0] - &source[0]).square().mean();
            ctx.host.log_scalar("feature_gap", gap.item() as f64);
            terms.push(("feature".into(), gap * self.cfg.feature_weight));
        }
        if self.cfg.malform == "loss_vector" {
            terms.push((
                "per_example".into(),
                ctx.pred.square().flatten(1).mean_dims(&[1], false),
            ));
        }
        Ok(terms)
    }

    fn score(&mut self, ctx: &Score<'_>) -> Result<Tensor, AbiError> {
        self.maybe_panic("score");
        let x = ctx.x_t.require_grad();
        let g = (x.square().sum() * 0.5).grad(&[&x]).remove(0);
        let eps = &*ctx.eps + g * self.cfg.guidance;
        if self.cfg.log_sampling {
            ctx.host
                .log_scalar("eps_norm", eps.square().mean().item() as f64);
        }
        Ok(if self.cfg.malform == "score_short" {
            eps.narrow(0, 0, eps.dim(0) - 1)
        } else {
            eps
        })
    }

    fn filter(&mut self, ctx: &Filter<'_>) -> Result<FilterOutput, AbiError> {
        self.maybe_panic("filter");
        let means = ctx.samples.flatten(1).mean_dims(&[1], false).to_f32_vec();
        let mut keep = means
            .iter()
            .map(|&m| m > self.cfg.threshold)
            .collect::<Vec<_>>();
        if self.cfg.log_sampling {
            let m = means.iter().sum::<f32>() / means.len().max(1) as f32;
            ctx.host.log_scalar("filter_mean", m as f64);
        }
        if self.cfg.malform == "filter_short" {
            keep.pop();
        }
        Ok(FilterOutput {
            scores: means.into(),
            keep: keep.into(),
        })
    }

    fn prepare(&mut self, ctx: &Prepare<'_>) -> Result<(), AbiError> {
        self.maybe_panic("prepare");
        for _ in 0..self.cfg.prepare_steps {
            let loss = (self.w.value().mean() - 1.0).square().sum();
            ctx.host.optimizer_step(&[&self.w], loss, 0.05)?;
        }
        ctx.host
            .log_scalar("w_mean", self.w.value().mean().item() as f64);
        Ok(())
    }

    fn state_save(&self) -> Result<Vec<u8>, AbiError> {
        Ok(self.calls.to_le_bytes().to_vec())
    }

    fn state_load(&mut self, state: &[u8]) -> Result<(), AbiError> {
        let bytes: [u8; 8] = state
            .try_into()
            .map_err(|_| AbiError::other("state must be 8 bytes"))?;
        self.calls = u64::from_le_bytes(bytes);
        Ok(())
    }
}

export_plugin!(TestPlugin);
