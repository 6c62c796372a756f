//! [`Plugin`]: the trait a method implements, its hook contexts, and the adapter
//! that exposes it through the ABI with every call guarded against panics.

use crate::abi::{
    self, AbiError, AbiResult, ErrorKind, FilterOutput, Hook, HookSet, HostVtables, LossTerm,
    ModelInfo, ParamGroup, ParamInfo, PluginInfo, PluginInstance, PluginInstance_TO,
    PluginInstanceBox, PluginModule, PluginModuleRef, PluginRecipe, TensorId,
};
use crate::config;
use crate::host::{Host, Param, opt_ref, take_registered};
use crate::tensor::{Tensor, TensorRef, install};
use abi_stable::{
    prefix_type::PrefixTypeTrait,
    sabi_trait::TD_Opaque,
    std_types::{RErr, ROk, RSlice, RStr, RString, RVec},
};
use serde::{Serialize, de::DeserializeOwned};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// The `inject` hook's context.
#[derive(Debug)]
pub struct Inject<'a> {
    /// Injection point name (`temb`, `down.0.res.1`, `mid.res.0`, `up.1.res.2`).
    pub point: &'a str,
    /// The activation at the point (`[B, C, H, W]`, or `[B, D]` at `temb`).
    pub h: TensorRef,
    /// Timesteps `[B]`.
    pub t: TensorRef,
    /// The time embedding `[B, D]`.
    pub temb: TensorRef,
    /// Condition embedding `[B, N, D_c]`, when the run has one.
    pub cond: Option<TensorRef>,
    /// Class labels `[B]` (i64), when the run has them.
    pub labels: Option<TensorRef>,
    /// Whether this is a training forward.
    pub training: bool,
}

/// The `loss` hook's context: one training step.
#[derive(Debug)]
pub struct Loss<'a> {
    /// Clean batch `x0`.
    pub x0: TensorRef,
    /// The step's noise `ε`.
    pub noise: TensorRef,
    /// Timesteps `[B]`.
    pub t: TensorRef,
    /// `x_t = sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε`.
    pub x_t: TensorRef,
    /// The student's prediction for `x_t`.
    pub pred: TensorRef,
    /// Class labels `[B]`, when the target set has them.
    pub labels: Option<TensorRef>,
    /// Training step, from 0.
    pub step: u64,
    /// The host's services.
    pub host: &'a Host,
}

/// The `score` hook's context: one sampling step.
#[derive(Debug)]
pub struct Score<'a> {
    /// Current sample `x_t`.
    pub x_t: TensorRef,
    /// Timesteps `[B]`.
    pub t: TensorRef,
    /// Current ε (after earlier plugins' corrections).
    pub eps: TensorRef,
    /// Class labels asked for, when conditional.
    pub labels: Option<TensorRef>,
    /// Step index in the sampler loop, from 0.
    pub step_index: u64,
    /// Steps in the sampler loop.
    pub num_steps: u64,
    /// The host's services.
    pub host: &'a Host,
}

/// The `filter` hook's context: one finished batch.
#[derive(Debug)]
pub struct Filter<'a> {
    /// Finished samples.
    pub samples: TensorRef,
    /// Class labels asked for, when conditional.
    pub labels: Option<TensorRef>,
    /// The host's services.
    pub host: &'a Host,
}

/// The `prepare` hook's context.
#[derive(Debug)]
pub struct Prepare<'a> {
    /// The stage that follows (`train` or `sample`).
    pub before: &'a str,
    /// The run's output folder.
    pub run_dir: &'a str,
    /// The host's services.
    pub host: &'a Host,
}

/// The `weights` hook's context (api 0.4): one base weight of one student
/// forward.
#[derive(Debug)]
pub struct Weights<'a> {
    /// The weight's checkpoint key (one of [`Plugin::weight_targets`]).
    pub key: &'a str,
    /// The weight `W` (after earlier plugins' `weights`), as the checkpoint
    /// shapes it.
    pub w: TensorRef,
    /// Whether this is a training forward (`false` while sampling, where the
    /// host asks once per sampling run).
    pub training: bool,
    /// The host's services.
    pub host: &'a Host,
}

/// Parameters of a plugin that train with their own settings
/// ([`Recipe::groups`]).
#[derive(Debug, Clone)]
pub struct Group {
    /// The group's name (shown by `dtx plan`).
    pub name: String,
    /// Its parameters.
    pub params: Vec<Param>,
    /// Their learning rate is the run's times this.
    pub lr_scale: f32,
    /// Their weight decay, when not the run's.
    pub weight_decay: Option<f32>,
}

