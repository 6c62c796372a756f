//! A constructed plugin and the host side of each hook call: put the context's
//! tensors in the session, name the running plugin, call, take the results back
//! and release the context's handles.
//!
//! The calls take and give burn tensors at their rank; the rank-free
//! primitive the ABI's handles hold is met here and nowhere above. Every
//! value a plugin hands back is checked before the host uses it: `inject`
//! returns `h`'s shape and dtype, `score` ε's, each `loss` term is a scalar
//! and `filter` decides once per sample. A violation is a [`HookError`]
//! naming the plugin, the hook, the point or term, and both shapes.

use super::load::PluginLibrary;
use crate::tensor_abi::{Labels, Session, Stored};
use abi_stable::std_types::{RNone, ROption, RSome, RStr};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorMetadata, TensorPrimitive};
use dtx_plugin_api::abi::{
    AbiError, ErrorKind, FilterCtx, FilterOutput, Hook, HookSet, InjectCtx, LossCtx, ModelInfo,
    ParamInfo, PluginInstanceBox, PluginRecipe, PrepareCtx, ScoreCtx, TensorId, WeightsCtx,
};
use std::marker::PhantomData;
use std::sync::Arc;
use thiserror::Error;

/// An error from a plugin's hook (or constructor), with the plugin and hook named.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("{}", render(.plugin, .hook, .error))]
pub struct HookError {
    /// The plugin's name in the manifest.
    pub plugin: String,
    /// The hook (`inject`, …, or `new` for the constructor).
    pub hook: String,
    /// What the plugin or the host said.
    pub error: AbiError,
}

fn render(plugin: &str, hook: &str, e: &AbiError) -> String {
    if e.kind == ErrorKind::PANIC {
        // The plugin's adapter already named plugin and hook.
        return e.message.to_string();
    }
    format!("plugin `{plugin}` failed in hook `{hook}`: {e}")
}

/// A plugin instance bound to a session of backend `B`.
pub struct Instance<B: AutodiffBackend> {
    /// The name it runs under (the manifest's `[[plugin]] name`).
    pub name: String,
    /// Its library.
    pub library: Arc<PluginLibrary>,
    inner: PluginInstanceBox,
    /// Its injection points, read once at construction (they are fixed then,
    /// and the forward asks at every point of every step).
    points: Vec<String>,
    /// The base weights its `weights` hook re-parameterises (api 0.4),
    /// read once at construction.
    weight_targets: Vec<String>,
    /// The hooks the run binds (the manifest's `hooks`, else every hook
    /// the plugin implements).
    bound: HookSet,
    _backend: PhantomData<fn() -> B>,
}

/// Sets the session's running plugin for the duration of a call, and puts
/// back the one before it on drop (a hook may call a host service that runs
/// other plugins' hooks: `denoise(student)` runs their `inject`).
struct Running<B: AutodiffBackend> {
    previous: Option<String>,
    _b: PhantomData<B>,
}

impl<B: AutodiffBackend> Running<B> {
    fn start(name: &str) -> Self {
        let previous = Session::<B>::with(|s| s.current_plugin.replace(name.to_owned()))
            .ok()
            .flatten();
        Running {
            previous,
            _b: PhantomData,
        }
    }
}

impl<B: AutodiffBackend> Drop for Running<B> {
    fn drop(&mut self) {
        let previous = self.previous.take();
        let _ = Session::<B>::with(|s| s.current_plugin = previous);
    }
}

/// Handles put in the session for one hook call, released when dropped.
struct Ctx<B: AutodiffBackend> {
    ids: Vec<TensorId>,
    _b: PhantomData<B>,
}

impl<B: AutodiffBackend> Ctx<B> {
    fn new() -> Self {
        Ctx {
            ids: Vec::new(),
            _b: PhantomData,
        }
    }
    fn put(&mut self, t: Stored<B>) -> Result<TensorId, AbiError> {
        let id = Session::<B>::with(|s| s.insert(t))?;
        self.ids.push(id);
        Ok(id)
    }
    fn float<const D: usize>(&mut self, t: &Tensor<B, D>) -> Result<TensorId, AbiError> {
        self.put(Stored::Float(t.clone().into_primitive().tensor()))
    }
    fn labels(&mut self, l: Option<&Labels<B>>) -> Result<ROption<TensorId>, AbiError> {
        Ok(match l {
            Some(l) => RSome(self.put(l.stored())?),
            None => RNone,
        })
    }
    fn cond(&mut self, c: Option<&Tensor<B, 3>>) -> Result<ROption<TensorId>, AbiError> {
        Ok(match c {
            Some(c) => RSome(self.float(c)?),
            None => RNone,
        })
    }
}

