//! The `denoiser-guidance` plugin (plugins/denoiser-guidance,
//! docs/plugins/denoiser-guidance.md) through the real loader: the guidance
//! gradient of Eq. 13 against finite differences on a tiny U-Net, the
//! class embedding and CFG arithmetic, and config errors. `dtx run` end to
//! end is in `denoiser_guidance_runs.rs`.

use burn::tensor::{Int, Tensor, TensorData, TensorPrimitive};
use dtx::model::{Denoiser, Hooks, Net, Recorder};
use dtx::plugins::{InjectArgs, Instance, load_library};
use dtx::tensor_abi::{
    CpuBackend, DataService, DenoiseService, Labels, Ranked, Session, SessionGuard, vtables,
};
use dtx_plugin_api::ModelInfo;
use dtx_plugin_api::abi::{AbiError, Which};
use dtx_tests::mock::{Normal, timesteps};
use dtx_tests::plugin_path;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

type B = CpuBackend;

const T: usize = 1000;
const SIDE: usize = 16;

/// DDPM's linear schedule (β from 1e-4 to 0.02 over T steps).
fn alpha_bars() -> Vec<f32> {
    let mut ab = 1.0f64;
    (0..T)
        .map(|i| {
            let beta = 1e-4 + (0.02 - 1e-4) * i as f64 / (T - 1) as f64;
            ab *= 1.0 - beta;
            ab as f32
        })
        .collect()
}

/// `n` images `[3, SIDE, SIDE]` of standard normal values.
fn images(rng: &mut Normal, n: usize) -> Vec<f32> {
    (0..n * 3 * SIDE * SIDE)
        .map(|_| rng.sample() as f32)
        .collect()
}

/// Images' values `v` as a `[n, 3, SIDE, SIDE]` tensor.
fn image_tensor(v: &[f32]) -> Tensor<B, 4> {
    let n = v.len() / (3 * SIDE * SIDE);
    Tensor::from_data(
        TensorData::new(v.to_vec(), [n, 3, SIDE, SIDE]),
        &Default::default(),
    )
}

fn values<const D: usize>(t: &Tensor<B, D>) -> Vec<f32> {
    t.clone().into_data().to_vec().unwrap()
}

/// Class ids `[N]`.
fn class_ids(v: &[i64]) -> Tensor<B, 1, Int> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
}

/// Class labels, as the hooks take them.
fn classes(v: &[i64]) -> Labels<B> {
    Labels::Classes(class_ids(v))
}

/// The tiny diffusers U-Net of tests/fixtures with random weights, as the
/// run's denoiser (student and source alike).
struct TinyUNet {
    net: Net,
    params: HashMap<String, burn::tensor::ops::FloatTensor<B>>,
}

impl TinyUNet {
    /// The network's weights table.
    fn weights(&self) -> dtx::model::Weights<B> {
        self.net.weights(&self.params).unwrap()
    }
}

impl DenoiseService<B> for TinyUNet {
    fn denoise(
        &self,
        x_t: Ranked<B>,
        t: Tensor<B, 1>,
        _which: Which,
        labels: Option<Tensor<B, 1, Int>>,
    ) -> Result<Ranked<B>, AbiError> {
        // A network's class input takes one label per example: masks
        // handed on as labels (the `mask` preset's old mistake) are refused
        // before they get here (the service's labels are `[N]` by type; the
        // host's boundary checks a plugin's handle), as a class-conditional
        // net would fail on them.
        let x = x_t.at::<4>("denoise: x_t")?;
        let out = self.net.predict(&self.weights(), x, t, labels);
        Ok(Ranked::new(out))
    }

    fn features(
        &self,
        x: Ranked<B>,
        t: Tensor<B, 1>,
        points: &[String],
        _which: Which,
        _labels: Option<burn::tensor::Tensor<B, 1, burn::tensor::Int>>,
    ) -> Result<Vec<Ranked<B>>, AbiError> {
        let x = x.at::<4>("features: x")?;
        let mut record = Recorder::<B, 4>::new(points);
        let Ok(_) = self
            .net
            .forward(&self.weights(), x, t, None, &mut record, None);
        Ok(points
            .iter()
            .map(|p| Ranked::new(record.blocks.remove(p).unwrap()))
            .collect())
    }
}

/// Random labelled images: labels alternate 0, 1; masks (`<split>:masks`)
/// are 1 on the left half of image 0 and spread one column further right
/// with each image.
struct Labelled(Normal);

