//! [`Host`]: the services the host offers a plugin, and [`Param`]: a trainable
//! parameter the host owns.

use crate::abi::{AbiError, ParamId, ParamInit, Which};
use crate::tensor::{Tensor, check, vtables};
use abi_stable::std_types::{RNone, ROption, RSome, RStr};
use std::cell::RefCell;

thread_local! {
    /// Parameters registered while a plugin is being constructed, so the adapter
    /// can list them without the author doing so.
    static REGISTERED: RefCell<Vec<Param>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn take_registered() -> Vec<Param> {
    REGISTERED.with(|r| std::mem::take(&mut *r.borrow_mut()))
}

/// A trainable parameter. The host owns its value: it trains it (plugin
/// parameters always train), keeps its EMA and saves it in checkpoints as
/// `plugin.<plugin>.<name>`.
#[derive(Debug, Clone)]
pub struct Param {
    id: ParamId,
    name: String,
    shape: Vec<usize>,
    detached: bool,
}

impl Param {
    /// The current value; operations on it are tracked for the host's
    /// optimizer (unless this handle is [`Param::detached`]).
    pub fn value(&self) -> Tensor {
        let id = check((vtables().services.param_value())(self.id));
        // SAFETY: the host hands out a fresh owned handle.
        let v = unsafe { Tensor::from_raw(id) };
        if self.detached { v.detach() } else { v }
    }

    /// A handle to the same parameter whose [`Param::value`] is detached:
    /// computations with it record no autodiff graph. Use it to *evaluate*
    /// a trained network (a frozen classifier's targets, a guidance term at
    /// sampling): tracked values that never reach a backward leave graph
    /// nodes behind, and the autodiff graph grows with every call.
    pub fn detached(&self) -> Param {
        Param {
            detached: true,
            ..self.clone()
        }
    }
    /// The name the plugin gave it.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// The host's id.
    pub fn id(&self) -> ParamId {
        self.id
    }
}

/// The host's services. A zero-sized handle: copy it freely.
#[derive(Debug, Clone, Copy, Default)]
pub struct Host {
    _private: (),
}

impl Host {
    /// The host, once its vtables are installed (always true inside a plugin).
    pub fn get() -> Host {
        let _ = vtables();
        Host { _private: () }
    }

    /// The host's version.
    pub fn version(&self) -> String {
        (vtables().services.host_version())().into()
    }

    /// Registers a trainable parameter named `name` (unique within the plugin).
    pub fn param(&self, name: &str, shape: &[usize], init: ParamInit) -> Result<Param, AbiError> {
        let id =
            (vtables().services.param_new())(RStr::from(name), shape.into(), init).into_result()?;
        let p = Param {
            id,
            name: name.to_owned(),
            shape: shape.to_vec(),
            detached: false,
        };
        REGISTERED.with(|r| r.borrow_mut().push(p.clone()));
        Ok(p)
    }

    /// The root of the plugin's parameter names: `host.scope().pp("attn").pp(0)`
    /// registers parameters as `attn.0.<name>`.
    pub fn scope(&self) -> Scope {
        Scope {
            host: *self,
            prefix: String::new(),
        }
    }

    /// Logs a scalar as `<plugin>.<name>` at the current step.
    pub fn log_scalar(&self, name: &str, value: f64) {
        (vtables().services.log_scalar())(RStr::from(name), value)
    }

    /// Runs a denoiser and returns its ε prediction.
    pub fn denoise(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        which: Which,
        labels: Option<&Tensor>,
    ) -> Result<Tensor, AbiError> {
        let labels = match labels {
            Some(l) => RSome(l.id()),
            None => RNone,
        };
        let id = (vtables().services.denoise())(x_t.id(), t.id(), which, labels).into_result()?;
        // SAFETY: owned handle from the host.
        Ok(unsafe { Tensor::from_raw(id) })
    }

    /// Activations of a denoiser at named injection points.
    pub fn features(
        &self,
        x: &Tensor,
        t: &Tensor,
        points: &[&str],
        which: Which,
    ) -> Result<Vec<Tensor>, AbiError> {
        let points: Vec<RStr<'_>> = points.iter().map(|p| RStr::from(*p)).collect();
        let ids = (vtables().services.features())(x.id(), t.id(), points.as_slice().into(), which)
            .into_result()?;
        // SAFETY: owned handles from the host.
        Ok(ids
            .into_iter()
            .map(|id| unsafe { Tensor::from_raw(id) })
            .collect())
    }

    /// [`Host::features`] with class `labels` `[B]`: a class-conditional
    /// model's features for those classes, and the labels every plugin's
    /// `inject` sees in that forward. Since 0.4.
    pub fn features_labelled(
        &self,
        x: &Tensor,
        t: &Tensor,
        points: &[&str],
        which: Which,
        labels: Option<&Tensor>,
    ) -> Result<Vec<Tensor>, AbiError> {
        let f = vtables()
            .services
            .features_labelled()
            .ok_or_else(|| older_host("features_labelled"))?;
        let points: Vec<RStr<'_>> = points.iter().map(|p| RStr::from(*p)).collect();
        let labels = match labels {
            Some(l) => RSome(l.id()),
            None => RNone,
        };
        let ids = f(x.id(), t.id(), points.as_slice().into(), which, labels).into_result()?;
        // SAFETY: owned handles from the host.
        Ok(ids
            .into_iter()
            .map(|id| unsafe { Tensor::from_raw(id) })
            .collect())
    }

    /// `ᾱ_t` of the run's noise schedule at integer timesteps `t`.
    pub fn alpha_bar(&self, t: &Tensor) -> Result<Tensor, AbiError> {
        let id = (vtables().services.alpha_bar())(t.id()).into_result()?;
        // SAFETY: owned handle from the host.
        Ok(unsafe { Tensor::from_raw(id) })
    }

    /// The next batch of a dataset split (`source`, `target`, `validation`):
    /// samples and, when the set has them, labels.
    pub fn dataset_batch(
        &self,
        split: &str,
        batch: usize,
    ) -> Result<(Tensor, Option<Tensor>), AbiError> {
        let b = (vtables().services.dataset_batch())(RStr::from(split), batch).into_result()?;
        // SAFETY: owned handles from the host.
        let x = unsafe { Tensor::from_raw(b.x) };
        let labels: Option<_> = b.labels.into_option();
        Ok((x, labels.map(|id| unsafe { Tensor::from_raw(id) })))
    }

    /// T, the number of timesteps of the run's noise schedule (`t` in `0..T`).
    pub fn num_timesteps(&self) -> Result<usize, AbiError> {
        let f = vtables()
            .services
            .num_timesteps()
            .ok_or_else(|| older_host("num_timesteps"))?;
        f().into_result()
    }

    /// `count` samples `[count, …]` of the frozen source model alone (no
    /// plugin hooks) with the run's sampler; `labels` `[count]` for a
    /// class-conditional source. Samples cost a full sampler run each: draw
    /// them once (in `prepare`) and reuse them.
    pub fn sample_source(&self, count: usize, labels: Option<&Tensor>) -> Result<Tensor, AbiError> {
        let f = vtables()
            .services
            .sample_source()
            .ok_or_else(|| older_host("sample_source"))?;
        let labels = match labels {
            Some(l) => RSome(l.id()),
            None => RNone,
        };
        let id = f(count, labels).into_result()?;
        // SAFETY: owned handle from the host.
        Ok(unsafe { Tensor::from_raw(id) })
    }

    /// `(N, D_c)`: the shape of one condition embedding of the run's
    /// `[condition]` encoder (`N` tokens of width `D_c`), `None` when the run
    /// has no encoder. Known while the plugin is constructed, so modules can
    /// be sized in [`crate::Plugin::new`]. Since 0.3.
    pub fn condition_shape(&self) -> Result<Option<(usize, usize)>, AbiError> {
        let f = vtables()
            .services
            .condition_shape()
            .ok_or_else(|| older_host("condition_shape"))?;
        let s = f().into_result()?;
        Ok(match s.as_slice() {
            [n, d] => Some((*n, *d)),
            _ => None,
        })
    }

    /// Condition embeddings `[B, N, D_c]` of images `x` `[B, C, H, W]` in
    /// data space ([−1, 1]) with the run's `[condition]` encoder (frozen, no
    /// gradient). Since 0.3.
    pub fn encode_image(&self, x: &Tensor) -> Result<Tensor, AbiError> {
        let f = vtables()
            .services
            .encode_image()
            .ok_or_else(|| older_host("encode_image"))?;
        let id = f(x.id()).into_result()?;
        // SAFETY: owned handle from the host.
        Ok(unsafe { Tensor::from_raw(id) })
    }

    /// The condition embedding `[1, N, D_c]` of a text prompt, through the
    /// CLIP text tower of a `[condition] encoder = "clip"` run. Since 0.3.
    pub fn encode_text(&self, prompt: &str) -> Result<Tensor, AbiError> {
        let f = vtables()
            .services
            .encode_text()
            .ok_or_else(|| older_host("encode_text"))?;
        let id = f(RStr::from(prompt)).into_result()?;
        // SAFETY: owned handle from the host.
        Ok(unsafe { Tensor::from_raw(id) })
    }

    /// The run's denoiser beyond [`crate::ModelInfo`]: its prediction type,
    /// class count, data shape and every base parameter with its key, shape,
    /// role and block (the catalogue `dtx model inspect` prints). Known while
    /// the plugin is constructed. Since 0.4.
    pub fn model_details(&self) -> Result<crate::abi::ModelDetails, AbiError> {
        let f = vtables()
            .services
            .model_details()
            .ok_or_else(|| older_host("model_details"))?;
        f().into_result()
    }

    /// An input of the running hook beyond its context, by name (`None`
    /// when the hook has none of that name). Later minor versions add hook
    /// inputs here; api 0.4 defines none. Since 0.4.
    pub fn hook_input(&self, name: &str) -> Result<Option<Tensor>, AbiError> {
        let f = vtables()
            .services
            .hook_input()
            .ok_or_else(|| older_host("hook_input"))?;
        let id = f(RStr::from(name)).into_result()?;
        // SAFETY: owned handle from the host.
        Ok(id.into_option().map(|id| unsafe { Tensor::from_raw(id) }))
    }

    /// One optimizer step on `params` for the scalar `loss` (for `prepare`).
    pub fn optimizer_step(&self, params: &[&Param], loss: Tensor, lr: f32) -> Result<(), AbiError> {
        let ids: Vec<ParamId> = params.iter().map(|p| p.id).collect();
        (vtables().services.optimizer_step())(ids.as_slice().into(), loss.id(), lr).into_result()
    }
}

/// The error for a service an older host does not offer.
fn older_host(service: &str) -> AbiError {
    let since = match service {
        "num_timesteps" | "sample_source" => "0.2",
        "model_details" | "hook_input" | "features_labelled" => "0.4",
        _ => "0.3",
    };
    AbiError::new(
        crate::abi::ErrorKind::UNSUPPORTED,
        format!(
            "host service `{service}` needs a dtx host built against dtx-plugin-api {since} or later"
        ),
    )
}

/// An optional handle, for hook contexts.
pub(crate) fn opt_ref(id: ROption<crate::abi::TensorId>) -> Option<crate::TensorRef> {
    // SAFETY: context handles stay valid for the duration of the hook.
    id.into_option()
        .map(|id| unsafe { crate::TensorRef::from_raw(id) })
}

/// Where parameters are registered: a prefix for their names, built one
/// segment at a time ([`Scope::pp`], as candle's `VarBuilder::pp`), so no
/// name is spelled with `format!`. Every [`crate::nn`] block's `init` takes
/// one.
///
/// ```no_run
/// # use dtx_plugin_api::prelude::*;
/// # fn f(host: &Host) -> Result<(), AbiError> {
/// let layer = host.scope().pp("adapters").pp(3);
/// let w = layer.param("weight", &[4, 4], ParamInit::zeros())?; // "adapters.3.weight"
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Scope {
    host: Host,
    prefix: String,
}

impl Scope {
    /// The scope one segment deeper: `<prefix>.<segment>` (or `<segment>`
    /// at the root).
    pub fn pp(&self, segment: impl std::fmt::Display) -> Scope {
        Scope {
            host: self.host,
            prefix: self.name(segment),
        }
    }

    /// The full name of `leaf` in this scope.
    pub fn name(&self, leaf: impl std::fmt::Display) -> String {
        if self.prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.prefix)
        }
    }

    /// This scope's prefix (empty at the root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The host.
    pub fn host(&self) -> Host {
        self.host
    }

    /// Registers the trainable parameter `<prefix>.<name>` (see [`Host::param`]).
    pub fn param(&self, name: &str, shape: &[usize], init: ParamInit) -> Result<Param, AbiError> {
        self.host.param(&self.name(name), shape, init)
    }
}
