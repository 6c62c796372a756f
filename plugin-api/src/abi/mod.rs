//! The stable ABI between the `dtx` host and its plugins.
//!
//! Everything here is `#[repr(C)]` and derives [`StableAbi`], so the host can check
//! a plugin's layout when it loads it. Three vtables cross the boundary:
//!
//! - [`PluginModule`], exported by every plugin (its root module): facts about the
//!   plugin and a constructor for its instance ([`PluginInstance`]).
//! - [`TensorOps`], exported by the host: every tensor operation a plugin can run.
//!   The host owns every tensor; a plugin holds opaque [`TensorId`]s.
//! - [`HostServices`], exported by the host: parameters, logging, the denoiser,
//!   data and optimizer steps.
//!
//! All three are prefix types: a later minor version of this crate may append
//! fields, and the host reads a missing field as "not available" instead of
//! crashing. See `docs/abi-policy.md`.
//!
//! Plugin authors do not use this module directly: the safe layer
//! ([`crate::Tensor`], [`crate::Host`], [`crate::Plugin`], [`crate::export_plugin!`])
//! wraps it.

#![allow(non_local_definitions)] // sabi_trait's generated impls

mod ops;
mod types;

pub use ops::*;
pub use types::*;

use abi_stable::{
    StableAbi, declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RResult, RSlice, RStr, RString, RVec},
};

/// The version of `dtx-plugin-api` this crate is; a plugin records the version it
/// was built against, and the host compares it with its own
/// ([`crate::compat::is_compatible`]).
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The result type of every call across the boundary.
pub type AbiResult<T> = RResult<T, AbiError>;

/// The root module each plugin exports (built by [`crate::export_plugin!`]).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// Facts about the plugin: name, version, hooks, injection points, config help.
    pub info: extern "C" fn() -> PluginInfo,
    /// Hands the plugin the host's vtables. Called once, right after loading and
    /// before `new`.
    pub init_host: extern "C" fn(HostVtables),
    /// Builds an instance from the plugin's `[plugin.config]` table (as JSON text)
    /// for the run's denoiser described by `model`. A config the plugin rejects is
    /// an [`AbiError`] whose `key_path` names the key (relative to the config
    /// table).
    ///
    /// This is the last field of the first version of the ABI: later versions append
    /// after it, and the host reads those through `Option` accessors.
    #[sabi(last_prefix_field)]
    pub new:
        extern "C" fn(config_json: RStr<'_>, model: &ModelInfo) -> AbiResult<PluginInstanceBox>,
}