/// `n` masks `[n, SIDE, SIDE]` as the mock data service draws them.
fn masks(n: usize) -> Vec<i64> {
    (0..n * SIDE * SIDE)
        .map(|k| {
            let (i, x) = (k / (SIDE * SIDE), k % SIDE);
            (x < SIDE / 2 + i % (SIDE / 2)) as i64
        })
        .collect()
}

/// Masks' values `v` as `[n, SIDE, SIDE]` labels.
fn mask_labels(v: &[i64]) -> Labels<B> {
    let n = v.len() / (SIDE * SIDE);
    Labels::Masks(Tensor::from_data(
        TensorData::new(v.to_vec(), [n, SIDE, SIDE]),
        &Default::default(),
    ))
}

impl DataService<B> for Labelled {
    fn batch(&mut self, split: &str, n: usize) -> Result<(Ranked<B>, Option<Labels<B>>), AbiError> {
        let (split, by_mask) = match split.strip_suffix(":masks") {
            Some(s) => (s, true),
            None => (split, false),
        };
        assert!(split == "target" || split == "validation", "{split}");
        let labels = if by_mask {
            mask_labels(&masks(n))
        } else {
            classes(&(0..n as i64).map(|i| i % 2).collect::<Vec<_>>())
        };
        Ok((
            Ranked::new(image_tensor(&images(&mut self.0, n))),
            Some(labels),
        ))
    }
}

/// A session whose denoiser is the tiny U-Net; its model info.
fn session() -> (SessionGuard, Rc<TinyUNet>, ModelInfo) {
    let guard = Session::<B>::install(Default::default(), 17);
    dtx::train::optim::install::<B>(Default::default()).unwrap();
    let (net, params, info) = dtx_tests::mock::tiny_unet(3);
    let unet = Rc::new(TinyUNet { net, params });
    Session::<B>::with(|s| {
        s.services.alpha_bar = Some(alpha_bars());
        s.services.denoiser = Some(unet.clone() as Rc<dyn DenoiseService<B>>);
        s.services.data = Some(Rc::new(RefCell::new(Labelled(Normal(
            0x2545_f491_4f6c_dd1d,
        )))));
    })
    .unwrap();
    (guard, unet, info)
}

fn plugin(config: &str, model: &ModelInfo) -> Result<Instance<B>, String> {
    let lib = load_library(
        &plugin_path("dtx-plugin-denoiser-guidance"),
        None,
        vtables::<B>(),
    )
    .expect("denoiser-guidance plugin loads");
    Instance::<B>::new("denoiser-guidance", lib, config, model).map_err(|e| format!("{e:#}"))
}

/// Eq. 13's gradient, ∇_{x_t} Σ log p(y | f(x̂0(x_t))), read back from the
/// score hook (ε = 0 in, so ε̂ = −λ sqrt(1 − ᾱ) ∇), against central
/// differences of the same log-likelihood computed another way: x̂0 from
/// the U-Net's ε in the test, p(y | f(x̂0)) from the filter hook's scores.
/// Through the frozen U-Net twice (ε in x̂0 and the features) and the
/// classifier. Tolerance: 1 % of the gradient's largest entry per checked
/// coordinate (f32 forward passes, step h = 1e-2).
#[test]
fn guidance_gradient_matches_finite_differences_through_a_tiny_unet() {
    check_guidance_gradient(
        r#"{"num_classes": 2, "timesteps": [300], "channels": 8, "steps": 20, "pool": 16,
            "batch": 8, "validation": 0, "lambda": 2.0, "reject": true, "threshold": 0.0}"#,
        classes(&[0, 1]),
        1.0,
    );
}

/// The same check for segmentation masks: a per-pixel classifier on the
/// decoder features upsampled to the image, log p summed over pixels (the
/// filter's score is the pixels' geometric mean, hence the factor).
#[test]
fn mask_guidance_gradient_matches_finite_differences() {
    check_guidance_gradient(
        r#"{"preset": "mask", "num_classes": 2, "channels": 8, "steps": 20, "pool": 16,
            "batch": 8, "validation": 0, "lambda": 2.0, "reject": true, "threshold": 0.0}"#,
        mask_labels(&masks(2)),
        (SIDE * SIDE) as f64,
    );
}

