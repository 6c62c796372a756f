//! The host side of [`HostServices`]: parameters, logging, and the run's
//! denoiser, data and schedule, which the engine plugs in through
//! [`RunServices`].

use super::params::ParamStore;
use super::session::{Session, Stored};
use super::typed::{Labels, Ranked, classes_at, float_at, timesteps};
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::{RNone, ROption, RSlice, RStr, RString, RVec};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType as BurnDType, Int, Tensor, TensorData};
use dtx_plugin_api::abi::{
    AbiError, AbiResult, DataBatch, ErrorKind, HostServices, HostServicesRef, ModelDetails,
    ParamId, ParamInit, TensorId, Which,
};
use rand_distr::{Distribution as _, Normal, Uniform};
use std::cell::RefCell;
use std::rc::Rc;

/// A denoiser the host exposes to plugins (`denoise` and `features`).
pub trait DenoiseService<B: AutodiffBackend> {
    /// ε prediction of `which` for `x_t` at timesteps `t` `[N]`, at
    /// `x_t`'s rank.
    fn denoise(
        &self,
        x_t: Ranked<B>,
        t: Tensor<B, 1>,
        which: Which,
        labels: Option<Tensor<B, 1, Int>>,
    ) -> Result<Ranked<B>, AbiError>;

    /// Activations of `which` at `points` for input `x` at timesteps `t`,
    /// with class `labels` `[N]` for a class-conditional model (and the
    /// plugins' `inject`s that read labels).
    fn features(
        &self,
        x: Ranked<B>,
        t: Tensor<B, 1>,
        points: &[String],
        which: Which,
        labels: Option<Tensor<B, 1, Int>>,
    ) -> Result<Vec<Ranked<B>>, AbiError>;
}

/// Samples of the frozen source model (`sample_source`).
pub trait SampleService<B: AutodiffBackend> {
    /// `count` samples of the source alone, with `labels` `[count]` for a
    /// class-conditional model.
    fn sample_source(
        &self,
        count: usize,
        labels: Option<Tensor<B, 1, Int>>,
    ) -> Result<Ranked<B>, AbiError>;
}

/// The run's condition encoder (`encode_image`, `encode_text`).
pub trait ConditionService<B: AutodiffBackend> {
    /// Embeddings `[B, N, D_c]` of images `[B, C, H, W]` in data space.
    fn encode_image(&self, x: Tensor<B, 4>) -> Result<Tensor<B, 3>, AbiError>;
    /// The embedding `[1, N, D_c]` of a text prompt.
    fn encode_text(&self, prompt: &str) -> Result<Tensor<B, 3>, AbiError>;
}

/// Datasets the host exposes to plugins (`dataset_batch`).
pub trait DataService<B: AutodiffBackend> {
    /// The next `batch` samples of `split`, with labels when the set has
    /// them (masks for a `<split>:masks` split).
    fn batch(
        &mut self,
        split: &str,
        batch: usize,
    ) -> Result<(Ranked<B>, Option<Labels<B>>), AbiError>;
}

/// What the `optimizer_step` service steps plugin parameters with: the
/// run's optimizer, which `train/` owns (its moments by parameter id).
pub trait ParamStepper<B: AutodiffBackend> {
    /// One step on `ids` of `store` for the scalar `loss` at rate `lr`.
    fn step(
        &mut self,
        store: &mut ParamStore<B>,
        loss: FloatTensor<B>,
        ids: &[ParamId],
        lr: f32,
    ) -> Result<(), AbiError>;
}

