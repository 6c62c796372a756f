//! The `difffit` plugin (api 0.4: a recipe and `….branch` points): its
//! update `x + γ·f(x)` in process (the branch out of `inject` is γ times
//! the branch in, exactly; γ = 1 leaves it bit for bit), and on a tiny
//! U-Net: a γ per residual branch, starting at 1; the biases and norms
//! train beside it, every other base weight stays as it was; and a run
//! stopped and resumed ends bit-identical to an uninterrupted one.

use burn::tensor::{Tensor, TensorData};
use dtx::plugins::{InjectArgs, Instance, load_library};
use dtx::tensor_abi::{CpuBackend, Session, vtables};
use dtx_plugin_api::ModelInfo;
use dtx_plugin_api::abi::{BaseParamInfo, ModelDetails, ParamRole, PointInfo};
use dtx_tests::plugin_path;
use dtx_tests::runs::straight_and_resumed;
use std::collections::BTreeMap;

type B = CpuBackend;

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

#[test]
fn the_branch_is_scaled_by_gamma_and_the_recipe_names_biases_and_norms() {
    let _s = Session::<B>::install(Default::default(), 0);
    dtx::train::optim::install::<B>(Default::default()).unwrap();
    let param = |key: &str, shape: Vec<usize>, role| BaseParamInfo {
        key: key.into(),
        shape: shape.into(),
        role,
        block: "mid.res.0".into(),
    };
    let details = ModelDetails {
        prediction: "epsilon".into(),
        num_classes: 0,
        data_shape: vec![2, 2, 2].into(),
        parameters: vec![
            param("mid.conv1.weight", vec![2, 2, 3, 3], ParamRole::CONV),
            param("mid.conv1.bias", vec![2], ParamRole::BIAS),
            param("mid.norm1.weight", vec![2], ParamRole::NORM),
            param("mid.norm1.bias", vec![2], ParamRole::NORM),
        ]
        .into(),
    };
    Session::<B>::with(|s| s.services.model_details = Some(details)).unwrap();
    let point = |name: &str| PointInfo {
        name: name.into(),
        channels: 2,
        height: 2,
        width: 2,
    };
    let model = ModelInfo {
        kind: "test".into(),
        data_channels: 2,
        resolution: 2,
        temb_channels: 4,
        points: vec![point("mid.res.0.branch"), point("mid.res.0")].into(),
    };
    let lib = load_library(&plugin_path("dtx-plugin-difffit"), None, vtables::<B>()).unwrap();
    let mut inst = Instance::<B>::new("difffit", lib, "{}", &model).unwrap();
    // `*.branch` selects the branch point alone
    assert_eq!(inst.points(), ["mid.res.0.branch".to_owned()]);
    let recipe = inst.recipe();
    let trains: Vec<&str> = recipe.train_base.iter().map(|k| k.as_str()).collect();
    assert_eq!(
        trains,
        ["mid.conv1.bias", "mid.norm1.weight", "mid.norm1.bias"]
    );
    assert_eq!(recipe.groups.len(), 1);
    assert_eq!(recipe.groups[0].lr_scale, 1.0);

    let dev = Default::default();
    let v = vec![1.5f32, -2.0, 0.25, 3.0, -0.5, 4.0, 7.0, -1.0];
    let h = Tensor::<B, 4>::from_data(TensorData::new(v.clone(), [1, 2, 2, 2]), &dev);
    let (t, temb) = (
        Tensor::<B, 1>::zeros([1], &dev),
        Tensor::<B, 2>::zeros([1, 4], &dev),
    );
    let branch = |inst: &mut Instance<B>| -> Vec<f32> {
        inst.inject(InjectArgs {
            point: "mid.res.0.branch",
            h: &h,
            t: &t,
            temb: &temb,
            cond: None,
            labels: None,
            training: true,
        })
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap()
    };
    // γ = 1: f(x) as it was, bit for bit
    assert_eq!(branch(&mut inst), v);
    // γ = 0.25: exactly a quarter of f(x) (a power of two: no rounding)
    Session::<B>::with(|s| {
        let id = s
            .params
            .by_name("plugin.difffit.mid.res.0.branch.gamma")
            .unwrap();
        let e = s.params.get_mut(id).unwrap();
        e.value = Tensor::<B, 1>::from_data(TensorData::new(vec![0.25f32], [1]), &dev)
            .into_primitive()
            .tensor();
    })
    .unwrap();
    let quarter: Vec<f32> = v.iter().map(|x| x * 0.25).collect();
    assert_eq!(branch(&mut inst), quarter);
    // a γ on a point that is no branch is refused
    let lib = load_library(&plugin_path("dtx-plugin-difffit"), None, vtables::<B>()).unwrap();
    let err = Instance::<B>::new("difffit", lib, r#"{"points": ["mid.*"]}"#, &model)
        .err()
        .expect("refused");
    assert_eq!(err.error.key_path.as_str(), "points[0]", "{err}");
}