/// `pixels`: the filter's score is exp(log p / pixels).
fn check_guidance_gradient(config: &str, labels: Labels<B>, pixels: f64) {
    let (_guard, unet, model) = session();
    let mut inst = plugin(config, &model).unwrap();
    inst.prepare("sample", "").unwrap();

    let (n, t, lambda) = (2, 500, 2.0f64);
    let ab = alpha_bars()[t] as f64;
    let x = images(&mut Normal(99), n);
    // As the host hands them: x_t a leaf, ε tracked from it.
    let xp = leaf(&x);
    let eps = student_eps(&unet, xp.clone(), t);
    let eps_hat = values(
        &inst
            .score(&xp, &timesteps(t, n), &eps, Some(&labels), 0, 1)
            .unwrap(),
    );
    let grad: Vec<f64> = values(&eps)
        .iter()
        .zip(&eps_hat)
        .map(|(&e, &h)| (e - h) as f64 / (lambda * (1.0 - ab).sqrt()))
        .collect();

    // Σ log p(y | f(x̂0(x))), evaluated without the score hook
    let log_lik = |inst: &mut Instance<B>, x: &[f32]| -> f64 {
        let eps = values(&student_eps(&unet, image_tensor(x), t));
        let x0: Vec<f32> = x
            .iter()
            .zip(&eps)
            .map(|(&xi, &e)| ((xi as f64 - (1.0 - ab).sqrt() * e as f64) / ab.sqrt()) as f32)
            .collect();
        let out = inst.filter(&image_tensor(&x0), Some(&labels)).unwrap();
        out.scores.iter().map(|&p| pixels * (p as f64).ln()).sum()
    };

    let top = grad.iter().fold(0.0f64, |m, g| m.max(g.abs()));
    assert!(top > 0.0, "the guidance gradient is zero");
    let mut order: Vec<usize> = (0..grad.len()).collect();
    order.sort_by(|&a, &b| grad[b].abs().total_cmp(&grad[a].abs()));
    let h = 1e-2f32;
    // the largest entries, and a few ordinary ones
    for &i in order
        .iter()
        .take(4)
        .chain(order.iter().skip(300).step_by(250).take(4))
    {
        let mut plus = x.clone();
        plus[i] += h;
        let mut minus = x.clone();
        minus[i] -= h;
        let fd = (log_lik(&mut inst, &plus) - log_lik(&mut inst, &minus)) / (2.0 * h as f64);
        println!(
            "coordinate {i}: score hook {:.6e}, finite difference {fd:.6e}",
            grad[i]
        );
        assert!(
            (fd - grad[i]).abs() <= 0.01 * top,
            "coordinate {i}: score hook {} vs finite difference {fd} (largest entry {top})",
            grad[i]
        );
    }
}

/// `x` as a leaf that tracks gradients, as `score` receives x_t.
fn leaf(x: &[f32]) -> Tensor<B, 4> {
    image_tensor(x).require_grad()
}

/// The student's ε at `x`, all timesteps `t`, through the denoise service.
fn student_eps(unet: &TinyUNet, x: Tensor<B, 4>, t: usize) -> Tensor<B, 4> {
    let n = x.dims()[0];
    unet.denoise(Ranked::new(x), timesteps(t, n), Which::Student, None)
        .unwrap()
        .at::<4>("ε")
        .unwrap()
}

/// The student's ε with the plugin's injections (its class embedding at
/// `temb`), as the host computes the ε it hands `score`.
fn eps_with_injection(
    unet: &TinyUNet,
    inst: &mut Instance<B>,
    x: Tensor<B, 4>,
    t: usize,
    labels: &Labels<B>,
) -> Tensor<B, 4> {
    let n = x.dims()[0];
    let tf = timesteps(t, n);
    let mut hooks = TembInjection {
        inst,
        t: tf.clone(),
        labels,
    };
    unet.net
        .forward(&unet.weights(), x, tf, None, &mut hooks, None)
        .unwrap()
}

/// The plugin's `inject` at `temb` alone, with `labels`.
struct TembInjection<'a> {
    inst: &'a mut Instance<B>,
    t: Tensor<B, 1>,
    labels: &'a Labels<B>,
}

impl Hooks<B, 4> for TembInjection<'_> {
    type Error = AbiError;

    fn temb(&mut self, temb: Tensor<B, 2>) -> Result<Tensor<B, 2>, AbiError> {
        self.inst
            .inject(InjectArgs {
                point: "temb",
                h: &temb,
                t: &self.t,
                temb: &temb,
                cond: None,
                labels: Some(self.labels),
                training: false,
            })
            .map_err(|e| AbiError::other(e.to_string()))
    }
}