/// What a run plugs into the session. Missing services answer plugins with an
/// [`ErrorKind::UNSUPPORTED`] error that says what the run lacks.
pub struct RunServices<B: AutodiffBackend> {
    /// The student and source denoisers.
    pub denoiser: Option<Rc<dyn DenoiseService<B>>>,
    /// The run's datasets.
    pub data: Option<Rc<RefCell<dyn DataService<B>>>>,
    /// The source model's sampler.
    pub source_sampler: Option<Rc<dyn SampleService<B>>>,
    /// ᾱ_t for t = 0..T−1 of the run's noise schedule.
    pub alpha_bar: Option<Vec<f32>>,
    /// `(N, D_c)` of the run's condition embeddings (`condition_shape`),
    /// set before plugins are built.
    pub condition_shape: Option<(usize, usize)>,
    /// The run's condition encoder.
    pub condition: Option<Rc<dyn ConditionService<B>>>,
    /// While true (sampling), `param_value` answers untracked values: no
    /// autodiff graph is recorded through plugin parameters where no
    /// backward follows (gradients with respect to inputs still work).
    pub frozen_params: bool,
    /// Scalars logged since the last [`RunServices::take_logs`].
    pub logs: Vec<(String, f64)>,
    /// What `optimizer_step` (the `prepare` hook's training) steps with:
    /// the run's optimizer (`train::optim::ServiceOptimizer`).
    pub optimizer: Option<Box<dyn ParamStepper<B>>>,
    /// Optimizer steps taken through `optimizer_step` since the run began:
    /// the progress of a plugin's `prepare`, which the host shows.
    pub prepare_steps: u64,
    /// Called after each `optimizer_step` with the step count (a progress
    /// bar or line).
    pub on_prepare_step: Option<Box<dyn FnMut(u64)>>,
    /// The run's denoiser beyond `ModelInfo` (`model_details`), set before
    /// plugins are built.
    pub model_details: Option<ModelDetails>,
}

impl<B: AutodiffBackend> Default for RunServices<B> {
    fn default() -> Self {
        RunServices {
            denoiser: None,
            data: None,
            source_sampler: None,
            alpha_bar: None,
            condition_shape: None,
            condition: None,
            frozen_params: false,
            logs: Vec::new(),
            optimizer: None,
            prepare_steps: 0,
            on_prepare_step: None,
            model_details: None,
        }
    }
}

impl<B: AutodiffBackend> RunServices<B> {
    /// Takes the scalars logged so far.
    pub fn take_logs(&mut self) -> Vec<(String, f64)> {
        std::mem::take(&mut self.logs)
    }
}

fn unsupported(what: &str) -> AbiError {
    AbiError::new(ErrorKind::UNSUPPORTED, what.to_owned())
}

fn guarded<T>(service: &str, f: impl FnOnce() -> Result<T, AbiError>) -> AbiResult<T> {
    super::ops::guard(|| format!("host service `{service}`"), f)
}

extern "C" fn host_version() -> RString {
    env!("CARGO_PKG_VERSION").into()
}

/// Draws an initial value for a parameter from the session's RNG.
fn init_values(
    rng: &mut rand::rngs::StdRng,
    n: usize,
    init: ParamInit,
) -> Result<Vec<f32>, AbiError> {
    Ok(match init.kind {
        ParamInit::ZEROS => vec![0.0; n],
        ParamInit::CONSTANT => vec![init.a; n],
        ParamInit::UNIFORM => {
            let d = Uniform::new(init.a, init.b)
                .map_err(|e| AbiError::other(format!("uniform init: {e}")))?;
            (0..n).map(|_| d.sample(rng)).collect()
        }
        ParamInit::NORMAL => {
            let d = Normal::new(0.0, init.a)
                .map_err(|e| AbiError::other(format!("normal init: {e}")))?;
            (0..n).map(|_| d.sample(rng)).collect()
        }
        other => return Err(unsupported(&format!("unknown parameter init law {other}"))),
    })
}

