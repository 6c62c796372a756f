//! TGDP's loss terms and its networks' hand-written input gradients,
//! in-process against references computed another way (issue 19, item 11):
//! each loss of `dtx_plugin_tgdp::losses` against plain f64 loops over the
//! same numbers, and `ScalarNet::forward_with_input_grad` (conv and MLP)
//! against the host's autodiff and central finite differences.

use dtx::tensor_abi::{CpuBackend, Session, SessionGuard, vtables};
use dtx_plugin_api::{Host, Tensor};
use dtx_plugin_tgdp::{Inputs, ScalarNet, losses};
use dtx_tests::mock::Normal;

type B = CpuBackend;

fn session(seed: u64) -> SessionGuard {
    dtx_plugin_api::__private::install_host(vtables::<B>());
    let guard = Session::<B>::install(Default::default(), seed);
    Session::<B>::with(|s| s.current_plugin = Some("tgdp".into())).unwrap();
    guard
}

fn draws(rng: &mut Normal, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.sample() as f32).collect()
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
    let _s = session(1);
    let mut rng = Normal(3);
    let (zs, zt) = (draws(&mut rng, 3), draws(&mut rng, 5));
    let got = losses::classifier(&Tensor::from_f32(&zs, &[3]), &Tensor::from_f32(&zt, &[5])).item();
    let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
    let want = -zs.iter().map(|&z| sig(z as f64).ln()).sum::<f64>() / 3.0
        - zt.iter().map(|&z| (1.0 - sig(z as f64)).ln()).sum::<f64>() / 5.0;
    close(got as f64, want, 1e-5, "L_c");
}

/// L_guidance and L_cycle: mean over the batch of (h − target)².
#[test]
fn regression_loss_is_the_batch_mean_of_squared_errors() {
    let _s = session(1);
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
}

/// L_consistence (Algorithm 4, line 8): 1/B Σ_i ‖√(1 − ᾱ_i) ∇log h_i −
/// (ε_source,i − ε'_i)‖², the norm summed over all C·H·W values of a
/// sample; it is D = C·H·W times the per-element mean the plugin used to
/// take (which made the effective η2 η2/D). Tolerance 1e-5 relative.
#[test]
fn consistency_loss_sums_each_sample_and_averages_the_batch() {
    let _s = session(1);
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
    let _s = session(2);
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
}

#[test]
fn the_mlp_guidance_nets_input_gradient_matches_autodiff_and_finite_differences() {
    let _s = session(3);
    let host = Host::get();
    let inputs = Inputs {
        time_dim: 16,
        time_scale: 10.0,
        classes: 0,
    };
    let net = ScalarNet::mlp(&host.scope().pp("guidance"), 2, 32, 2, inputs).unwrap();
    check_input_grad(&net, &[2, 2], None);
}