/// Guidance with the class embedding and CFG both on (issue: x̂0 used to
/// come from the null-class ε): the score hook's gradient is
/// ∇_x Σ log p(y | f(x̂0(x))) with x̂0 built from the ε being sampled,
/// (1 + w) ε(x, y) − w ε(x, null), checked against central differences of
/// that log-likelihood (p from the filter hook); and it differs from the
/// gradient through the null-class ε by far more than the tolerance, so the
/// check tells the two apart. Tolerance: 1 % of the largest entry.
#[test]
fn guidance_with_the_class_embedding_differentiates_the_sampled_eps() {
    let (_guard, unet, model) = session();
    let (w, lambda) = (0.5f64, 2.0f64);
    let mut inst = plugin(
        &format!(
            r#"{{"num_classes": 2, "timesteps": [300], "channels": 8, "steps": 20, "pool": 16,
                "batch": 8, "validation": 0, "lambda": {lambda}, "reject": true, "threshold": 0.0,
                "class_embedding": true, "cfg_weight": {w}}}"#
        ),
        &model,
    )
    .unwrap();
    inst.prepare("sample", "").unwrap();
    // A class embedding large enough to move ε well away from the null class.
    Session::<B>::with(|s| {
        let e = s
            .params
            .entries_mut()
            .iter_mut()
            .find(|e| e.name == "plugin.denoiser-guidance.class_embedding")
            .unwrap();
        let scaled = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(e.value.clone())) * 40.0;
        e.value = scaled.into_primitive().tensor();
    })
    .unwrap();
    let labels = classes(&[1, 0]);
    let (n, t) = (2, 500);
    let ab = alpha_bars()[t] as f64;
    let s1a = (1.0 - ab).sqrt();
    let x = images(&mut Normal(99), n);
    let xp = leaf(&x);
    let eps = eps_with_injection(&unet, &mut inst, xp.clone(), t, &labels);
    let out = values(
        &inst
            .score(&xp, &timesteps(t, n), &eps, Some(&labels), 0, 1)
            .unwrap(),
    );
    // ε being sampled, as a function of x (conditional via the embedding)
    let sampled_eps = |inst: &mut Instance<B>, x: &[f32], conditional: bool| -> Vec<f64> {
        let null = values(&student_eps(&unet, image_tensor(x), t));
        if !conditional {
            return null.iter().map(|&v| v as f64).collect();
        }
        let cond = values(&eps_with_injection(
            &unet,
            inst,
            image_tensor(x),
            t,
            &labels,
        ));
        cond.iter()
            .zip(&null)
            .map(|(&c, &u)| (1.0 + w) * c as f64 - w * u as f64)
            .collect()
    };
    let at = sampled_eps(&mut inst, &x, true);
    let grad: Vec<f64> = at
        .iter()
        .zip(&out)
        .map(|(&e, &o)| (e - o as f64) / (lambda * s1a))
        .collect();
    let log_lik = |inst: &mut Instance<B>, x: &[f32], conditional: bool| -> f64 {
        let e = sampled_eps(inst, x, conditional);
        let x0: Vec<f32> = x
            .iter()
            .zip(&e)
            .map(|(&xi, &ei)| ((xi as f64 - s1a * ei) / ab.sqrt()) as f32)
            .collect();
        let out = inst.filter(&image_tensor(&x0), Some(&labels)).unwrap();
        out.scores.iter().map(|&p| (p as f64).ln()).sum()
    };
    let top = grad.iter().fold(0.0f64, |m, g| m.max(g.abs()));
    assert!(top > 0.0, "the guidance gradient is zero");
    let mut order: Vec<usize> = (0..grad.len()).collect();
    order.sort_by(|&a, &b| grad[b].abs().total_cmp(&grad[a].abs()));
    let h = 1e-2f32;
    let mut apart = 0.0f64;
    for &i in order.iter().take(6) {
        let fd = |inst: &mut Instance<B>, conditional: bool| {
            let (mut plus, mut minus) = (x.clone(), x.clone());
            plus[i] += h;
            minus[i] -= h;
            (log_lik(inst, &plus, conditional) - log_lik(inst, &minus, conditional))
                / (2.0 * h as f64)
        };
        let (cond, null) = (fd(&mut inst, true), fd(&mut inst, false));
        println!(
            "coordinate {i}: hook {:.6e}, fd {cond:.6e}, fd null-class {null:.6e}",
            grad[i]
        );
        assert!(
            (cond - grad[i]).abs() <= 0.01 * top,
            "coordinate {i}: score hook {} vs finite difference {cond} (largest entry {top})",
            grad[i]
        );
        apart = apart.max((null - grad[i]).abs());
    }
    assert!(
        apart > 0.05 * top,
        "the null-class gradient is as close ({apart} of {top}): the test cannot tell them apart"
    );
}

