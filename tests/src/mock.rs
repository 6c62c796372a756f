//! Small pieces the plugin tests' mock sessions share: a deterministic
//! normal generator and timesteps as the hooks take them.

use burn::tensor::{Tensor, TensorData};
use dtx::tensor_abi::CpuBackend;

/// The harness's fixed normal stream: the same draws as the plugin crates'
/// in-process tests.
pub use dtx_plugin_testing::Normal;

/// Timesteps `[n]`, all `t`, as a float tensor (what the hooks take).
pub fn timesteps(t: usize, n: usize) -> Tensor<CpuBackend, 1> {
    Tensor::from_data(TensorData::new(vec![t as f32; n], [n]), &Default::default())
}

/// The tiny diffusers U-Net of `tests/fixtures/models/tiny-diffusers` with
/// random weights (seeded) registered in the current session as frozen base
/// parameters: the net, its weights (untracked) and its model info.
///
/// # Panics
/// Without an installed session (a test failure).
pub fn tiny_unet(
    seed: u64,
) -> (
    dtx::model::Net,
    std::collections::HashMap<String, burn::tensor::ops::FloatTensor<CpuBackend>>,
    dtx_plugin_api::ModelInfo,
) {
    use dtx::tensor_abi::{BASE_OWNER, Session};
    use rand::SeedableRng;
    let dir = crate::workspace_root().join("tests/fixtures/models/tiny-diffusers");
    let desc = dtx::model::diffusers::describe(&dir).unwrap();
    let net = dtx::model::Net::from_description(&desc).unwrap();
    let params = Session::<CpuBackend>::with(|s| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        net.init::<CpuBackend>(&mut s.params, &mut rng, &Default::default(), &|_| false)
            .unwrap();
        s.params
            .entries()
            .iter()
            .filter(|e| e.owner == BASE_OWNER)
            .map(|e| {
                (
                    e.name.clone(),
                    dtx::tensor_abi::untracked::<CpuBackend>(e.value.clone()),
                )
            })
            .collect()
    })
    .unwrap();
    (net, params, desc.to_model_info())
}