impl<B: AutodiffBackend> Drop for Ctx<B> {
    fn drop(&mut self) {
        let _ = Session::<B>::with(|s| {
            for id in self.ids.drain(..) {
                s.remove(id);
            }
        });
    }
}

/// Takes ownership of a float tensor a plugin returned.
fn take_float<B: AutodiffBackend>(id: TensorId) -> Result<FloatTensor<B>, AbiError> {
    Session::<B>::with(|s| match s.remove(id) {
        Some(Stored::Float(t)) => Ok(t),
        Some(other) => Err(AbiError::new(
            ErrorKind::SHAPE,
            format!(
                "expected a float tensor back, got a {} tensor",
                other.dtype()
            ),
        )),
        None => Err(AbiError::new(
            ErrorKind::HANDLE,
            "the plugin returned a released tensor handle",
        )),
    })?
}

/// Takes a float tensor a plugin returned in place of `like`: it must have
/// `like`'s shape and dtype; `what` says what was returned (for the error).
fn take_like<B: AutodiffBackend, const D: usize>(
    id: TensorId,
    like: &Tensor<B, D>,
    what: impl Fn() -> String,
) -> Result<Tensor<B, D>, AbiError> {
    let like = like.clone().into_primitive().tensor();
    let p = take_float_like::<B>(id, &like, what)?;
    Ok(Tensor::from_primitive(TensorPrimitive::Float(p)))
}

/// [`take_like`] at any rank: the returned tensor must have `like`'s shape
/// and dtype (a `weights` return, whose rank is its layer's).
fn take_float_like<B: AutodiffBackend>(
    id: TensorId,
    like: &FloatTensor<B>,
    what: impl Fn() -> String,
) -> Result<FloatTensor<B>, AbiError> {
    let p = take_float::<B>(id)?;
    let (found, want) = (p.shape().to_vec(), like.shape().to_vec());
    if found != want {
        return Err(AbiError::new(
            ErrorKind::SHAPE,
            format!("{} has shape {found:?}; expected {want:?}", what()),
        ));
    }
    let (found, want) = (p.dtype(), like.dtype());
    if found != want {
        return Err(AbiError::new(
            ErrorKind::SHAPE,
            format!("{} has dtype {found:?}; expected {want:?}", what()),
        ));
    }
    Ok(p)
}

/// Takes a loss term a plugin returned: one element, given as `[1]`.
fn take_scalar<B: AutodiffBackend>(id: TensorId, term: &str) -> Result<Tensor<B, 1>, AbiError> {
    let p = take_float::<B>(id)?;
    let shape = p.shape().to_vec();
    if shape.iter().product::<usize>() != 1 {
        return Err(AbiError::new(
            ErrorKind::SHAPE,
            format!(
                "loss term `{term}` has shape {shape:?}; a loss term must be a scalar \
                 (shape [] or [1]: reduce it, e.g. with mean)"
            ),
        ));
    }
    Ok(Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(p)).reshape([1]))
}

/// Tensors of an `inject` call at a point whose activation has rank `D`.
pub struct InjectArgs<'a, B: AutodiffBackend, const D: usize> {
    /// Injection point.
    pub point: &'a str,
    /// Activation.
    pub h: &'a Tensor<B, D>,
    /// Timesteps.
    pub t: &'a Tensor<B, 1>,
    /// Time embedding.
    pub temb: &'a Tensor<B, 2>,
    /// Condition embedding `[N, L, E]`.
    pub cond: Option<&'a Tensor<B, 3>>,
    /// Labels.
    pub labels: Option<&'a Labels<B>>,
    /// Training forward?
    pub training: bool,
}

/// Tensors of a `loss` call on data of rank `D`.
pub struct LossArgs<'a, B: AutodiffBackend, const D: usize> {
    /// Clean batch.
    pub x0: &'a Tensor<B, D>,
    /// Noise.
    pub noise: &'a Tensor<B, D>,
    /// Timesteps.
    pub t: &'a Tensor<B, 1>,
    /// Noised batch.
    pub x_t: &'a Tensor<B, D>,
    /// Student prediction.
    pub pred: &'a Tensor<B, D>,
    /// Labels.
    pub labels: Option<&'a Labels<B>>,
    /// Step.
    pub step: u64,
}