/// The class embedding at `temb`: `h + E[y]` at sampling; label dropout 1
/// drops every training label to the null class (zero); no labels is the
/// null class. CFG in `score`: `(1 + w) ε − w ε_null`, ε_null from
/// `denoise(student)` (which leaves this plugin's embedding out).
#[test]
fn class_embedding_and_classifier_free_guidance() {
    let (_guard, unet, model) = session();
    let w = 0.5f32;
    let mut inst = plugin(
        &format!(
            r#"{{"preset": "rejection", "num_classes": 3, "class_embedding": true,
                "label_dropout": 1.0, "cfg_weight": {w}, "channels": 4}}"#
        ),
        &model,
    )
    .unwrap();
    assert_eq!(inst.points(), ["temb"]);
    let d = model.temb_channels;
    let table = Session::<B>::with(|s| {
        let e = s
            .params
            .entries()
            .iter()
            .find(|e| e.name == "plugin.denoiser-guidance.class_embedding")
            .expect("class_embedding registered")
            .value
            .clone();
        values(&Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(e)))
    })
    .unwrap();
    assert_eq!(table.len(), 3 * d);
    let temb: Vec<f32> = (0..2 * d).map(|i| (i as f32 * 0.37).sin()).collect();
    let h = Tensor::<B, 2>::from_data(TensorData::new(temb.clone(), [2, d]), &Default::default());
    let labels = classes(&[2, 0]);
    let t = timesteps(10, 2);
    let mut inject = |labels: Option<&Labels<B>>, training: bool| {
        values(
            &inst
                .inject(InjectArgs {
                    point: "temb",
                    h: &h,
                    t: &t,
                    temb: &h,
                    cond: None,
                    labels,
                    training,
                })
                .unwrap(),
        )
    };
    let sampled = inject(Some(&labels), false);
    for (i, y) in [2usize, 0].into_iter().enumerate() {
        for j in 0..d {
            let want = temb[i * d + j] + table[y * d + j];
            assert!((sampled[i * d + j] - want).abs() < 1e-6, "row {i} col {j}");
        }
    }
    assert_eq!(
        inject(Some(&labels), true),
        temb,
        "dropout 1 drops every label"
    );
    assert_eq!(inject(None, false), temb, "no labels: the null class");

    let n = 2;
    let x = images(&mut Normal(5), n);
    let eps: Vec<f32> = images(&mut Normal(6), n);
    let out = values(
        &inst
            .score(
                &image_tensor(&x),
                &timesteps(400, n),
                &image_tensor(&eps),
                Some(&labels),
                0,
                1,
            )
            .unwrap(),
    );
    let null = values(&student_eps(&unet, image_tensor(&x), 400));
    for i in 0..out.len() {
        let want = (1.0 + w) * eps[i] - w * null[i];
        assert!(
            (out[i] - want).abs() < 1e-5,
            "entry {i}: {} vs {want}",
            out[i]
        );
    }
}

/// Bad configs name their key.
#[test]
fn config_errors_name_the_key() {
    let (_guard, _unet, model) = session();
    for (config, key) in [
        (r#"{}"#, "num_classes"),
        (r#"{"num_classes": 2, "points": ["up.7"]}"#, "points"),
        (r#"{"num_classes": 2, "points": ["temb"]}"#, "points"),
        (r#"{"num_classes": 2, "threshold": 1.5}"#, "threshold"),
        (
            r#"{"labels": "domain", "class_embedding": true}"#,
            "class_embedding",
        ),
        (r#"{"num_classes": 2, "timesteps": []}"#, "timesteps"),
    ] {
        let e = plugin(config, &model).err().expect(config);
        assert!(e.contains(key), "{config}: {e}");
    }
}
