//! `dtx-plugin-testing`: test a plugin's hooks in process.
//!
//! A [`TestHost`] is a dtx host on the CPU backend with a tiny model (the
//! 16×16 diffusers U-Net of dtx's tests, or the residual MLP), its base
//! weights drawn from a fixed seed. [`TestHost::plugin`] builds a plugin
//! *type* linked into the test — the plugin crate's `rlib` — through the same
//! ABI the `dtx` binary uses, with no `cargo build` of a `cdylib` and no file
//! to load. The hooks then run as in a run: every return is checked (shape,
//! dtype; a violation is the host's error naming plugin, hook and shapes),
//! parameters live in the host, and gradients flow through its autodiff.
//!
//! ```ignore
//! use dtx_plugin_testing::{Array, TestHost};
//! # fn t() -> Result<(), String> {
//! let host = TestHost::tiny_unet();
//! let mut p = host.plugin::<dtx_plugin_lora::Lora>("rank = 2")?;
//! let key = &p.weight_targets()[0];
//! let w = host.base_weight(key);
//! let w2 = p.weights(key, &w)?;               // W' as the host uses it
//! assert_eq!(w2, w);                          // B starts at zero
//! let err = p.check_weights_gradient(key, &w, "mid_block.attentions.0.to_q.lora_B.weight", 1e-2)?;
//! assert!(err < 1e-2);                        // autodiff against finite differences
//! # Ok(()) }
//! ```
//!
//! The host's services answer as a run's do: `denoise` and `features` run
//! the tiny model (or a denoiser the test writes, [`TestHost::with_denoiser`]),
//! `dataset_batch` serves what [`TestHost::with_data`] gives, and `alpha_bar`
//! follows the linear schedule; so a `loss` that asks for the source model's
//! prediction, a `prepare` that trains a classifier on data, or a `score`
//! that differentiates the model run here as in a run. Gradients are checked
//! against finite differences with respect to parameters and to a hook's
//! input ([`TestPlugin::check_inject_input_gradient`]).
//!
//! Add it as a dev-dependency (`dtx-plugin-testing = { path = ".../plugin-testing" }`)
//! and keep the plugin's own dependencies to `dtx-plugin-api`: the harness
//! brings burn into the tests alone.

mod array;
mod forward;
mod gradient;
mod host;
mod plan;
mod plugin;
mod services;

pub use array::{Array, Labels, Normal};
pub use host::TestHost;
pub use plan::plan;
pub use plugin::{InjectInputs, LossInputs, TestPlugin};
pub use services::{DataFn, DenoiseFn};

pub use burn;
/// The backend the harness runs on: burn's CPU backend with autodiff.
pub type B = dtx::tensor_abi::CpuBackend;

/// The diffusers config of the tiny U-Net (channels 32, 64; one layer per
/// block; attention at the lower level; 16×16, 3 channels).
pub const TINY_UNET_CONFIG: &str = r#"{
  "_class_name": "UNet2DModel",
  "sample_size": 16,
  "in_channels": 3,
  "out_channels": 3,
  "block_out_channels": [32, 64],
  "layers_per_block": 1,
  "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
  "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
  "mid_block_type": "UNetMidBlock2D",
  "norm_num_groups": 8,
  "attention_head_dim": 8,
  "add_attention": true
}"#;