extern "C" fn param_new<B: AutodiffBackend>(
    name: RStr<'_>,
    shape: RSlice<'_, usize>,
    init: ParamInit,
) -> AbiResult<ParamId> {
    guarded("param_new", || {
        Session::<B>::with(|s| {
            let owner = s.current_plugin.clone().ok_or_else(|| {
                AbiError::other("param_new is only available while a plugin is being constructed")
            })?;
            let n = crate::util::check_allocation(&shape, 4)
                .map_err(|e| AbiError::other(format!("parameter `{}`: {e}", name.as_str())))?;
            let values = init_values(&mut s.rng, n, init)?;
            let data = TensorData::new(values, shape.to_vec())
                .convert_dtype(BurnDType::from(s.float_dtype()));
            let value = B::float_from_data(data, &s.device);
            s.params.register(&owner, name.as_str(), value)
        })?
    })
}

extern "C" fn param_value<B: AutodiffBackend>(id: ParamId) -> AbiResult<TensorId> {
    guarded("param_value", || {
        Session::<B>::with(|s| {
            let v = s.params.get(id)?.value.clone();
            let v = if s.services.frozen_params {
                super::untracked::<B>(v)
            } else {
                v
            };
            Ok(s.insert(Stored::Float(v)))
        })?
    })
}

extern "C" fn log_scalar<B: AutodiffBackend>(name: RStr<'_>, value: f64) {
    let _ = Session::<B>::with(|s| {
        let plugin = s.current_plugin.clone().unwrap_or_else(|| "host".into());
        s.services.logs.push((format!("{plugin}.{name}"), value));
    });
}

extern "C" fn denoise<B: AutodiffBackend>(
    x_t: TensorId,
    t: TensorId,
    which: Which,
    labels: ROption<TensorId>,
) -> AbiResult<TensorId> {
    guarded("denoise", || {
        // Take what we need and release the session: the denoiser calls plugins.
        let (svc, x, t, labels) = Session::<B>::with(|s| -> Result<_, AbiError> {
            let svc = s.services.denoiser.clone().ok_or_else(|| {
                unsupported(
                    "denoise: this run has no denoiser (add a [source] section to the manifest)",
                )
            })?;
            let labels = labels.into_option().map(|l| s.int(l)).transpose()?;
            Ok((svc, s.float(x_t)?, s.get(t)?, labels))
        })??;
        let x = Ranked::from_float("denoise: x_t", x)?;
        let t = timesteps("denoise: t", t)?;
        let labels = labels
            .map(|l| classes_at("denoise: labels", l))
            .transpose()?;
        let eps = svc.denoise(x, t, which, labels)?.into_float();
        Session::<B>::with(|s| s.insert(Stored::Float(eps)))
    })
}

extern "C" fn features<B: AutodiffBackend>(
    x: TensorId,
    t: TensorId,
    points: RSlice<'_, RStr<'_>>,
    which: Which,
) -> AbiResult<RVec<TensorId>> {
    features_labelled::<B>(x, t, points, which, RNone)
}

extern "C" fn features_labelled<B: AutodiffBackend>(
    x: TensorId,
    t: TensorId,
    points: RSlice<'_, RStr<'_>>,
    which: Which,
    labels: ROption<TensorId>,
) -> AbiResult<RVec<TensorId>> {
    guarded("features", || {
        let (svc, x, t, labels) = Session::<B>::with(|s| -> Result<_, AbiError> {
            let svc = s.services.denoiser.clone().ok_or_else(|| {
                unsupported(
                    "features: this run has no denoiser (add a [source] section to the manifest)",
                )
            })?;
            let labels = labels.into_option().map(|l| s.int(l)).transpose()?;
            Ok((svc, s.float(x)?, s.get(t)?, labels))
        })??;
        let points: Vec<String> = points.iter().map(|p| p.as_str().to_owned()).collect();
        let x = Ranked::from_float("features: x", x)?;
        let t = timesteps("features: t", t)?;
        let labels = labels
            .map(|l| classes_at("features: labels", l))
            .transpose()?;
        let feats = svc.features(x, t, &points, which, labels)?;
        Session::<B>::with(|s| {
            feats
                .into_iter()
                .map(|f| s.insert(Stored::Float(f.into_float())))
                .collect()
        })
    })
}

