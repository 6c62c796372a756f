//! The `difffit` plugin (api 0.4: a recipe and `….branch` points) in a run
//! on a tiny U-Net: a γ per residual branch, starting at 1; the biases and
//! norms train beside it, every other base weight stays as it was; and a
//! run stopped and resumed ends bit-identical to an uninterrupted one. The
//! hook's maths (γ·f(x) exactly, the recipe, γ's gradient) is tested in
//! process in the plugin's own crate (plugins/difffit/tests/in_process.rs).

use dtx_tests::runs::straight_and_resumed;
use std::collections::BTreeMap;

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn difffit_trains_gammas_biases_and_norms_alone_and_resumes_exactly() {
    let r = straight_and_resumed("difffit", "difffit-unet.toml", "difffit-unet", 2);
    assert_eq!(r.straight, r.resumed, "resumed ≠ uninterrupted");
    let (done, half) = (&r.straight, &r.half);

    let params = |t: &BTreeMap<String, Vec<u8>>, keep: &dyn Fn(&str) -> bool| {
        t.iter()
            .filter_map(|(k, v)| k.strip_prefix("param/").map(|k| (k.to_owned(), v.clone())))
            .filter(|(k, _)| keep(k))
            .collect::<BTreeMap<_, _>>()
    };
    // one γ per branch point of tiny-diffusers (12), moved from 1
    let gammas = params(done, &|k| {
        k.starts_with("plugin.difffit.") && k.ends_with(".gamma")
    });
    assert_eq!(gammas.len(), 12, "{:?}", gammas.keys().collect::<Vec<_>>());
    assert!(gammas.values().all(|v| f32s(v).len() == 1));
    assert!(gammas.values().any(|v| f32s(v)[0] != 1.0));
    // biases and norms train; convolution and linear weights do not
    let base = |t: &BTreeMap<String, Vec<u8>>, trains: bool| {
        params(t, &move |k| {
            let bias_or_norm = k.ends_with(".bias") || k.contains("norm");
            !k.starts_with("plugin.") && bias_or_norm == trains
        })
    };
    assert_ne!(base(done, true), base(half, true), "biases and norms moved");
    assert_eq!(base(done, false), base(half, false), "weights stayed");
    assert!(!base(done, false).is_empty());
}
