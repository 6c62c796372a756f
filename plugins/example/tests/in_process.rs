//! The `example` plugin in process (dtx-plugin-testing, no nested build),
//! on the tiny U-Net: the adapter starts at the source (its second layer
//! is zero: `h + 0`, bit for bit), its gradients are what finite
//! differences say, and the L2 term is `λ · Σ_p mean(p²)` computed in f64
//! from the parameters (tolerance 1e-6 relative).

use dtx_plugin_example::Example;
use dtx_plugin_testing::{Array, TestHost};

const POINT: &str = "mid.res.0";

#[test]
fn the_adapter_starts_at_the_source_and_trains() {
    let host = TestHost::tiny_unet();
    let mut p = host
        .plugin::<Example>(&format!("points = [\"{POINT}\"]"))
        .unwrap();
    let h = Array::random(&host.point_shape(POINT, 2), 1);
    assert_eq!(p.inject(POINT, &h, 500.0).unwrap(), h);
    for layer in ["up", "down"] {
        // with the zero second layer the first one's gradient is zero:
        // give the second a value first
        if layer == "down" {
            let up = p.param("mid_res_0.up.weight").unwrap();
            p.set_param("mid_res_0.up.weight", &Array::random(&up.shape, 2))
                .unwrap();
        }
        let name = format!("mid_res_0.{layer}.weight");
        let err = p.check_inject_gradient(POINT, &h, &name, 1e-2).unwrap();
        assert!(err < 2e-2, "{name}: relative error {err}");
    }
}

#[test]
fn the_l2_term_is_lambda_times_the_summed_mean_squares() {
    let host = TestHost::tiny_unet();
    let mut p = host
        .plugin::<Example>(&format!("points = [\"{POINT}\"]\nlambda = 0.5"))
        .unwrap();
    let shape = host.data_shape(2);
    let x = Array::random(&shape, 1);
    let terms = p.loss(&x, &x, &x, &x, 500.0).unwrap();
    let mut want = 0f64;
    for (name, _) in p.parameters() {
        let v = p.param(&name).unwrap().values;
        want += v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / v.len() as f64;
    }
    want *= 0.5;
    assert_eq!(terms.len(), 1, "{terms:?}");
    assert!(
        (f64::from(terms[0].1) - want).abs() <= 1e-6 * want.max(1.0),
        "{terms:?} against {want}"
    );
}
