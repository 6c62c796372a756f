//! TGDP in process on `dtx-plugin-testing`, against references computed
//! another way: the sign test with two Gaussians whose diffused density
//! ratio is closed-form (`prepare` and `score` on an exact source denoiser
//! and a data service of both Gaussians), each loss of
//! `dtx_plugin_tgdp::losses` against plain f64 loops over the same numbers
//! (issue 19, item 11), and `ScalarNet::forward_with_input_grad` (conv and
//! MLP) against the host's autodiff and central finite differences.

use dtx_plugin_api::abi::Which;
use dtx_plugin_api::{Host, Tensor};
use dtx_plugin_testing::{Array, Normal, TestHost};
use dtx_plugin_tgdp::{Inputs, ScalarNet, Tgdp, losses};

fn draws(rng: &mut Normal, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.sample() as f32).collect()
}

// --- the sign test: two Gaussians --------------------------------------------

/// Source p = N(MU_P, S² I) and target q = N(MU_Q, S² I) in 2-D.
const MU_P: [f64; 2] = [0.0, 0.0];
/// The target's mean.
const MU_Q: [f64; 2] = [0.6, -0.4];
/// Both Gaussians' standard deviation.
const S: f64 = 0.8;
/// Timesteps of the schedule.
const T: usize = 100;
/// How close (as a fraction of |μ_q − μ_p|) the plugin's guided samples'
/// mean must land to μ_q.
const GUIDED_TOL: f64 = 0.25;

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

/// The exact source ε at each row of `x` `[n·2]`, timesteps `t` `[n]`:
/// ε(x_t, t) = −√(1 − ᾱ) ∇ log p_t(x_t) = √(1 − ᾱ) (x_t − √ᾱ μ_p) / v_t.
fn exact_eps(ab: &[f64], x: &[f32], t: &[f32]) -> Vec<f32> {
    x.chunks(2)
        .zip(t)
        .flat_map(|(xi, &ti)| {
            let ab = ab[ti.round() as usize];
            let v = diffused_var(ab);
            (0..2)
                .map(move |i| ((1.0 - ab).sqrt() * (xi[i] as f64 - ab.sqrt() * MU_P[i]) / v) as f32)
        })
        .collect()
}

/// A host on the 2-D MLP whose source denoiser is the exact ε, its schedule
/// the cosine one, and its data fresh samples of p (`source`) and q
/// (`target`).
fn two_gaussians() -> TestHost {
    let ab = alpha_bars();
    let ab32: Vec<f32> = ab.iter().map(|&a| a as f32).collect();
    let mut rng = Normal(0x9e37_79b9_7f4a_7c15);
    TestHost::mlp()
        .with_schedule(&ab32)
        .with_denoiser(move |x, t, which| {
            assert!(matches!(which, Which::Source), "tgdp only asks the source");
            Array::new(&x.shape, exact_eps(&ab, &x.values, t))
        })
        .with_data(move |split, n| {
            let mu = match split {
                "source" => MU_P,
                "target" => MU_Q,
                other => return Err(format!("no split {other}")),
            };
            let v = (0..n * 2)
                .map(|k| (mu[k % 2] + S * rng.sample()) as f32)
                .collect();
            Ok((Array::new(&[n, 2], v), None))
        })
}

/// The mean of `[n·2]` points.
fn mean(x: &[f32]) -> [f64; 2] {
    let n = (x.len() / 2) as f64;
    [0, 1].map(|i| x.iter().skip(i).step_by(2).map(|&v| v as f64).sum::<f64>() / n)
}

