//! `denoiser-guidance` in process on `dtx-plugin-testing`, on the tiny
//! U-Net (the harness's default denoiser and features, student and source
//! alike) with random labelled images as the data: the guidance gradient of
//! Eq. 13 against finite differences, the same for masks, guidance with the
//! class embedding and CFG, the class embedding and CFG arithmetic, and
//! config errors. `dtx run` end to end is in
//! tests/tests/denoiser_guidance_runs.rs.

use dtx_plugin_denoiser_guidance::DenoiserGuidance;
use dtx_plugin_testing::{Array, InjectInputs, Labels, Normal, TestHost, TestPlugin};

const SIDE: usize = 16;

/// `n` images `[3, SIDE, SIDE]` of standard normal values.
fn images(rng: &mut Normal, n: usize) -> Vec<f32> {
    (0..n * 3 * SIDE * SIDE)
        .map(|_| rng.sample() as f32)
        .collect()
}

/// Images' values `v` as a `[n, 3, SIDE, SIDE]` array.
fn image(v: &[f32]) -> Array {
    let n = v.len() / (3 * SIDE * SIDE);
    Array::new(&[n, 3, SIDE, SIDE], v.to_vec())
}

/// `n` masks `[n, SIDE, SIDE]` as the data service draws them: 1 on the
/// left half of image 0, spreading one column further right with each
/// image.
fn masks(n: usize) -> Labels {
    let v = (0..n * SIDE * SIDE)
        .map(|k| {
            let (i, x) = (k / (SIDE * SIDE), k % SIDE);
            (x < SIDE / 2 + i % (SIDE / 2)) as i64
        })
        .collect();
    Labels::masks([n, SIDE, SIDE], v)
}

/// The tiny U-Net's host with random labelled images (`target`,
/// `validation`): labels alternate 0, 1; `<split>:masks` gives [`masks`].
fn host() -> TestHost {
    let mut rng = Normal(0x2545_f491_4f6c_dd1d);
    TestHost::tiny_unet().with_data(move |split, n| {
        let (split, by_mask) = match split.strip_suffix(":masks") {
            Some(s) => (s, true),
            None => (split, false),
        };
        if split != "target" && split != "validation" {
            return Err(format!("no split {split}"));
        }
        let labels = if by_mask {
            masks(n)
        } else {
            Labels::classes(&(0..n as i64).map(|i| i % 2).collect::<Vec<_>>())
        };
        Ok((image(&images(&mut rng, n)), Some(labels)))
    })
}

/// Eq. 13's gradient, ∇_{x_t} Σ log p(y | f(x̂0(x_t))), read back from the
/// score hook (ε̂ = ε − λ sqrt(1 − ᾱ) ∇, ε the U-Net's for x_t as a run's
/// sampler hands it, tracked from x_t), against central differences of the
/// same log-likelihood computed another way: x̂0 from the U-Net's ε in the
/// test, p(y | f(x̂0)) from the filter hook's scores. Through the frozen
/// U-Net twice (ε in x̂0 and the features) and the classifier. Tolerance:
/// 1 % of the gradient's largest entry per checked coordinate (f32 forward
/// passes, step h = 1e-2).
#[test]
fn guidance_gradient_matches_finite_differences_through_a_tiny_unet() {
    check_guidance_gradient(
        "num_classes = 2\ntimesteps = [300]\nchannels = 8\nsteps = 20\npool = 16\n\
         batch = 8\nvalidation = 0\nlambda = 2.0\nreject = true\nthreshold = 0.0",
        &Labels::classes(&[0, 1]),
        1.0,
    );
}

/// The same check for segmentation masks: a per-pixel classifier on the
/// decoder features upsampled to the image, log p summed over pixels (the
/// filter's score is the pixels' geometric mean, hence the factor).
#[test]
fn mask_guidance_gradient_matches_finite_differences() {
    check_guidance_gradient(
        "preset = \"mask\"\nnum_classes = 2\nchannels = 8\nsteps = 20\npool = 16\n\
         batch = 8\nvalidation = 0\nlambda = 2.0\nreject = true\nthreshold = 0.0",
        &masks(2),
        (SIDE * SIDE) as f64,
    );
}