extern "C" fn alpha_bar<B: AutodiffBackend>(t: TensorId) -> AbiResult<TensorId> {
    guarded("alpha_bar", || {
        Session::<B>::with(|s| {
            let table = s.services.alpha_bar.clone().ok_or_else(|| {
                unsupported(
                    "alpha_bar: this run has no noise schedule (add a [train] or [sample] section)",
                )
            })?;
            let v = s.get(t)?;
            let shape = v.shape();
            let data = match v {
                Stored::Float(x) => burn::tensor::read_sync(B::float_into_data(x)),
                Stored::Int(x) => burn::tensor::read_sync(B::int_into_data(x)),
                Stored::Bool(_) => {
                    return Err(AbiError::other("alpha_bar: timesteps must be numbers"));
                }
            }
            .map_err(|e| AbiError::other(format!("alpha_bar: {e:?}")))?;
            let out = data
                .iter::<f64>()
                .map(|ti| {
                    let i = ti.round();
                    if i < 0.0 || i as usize >= table.len() {
                        Err(AbiError::other(format!(
                            "alpha_bar: timestep {ti} is outside 0..{}",
                            table.len()
                        )))
                    } else {
                        Ok(table[i as usize])
                    }
                })
                .collect::<Result<Vec<f32>, _>>()?;
            let d = TensorData::new(out, shape).convert_dtype(BurnDType::from(s.float_dtype()));
            let a = B::float_from_data(d, &s.device);
            Ok(s.insert(Stored::Float(a)))
        })?
    })
}

extern "C" fn dataset_batch<B: AutodiffBackend>(
    split: RStr<'_>,
    batch: usize,
) -> AbiResult<DataBatch> {
    guarded("dataset_batch", || {
        // a plugin config's typo must not reach an allocation that aborts
        if batch as i64 > crate::util::limits::MAX_BATCH {
            return Err(AbiError::other(format!(
                "dataset_batch: a batch of {batch} is more than the largest, {}",
                crate::util::limits::MAX_BATCH
            )));
        }
        let data = Session::<B>::with(|s| s.services.data.clone())?.ok_or_else(|| {
            unsupported("dataset_batch: this run has no datasets (add a [target] section)")
        })?;
        let (x, labels) = data.borrow_mut().batch(split.as_str(), batch)?;
        Session::<B>::with(|s| DataBatch {
            x: s.insert(Stored::Float(x.into_float())),
            labels: match labels {
                Some(l) => ROption::RSome(s.insert(l.stored())),
                None => RNone,
            },
        })
    })
}

extern "C" fn optimizer_step<B: AutodiffBackend>(
    params: RSlice<'_, ParamId>,
    loss: TensorId,
    lr: f32,
) -> AbiResult<()> {
    guarded("optimizer_step", || {
        Session::<B>::with(|s| {
            let loss = s.float(loss)?;
            let optimizer = s.services.optimizer.as_mut().ok_or_else(|| {
                unsupported("optimizer_step: this session has no optimizer (it runs in `prepare`)")
            })?;
            optimizer.step(&mut s.params, loss, &params, lr)?;
            s.services.prepare_steps += 1;
            let n = s.services.prepare_steps;
            if let Some(f) = s.services.on_prepare_step.as_mut() {
                f(n);
            }
            Ok(())
        })?
    })
}

extern "C" fn num_timesteps<B: AutodiffBackend>() -> AbiResult<usize> {
    guarded("num_timesteps", || {
        Session::<B>::with(|s| {
            s.services.alpha_bar.as_ref().map(Vec::len).ok_or_else(|| {
                unsupported(
                    "num_timesteps: this run has no noise schedule (add a [train] or [sample] section)",
                )
            })
        })?
    })
}

