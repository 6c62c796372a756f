//! The `difffit` plugin in process (dtx-plugin-testing, no nested build),
//! on the tiny U-Net: a γ on every branch point and none elsewhere, the
//! recipe naming exactly the biases and norms, the branch out of `inject`
//! γ times the branch in (γ = 1 bit for bit, γ = 0.25 exactly a quarter: a
//! power of two, no rounding), γ's gradient as finite differences give it,
//! and a γ on a point that is no branch refused by key.

use dtx_plugin_difffit::DiffFit;
use dtx_plugin_testing::{Array, TestHost};

const POINT: &str = "mid.res.0.branch";

#[test]
fn a_gamma_per_branch_and_a_recipe_of_biases_and_norms() {
    let host = TestHost::tiny_unet();
    let mut p = host.plugin::<DiffFit>("").unwrap();
    let branches: Vec<String> = host
        .model()
        .points
        .iter()
        .map(|q| q.name.to_string())
        .filter(|n| n.ends_with(".branch"))
        .collect();
    assert!(!branches.is_empty());
    assert_eq!(p.instance().points(), branches.as_slice());
    for b in &branches {
        assert_eq!(p.param(&format!("{b}.gamma")).unwrap().values, [1.0]);
    }
    // the recipe trains the biases and the norms, nothing else (no class
    // embedding in this model)
    let recipe = p.instance().recipe();
    let mut want: Vec<String> = host
        .base_parameters()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.ends_with(".bias") || k.contains("norm"))
        .collect();
    let mut got: Vec<String> = recipe.train_base.iter().map(|k| k.to_string()).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    // the γs in one group at the run's rate (gamma_lr_scale = 1)
    assert_eq!(recipe.groups.len(), 1);
    assert_eq!(recipe.groups[0].lr_scale, 1.0);
}

#[test]
fn the_branch_is_scaled_by_gamma_and_gamma_trains() {
    let host = TestHost::tiny_unet();
    let mut p = host
        .plugin::<DiffFit>(&format!("points = [\"{POINT}\"]"))
        .unwrap();
    let h = Array::random(&host.point_shape(POINT, 2), 1);
    // γ = 1: f(x) as it was, bit for bit
    assert_eq!(p.inject(POINT, &h, 500.0).unwrap(), h);
    // γ = 0.25: exactly a quarter
    p.set_param(&format!("{POINT}.gamma"), &Array::new(&[1], vec![0.25]))
        .unwrap();
    let quarter: Vec<f32> = h.values.iter().map(|x| x * 0.25).collect();
    assert_eq!(p.inject(POINT, &h, 500.0).unwrap().values, quarter);
    let err = p
        .check_inject_gradient(POINT, &h, &format!("{POINT}.gamma"), 1e-2)
        .unwrap();
    assert!(err < 1e-2, "relative error {err}");
}

#[test]
fn a_gamma_on_a_point_that_is_no_branch_is_refused() {
    let host = TestHost::tiny_unet();
    let err = host
        .plugin::<DiffFit>("points = [\"mid.*\"]")
        .err()
        .unwrap();
    assert!(err.contains("points[0]"), "{err}");
}