/// Deterministic DDIM (η = 0) over all T steps from x_T ~ N(0, I), with the
/// exact source ε and `guide(ε, x_t, t) → ε'`.
fn ddim(
    ab: &[f64],
    n: usize,
    mut guide: impl FnMut(&[f32], &[f32], usize) -> Vec<f32>,
) -> Vec<f32> {
    let mut rng = Normal(12345);
    let mut x: Vec<f32> = (0..n * 2).map(|_| rng.sample() as f32).collect();
    for t in (0..T).rev() {
        let eps = guide(&exact_eps(ab, &x, &vec![t as f32; n]), &x, t);
        let (a, a_prev) = (ab[t], if t == 0 { 1.0 } else { ab[t - 1] });
        for (xi, e) in x.iter_mut().zip(&eps) {
            let x0 = (*xi as f64 - (1.0 - a).sqrt() * *e as f64) / a.sqrt();
            *xi = (a_prev.sqrt() * x0 + (1.0 - a_prev).sqrt() * *e as f64) as f32;
        }
    }
    x
}

/// The learned ∇ log h at 256 target-like points diffused to `t` (drawn
/// from `rng`), read back through `score`: −(ε_guided − ε)/√(1 − ᾱ) per
/// point, with the exact gradient there.
fn learned_grads(
    ab: &[f64],
    score: &mut impl FnMut(&[f32], &[f32], usize) -> Vec<f32>,
    t: usize,
    rng: &mut Normal,
) -> (Vec<[f64; 2]>, [f64; 2]) {
    let a = ab[t];
    let v = diffused_var(a).sqrt();
    let n = 256;
    let x: Vec<f32> = (0..n * 2)
        .map(|k| (a.sqrt() * MU_Q[k % 2] + v * rng.sample()) as f32)
        .collect();
    let eps = exact_eps(ab, &x, &vec![t as f32; n]);
    let guided = score(&eps, &x, t);
    let s1a = (1.0 - a).sqrt();
    let learned = eps
        .chunks(2)
        .zip(guided.chunks(2))
        .map(|(e, g)| [0, 1].map(|i| (e[i] as f64 - g[i] as f64) / s1a))
        .collect();
    (learned, exact_grad(a))
}

