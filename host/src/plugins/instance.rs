//! A constructed plugin and the host side of each hook call: put the context's
//! tensors in the session, name the running plugin, call, take the results back
//! and release the context's handles.

use super::load::PluginLibrary;
use crate::tensor_abi::{Session, Stored};
use abi_stable::std_types::{RNone, ROption, RSome, RStr};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use dtx_plugin_api::abi::{
    AbiError, ErrorKind, FilterCtx, FilterOutput, Hook, InjectCtx, LossCtx, ModelInfo, ParamInfo,
    PluginInstanceBox, PrepareCtx, ScoreCtx, TensorId,
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
    fn float(&mut self, t: &FloatTensor<B>) -> Result<TensorId, AbiError> {
        self.put(Stored::Float(t.clone()))
    }
    fn opt(&mut self, t: Option<&Stored<B>>) -> Result<ROption<TensorId>, AbiError> {
        Ok(match t {
            Some(t) => RSome(self.put(t.clone())?),
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

/// Tensors of an `inject` call.
pub struct InjectArgs<'a, B: AutodiffBackend> {
    /// Injection point.
    pub point: &'a str,
    /// Activation.
    pub h: &'a FloatTensor<B>,
    /// Timesteps.
    pub t: &'a Stored<B>,
    /// Time embedding.
    pub temb: &'a FloatTensor<B>,
    /// Condition embedding.
    pub cond: Option<&'a FloatTensor<B>>,
    /// Labels.
    pub labels: Option<&'a IntTensor<B>>,
    /// Training forward?
    pub training: bool,
}

/// Tensors of a `loss` call.
pub struct LossArgs<'a, B: AutodiffBackend> {
    /// Clean batch.
    pub x0: &'a FloatTensor<B>,
    /// Noise.
    pub noise: &'a FloatTensor<B>,
    /// Timesteps.
    pub t: &'a Stored<B>,
    /// Noised batch.
    pub x_t: &'a FloatTensor<B>,
    /// Student prediction.
    pub pred: &'a FloatTensor<B>,
    /// Labels.
    pub labels: Option<&'a IntTensor<B>>,
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
        Ok(Instance {
            name: name.to_owned(),
            library,
            inner,
            points,
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

    /// Whether the plugin declares `hook`.
    pub fn implements(&self, hook: Hook) -> bool {
        self.library.description.hooks.contains(hook)
    }

    /// The injection points it injects at (exact names).
    pub fn points(&self) -> &[String] {
        &self.points
    }

    /// The parameters it registered.
    pub fn parameters(&self) -> Vec<ParamInfo> {
        self.inner.parameters().into_vec()
    }

    /// `inject`: the new activation.
    pub fn inject(&mut self, a: InjectArgs<'_, B>) -> Result<FloatTensor<B>, HookError> {
        let fail = self.fail(Hook::Inject);
        let mut run = || -> Result<TensorId, AbiError> {
            let mut c = Ctx::<B>::new();
            let ctx = InjectCtx {
                point: RStr::from(a.point),
                h: c.float(a.h)?,
                t: c.put(a.t.clone())?,
                temb: c.float(a.temb)?,
                cond: c.opt(a.cond.map(|x| Stored::Float(x.clone())).as_ref())?,
                labels: c.opt(a.labels.map(|x| Stored::Int(x.clone())).as_ref())?,
                training: a.training,
            };
            let _running = Running::<B>::start(&self.name);
            self.inner.inject(&ctx).into_result()
        };
        let id = run().map_err(&fail)?;
        take_float::<B>(id).map_err(fail)
    }

    /// `loss`: the named terms (names prefixed `<plugin>.`).
    pub fn loss(&mut self, a: LossArgs<'_, B>) -> Result<Vec<(String, FloatTensor<B>)>, HookError> {
        let mut c = Ctx::<B>::new();
        let mut build = || -> Result<LossCtx, AbiError> {
            Ok(LossCtx {
                x0: c.float(a.x0)?,
                noise: c.float(a.noise)?,
                t: c.put(a.t.clone())?,
                x_t: c.float(a.x_t)?,
                pred: c.float(a.pred)?,
                labels: c.opt(a.labels.map(|x| Stored::Int(x.clone())).as_ref())?,
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
            match take_float::<B>(term.value) {
                Ok(t) => out.push((format!("{}.{}", self.name, term.name), t)),
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        match first_err {
            Some(e) => Err(self.fail(Hook::Loss)(e)),
            None => Ok(out),
        }
    }

    /// `score`: the corrected ε.
    pub fn score(
        &mut self,
        x_t: &FloatTensor<B>,
        t: &Stored<B>,
        eps: &FloatTensor<B>,
        labels: Option<&IntTensor<B>>,
        step_index: u64,
        num_steps: u64,
    ) -> Result<FloatTensor<B>, HookError> {
        let fail = self.fail(Hook::Score);
        let mut run = || -> Result<FloatTensor<B>, AbiError> {
            let mut c = Ctx::<B>::new();
            let ctx = ScoreCtx {
                x_t: c.float(x_t)?,
                t: c.put(t.clone())?,
                eps: c.float(eps)?,
                labels: c.opt(labels.map(|x| Stored::Int(x.clone())).as_ref())?,
                step_index,
                num_steps,
            };
            let id = {
                let _running = Running::<B>::start(&self.name);
                self.inner.score(&ctx).into_result()?
            };
            take_float::<B>(id)
        };
        run().map_err(fail)
    }

    /// `filter`: scores and decisions, checked to have one entry per sample.
    pub fn filter(
        &mut self,
        samples: &FloatTensor<B>,
        labels: Option<&IntTensor<B>>,
    ) -> Result<FilterOutput, HookError> {
        use burn::tensor::TensorMetadata;
        let n = samples.shape().to_vec().first().copied().unwrap_or(0);
        let fail = self.fail(Hook::Filter);
        let mut run = || -> Result<FilterOutput, AbiError> {
            let mut c = Ctx::<B>::new();
            let ctx = FilterCtx {
                samples: c.float(samples)?,
                labels: c.opt(labels.map(|x| Stored::Int(x.clone())).as_ref())?,
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
