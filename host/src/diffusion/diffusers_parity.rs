//! Parity with diffusers: spacing tables, forward process and whole sampler
//! trajectories written by real diffusers (`DDIMScheduler`, `DDPMScheduler`)
//! in `tests/fixtures/diffusion/*.json`; `make_fixtures.py` there says how
//! (diffusers 0.42.1, torch 2.15.0, float32).
//!
//! Tolerance: 1e-5 absolute on O(1) values. What differs: dtx computes ᾱ and
//! every step coefficient in f64 and rounds each once to f32, diffusers keeps
//! ᾱ (a float32 `cumprod`, ≤ 3.6e-7 relative from the f64 one) and the
//! coefficients in float32; the tensor arithmetic is f32 on both sides.

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use serde_json::Value;
use std::cell::Cell;
use std::path::PathBuf;

use super::prediction::{BatchScalar, q_sample, v_from_eps_x0};
use super::sampler::{
    DdpmVariance, Sampler, SamplerConfig, SamplerError, VarianceType, ddim_step, ddpm_step, sample,
};
use super::schedule::Schedule;
use super::spacing::{Spacing, timesteps};

type B = Flex;

/// Absolute tolerance against diffusers' float32 values (see the module doc).
const TOL: f32 = 1e-5;
const T: usize = 1000;
/// The toy denoiser's data variance s² (E[ε | x_t] for x0 ~ N(0, s² I)).
const DATA_VAR: f64 = 0.25;

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/diffusion")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// A `[[f32; 3]; 2]` JSON array as a `[2, 3]` tensor.
fn tensor(v: &Value) -> Tensor<B, 2> {
    let rows = v.as_array().expect("rows");
    let cols = rows[0].as_array().expect("row").len();
    let flat: Vec<f32> = rows
        .iter()
        .flat_map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
        })
        .collect();
    Tensor::from_data(
        TensorData::new(flat, [rows.len(), cols]),
        &Default::default(),
    )
}

fn assert_close(what: &str, got: &Tensor<B, 2>, want: &Value) -> f32 {
    let g = got.to_data().into_vec::<f32>().unwrap();
    let w = tensor(want).into_data().into_vec::<f32>().unwrap();
    assert_eq!(g.len(), w.len(), "{what}: length");
    let mut worst = 0f32;
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let d = (a - b).abs();
        worst = worst.max(d);
        assert!(
            d <= TOL,
            "{what}[{i}]: dtx {a} vs diffusers {b} (|Δ| = {d:e} > {TOL:e})"
        );
    }
    worst
}

/// The toy ε model of `make_fixtures.py`: x · √(1 − ᾱ_t) / (ᾱ_t s² + 1 − ᾱ_t).
fn toy_eps(x: &Tensor<B, 2>, t: i64, alpha_bars: &[f64]) -> Tensor<B, 2> {
    let ab = alpha_bars[t as usize];
    x.clone()
        .mul_scalar((1.0 - ab).sqrt() / (ab * DATA_VAR + 1.0 - ab))
}

/// The toy learned-range value: clamp(x · 0.5, −1, 1).
fn toy_v_raw(x: &Tensor<B, 2>) -> Tensor<B, 2> {
    x.clone().mul_scalar(0.5).clamp(-1.0, 1.0)
}

