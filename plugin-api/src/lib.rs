//! `dtx-plugin-api`: build a transfer-method plugin for `dtx`.
//!
//! A plugin is a `cdylib` crate that implements [`Plugin`] and calls
//! [`export_plugin!`]. The `dtx` host loads it at run time from a manifest,
//! checks its ABI, and calls the hooks it declares. The plugin never links a
//! tensor library: [`Tensor`] is a handle to a tensor the host owns, and every
//! operation on it runs in the host (on CPU or GPU, with the host's autodiff), so
//! parameters made with [`Host::param`] are trained by the host's optimizer.
//!
//! A whole plugin (this is `plugins/example`, which the workspace builds):
//!
//! ```no_run
//! use dtx_plugin_api::prelude::*;
//!
//! #[derive(serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
//! #[serde(default, deny_unknown_fields)]
//! pub struct Config {
//!     /// Weight of the penalty (>= 0).
//!     lambda: f32,
//! }
//! impl Default for Config {
//!     fn default() -> Self { Config { lambda: 0.1 } }
//! }
//!
//! /// Adds `lambda · mean(pred²)` to the training loss.
//! pub struct Penalty { lambda: f32 }
//!
//! #[hooks]
//! impl Plugin for Penalty {
//!     type Config = Config;
//!     const NAME: &'static str = "penalty";
//!     const VERSION: &'static str = env!("CARGO_PKG_VERSION");
//!     const DESCRIPTION: &'static str = "Penalises large predictions";
//!
//!     fn new(config: Config, _host: &Host, _model: &ModelInfo) -> Result<Self, AbiError> {
//!         if config.lambda < 0.0 {
//!             return Err(AbiError::config("lambda", "must be >= 0"));
//!         }
//!         Ok(Penalty { lambda: config.lambda })
//!     }
//!
//!     fn loss(&mut self, ctx: &Loss<'_>) -> Result<Vec<(String, Tensor)>, AbiError> {
//!         let term = ctx.pred.square().mean() * self.lambda;
//!         Ok(vec![("penalty".into(), term)])
//!     }
//! }
//!
//! export_plugin!(Penalty);
//! ```
//!
//! `#[hooks]` derives the hook list from the methods the block defines (here
//! `loss`), and the key table `dtx plugins inspect` prints comes from
//! `Config`: names, types, defaults, and each field's doc comment as help.
#![warn(missing_docs)]

pub mod abi;
pub mod compat;
pub mod config;
mod host;
pub mod nn;
mod plugin;
pub mod points;
mod tensor;

pub use abi::{
    AbiError, BaseParamInfo, DType, Hook, HookSet, ModelDetails, ModelInfo, ParamRole, PointInfo,
    Which,
};
pub use dtx_plugin_macros::hooks;
pub use host::{Host, Param, Scope};
pub use plugin::{Filter, Group, Inject, Loss, Plugin, Prepare, Recipe, Score, Weights};
/// The `JsonSchema` derive plugin configs use (`schemars` 1).
pub use schemars;
pub use tensor::{Tensor, TensorRef};

/// Everything a plugin author usually needs.
pub mod prelude {
    pub use crate::abi::{
        AbiError, Conv2dOptions, FilterOutput, ModelDetails, ModelInfo, ParamInit, ParamRole, Which,
    };
    pub use crate::nn::{self, Initializer};
    pub use crate::{
        Filter, Group, Hook, Host, Inject, Loss, Param, Plugin, Prepare, Recipe, Scope, Score,
        Tensor, TensorRef, Weights, export_plugin, hooks,
    };
}

#[doc(hidden)]
pub mod __private {
    pub use crate::plugin::root_module;
    pub use crate::tensor::install as install_host;
    pub use abi_stable;
    /// The symbol abi_stable's loader looks up (checked against
    /// `abi_stable::library::ROOT_MODULE_LOADER_NAME` in a test).
    pub const ROOT_MODULE_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";
}

/// Exports a [`Plugin`] type as this `cdylib`'s root module, so `dtx` can load it.
///
/// Every call into the plugin goes through an adapter that catches panics and
/// returns them as errors naming the plugin and the hook.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[doc(hidden)]
        #[unsafe(export_name = "_1as_0lib_1header_0root_bmodule_bloader")]
        pub static __DTX_PLUGIN_ROOT: $crate::__private::abi_stable::library::LibHeader = {
            extern "C" fn __dtx_erased_module()
            -> $crate::__private::abi_stable::library::RootModuleResult {
                $crate::__private::abi_stable::library::__call_root_module_loader(
                    $crate::__private::root_module::<$plugin>,
                )
            }
            unsafe {
                $crate::__private::abi_stable::library::LibHeader::from_constructor::<
                    $crate::abi::PluginModuleRef,
                >(
                    __dtx_erased_module,
                    $crate::__private::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_module_symbol_matches_abi_stable() {
        assert_eq!(
            super::__private::ROOT_MODULE_SYMBOL,
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
    }
}
