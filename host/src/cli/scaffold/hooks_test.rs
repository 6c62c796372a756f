//! The scaffold's `tests/hooks.rs`: each chosen hook's example run in
//! process on the tiny U-Net of `dtx-plugin-testing`, checked against what
//! it should compute (closed forms, finite differences).

use super::Scaffold;

/// The test file for the hooks `s` holds.
pub(super) fn hooks_rs(s: &Scaffold) -> String {
    let krate = s.package().replace('-', "_");
    let ty = s.type_name();
    let mut o = format!(
        r#"//! `{name}`'s hooks in process on a tiny U-Net (dtx-plugin-testing: a
//! dtx host on the CPU, no `cargo build` of the library): each example
//! starts at the source model and computes what it should. Replace these
//! with your method's checks: a reference computed another way, with the
//! tolerance you state.

use dtx_plugin_testing::{{Array, TestHost, TestPlugin}};
use {krate}::{ty};

fn plugin(host: &TestHost, config: &str) -> TestPlugin {{
    host.plugin::<{ty}>(config).expect("the plugin builds")
}}
"#,
        name = s.name
    );
    if s.has("inject") {
        o.push_str(
            r#"
#[test]
fn inject_starts_at_the_source_and_its_scale_trains() {
    let host = TestHost::tiny_unet();
    let mut p = plugin(&host, "points = [\"mid.res.0\"]");
    let h = Array::random(&host.point_shape("mid.res.0", 2), 1);
    // s = 0: h ⊙ (1 + 0) is h, bit for bit
    assert_eq!(p.inject("mid.res.0", &h, 500.0).unwrap(), h);
    // autodiff against central differences (h ⊙ (1 + s) is linear in s)
    let err = p
        .check_inject_gradient("mid.res.0", &h, "mid.res.0.scale", 1e-2)
        .unwrap();
    assert!(err < 1e-2, "relative error {err}");
}
"#,
        );
    }
    if s.has("weights") {
        o.push_str(
            r#"
#[test]
fn weights_start_at_the_source_and_their_gains_train() {
    let host = TestHost::tiny_unet();
    let mut p = plugin(&host, "");
    let key = p.weight_targets()[0].clone();
    let w = host.base_weight(&key);
    // g = 0: W · (1 + 0) is W, bit for bit
    assert_eq!(p.weights(&key, &w).unwrap(), w);
    let err = p
        .check_weights_gradient(&key, &w, &format!("{key}.gain"), 1e-2)
        .unwrap();
    assert!(err < 1e-2, "relative error {err}");
}
"#,
        );
    }
    if s.has("loss") {
        o.push_str(
            r#"
#[test]
fn the_loss_is_lambda_times_the_mean_square_prediction() {
    let host = TestHost::tiny_unet();
    let mut p = plugin(&host, "lambda = 0.5");
    let shape = host.data_shape(2);
    let (x0, noise, pred) = (
        Array::random(&shape, 1),
        Array::random(&shape, 2),
        Array::random(&shape, 3),
    );
    let terms = p.loss(&x0, &noise, &x0, &pred, 500.0).unwrap();
    let n = pred.values.len() as f64;
    let want = 0.5 * pred.values.iter().map(|v| f64::from(v * v)).sum::<f64>() / n;
    assert_eq!(terms.len(), 1, "{terms:?}");
    assert!((f64::from(terms[0].1) - want).abs() <= 1e-5, "{terms:?} against {want}");
}
"#,
        );
    }
    if s.has("score") {
        o.push_str(
            r#"
#[test]
fn score_adds_guidance_times_x_t() {
    let host = TestHost::tiny_unet();
    let mut p = plugin(&host, "guidance = 0.5");
    let shape = host.data_shape(2);
    let (x, eps) = (Array::random(&shape, 1), Array::random(&shape, 2));
    let out = p.score(&x, &eps, 500.0).unwrap();
    for ((o, e), x) in out.values.iter().zip(&eps.values).zip(&x.values) {
        assert!((o - (e + 0.5 * x)).abs() <= 1e-6, "{o} against {e} + 0.5 · {x}");
    }
}
"#,
        );
    }
    if s.has("filter") {
        o.push_str(
            r#"
#[test]
fn filter_keeps_samples_whose_mean_square_is_small() {
    let host = TestHost::tiny_unet();
    let mut p = plugin(&host, "threshold = 0.25");
    // one sample of zeros, one of ones
    let shape = host.data_shape(2);
    let mut samples = Array::zeros(&shape);
    let half = samples.values.len() / 2;
    samples.values[half..].fill(1.0);
    let (scores, keep) = p.filter(&samples).unwrap();
    assert_eq!(scores, [0.0, 1.0]);
    assert_eq!(keep, [true, false]);
}
"#,
        );
    }
    o
}