/// `pixels`: the filter's score is exp(log p / pixels).
fn check_guidance_gradient(config: &str, labels: &Labels, pixels: f64) {
    let host = host();
    let mut p = host.plugin::<DenoiserGuidance>(config).unwrap();
    p.prepare("sample").unwrap();

    let (n, t, lambda) = (2, 500, 2.0f64);
    let ab = host.alpha_bar()[t] as f64;
    let ts = vec![t as f32; n];
    let x = images(&mut Normal(99), n);
    // As the host hands them: x_t a leaf, ε tracked from it.
    let (eps, eps_hat) = p
        .score_sampled(&image(&x), &ts, Some(labels), (0, 1))
        .unwrap();
    let grad: Vec<f64> = eps
        .values
        .iter()
        .zip(&eps_hat.values)
        .map(|(&e, &h)| (e - h) as f64 / (lambda * (1.0 - ab).sqrt()))
        .collect();

    // Σ log p(y | f(x̂0(x))), evaluated without the score hook
    let log_lik = |p: &mut TestPlugin, x: &[f32]| -> f64 {
        let eps = host.denoise(&image(x), &ts).values;
        let x0: Vec<f32> = x
            .iter()
            .zip(&eps)
            .map(|(&xi, &e)| ((xi as f64 - (1.0 - ab).sqrt() * e as f64) / ab.sqrt()) as f32)
            .collect();
        let (scores, _) = p.filter_with(&image(&x0), Some(labels)).unwrap();
        scores.iter().map(|&p| pixels * (p as f64).ln()).sum()
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
        let fd = (log_lik(&mut p, &plus) - log_lik(&mut p, &minus)) / (2.0 * h as f64);
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

/// Guidance with the class embedding and CFG both on (issue: x̂0 used to
/// come from the null-class ε): the score hook's gradient is
/// ∇_x Σ log p(y | f(x̂0(x))) with x̂0 built from the ε being sampled,
/// (1 + w) ε(x, y) − w ε(x, null), checked against central differences of
/// that log-likelihood (p from the filter hook); and it differs from the
/// gradient through the null-class ε by far more than the tolerance, so the
/// check tells the two apart. Tolerance: 1 % of the largest entry.
#[test]
fn guidance_with_the_class_embedding_differentiates_the_sampled_eps() {
    let host = host();
    let (w, lambda) = (0.5f64, 2.0f64);
    let mut p = host
        .plugin::<DenoiserGuidance>(&format!(
            "num_classes = 2\ntimesteps = [300]\nchannels = 8\nsteps = 20\npool = 16\n\
             batch = 8\nvalidation = 0\nlambda = {lambda:?}\nreject = true\nthreshold = 0.0\n\
             class_embedding = true\ncfg_weight = {w:?}"
        ))
        .unwrap();
    p.prepare("sample").unwrap();
    // A class embedding large enough to move ε well away from the null class.
    let mut e = p.param("class_embedding").unwrap();
    e.values.iter_mut().for_each(|v| *v *= 40.0);
    p.set_param("class_embedding", &e).unwrap();
    let labels = Labels::classes(&[1, 0]);
    let (n, t) = (2, 500);
    let ts = vec![t as f32; n];
    let ab = host.alpha_bar()[t] as f64;
    let s1a = (1.0 - ab).sqrt();
    let x = images(&mut Normal(99), n);
    let (_, out) = p
        .score_sampled(&image(&x), &ts, Some(&labels), (0, 1))
        .unwrap();
    // ε being sampled, as a function of x (conditional via the embedding)
    let sampled_eps = |p: &mut TestPlugin, x: &[f32], conditional: bool| -> Vec<f64> {
        let null = host.denoise(&image(x), &ts).values;
        if !conditional {
            return null.iter().map(|&v| v as f64).collect();
        }
        let inputs = InjectInputs {
            labels: Some(&labels),
            ..Default::default()
        };
        let cond = p.forward(&image(x), &ts, &inputs).unwrap().values;
        cond.iter()
            .zip(&null)
            .map(|(&c, &u)| (1.0 + w) * c as f64 - w * u as f64)
            .collect()
    };
    let at = sampled_eps(&mut p, &x, true);
    let grad: Vec<f64> = at
        .iter()
        .zip(&out.values)
        .map(|(&e, &o)| (e - o as f64) / (lambda * s1a))
        .collect();
    let log_lik = |p: &mut TestPlugin, x: &[f32], conditional: bool| -> f64 {
        let e = sampled_eps(p, x, conditional);
        let x0: Vec<f32> = x
            .iter()
            .zip(&e)
            .map(|(&xi, &ei)| ((xi as f64 - s1a * ei) / ab.sqrt()) as f32)
            .collect();
        let (scores, _) = p.filter_with(&image(&x0), Some(&labels)).unwrap();
        scores.iter().map(|&p| (p as f64).ln()).sum()
    };
    let top = grad.iter().fold(0.0f64, |m, g| m.max(g.abs()));
    assert!(top > 0.0, "the guidance gradient is zero");
    let mut order: Vec<usize> = (0..grad.len()).collect();
    order.sort_by(|&a, &b| grad[b].abs().total_cmp(&grad[a].abs()));
    let h = 1e-2f32;
    let mut apart = 0.0f64;
    for &i in order.iter().take(6) {
        let fd = |p: &mut TestPlugin, conditional: bool| {
            let (mut plus, mut minus) = (x.clone(), x.clone());
            plus[i] += h;
            minus[i] -= h;
            (log_lik(p, &plus, conditional) - log_lik(p, &minus, conditional)) / (2.0 * h as f64)
        };
        let (cond, null) = (fd(&mut p, true), fd(&mut p, false));
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
    let host = host();
    let w = 0.5f32;
    let mut p = host
        .plugin::<DenoiserGuidance>(&format!(
            "preset = \"rejection\"\nnum_classes = 3\nclass_embedding = true\n\
             label_dropout = 1.0\ncfg_weight = {w:?}\nchannels = 4"
        ))
        .unwrap();
    assert_eq!(p.instance().points(), ["temb"]);
    let d = host.model().temb_channels;
    let table = p.param("class_embedding").expect("class_embedding").values;
    assert_eq!(table.len(), 3 * d);
    let temb: Vec<f32> = (0..2 * d).map(|i| (i as f32 * 0.37).sin()).collect();
    let h = Array::new(&[2, d], temb.clone());
    let labels = Labels::classes(&[2, 0]);
    let mut inject = |labels: Option<&Labels>, training: bool| {
        let inputs = InjectInputs {
            t: &[10.0, 10.0],
            cond: None,
            labels,
            training,
        };
        p.inject_with("temb", &h, &inputs).unwrap().values
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
    let x = image(&images(&mut Normal(5), n));
    let eps = images(&mut Normal(6), n);
    let ts = [400.0; 2];
    let out = p
        .score_with(&x, &image(&eps), &ts, Some(&labels), (0, 1))
        .unwrap()
        .values;
    let null = host.denoise(&x, &ts).values;
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
    let host = TestHost::tiny_unet();
    for (config, key) in [
        ("", "num_classes"),
        ("num_classes = 2\npoints = [\"up.7\"]", "points"),
        ("num_classes = 2\npoints = [\"temb\"]", "points"),
        ("num_classes = 2\nthreshold = 1.5", "threshold"),
        (
            "labels = \"domain\"\nclass_embedding = true",
            "class_embedding",
        ),
        ("num_classes = 2\ntimesteps = []", "timesteps"),
    ] {
        let e = host.plugin::<DenoiserGuidance>(config).err().expect(config);
        assert!(e.contains(key), "{config}: {e}");
    }
}