impl<B: AutodiffBackend> Instance<B> {
    /// Builds an instance from `library` with its config (JSON text) for the
    /// model `model`, named `name`. Parameters it registers are named
    /// `plugin.<name>.<param>`.
    pub fn new(
        name: &str,
        library: Arc<PluginLibrary>,
        config_json: &str,
        model: &ModelInfo,
    ) -> Result<Self, HookError> {
        let err = |error| HookError {
            plugin: name.to_owned(),
            hook: "new".into(),
            error,
        };
        let _running = Running::<B>::start(name);
        let inner = (library.module.new())(RStr::from(config_json), model)
            .into_result()
            .map_err(err)?;
        let points = inner
            .points()
            .into_iter()
            .map(|p| p.into_string())
            .collect();
        let weight_targets = if library.description.hooks.contains(Hook::Weights) {
            inner
                .weight_targets()
                .into_iter()
                .map(|k| k.into_string())
                .collect()
        } else {
            Vec::new()
        };
        let bound = library.description.hooks;
        Ok(Instance {
            name: name.to_owned(),
            library,
            inner,
            points,
            weight_targets,
            bound,
            _backend: PhantomData,
        })
    }

    fn fail(&self, hook: Hook) -> impl Fn(AbiError) -> HookError + use<B> {
        let plugin = self.name.clone();
        move |error| HookError {
            plugin: plugin.clone(),
            hook: hook.name().into(),
            error,
        }
    }

    /// Binds only `hooks` (the manifest's `[[plugin]] hooks`), among those
    /// the plugin implements.
    pub fn bind(&mut self, hooks: &[Hook]) {
        self.bound = hooks
            .iter()
            .copied()
            .filter(|h| self.library.description.hooks.contains(*h))
            .collect();
    }

    /// Whether the run calls `hook` of this plugin: it implements it and the
    /// manifest binds it.
    pub fn implements(&self, hook: Hook) -> bool {
        self.bound.contains(hook)
    }

    /// The injection points it injects at (exact names).
    pub fn points(&self) -> &[String] {
        &self.points
    }

    /// The parameters it registered.
    pub fn parameters(&self) -> Vec<ParamInfo> {
        self.inner.parameters().into_vec()
    }

    /// The base weights its `weights` hook re-parameterises (checkpoint
    /// keys; empty without the hook).
    pub fn weight_targets(&self) -> &[String] {
        &self.weight_targets
    }

    /// How it wants the run to train (api 0.4; a 0.3 plugin asks nothing).
    pub fn recipe(&self) -> PluginRecipe {
        let _running = Running::<B>::start(&self.name);
        self.inner.recipe()
    }

    /// `weights`: `W'` for the base weight `key`, checked to have `w`'s
    /// shape and dtype. Rank-free: a weight's rank is its layer's.
    pub fn weights(
        &mut self,
        key: &str,
        w: &FloatTensor<B>,
        training: bool,
    ) -> Result<FloatTensor<B>, HookError> {
        let fail = self.fail(Hook::Weights);
        let mut run = || -> Result<FloatTensor<B>, AbiError> {
            let mut c = Ctx::<B>::new();
            let ctx = WeightsCtx {
                key: RStr::from(key),
                w: c.put(Stored::Float(w.clone()))?,
                training,
            };
            let id = {
                let _running = Running::<B>::start(&self.name);
                self.inner.weights(&ctx).into_result()?
            };
            take_float_like::<B>(id, w, || format!("the weight returned for `{key}`"))
        };
        run().map_err(fail)
    }

    /// `inject`: the new activation, checked to have `h`'s shape and dtype.
    pub fn inject<const D: usize>(
        &mut self,
        a: InjectArgs<'_, B, D>,
    ) -> Result<Tensor<B, D>, HookError> {
        let fail = self.fail(Hook::Inject);
        let mut run = || -> Result<TensorId, AbiError> {
            let mut c = Ctx::<B>::new();
            let ctx = InjectCtx {
                point: RStr::from(a.point),
                h: c.float(a.h)?,
                t: c.float(a.t)?,
                temb: c.float(a.temb)?,
                cond: c.cond(a.cond)?,
                labels: c.labels(a.labels)?,
                training: a.training,
            };
            let _running = Running::<B>::start(&self.name);
            self.inner.inject(&ctx).into_result()
        };
        let id = run().map_err(&fail)?;
        take_like(id, a.h, || {
            format!("the activation returned at point `{}`", a.point)
        })
        .map_err(fail)
    }