impl RootModule for PluginModuleRef {
    declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "dtx_plugin";
    const NAME: &'static str = "dtx_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The host's vtables, handed to a plugin once by [`PluginModule::init_host`].
#[repr(C)]
#[derive(StableAbi, Copy, Clone)]
pub struct HostVtables {
    /// Tensor operations.
    pub tensor: TensorOpsRef,
    /// Host services.
    pub services: HostServicesRef,
}

/// A plugin instance behind an ABI-stable trait object.
pub type PluginInstanceBox = PluginInstance_TO<'static, RBox<()>>;

/// A plugin instance: the five hooks of DESIGN.md, its parameters and its state.
///
/// The host calls only the hooks that [`PluginInfo::hooks`] declares. Every method
/// returns errors as values; the safe layer's adapter catches panics and turns them
/// into an [`AbiError`] naming the plugin and the hook.
#[sabi_trait]
pub trait PluginInstance {
    /// `inject`: called inside the denoiser's forward at each injection point the
    /// plugin asked for. Returns the new activation (ownership passes to the host).
    fn inject(&mut self, ctx: &InjectCtx<'_>) -> AbiResult<TensorId>;

    /// `loss`: called every training step. Returns named scalar terms that the host
    /// adds to the objective (ownership of each tensor passes to the host).
    fn loss(&mut self, ctx: &LossCtx) -> AbiResult<RVec<LossTerm>>;

    /// `score`: called every sampling step. Returns the corrected ε.
    fn score(&mut self, ctx: &ScoreCtx) -> AbiResult<TensorId>;

    /// `filter`: called after a batch is sampled. Returns a score and a keep/reject
    /// decision per sample.
    fn filter(&mut self, ctx: &FilterCtx) -> AbiResult<FilterOutput>;

    /// `prepare`: called once before training or sampling, for auxiliary training.
    fn prepare(&mut self, ctx: &PrepareCtx<'_>) -> AbiResult<()>;

    /// The plugin's trainable parameters, by name.
    fn parameters(&self) -> RVec<ParamInfo>;

    /// The injection points this instance injects at (exact names, resolved
    /// against the model when it was built).
    fn points(&self) -> RVec<RString>;

    /// Non-parameter state to put in a checkpoint.
    fn state_save(&self) -> AbiResult<RVec<u8>>;

    /// Restores what [`PluginInstance::state_save`] wrote.
    #[sabi(last_prefix_field)]
    fn state_load(&mut self, state: RSlice<'_, u8>) -> AbiResult<()>;

    /// `weights` (api 0.4): the re-parameterised weight `W'` for `ctx.w`, of
    /// the same shape (ownership passes to the host). Called for each key of
    /// [`PluginInstance::weight_targets`] in every student forward (once per
    /// sampling run while sampling). A plugin built against 0.3 has none.
    fn weights(&mut self, ctx: &WeightsCtx<'_>) -> AbiResult<TensorId> {
        let _ = ctx;
        RResult::RErr(AbiError::new(
            ErrorKind::UNSUPPORTED,
            "this plugin has no `weights` hook",
        ))
    }

    /// The base parameters its `weights` hook re-parameterises (checkpoint
    /// keys, resolved against the model when it was built). Api 0.4.
    fn weight_targets(&self) -> RVec<RString> {
        RVec::new()
    }

    /// How it wants the run to train: base parameters that must train and
    /// groups of its parameters with their own rate. Api 0.4.
    fn recipe(&self) -> PluginRecipe {
        PluginRecipe::default()
    }
}

/// What a plugin says about itself.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct PluginInfo {
    /// Plugin name (`[[plugin]] name` in a manifest).
    pub name: RString,
    /// The plugin crate's own version.
    pub version: RString,
    /// One-line description.
    pub description: RString,
    /// Hooks the plugin implements.
    pub hooks: HookSet,
    /// Injection points it asks for: exact names (`mid.res.0`) or globs (`down.*`).
    pub injection_points: RVec<RString>,
    /// Its config keys, for `dtx plugins inspect` and the docs.
    pub config: RVec<ConfigKeyInfo>,
}

/// One config key of a plugin.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct ConfigKeyInfo {
    /// Key name in `[plugin.config]`.
    pub key: RString,
    /// Type as a user reads it (`float`, `integer`, `string`, `bool`, `[string]`).
    pub ty: RString,
    /// Default value as TOML text; empty when the key is required.
    pub default: RString,
    /// One-line help.
    pub help: RString,
}

/// A named parameter, as listed by [`PluginInstance::parameters`].
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct ParamInfo {
    /// The id the host gave it.
    pub id: ParamId,
    /// The name the plugin registered (unique within the plugin).
    pub name: RString,
    /// Its shape.
    pub shape: RVec<usize>,
}

/// A loss term returned by the `loss` hook.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct LossTerm {
    /// Name, logged as `<plugin>.<name>`.
    pub name: RString,
    /// A scalar tensor (shape `[1]` or `[]`), already weighted.
    pub value: TensorId,
}

/// What the `filter` hook returns.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, Default)]
pub struct FilterOutput {
    /// A score per sample (larger is better; the plugin documents its meaning).
    pub scores: RVec<f32>,
    /// Keep (`true`) or reject, per sample.
    pub keep: RVec<bool>,
}
