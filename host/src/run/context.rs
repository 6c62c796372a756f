//! Stage 1 of a run, set-up: everything that can fail on the user's input is
//! read before the run folder is touched (target and source data, classes,
//! masks, the evaluation's extractor and references, the condition encoder);
//! then the tensor session, the run folder, the base weights, the plugins
//! built against the model (the [`Student`]) and the host services plugins
//! call. What the later stages share is a [`RunContext`].

use super::condition::RunCondition;
use super::dir::RunDir;
use super::error::{Result, run_error};
use super::evaluation::EvalSetup;
use super::inputs::{self, Data, SharedData};
use super::sampling::SourceSampler;
use super::student::Student;
use crate::data::{BatchIter, Dataset};
use crate::diffusion::schedule::Schedule;
use crate::manifest::{Init, SourceKind, Trainable};
use crate::model::Denoiser;
use crate::model::Net;
use crate::plan::Plan;
use crate::plugins::Instance;
use crate::tensor_abi::{DataService, Session, SessionGuard};
use crate::train::checkpoint;
use crate::train::ema::Ema;
use crate::train::optim::{self, AdamConfig, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use rand::{SeedableRng, rngs::StdRng};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;

/// Where the run writes.
pub(super) enum Mode {
    /// `dtx run`: the manifest's run folder, resumed or new.
    Run {
        /// Continue from the folder's latest checkpoint.
        resume: bool,
    },
    /// `dtx sample`: a folder of its own for the samples.
    Sample {
        /// That folder.
        out: PathBuf,
    },
}

/// What the stages of one run share.
pub(super) struct RunContext<B: AutodiffBackend> {
    pub(super) device: B::Device,
    /// The shape of one example (`[C, H, W]` or `[D]`).
    pub(super) example: Vec<usize>,
    pub(super) target: Option<Dataset>,
    /// The held-out target images, when `target.holdout` keeps some.
    pub(super) held_out: Option<Dataset>,
    /// The `[eval]` extractor and references, loaded before anything trains.
    pub(super) eval_setup: Option<EvalSetup<B::InnerBackend>>,
    pub(super) student: Rc<Student<B>>,
    /// The target (and source) data the training loop and `dataset_batch`
    /// draw from, when the run has a target.
    pub(super) data: Option<SharedData<B>>,
    pub(super) dir: RunDir,
    /// The EMA of the trained weights (`train.ema`), made after `prepare`.
    pub(super) ema: Option<Ema<B>>,
    /// The optimizer's moments, shared with the `optimizer_step` service.
    pub(super) optimizer: Rc<RefCell<Optimizer<B>>>,
    /// The weights file the base was loaded from, when it was: checkpoints
    /// refer to it for the frozen base instead of holding it.
    pub(super) base: Option<crate::train::base_ref::BaseRef>,
    /// Declared last, so the session outlives the plugins dropped above it.
    _session: SessionGuard,
}

/// Sets a run up (see the module's doc); `D` is the rank of a batch.
pub(super) fn set_up<B: AutodiffBackend, const D: usize>(
    plan: &Plan,
    net: Net,
    mode: &Mode,
) -> Result<RunContext<B>> {
    let m = &plan.manifest.manifest;
    inputs::unsupported_settings(plan, &net)?;
    let example = net.data_shape();
    // Targets load before the run folder exists, so bad data leaves nothing behind.
    let (target, held_out) = inputs::load_targets(plan, &net, &example)?;
    let classes = inputs::run_classes(plan, &net, target.as_ref(), held_out.as_ref())?;
    let sample_masks = inputs::sample_masks(plan, target.as_ref(), held_out.as_ref())?;
    let source_data = inputs::load_source_data(plan, &example)?;
    let device: B::Device = Default::default();
    // The extractor and the reference images load before anything trains,
    // so a bad weights file or folder costs nothing.
    let eval_setup = super::evaluation::prepare::<B::InnerBackend>(
        plan,
        &example,
        target.as_ref(),
        held_out.as_ref(),
        &device,
    )?;
    let mut condition = RunCondition::<B>::load(plan, &device)?;
    if let (Some(c), Some(sm)) = (condition.as_mut(), &m.sample) {
        c.sample_images(plan, sm, target.as_ref(), held_out.as_ref(), &example)?;
    }
    let session = Session::<B>::install(device.clone(), m.run.seed);
    // One optimizer for the training loop and plugins' `prepare`
    // (`optimizer_step`): both step the same moments.
    let optimizer = optim::install::<B>(AdamConfig::default())?;
    let details = plan.model.as_ref().map(|d| {
        let prediction = m.source.as_ref().map(|s| s.prediction.as_str());
        crate::model::details_of(&net, d, prediction.unwrap_or("epsilon"))
    });
    Session::<B>::with(|s| {
        s.services.condition_shape = plan.condition.as_ref().map(|c| c.shape);
        s.services.model_details = details;
    })?;
    let dir = match mode {
        Mode::Sample { out } => RunDir::at(out)?,
        Mode::Run { resume } => RunDir::open(
            &plan.manifest.output_dir(),
            &m.run.name,
            *resume,
            &plan.manifest.to_portable_toml_string(),
        )?,
    };
    let student = Rc::new(build_student::<B>(
        plan,
        net,
        classes,
        sample_masks,
        condition,
        &device,
    )?);
    super::recipe::apply(&student, &optimizer)?;
    let data = match &target {
        Some(ds) => {
            let batch = m.train.as_ref().map(|t| t.batch).unwrap_or(16);
            let flip = m.target.as_ref().is_some_and(|t| t.flip);
            Some(Rc::new(RefCell::new((
                Data {
                    target: ds.clone(),
                    iter: BatchIter::for_dataset(ds, batch, m.run.seed, flip)?,
                    source: source_data,
                    held_out: held_out.clone(),
                },
                device.clone(),
            ))))
        }
        None => None,
    };
    install_services::<B, D>(plan, &student, data.as_ref(), &device)?;
    if let Some(t) = &target {
        tracing::info!(
            examples = t.len(),
            held_out = held_out.as_ref().map_or(0, |h| h.len()),
            shape = ?t.sample_shape,
            "target set loaded from {}",
            t.source
        );
    }
    Ok(RunContext {
        device,
        example,
        target,
        held_out,
        eval_setup,
        student,
        data,
        dir,
        ema: None,
        optimizer,
        base: base_ref(plan)?,
        _session: session,
    })
}

impl<B: AutodiffBackend> RunContext<B> {
    /// Starts the EMA of the weights when the manifest keeps one
    /// (`train.ema`), from their current values.
    pub(super) fn start_ema(&mut self, plan: &Plan) -> Result<()> {
        self.ema = plan
            .manifest
            .manifest
            .train
            .as_ref()
            .and_then(|t| t.ema)
            .map(|e| Session::<B>::with(|s| Ema::new(e.decay as f32, &s.params)))
            .transpose()?;
        Ok(())
    }
}

/// The base weights (see [`base_weights`]), a frozen copy of them for
/// `denoise(source)`, and every plugin built against the model in manifest
/// order.
fn build_student<B: AutodiffBackend>(
    plan: &Plan,
    net: Net,
    classes: usize,
    sample_masks: Option<Dataset>,
    condition: Option<RunCondition<B>>,
    device: &B::Device,
) -> Result<Student<B>> {
    let m = &plan.manifest.manifest;
    let desc = plan.model.as_ref().expect("checked by run");
    let trainable = m
        .train
        .as_ref()
        .map(|t| t.trainable.clone())
        .unwrap_or_default();
    let is_trainable = move |name: &str| match &trainable {
        Trainable::None => false,
        Trainable::All => true,
        Trainable::Globs(g) => g.iter().any(|p| dtx_plugin_api::points::matches(p, name)),
    };
    base_weights::<B>(plan, &net, device, &is_trainable)?;
    tracing::info!(
        kind = %desc.kind,
        parameters = net.parameters().iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>(),
        trainable = Session::<B>::with(|s| s.params.trainable_ids().len())?,
        "base model ready"
    );
    let source: HashMap<_, _> = Session::<B>::with(|s| {
        s.params
            .entries()
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect()
    })?;
    let source = net.weights(&source)?.untracked();
    let timesteps = m.train.as_ref().map(|t| t.timesteps).unwrap_or(1000);
    let schedule: Schedule = m
        .train
        .as_ref()
        .map(|t| t.schedule)
        .unwrap_or_default()
        .into();
    let model_info = desc.to_model_info();
    let mut plugins = Vec::new();
    for p in &plan.plugins {
        let mut instance =
            Instance::<B>::new(&p.name, p.library.clone(), &p.config_json, &model_info)?;
        instance.bind(&p.hooks);
        plugins.push(RefCell::new(instance));
    }
    let data_channels = net.data_shape()[0];
    Ok(Student {
        net,
        plugins,
        running: RefCell::new(Vec::new()),
        source,
        prediction: m
            .source
            .as_ref()
            .map(|s| s.prediction)
            .unwrap_or_default()
            .into(),
        alpha_bars: schedule.alpha_bars(timesteps),
        data_channels,
        classes,
        sampling_weights: RefCell::new(None),
        dropout: RefCell::new(None),
        sample_masks,
        condition,
    })
}

/// The reference to the source's weights file when the base was loaded
/// from one (a pretrained diffusers or ADM source); `None` for a random
/// init, an MLP or a dtx run (whose checkpoints then hold the whole base).
fn base_ref(plan: &Plan) -> Result<Option<crate::train::base_ref::BaseRef>> {
    let Some(src) = plan.manifest.manifest.source.as_ref() else {
        return Ok(None);
    };
    let file_source = matches!(src.kind, SourceKind::Diffusers | SourceKind::Adm);
    match (&src.path, file_source && src.init != Init::Random) {
        (Some(p), true) => {
            let path = plan.manifest.resolve_path(p);
            crate::train::base_ref::BaseRef::of(&path)
                .map_err(|e| run_error!("[source] `{}`: {e}", path.display()))
        }
        _ => Ok(None),
    }
}

/// Registers the base weights: the checkpoint's (`init = "pretrained"`), or
/// a fresh init from `run.seed` (`init = "random"`, and MLP sources).
fn base_weights<B: AutodiffBackend>(
    plan: &Plan,
    net: &Net,
    device: &B::Device,
    is_trainable: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let m = &plan.manifest.manifest;
    let src = m.source.as_ref().ok_or_else(|| run_error!("no [source]"))?;
    let random =
        src.init == Init::Random || (matches!(net, Net::Mlp(_)) && src.kind != SourceKind::Dtx);
    if !random && src.kind == SourceKind::Dtx {
        let path = src
            .path
            .as_ref()
            .map(|p| crate::model::dtx_checkpoint(&plan.manifest.resolve_path(p)))
            .ok_or_else(|| run_error!("[source]: `path` names the dtx run folder"))?;
        if let Some(source_run) = plan.source_run.as_deref() {
            return super::source_run::load_merged::<B>(
                source_run,
                &path,
                net,
                device,
                is_trainable,
            );
        }
        let from_source = |p: &std::path::Path, s: &mut crate::tensor_abi::ParamStore<B>| {
            net.load(p, s, device, is_trainable)
                .map_err(|e| e.to_string())
        };
        Session::<B>::with(|s| {
            checkpoint::load_base::<B>(
                &path,
                &net.parameters(),
                &mut s.params,
                device,
                is_trainable,
                Some(&from_source),
            )
        })??;
        Ok(())
    } else if random {
        let mut init_rng = StdRng::seed_from_u64(m.run.seed);
        Session::<B>::with(|s| net.init(&mut s.params, &mut init_rng, device, is_trainable))?
            .map_err(|e| run_error!("[source]: {e}"))
    } else {
        let path = src
            .path
            .as_ref()
            .map(|p| plan.manifest.resolve_path(p))
            .ok_or_else(|| run_error!("[source]: `path` is required to load pretrained weights"))?;
        Session::<B>::with(|s| net.load(&path, &mut s.params, device, is_trainable))?
            .map_err(|e| run_error!("[source] `{}`: {e}", path.display()))
    }
}

/// The host services the plugins call: ᾱ, the denoisers, the source
/// sampler, the condition encoder and the data sets.
fn install_services<B: AutodiffBackend, const D: usize>(
    plan: &Plan,
    student: &Rc<Student<B>>,
    data: Option<&SharedData<B>>,
    device: &B::Device,
) -> Result<()> {
    let m = &plan.manifest.manifest;
    let source_sampler = SourceSampler::<B, D> {
        student: student.clone(),
        // the run's sampler, else 50 DDIM steps in batches of 256
        settings: m.sample.clone().unwrap_or_else(|| {
            toml::from_str("count = 1\nbatch = 256").expect("a valid [sample] table")
        }),
        seed: m.run.seed,
        calls: std::cell::Cell::new(0),
        device: device.clone(),
    };
    Session::<B>::with(|s| {
        s.services.alpha_bar = Some(student.alpha_bars.iter().map(|&a| a as f32).collect());
        s.services.denoiser = Some(Rc::new(student.clone()));
        s.services.source_sampler = Some(Rc::new(source_sampler));
        if student.condition.is_some() {
            s.services.condition = Some(Rc::new(student.clone()));
        }
        if let Some(d) = data {
            s.services.data =
                Some(Rc::new(RefCell::new(d.clone())) as Rc<RefCell<dyn DataService<B>>>);
        }
    })?;
    Ok(())
}