extern "C" fn sample_source<B: AutodiffBackend>(
    count: usize,
    labels: ROption<TensorId>,
) -> AbiResult<TensorId> {
    guarded("sample_source", || {
        if count as i64 > crate::util::limits::MAX_EXAMPLES {
            return Err(AbiError::other(format!(
                "sample_source: {count} samples are more than the largest count, {}",
                crate::util::limits::MAX_EXAMPLES
            )));
        }
        // Release the session before sampling: the sampler runs tensor ops.
        let (svc, labels) = Session::<B>::with(|s| -> Result<_, AbiError> {
            let svc = s.services.source_sampler.clone().ok_or_else(|| {
                unsupported("sample_source: this run has no source model to sample")
            })?;
            let labels = labels.into_option().map(|l| s.int(l)).transpose()?;
            Ok((svc, labels))
        })??;
        let labels = labels
            .map(|l| classes_at("sample_source: labels", l))
            .transpose()?;
        let x = svc.sample_source(count, labels)?.into_float();
        Session::<B>::with(|s| s.insert(Stored::Float(x)))
    })
}

extern "C" fn condition_shape<B: AutodiffBackend>() -> AbiResult<RVec<usize>> {
    guarded("condition_shape", || {
        Session::<B>::with(|s| {
            s.services
                .condition_shape
                .map(|(n, d)| RVec::from(vec![n, d]))
                .unwrap_or_default()
        })
    })
}

/// The run's encoder, released from the session before it runs tensor ops.
fn encoder<B: AutodiffBackend>(service: &str) -> Result<Rc<dyn ConditionService<B>>, AbiError> {
    Session::<B>::with(|s| {
        s.services.condition.clone().ok_or_else(|| {
            unsupported(&format!(
                "{service}: this run has no condition encoder (add a [condition] table to the manifest)"
            ))
        })
    })?
}

extern "C" fn encode_image<B: AutodiffBackend>(x: TensorId) -> AbiResult<TensorId> {
    guarded("encode_image", || {
        let enc = encoder::<B>("encode_image")?;
        let x = Session::<B>::with(|s| s.float(x))??;
        let x = float_at::<B, 4>("encode_image: x", x)?;
        let c = enc.encode_image(x)?.into_primitive().tensor();
        Session::<B>::with(|s| s.insert(Stored::Float(c)))
    })
}

extern "C" fn encode_text<B: AutodiffBackend>(prompt: RStr<'_>) -> AbiResult<TensorId> {
    guarded("encode_text", || {
        let enc = encoder::<B>("encode_text")?;
        let c = enc.encode_text(prompt.as_str())?.into_primitive().tensor();
        Session::<B>::with(|s| s.insert(Stored::Float(c)))
    })
}

extern "C" fn model_details<B: AutodiffBackend>() -> AbiResult<ModelDetails> {
    guarded("model_details", || {
        Session::<B>::with(|s| {
            s.services.model_details.clone().ok_or_else(|| {
                unsupported("model_details: this run has no denoiser (add a [source] section)")
            })
        })?
    })
}

extern "C" fn hook_input<B: AutodiffBackend>(name: RStr<'_>) -> AbiResult<ROption<TensorId>> {
    // api 0.4 defines no input beyond the hook contexts
    let _ = name;
    guarded("hook_input", || Session::<B>::with(|_| RNone))
}

/// The host-services vtable over backend `B`.
pub fn host_services<B: AutodiffBackend>() -> HostServicesRef {
    HostServices {
        host_version,
        param_new: param_new::<B>,
        param_value: param_value::<B>,
        log_scalar: log_scalar::<B>,
        denoise: denoise::<B>,
        features: features::<B>,
        alpha_bar: alpha_bar::<B>,
        dataset_batch: dataset_batch::<B>,
        optimizer_step: optimizer_step::<B>,
        num_timesteps: num_timesteps::<B>,
        sample_source: sample_source::<B>,
        condition_shape: condition_shape::<B>,
        encode_image: encode_image::<B>,
        encode_text: encode_text::<B>,
        model_details: model_details::<B>,
        hook_input: hook_input::<B>,
        features_labelled: features_labelled::<B>,
    }
    .leak_into_prefix()
}