#[test]
fn spacing_matches_diffusers_set_timesteps() {
    let f = fixture("spacing.json");
    let cases = f["cases"].as_array().unwrap();
    assert!(cases.len() >= 261, "{} cases", cases.len());
    for c in cases {
        let t_train = c["train_timesteps"].as_u64().unwrap() as usize;
        let n = c["steps"].as_u64().unwrap() as usize;
        let spacing = match c["spacing"].as_str().unwrap() {
            "leading" => Spacing::Leading,
            "trailing" => Spacing::Trailing,
            "linspace" => Spacing::Linspace,
            s => panic!("spacing {s}"),
        };
        let want: Vec<i64> = c["timesteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        let got = timesteps(spacing, t_train, n).unwrap();
        if want.len() == n + 1 {
            // diffusers' numpy `arange` overshoot: one extra timestep, −1.
            assert_eq!(*want.last().unwrap(), -1, "T={t_train} n={n} {spacing:?}");
            assert_eq!(got, want[..n], "T={t_train} n={n} {spacing:?}");
        } else {
            assert_eq!(got, want, "T={t_train} n={n} {spacing:?}");
        }
    }
}

#[test]
fn forward_process_matches_add_noise_and_get_velocity() {
    let f = fixture("forward.json");
    let ab = Schedule::Linear.alpha_bars(T);
    for (t, want) in f["alphas_cumprod_sample"].as_object().unwrap() {
        let t: usize = t.parse().unwrap();
        let want = want.as_f64().unwrap();
        // float32 cumprod vs f64: ≤ 3.6e-7 relative over 1000 steps.
        assert!(
            (ab[t] - want).abs() / want < 1e-6,
            "ᾱ_{t}: {} vs {want}",
            ab[t]
        );
    }
    let ts: Vec<usize> = f["timesteps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as usize)
        .collect();
    let abs: Vec<f32> = ts.iter().map(|&t| ab[t] as f32).collect();
    let ab_t = Tensor::<B, 1>::from_data(TensorData::new(abs, [ts.len()]), &Default::default());
    let (x0, noise) = (tensor(&f["x0"]), tensor(&f["noise"]));
    let x_t = q_sample(x0.clone(), noise.clone(), ab_t.clone());
    assert_close("add_noise", &x_t, &f["add_noise"]);
    let v = v_from_eps_x0(noise, x0, &BatchScalar::PerSample(ab_t));
    assert_close("get_velocity", &v, &f["get_velocity"]);
}

fn trajectory(name: &str) -> Value {
    let f = fixture("trajectories.json");
    f["trajectories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no trajectory {name}"))
        .clone()
}

fn config_of(tr: &Value) -> SamplerConfig {
    let spacing = match tr["spacing"].as_str().unwrap() {
        "leading" => Spacing::Leading,
        "trailing" => Spacing::Trailing,
        s => panic!("spacing {s}"),
    };
    let sampler = match tr["scheduler"].as_str().unwrap() {
        "DDIMScheduler" => Sampler::Ddim {
            eta: tr["eta"].as_f64().unwrap(),
        },
        "DDPMScheduler" => Sampler::Ddpm {
            variance: match tr["variance_type"].as_str().unwrap() {
                "fixed_small" => VarianceType::FixedSmall,
                "learned_range" => VarianceType::LearnedRange,
                v => panic!("variance {v}"),
            },
        },
        s => panic!("scheduler {s}"),
    };
    SamplerConfig {
        sampler,
        steps: tr["steps"].as_array().unwrap().len(),
        spacing,
        clip_sample: None,
    }
}

/// Each step alone, from diffusers' own x_t: x̂0 and x_{t_prev} agree.
fn check_steps(tr: &Value) -> f32 {
    let ab = Schedule::Linear.alpha_bars(T);
    let config = config_of(tr);
    let steps = tr["steps"].as_array().unwrap();
    let mut worst = 0f32;
    for (i, s) in steps.iter().enumerate() {
        let t = s["t"].as_i64().unwrap();
        let t_prev = steps.get(i + 1).map_or(-1, |n| n["t"].as_i64().unwrap());
        let x_t = tensor(&s["x_t"]);
        let eps = toy_eps(&x_t, t, &ab);
        let noise = (!s["noise"].is_null()).then(|| tensor(&s["noise"]));
        let out = match config.sampler {
            Sampler::Ddim { eta } => ddim_step(eps, x_t, t, t_prev, &ab, eta, None, noise),
            Sampler::Ddpm { variance } => {
                let variance = match variance {
                    VarianceType::FixedSmall => DdpmVariance::FixedSmall,
                    VarianceType::FixedLarge => DdpmVariance::FixedLarge,
                    VarianceType::LearnedRange => DdpmVariance::LearnedRange(toy_v_raw(&x_t)),
                };
                ddpm_step(eps, x_t, t, t_prev, &ab, variance, None, noise)
            }
        };
        let what = format!("{} step {i} (t = {t})", tr["name"]);
        worst = worst.max(assert_close(
            &format!("{what} x0_hat"),
            &out.x0_hat,
            &s["x0_hat"],
        ));
        worst = worst.max(assert_close(
            &format!("{what} x_prev"),
            &out.x_prev,
            &s["x_prev"],
        ));
    }
    worst
}

/// The whole loop through [`sample`], replaying diffusers' noise: every x_t
/// the denoiser sees and the final sample agree.
fn check_loop(tr: &Value) -> f32 {
    let ab = Schedule::Linear.alpha_bars(T);
    let config = config_of(tr);
    let steps = tr["steps"].as_array().unwrap();
    let want_ts: Vec<i64> = tr["timesteps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap())
        .collect();
    assert_eq!(config.timesteps(T).unwrap(), want_ts);
    let step = Cell::new(0usize);
    let mut worst = 0f32;
    let learned = matches!(
        config.sampler,
        Sampler::Ddpm {
            variance: VarianceType::LearnedRange
        }
    );
    let x0 = sample::<B, 2, SamplerError>(
        |x, t| {
            let i = step.get();
            assert_eq!(t, [want_ts[i]; 2]);
            worst = worst.max(assert_close(
                &format!("{} x_t at step {i}", tr["name"]),
                x,
                &steps[i]["x_t"],
            ));
            step.set(i + 1);
            let eps = toy_eps(x, t[0], &ab);
            Ok(if learned {
                Tensor::cat(vec![eps, toy_v_raw(x)], 1)
            } else {
                eps
            })
        },
        tensor(&tr["x_T"]),
        &ab,
        &config,
        |shape| {
            // `step` was advanced by this step's denoiser call.
            let s = &steps[step.get() - 1];
            assert!(
                !s["noise"].is_null(),
                "{}: dtx drew noise where diffusers drew none",
                tr["name"]
            );
            let z = tensor(&s["noise"]);
            assert_eq!(z.dims(), shape);
            z
        },
    )
    .unwrap();
    assert_eq!(step.get(), steps.len());
    worst.max(assert_close(
        &format!("{} final sample", tr["name"]),
        &x0,
        &steps.last().unwrap()["x_prev"],
    ))
}

fn check(name: &str) {
    let tr = trajectory(name);
    let a = check_steps(&tr);
    let b = check_loop(&tr);
    eprintln!("{name}: worst |Δ| per step {a:e}, over the loop {b:e}");
}

#[test]
fn ddim_eta0_leading_matches_diffusers() {
    check("ddim_eta0_leading");
}

#[test]
fn ddim_eta0_trailing_matches_diffusers() {
    check("ddim_eta0_trailing");
}

#[test]
fn ddim_eta1_with_recorded_noise_matches_diffusers() {
    check("ddim_eta1_leading");
}

#[test]
fn ddpm_fixed_small_with_recorded_noise_matches_diffusers() {
    check("ddpm_fixed_small_leading");
}

#[test]
fn ddpm_learned_range_with_recorded_noise_matches_diffusers() {
    check("ddpm_learned_range_leading");
}