    /// `loss`: the named terms (names prefixed `<plugin>.`), each checked to
    /// be a scalar and given as `[1]`.
    pub fn loss<const D: usize>(
        &mut self,
        a: LossArgs<'_, B, D>,
    ) -> Result<Vec<(String, Tensor<B, 1>)>, HookError> {
        let mut c = Ctx::<B>::new();
        let mut build = || -> Result<LossCtx, AbiError> {
            Ok(LossCtx {
                x0: c.float(a.x0)?,
                noise: c.float(a.noise)?,
                t: c.float(a.t)?,
                x_t: c.float(a.x_t)?,
                pred: c.float(a.pred)?,
                labels: c.labels(a.labels)?,
                step: a.step,
            })
        };
        let ctx = build().map_err(self.fail(Hook::Loss))?;
        let terms = {
            let _running = Running::<B>::start(&self.name);
            self.inner
                .loss(&ctx)
                .into_result()
                .map_err(self.fail(Hook::Loss))?
        };
        drop(c);
        let mut out = Vec::with_capacity(terms.len());
        let mut first_err = None;
        for term in terms {
            // Take every returned handle, even after an error, so none leaks.
            match take_scalar::<B>(term.value, &term.name) {
                Ok(t) => out.push((format!("{}.{}", self.name, term.name), t)),
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        match first_err {
            Some(e) => Err(self.fail(Hook::Loss)(e)),
            None => Ok(out),
        }
    }

    /// `score`: the corrected ε, checked to have `eps`'s shape and dtype.
    pub fn score<const D: usize>(
        &mut self,
        x_t: &Tensor<B, D>,
        t: &Tensor<B, 1>,
        eps: &Tensor<B, D>,
        labels: Option<&Labels<B>>,
        step_index: u64,
        num_steps: u64,
    ) -> Result<Tensor<B, D>, HookError> {
        let fail = self.fail(Hook::Score);
        let mut run = || -> Result<Tensor<B, D>, AbiError> {
            let mut c = Ctx::<B>::new();
            let ctx = ScoreCtx {
                x_t: c.float(x_t)?,
                t: c.float(t)?,
                eps: c.float(eps)?,
                labels: c.labels(labels)?,
                step_index,
                num_steps,
            };
            let id = {
                let _running = Running::<B>::start(&self.name);
                self.inner.score(&ctx).into_result()?
            };
            take_like(id, eps, || "the returned ε".to_owned())
        };
        run().map_err(fail)
    }

    /// `filter`: scores and decisions, checked to have one entry per sample.
    pub fn filter<const D: usize>(
        &mut self,
        samples: &Tensor<B, D>,
        labels: Option<&Labels<B>>,
    ) -> Result<FilterOutput, HookError> {
        let n = samples.dims()[0];
        let fail = self.fail(Hook::Filter);
        let mut run = || -> Result<FilterOutput, AbiError> {
            let mut c = Ctx::<B>::new();
            let ctx = FilterCtx {
                samples: c.float(samples)?,
                labels: c.labels(labels)?,
            };
            let _running = Running::<B>::start(&self.name);
            let out = self.inner.filter(&ctx).into_result()?;
            if out.keep.len() != n || out.scores.len() != n {
                return Err(AbiError::new(
                    ErrorKind::SHAPE,
                    format!(
                        "filter returned {} scores and {} decisions for {n} samples",
                        out.scores.len(),
                        out.keep.len()
                    ),
                ));
            }
            Ok(out)
        };
        run().map_err(fail)
    }

    /// `prepare`.
    pub fn prepare(&mut self, before: &str, run_dir: &str) -> Result<(), HookError> {
        let ctx = PrepareCtx {
            before: RStr::from(before),
            run_dir: RStr::from(run_dir),
        };
        let _running = Running::<B>::start(&self.name);
        self.inner
            .prepare(&ctx)
            .into_result()
            .map_err(self.fail(Hook::Prepare))
    }

    /// Non-parameter state for a checkpoint.
    pub fn state_save(&self) -> Result<Vec<u8>, HookError> {
        let _running = Running::<B>::start(&self.name);
        self.inner
            .state_save()
            .into_result()
            .map(|v| v.into_vec())
            .map_err(|error| HookError {
                plugin: self.name.clone(),
                hook: "state_save".into(),
                error,
            })
    }

    /// Restores state from a checkpoint.
    pub fn state_load(&mut self, state: &[u8]) -> Result<(), HookError> {
        let _running = Running::<B>::start(&self.name);
        self.inner
            .state_load(state.into())
            .into_result()
            .map_err(|error| HookError {
                plugin: self.name.clone(),
                hook: "state_load".into(),
                error,
            })
    }
}