/// How a plugin wants the run to train (api 0.4).
#[derive(Debug, Clone, Default)]
pub struct Recipe {
    /// Base parameters that must train besides the manifest's `trainable`:
    /// checkpoint keys or globs (`*.bias`).
    pub train_base: Vec<String>,
    /// Groups of the plugin's parameters with their own rate or decay.
    pub groups: Vec<Group>,
}

/// A transfer method. Write `#[hooks]` on the `impl Plugin for …` block and
/// define the hook methods it implements; the host calls no other.
pub trait Plugin: Sized + 'static {
    /// The `[plugin.config]` table: serde, with `#[serde(default,
    /// deny_unknown_fields)]`, and `schemars::JsonSchema`. Each field's doc
    /// comment is its help in `dtx plugins inspect`; its type and default
    /// come from the field's type and `Default`.
    type Config: DeserializeOwned + Serialize + Default + schemars::JsonSchema;
    /// Name used in manifests (`[[plugin]] name`).
    const NAME: &'static str;
    /// The plugin's version (usually `env!("CARGO_PKG_VERSION")`).
    const VERSION: &'static str;
    /// One line on what it does.
    const DESCRIPTION: &'static str;
    /// The hooks it implements: derived by [`crate::hooks`] from the methods
    /// the impl block defines (write it by hand only without the attribute).
    const HOOKS: &'static [Hook];

    /// Injection points it asks for (exact names or globs such as `down.*`).
    fn injection_points() -> Vec<String> {
        Vec::new()
    }

    /// Builds the plugin for the run's denoiser (`model`): validate the config
    /// (errors name the key) and register parameters with [`Host::param`].
    fn new(config: Self::Config, host: &Host, model: &ModelInfo) -> Result<Self, AbiError>;

    /// The injection points this instance injects at: exact names or globs,
    /// resolved against the model after [`Plugin::new`] (a name the model lacks is
    /// an error). Default: [`Plugin::injection_points`].
    fn points(&self) -> Vec<String> {
        Self::injection_points()
    }

    /// `inject`: returns the new activation at `ctx.point`.
    fn inject(&mut self, ctx: &Inject<'_>) -> Result<Tensor, AbiError> {
        Err(not_implemented::<Self>(Hook::Inject, ctx.point))
    }

    /// `loss`: returns named, already weighted scalar terms.
    fn loss(&mut self, ctx: &Loss<'_>) -> Result<Vec<(String, Tensor)>, AbiError> {
        let _ = ctx;
        Err(not_implemented::<Self>(Hook::Loss, ""))
    }

    /// `score`: returns the corrected ε.
    fn score(&mut self, ctx: &Score<'_>) -> Result<Tensor, AbiError> {
        let _ = ctx;
        Err(not_implemented::<Self>(Hook::Score, ""))
    }

    /// `filter`: scores and keep/reject per sample.
    fn filter(&mut self, ctx: &Filter<'_>) -> Result<FilterOutput, AbiError> {
        let _ = ctx;
        Err(not_implemented::<Self>(Hook::Filter, ""))
    }

    /// `prepare`: auxiliary training before the main stages.
    fn prepare(&mut self, ctx: &Prepare<'_>) -> Result<(), AbiError> {
        let _ = ctx;
        Err(not_implemented::<Self>(Hook::Prepare, ""))
    }

    /// The base parameters the `weights` hook re-parameterises: checkpoint
    /// keys or globs over them (`*.to_q.weight`), resolved against the
    /// model after [`Plugin::new`] (one that matches nothing is an error).
    /// Api 0.4.
    fn weight_targets(&self) -> Vec<String> {
        Vec::new()
    }

    /// `weights`: returns `W'` for `ctx.w`, of the same shape (e.g. LoRA's
    /// `W + (α/r)·B·A`). Api 0.4.
    fn weights(&mut self, ctx: &Weights<'_>) -> Result<Tensor, AbiError> {
        Err(not_implemented::<Self>(Hook::Weights, ctx.key))
    }

    /// How the run should train: base parameters that must train (DiffFit's
    /// biases and norms) and groups of this plugin's parameters with their
    /// own learning-rate multiplier and weight decay. Api 0.4.
    fn recipe(&self) -> Recipe {
        Recipe::default()
    }

    /// Non-parameter state for checkpoints.
    fn state_save(&self) -> Result<Vec<u8>, AbiError> {
        Ok(Vec::new())
    }

    /// Restores [`Plugin::state_save`]'s bytes.
    fn state_load(&mut self, state: &[u8]) -> Result<(), AbiError> {
        let _ = state;
        Ok(())
    }
}