/// The mean distance of `learned` gradients from `want`.
fn mean_error(learned: &[[f64; 2]], want: [f64; 2]) -> f64 {
    learned
        .iter()
        .map(|g| ((g[0] - want[0]).powi(2) + (g[1] - want[1]).powi(2)).sqrt())
        .sum::<f64>()
        / learned.len() as f64
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
    let host = two_gaussians();
    let ab = alpha_bars();
    // the plugin's defaults except sizes, step counts and a faster lr
    let mut p = host
        .plugin::<Tgdp>(
            "hidden = 64\ndepth = 2\ntime_dim = 16\nclassifier_steps = 400\n\
             time_classifier_steps = 400\nguidance_steps = 800\nlr = 0.003\n\
             batch = 256\nsource = \"data\"",
        )
        .expect("tgdp builds");
    p.prepare("sample").expect("prepare");
    let logs = host.logs();
    let last = |k: &str| logs.iter().rev().find(|(n, _)| n == k).map(|(_, v)| *v);
    println!(
        "classifier acc {:?}, time classifier acc {:?}, l_guidance {:?}, l_cycle {:?}, l_consistence {:?}",
        last("tgdp.classifier_accuracy"),
        last("tgdp.time_classifier_accuracy"),
        last("tgdp.l_guidance"),
        last("tgdp.l_cycle"),
        last("tgdp.l_consistence")
    );

    // the guided ε through the score hook
    let mut score = |eps: &[f32], x: &[f32], t: usize| -> Vec<f32> {
        let n = x.len() / 2;
        p.score_with(
            &Array::new(&[n, 2], x.to_vec()),
            &Array::new(&[n, 2], eps.to_vec()),
            &vec![t as f32; n],
            None,
            (0, T as u64),
        )
        .expect("score")
        .values
    };

    // 1. the learned gradient against the closed form
    let mut rng = Normal(777);
    for t in [2, 10, 20, 50, 80, 95] {
        let (learned, want) = learned_grads(&ab, &mut score, t, &mut rng);
        let norm = (want[0].powi(2) + want[1].powi(2)).sqrt();
        let err = mean_error(&learned, want);
        let flat: Vec<f32> = learned.iter().flatten().map(|&v| v as f32).collect();
        let got = mean(&flat);
        println!("t = {t}: mean learned ∇log h {got:?}, exact {want:?}, mean error {err:.3}");
        assert!(
            err < 0.3 * norm + 0.05,
            "t = {t}: learned ∇log h is {err:.3} from the exact {want:?} (norm {norm:.3}); mean learned {got:?}"
        );
    }

    // 2. guided sampling lands on q; unguided stays on p
    let n = 1000;
    let plain = mean(&ddim(&ab, n, |eps, _, _| eps.to_vec()));
    let guided = mean(&ddim(&ab, n, &mut score));
    let dist = |a: [f64; 2], b: [f64; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
    // the closed-form guidance, entered as the hook enters it
    let exact = mean(&ddim(&ab, n, |eps, _, t| {
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
    let flipped = mean(&ddim(&ab, n, |eps, x, t| {
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

// --- the losses and the networks' input gradients ----------------------------

/// Runs `f` as tgdp's code in a fresh host (its tensors and parameters).
fn as_tgdp<R>(f: impl FnOnce() -> R) -> R {
    TestHost::mlp().in_plugin("tgdp", f)
}

/// `a` and `b` agree within `tol` relative to `1 + |b|`.
fn close(a: f64, b: f64, tol: f64, what: &str) {
    assert!(
        (a - b).abs() <= tol * (1.0 + b.abs()),
        "{what}: {a} vs reference {b}"
    );
}

/// Steps 1–2: −1/m Σ log c(x_s) − 1/n Σ log(1 − c(x_t)), c = sigmoid(z),
/// with m ≠ n so that averaging the two domains apart (not pooled) shows.
/// Reference: log of the sigmoid, in f64. Tolerance 1e-5 (f32 softplus).
#[test]
fn classifier_loss_averages_each_domain_apart() {
    as_tgdp(|| {
        let mut rng = Normal(3);
        let (zs, zt) = (draws(&mut rng, 3), draws(&mut rng, 5));
        let got =
            losses::classifier(&Tensor::from_f32(&zs, &[3]), &Tensor::from_f32(&zt, &[5])).item();
        let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
        let want = -zs.iter().map(|&z| sig(z as f64).ln()).sum::<f64>() / 3.0
            - zt.iter().map(|&z| (1.0 - sig(z as f64)).ln()).sum::<f64>() / 5.0;
        close(got as f64, want, 1e-5, "L_c");
    });
}

/// L_guidance and L_cycle: mean over the batch of (h − target)².
#[test]
fn regression_loss_is_the_batch_mean_of_squared_errors() {
    as_tgdp(|| {
        let mut rng = Normal(4);
        let (h, target) = (draws(&mut rng, 6), draws(&mut rng, 6));
        let got = losses::regression(
            &Tensor::from_f32(&h, &[6]),
            &Tensor::from_f32(&target, &[6]),
        )
        .item();
        let want = h
            .iter()
            .zip(&target)
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum::<f64>()
            / 6.0;
        close(got as f64, want, 1e-6, "L_guidance");
    });
}

/// L_consistence (Algorithm 4, line 8): 1/B Σ_i ‖√(1 − ᾱ_i) ∇log h_i −
/// (ε_source,i − ε'_i)‖², the norm summed over all C·H·W values of a
/// sample; it is D = C·H·W times the per-element mean the plugin used to
/// take (which made the effective η2 η2/D). Tolerance 1e-5 relative.
#[test]
fn consistency_loss_sums_each_sample_and_averages_the_batch() {
    as_tgdp(|| {
        let mut rng = Normal(5);
        let (b, shape) = (3usize, [3usize, 2, 4, 4]);
        let d = 2 * 4 * 4;
        let n = b * d;
        let s1a: Vec<f32> = [0.2f32, 0.7, 0.95].to_vec();
        let (g, es, e) = (draws(&mut rng, n), draws(&mut rng, n), draws(&mut rng, n));
        let got = losses::consistency(
            &Tensor::from_f32(&s1a, &[b]),
            &Tensor::from_f32(&g, &shape),
            &Tensor::from_f32(&es, &shape),
            &Tensor::from_f32(&e, &shape),
        )
        .item() as f64;
        let mut want = 0.0;
        for (i, &s) in s1a.iter().enumerate() {
            for k in i * d..(i + 1) * d {
                let r = s as f64 * g[k] as f64 - (es[k] as f64 - e[k] as f64);
                want += r * r;
            }
        }
        want /= b as f64;
        close(got, want, 1e-5, "L_consistence");
        let per_element_mean = want / d as f64;
        close(
            got / d as f64,
            per_element_mean,
            1e-5,
            "D × the per-element mean",
        );
    });
}

/// The networks' input gradients, written by hand as forward ops (so the
/// consistency term can train through them), against the host's autodiff
/// of the same forward (1e-4 of the largest entry) and against central
/// differences at the largest entries (h = 1e-2, 1 % of the largest entry).
fn check_input_grad(net: &ScalarNet, shape: &[usize], labels: Option<&[i64]>) {
    let mut rng = Normal(9);
    let n: usize = shape.iter().product();
    let x = draws(&mut rng, n);
    let b = shape[0];
    let t = Tensor::from_f32(&[12.0, 700.0][..b], &[b]);
    let xt = Tensor::from_f32(&x, shape);
    let (_, g) = net.forward_with_input_grad(&xt, Some(&t), labels);
    let g = g.to_f32_vec();
    let leaf = xt.require_grad();
    let auto = net
        .forward(&leaf, Some(&t), labels)
        .sum()
        .grad(&[&leaf])
        .remove(0)
        .to_f32_vec();
    let top = g.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    assert!(top > 0.0, "the input gradient is zero");
    for (i, (&a, &r)) in g.iter().zip(&auto).enumerate() {
        assert!(
            (a as f64 - r as f64).abs() <= 1e-4 * top,
            "entry {i}: hand-written {a} vs autodiff {r} (largest {top})"
        );
    }
    let total = |x: &[f32]| -> f64 {
        net.forward(&Tensor::from_f32(x, shape), Some(&t), labels)
            .to_f32_vec()
            .iter()
            .map(|&v| v as f64)
            .sum()
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&p, &q| g[q].abs().total_cmp(&g[p].abs()));
    let h = 1e-2f32;
    for &i in order.iter().take(6) {
        let (mut plus, mut minus) = (x.clone(), x.clone());
        plus[i] += h;
        minus[i] -= h;
        let fd = (total(&plus) - total(&minus)) / (2.0 * h as f64);
        assert!(
            (fd - g[i] as f64).abs() <= 0.01 * top,
            "entry {i}: hand-written {} vs finite difference {fd} (largest {top})",
            g[i]
        );
    }
}

#[test]
fn the_conv_guidance_nets_input_gradient_matches_autodiff_and_finite_differences() {
    as_tgdp(|| {
        let host = Host::get();
        let inputs = Inputs {
            time_dim: 8,
            time_scale: 1.0,
            classes: 3,
        };
        let net = ScalarNet::conv(&host.scope().pp("guidance"), 3, 4, inputs).unwrap();
        check_input_grad(&net, &[2, 3, 8, 8], Some(&[2, 0]));
        let plain = Inputs {
            time_dim: 0,
            time_scale: 1.0,
            classes: 0,
        };
        let net = ScalarNet::conv(&host.scope().pp("plain"), 3, 4, plain).unwrap();
        check_input_grad(&net, &[2, 3, 8, 8], None);
    });
}

#[test]
fn the_mlp_guidance_nets_input_gradient_matches_autodiff_and_finite_differences() {
    as_tgdp(|| {
        let host = Host::get();
        let inputs = Inputs {
            time_dim: 16,
            time_scale: 10.0,
            classes: 0,
        };
        let net = ScalarNet::mlp(&host.scope().pp("guidance"), 2, 32, 2, inputs).unwrap();
        check_input_grad(&net, &[2, 2], None);
    });
}