fn not_implemented<P: Plugin>(hook: Hook, detail: &str) -> AbiError {
    AbiError::new(
        ErrorKind::UNSUPPORTED,
        format!(
            "plugin `{}` does not implement hook `{hook}`{}{detail}",
            P::NAME,
            if detail.is_empty() { "" } else { " at " }
        ),
    )
}

/// Runs `f`, turning a panic into an error that names the plugin and the hook. A
/// failed tensor op unwinds with an [`AbiError`] payload: that one is returned as
/// it is.
fn guard<P: Plugin, T>(hook: &str, f: impl FnOnce() -> Result<T, AbiError>) -> AbiResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => ROk(v),
        Ok(Err(e)) => RErr(e),
        Err(payload) => {
            if let Some(e) = payload.downcast_ref::<AbiError>() {
                return RErr(e.clone());
            }
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".into());
            RErr(AbiError::new(
                ErrorKind::PANIC,
                format!("plugin `{}` panicked in hook `{hook}`: {msg}", P::NAME),
            ))
        }
    }
}

struct Adapter<P: Plugin> {
    inner: P,
    params: Vec<Param>,
    points: Vec<String>,
    targets: Vec<String>,
    host: Host,
}

impl<P: Plugin> PluginInstance for Adapter<P> {
    fn inject(&mut self, ctx: &abi::InjectCtx<'_>) -> AbiResult<TensorId> {
        guard::<P, _>("inject", || {
            // SAFETY: context handles are valid for the hook call.
            let c = unsafe {
                Inject {
                    point: ctx.point.as_str(),
                    h: TensorRef::from_raw(ctx.h),
                    t: TensorRef::from_raw(ctx.t),
                    temb: TensorRef::from_raw(ctx.temb),
                    cond: opt_ref(ctx.cond),
                    labels: opt_ref(ctx.labels),
                    training: ctx.training,
                }
            };
            self.inner.inject(&c).map(Tensor::into_raw)
        })
    }

    fn loss(&mut self, ctx: &abi::LossCtx) -> AbiResult<RVec<LossTerm>> {
        let host = self.host;
        guard::<P, _>("loss", || {
            // SAFETY: context handles are valid for the hook call.
            let c = unsafe {
                Loss {
                    x0: TensorRef::from_raw(ctx.x0),
                    noise: TensorRef::from_raw(ctx.noise),
                    t: TensorRef::from_raw(ctx.t),
                    x_t: TensorRef::from_raw(ctx.x_t),
                    pred: TensorRef::from_raw(ctx.pred),
                    labels: opt_ref(ctx.labels),
                    step: ctx.step,
                    host: &host,
                }
            };
            let terms = self.inner.loss(&c)?;
            Ok(terms
                .into_iter()
                .map(|(name, t)| LossTerm {
                    name: name.into(),
                    value: t.into_raw(),
                })
                .collect())
        })
    }

    fn score(&mut self, ctx: &abi::ScoreCtx) -> AbiResult<TensorId> {
        let host = self.host;
        guard::<P, _>("score", || {
            // SAFETY: context handles are valid for the hook call.
            let c = unsafe {
                Score {
                    x_t: TensorRef::from_raw(ctx.x_t),
                    t: TensorRef::from_raw(ctx.t),
                    eps: TensorRef::from_raw(ctx.eps),
                    labels: opt_ref(ctx.labels),
                    step_index: ctx.step_index,
                    num_steps: ctx.num_steps,
                    host: &host,
                }
            };
            self.inner.score(&c).map(Tensor::into_raw)
        })
    }

    fn filter(&mut self, ctx: &abi::FilterCtx) -> AbiResult<FilterOutput> {
        let host = self.host;
        guard::<P, _>("filter", || {
            // SAFETY: context handles are valid for the hook call.
            let c = unsafe {
                Filter {
                    samples: TensorRef::from_raw(ctx.samples),
                    labels: opt_ref(ctx.labels),
                    host: &host,
                }
            };
            self.inner.filter(&c)
        })
    }

    fn prepare(&mut self, ctx: &abi::PrepareCtx<'_>) -> AbiResult<()> {
        let host = self.host;
        guard::<P, _>("prepare", || {
            let c = Prepare {
                before: ctx.before.as_str(),
                run_dir: ctx.run_dir.as_str(),
                host: &host,
            };
            self.inner.prepare(&c)
        })
    }

    fn parameters(&self) -> RVec<ParamInfo> {
        self.params
            .iter()
            .map(|p| ParamInfo {
                id: p.id(),
                name: p.name().into(),
                shape: p.shape().to_vec().into(),
            })
            .collect()
    }

    fn points(&self) -> RVec<RString> {
        self.points
            .iter()
            .map(|p| RString::from(p.as_str()))
            .collect()
    }

    fn state_save(&self) -> AbiResult<RVec<u8>> {
        guard::<P, _>("state_save", || self.inner.state_save().map(RVec::from))
    }

    fn state_load(&mut self, state: RSlice<'_, u8>) -> AbiResult<()> {
        guard::<P, _>("state_load", || self.inner.state_load(state.as_slice()))
    }

    fn weights(&mut self, ctx: &abi::WeightsCtx<'_>) -> AbiResult<TensorId> {
        let host = self.host;
        guard::<P, _>("weights", || {
            let c = Weights {
                key: ctx.key.as_str(),
                // SAFETY: context handles are valid for the hook call.
                w: unsafe { TensorRef::from_raw(ctx.w) },
                training: ctx.training,
                host: &host,
            };
            self.inner.weights(&c).map(Tensor::into_raw)
        })
    }

    fn weight_targets(&self) -> RVec<RString> {
        self.targets
            .iter()
            .map(|k| RString::from(k.as_str()))
            .collect()
    }

    fn recipe(&self) -> PluginRecipe {
        let r = self.inner.recipe();
        PluginRecipe {
            train_base: r.train_base.into_iter().map(RString::from).collect(),
            groups: r
                .groups
                .into_iter()
                .map(|g| ParamGroup {
                    name: g.name.into(),
                    params: g.params.iter().map(Param::id).collect(),
                    lr_scale: g.lr_scale,
                    weight_decay: g.weight_decay.into(),
                })
                .collect(),
        }
    }
}

extern "C" fn info<P: Plugin>() -> PluginInfo {
    PluginInfo {
        name: P::NAME.into(),
        version: P::VERSION.into(),
        description: P::DESCRIPTION.into(),
        hooks: P::HOOKS.iter().copied().collect::<HookSet>(),
        injection_points: P::injection_points().into_iter().map(Into::into).collect(),
        config: config::describe::<P::Config>().into(),
    }
}

extern "C" fn init_host(vtables: HostVtables) {
    install(vtables);
}

extern "C" fn new<P: Plugin>(
    config_json: RStr<'_>,
    model: &ModelInfo,
) -> AbiResult<PluginInstanceBox> {
    guard::<P, _>("new", || {
        let config: P::Config = config::parse(config_json.as_str())?;
        let host = Host::get();
        let _ = take_registered();
        let inner = P::new(config, &host, model);
        let params = take_registered();
        let inner = inner?;
        let available: Vec<String> = model.points.iter().map(|p| p.name.to_string()).collect();
        let points = crate::points::resolve(&inner.points(), &available)
            .map_err(|msg| AbiError::new(ErrorKind::CONFIG, msg))?
            .into_iter()
            .cloned()
            .collect();
        let targets = resolve_targets(&inner.weight_targets(), &host)?;
        let adapter = Adapter {
            inner,
            params,
            points,
            targets,
            host,
        };
        Ok(PluginInstance_TO::from_value(adapter, TD_Opaque))
    })
}

/// The base parameters `patterns` select, in the model's order; a pattern
/// that selects none is an error listing what the model has.
fn resolve_targets(patterns: &[String], host: &Host) -> Result<Vec<String>, AbiError> {
    if patterns.is_empty() {
        return Ok(Vec::new());
    }
    let details = host.model_details()?;
    let keys: Vec<&str> = details.parameters.iter().map(|p| p.key.as_str()).collect();
    for p in patterns {
        if !keys.iter().any(|k| crate::points::matches(p, k)) {
            let what = if crate::points::is_glob(p) {
                "matches no base parameter"
            } else {
                "is not a base parameter"
            };
            return Err(AbiError::new(
                ErrorKind::CONFIG,
                format!(
                    "`{p}` {what} of this model (`dtx model inspect` lists its {} parameters)",
                    keys.len()
                ),
            ));
        }
    }
    Ok(keys
        .into_iter()
        .filter(|k| patterns.iter().any(|p| crate::points::matches(p, k)))
        .map(str::to_owned)
        .collect())
}

/// The root module of a plugin crate (used by [`crate::export_plugin!`]; also
/// lets a host register a plugin in-process, for tests).
pub fn root_module<P: Plugin>() -> PluginModuleRef {
    PluginModule {
        info: info::<P>,
        init_host,
        new: new::<P>,
    }
    .leak_into_prefix()
}
