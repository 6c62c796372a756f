//! `denoiser-guidance`: small classifiers on the frozen source U-Net's
//! internal features ("Denoiser representations for guidance and
//! rejection", Sec. 4.1–4.2), used three ways:
//!
//! ```text
//! prepare:  f(x0) = features of the source U-Net at points P and t_f, (normalised)
//!           p(y | x0) = softmax(classifier(f(x0)))         trained by cross-entropy
//! score:    x̂0 = (x_t − sqrt(1 − ᾱ_t) ε_θ(x_t, t)) / sqrt(ᾱ_t)                (Eq. 11)
//!           p(y | x_t) ≈ p(y | x̂0)                                            (Eq. 12)
//!           ε̂ = ε − λ sqrt(1 − ᾱ_t) ∇_{x_t} Σ_batch log p(y | f(x̂0))          (Eq. 10, 13)
//! filter:   keep x when p(y | f(x)) >= threshold                              (Sec. 5.3)
//! inject:   temb ← temb + E[y] (E[null] = 0), label dropout p               (Sec. 4.2)
//!           ε = (1 + w) ε(x_t, y) − w ε(x_t, null)        classifier-free guidance
//! ```
//!
//! Conventions (docs/plugins/denoiser-guidance.md):
//! - Features come from the *source* model, of the clean input at the fixed
//!   feature timesteps t_f (not the sampling t), in prepare, guidance and
//!   rejection alike; `feature_noise = true` q_samples the input at t_f in
//!   all three.
//! - One normalisation (per-channel mean and std of the training pool),
//!   saved with the run, applied everywhere.
//! - The gradient of Eq. 13 runs through the classifier, the source U-Net's
//!   features and x̂0, including ε_θ(x_t, t) of the model being sampled:
//!   the ε the host hands `score` (every plugin's injection applied, this
//!   plugin's class embedding included), after CFG, tracked from x_t.
//! - λ multiplies the log-likelihood summed over the batch, so each sample
//!   gets its own gradient, independent of the batch size.
//! - The null class of the class embedding is the zero vector, so the
//!   unconditional ε of CFG is the student without this plugin's embedding
//!   (what `denoise(student)` returns inside this plugin's own hook).

mod classifier;
mod config;
mod features;

pub use classifier::Classifier;
pub use config::{Config, Labels, Preset, Resolved};
pub use features::FeatureSpec;

use dtx_plugin_api::prelude::*;

/// The denoiser-guidance plugin.
pub struct DenoiserGuidance {
    config: Config,
    resolved: Resolved,
    spec: FeatureSpec,
    classifier: Classifier,
    /// The class embedding `[K, temb]`, with `class_embedding = true`.
    embedding: Option<Param>,
}

/// `[B]` → `[B, 1, 1, 1]`.
fn per_example(v: &Tensor) -> Tensor {
    v.reshape(&[v.dim(0), 1, 1, 1])
}

/// Labelled examples: images and their classes, `[N]` (labels) or
/// `[N, H, W]` (masks), i64.
struct Labelled {
    x: Tensor,
    y: Tensor,
}

impl DenoiserGuidance {
    /// The labelled pool (or held-out set) of `n` draws from `split`.
    fn labelled(&self, host: &Host, split: &str, n: usize) -> Result<Labelled, AbiError> {
        match self.config.labels {
            Labels::Target => {
                let split = if self.resolved.masks {
                    format!("{split}:masks")
                } else {
                    split.to_owned()
                };
                let (x, y) = host.dataset_batch(&split, n)?;
                let y = y.ok_or_else(|| {
                    AbiError::config(
                        "labels",
                        "`target` needs a labelled target set (`target.labels = true`, class sub-folders); use `labels = \"domain\"` for an unlabelled one",
                    )
                })?;
                self.check_classes(&y, "the target set")?;
                Ok(Labelled { x: x.detach(), y })
            }
            Labels::Domain => {
                let half = n.div_ceil(2);
                let (target, _) = host.dataset_batch(split, half)?;
                let source = match host.dataset_batch("source", n - half) {
                    Ok((s, _)) => s,
                    Err(e) if e.kind == dtx_plugin_api::abi::ErrorKind::UNSUPPORTED => {
                        host.sample_source(n - half, None)?
                    }
                    Err(e) => return Err(e),
                };
                let mut y = vec![1i64; half];
                y.extend(std::iter::repeat_n(0, n - half));
                Ok(Labelled {
                    x: Tensor::cat(&[&target.detach(), &source.detach()], 0),
                    y: Tensor::from_i64(&y, &[n]),
                })
            }
        }
    }

    /// Every class in `y` is one of the classifier's.
    fn check_classes(&self, y: &Tensor, what: &str) -> Result<(), AbiError> {
        let k = self.resolved.classes;
        match y
            .to_i64_vec()
            .into_iter()
            .find(|&l| l < 0 || l as usize >= k)
        {
            Some(bad) => Err(AbiError::config(
                "num_classes",
                format!("is {k}, but {what} has class {bad}"),
            )),
            None => Ok(()),
        }
    }

    /// Raw features of `x` in chunks of the batch size (no graph).
    fn raw_features(&self, host: &Host, x: &Tensor) -> Result<Tensor, AbiError> {
        let n = x.dim(0);
        let chunk = self.config.batch.max(64);
        let mut parts = Vec::new();
        let mut i = 0;
        while i < n {
            let m = chunk.min(n - i);
            parts.push(self.spec.raw(host, &x.narrow(0, i, m))?.detach());
            i += m;
        }
        Ok(Tensor::cat(&parts.iter().collect::<Vec<_>>(), 0))
    }

    /// The share of labels (of mask pixels) the classifier gets right on
    /// normalised `features`.
    fn accuracy(&self, features: &Tensor, y: &Tensor) -> f64 {
        let pred = self.classifier.detached().predict(features);
        let y = y.to_i64_vec();
        let right = pred.iter().zip(&y).filter(|(p, y)| p == y).count();
        right as f64 / y.len().max(1) as f64
    }

    /// What each sample is scored against: the hook's labels (classes
    /// `[B]`, or masks `[B, H, W]` with `sample.masks`), or the target
    /// domain (1).
    fn targets(
        &self,
        labels: Option<&TensorRef>,
        b: usize,
        hook: &str,
    ) -> Result<Tensor, AbiError> {
        let rank = if self.resolved.masks { 3 } else { 1 };
        match (self.config.labels, labels) {
            (Labels::Domain, _) => Ok(Tensor::from_i64(&vec![1; b], &[b])),
            (Labels::Target, Some(l)) if l.rank() == rank => {
                self.check_classes(l, "the sampled labels")?;
                Ok((**l).clone())
            }
            (Labels::Target, _) if self.resolved.masks => Err(AbiError::other(format!(
                "denoiser-guidance: {hook} with the `mask` preset needs a mask per sample: set `sample.masks = \"held_out\"` (or \"target\")"
            ))),
            (Labels::Target, _) => Err(AbiError::other(format!(
                "denoiser-guidance: {hook} needs the class to aim for: sampling has no class labels (set `target.labels = true`, and `sample.label` for one class)"
            ))),
        }
    }

    /// Classifier-free guidance: `(1 + w) ε − w ε_null`, ε_null from the
    /// student without this plugin's class embedding (the null class),
    /// called on the host's x_t so that guidance differentiates through it.
    /// `ctx.eps` is the conditional ε: the host ran the student with every
    /// plugin's injection, this one's class embedding included.
    fn cfg(&self, ctx: &Score<'_>) -> Result<Tensor, AbiError> {
        let eps = (*ctx.eps).clone();
        let w = self.config.cfg_weight;
        if !self.config.class_embedding || w == 0.0 {
            return Ok(eps);
        }
        let null = ctx.host.denoise(&ctx.x_t, &ctx.t, Which::Student, None)?;
        Ok(eps * (1.0 + w) - null * w)
    }

    /// Eq. 13: `ε − λ sqrt(1 − ᾱ_t) ∇_{x_t} Σ log p(y | f(x̂0(x_t)))`, with
    /// x̂0 built (Eq. 11) from `eps`, the ε being sampled (conditional, after
    /// CFG), differentiated through it: the host hands `score` x_t as a
    /// leaf that ε is tracked from. No other denoiser call is made, so the
    /// hook's labels (classes, or masks with the `mask` preset) only ever
    /// reach the classifier, never the network's class input.
    fn guide(&self, ctx: &Score<'_>, eps: Tensor) -> Result<Tensor, AbiError> {
        if !self.resolved.guide || self.resolved.lambda == 0.0 {
            return Ok(eps);
        }
        let host = ctx.host;
        let b = ctx.x_t.dim(0);
        let y = self.targets(ctx.labels.as_ref(), b, "guidance")?;
        let t = ctx.t.cast(dtx_plugin_api::DType::F32);
        let x = &*ctx.x_t;
        let ab = per_example(&host.alpha_bar(&t)?);
        let s1a = ab.rsub(1.0).sqrt();
        let x0 = (x - &s1a * &eps) / ab.sqrt();
        let features = self.spec.extract(host, &x0)?;
        let log_p = self.classifier.detached().log_prob(&features, &y).sum();
        let g = log_p.grad(&[x]).remove(0).detach();
        Ok(eps.detach() - s1a * g * self.resolved.lambda)
    }
}

#[hooks]
impl Plugin for DenoiserGuidance {
    type Config = Config;
    const NAME: &'static str = "denoiser-guidance";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Classifiers on the frozen denoiser's features: guidance through x̂0 (score), rejection (filter), class embedding + CFG (inject)";

    fn new(config: Config, host: &Host, model: &ModelInfo) -> Result<Self, AbiError> {
        config.validate()?;
        if model.resolution == 0 {
            return Err(AbiError::config(
                "points",
                "denoiser-guidance reads U-Net feature maps; this model takes vectors",
            ));
        }
        let resolved = config.resolve();
        let spec = FeatureSpec::new(
            &resolved.points,
            &resolved.timesteps,
            config.feature_noise,
            &model.points,
            resolved
                .masks
                .then_some([model.resolution, model.resolution]),
        )?;
        let classifier = Classifier::new(
            &host.scope().pp("classifier"),
            resolved.masks,
            spec.channels,
            config.channels,
            resolved.layers,
            resolved.classes,
        )?;
        let embedding = if config.class_embedding {
            Some(host.param(
                "class_embedding",
                &[resolved.classes, model.temb_channels],
                ParamInit::normal(0.02),
            )?)
        } else {
            None
        };
        Ok(DenoiserGuidance {
            config,
            resolved,
            spec,
            classifier,
            embedding,
        })
    }

    fn points(&self) -> Vec<String> {
        if self.embedding.is_some() {
            vec!["temb".into()]
        } else {
            Vec::new()
        }
    }

    fn prepare(&mut self, ctx: &Prepare<'_>) -> Result<(), AbiError> {
        let host = ctx.host;
        let t_max = host.num_timesteps()?;
        if let Some(&t) = self
            .resolved
            .timesteps
            .iter()
            .find(|&&t| t as usize >= t_max)
        {
            return Err(AbiError::config(
                "timesteps",
                format!(
                    "t_f = {t} is outside the run's schedule (0 to {})",
                    t_max - 1
                ),
            ));
        }
        let pool = self.labelled(host, "target", self.config.pool)?;
        let raw = self.raw_features(host, &pool.x)?;
        self.spec.fit_norm(&raw);
        let (mean, std) = self.spec.norm.clone().expect("just fitted");
        let shape = [1, self.spec.channels, 1, 1];
        let train = (raw - Tensor::from_f32(&mean, &shape)) / Tensor::from_f32(&std, &shape);
        let n = pool.y.dim(0);
        let params = self.classifier.params();
        let refs: Vec<&Param> = params.iter().collect();
        let b = self.config.batch.min(n);
        for step in 0..self.resolved.steps {
            let idx: Vec<i64> = Tensor::rand(&[b], 0.0, n as f32)
                .to_f32_vec()
                .into_iter()
                .map(|u| (u as i64).min(n as i64 - 1))
                .collect();
            let idx = Tensor::from_i64(&idx, &[b]);
            let x = train.index_select(0, &idx);
            let y = pool.y.index_select(0, &idx);
            // cross-entropy, a mean over examples (and mask pixels)
            let per_label = y.shape().iter().product::<usize>() as f32;
            let loss = -self.classifier.log_prob(&x, &y).sum() / per_label;
            if step % self.config.log_every == 0 || step + 1 == self.resolved.steps {
                host.log_scalar("classifier_loss", loss.item() as f64);
            }
            host.optimizer_step(&refs, loss, self.config.lr)?;
        }
        host.log_scalar("train_accuracy", self.accuracy(&train, &pool.y));
        if self.config.validation > 0 {
            match self.labelled(host, "validation", self.config.validation) {
                Ok(val) => {
                    let f = self.spec.extract(host, &val.x)?.detach();
                    host.log_scalar("val_accuracy", self.accuracy(&f, &val.y));
                }
                Err(e) if e.kind == dtx_plugin_api::abi::ErrorKind::UNSUPPORTED => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn score(&mut self, ctx: &Score<'_>) -> Result<Tensor, AbiError> {
        let eps = self.cfg(ctx)?;
        Ok(self.guide(ctx, eps)?.detach())
    }

    fn filter(&mut self, ctx: &Filter<'_>) -> Result<FilterOutput, AbiError> {
        let b = ctx.samples.dim(0);
        if !self.resolved.reject {
            return Ok(FilterOutput {
                scores: vec![1.0; b].into(),
                keep: vec![true; b].into(),
            });
        }
        let y = self.targets(ctx.labels.as_ref(), b, "rejection")?;
        let x = ctx.samples.detach();
        let features = self.spec.extract(ctx.host, &x)?.detach();
        // masks: the geometric mean of the pixels' p(y | x)
        let pixels = (y.shape().iter().product::<usize>() / b) as f32;
        let p: Vec<f32> = (self.classifier.detached().log_prob(&features, &y) / pixels)
            .exp()
            .to_f32_vec();
        Ok(FilterOutput {
            keep: p.iter().map(|&p| p >= self.config.threshold).collect(),
            scores: p.into(),
        })
    }

    fn inject(&mut self, ctx: &Inject<'_>) -> Result<Tensor, AbiError> {
        let (Some(e), Some(labels)) = (&self.embedding, &ctx.labels) else {
            // no labels: the null class, whose embedding is zero
            return Ok((*ctx.h).clone());
        };
        let y = labels.to_i64_vec();
        let b = y.len();
        if let Some(&bad) = y
            .iter()
            .find(|&&l| l < 0 || l as usize >= self.resolved.classes)
        {
            return Err(AbiError::other(format!(
                "denoiser-guidance: class label {bad} is outside 0..{} (`num_classes`)",
                self.resolved.classes
            )));
        }
        let mut add = e.value().index_select(0, &Tensor::from_i64(&y, &[b]));
        if ctx.training && self.config.label_dropout > 0.0 {
            let keep = Tensor::rand(&[b], 0.0, 1.0)
                .compare_scalar(
                    dtx_plugin_api::abi::CompareOp::GE,
                    self.config.label_dropout,
                )
                .cast(dtx_plugin_api::DType::F32)
                .reshape(&[b, 1]);
            add = add * keep;
        }
        Ok(&*ctx.h + add)
    }

    fn state_save(&self) -> Result<Vec<u8>, AbiError> {
        let Some((mean, std)) = &self.spec.norm else {
            return Ok(Vec::new());
        };
        Ok(mean
            .iter()
            .chain(std)
            .flat_map(|v| v.to_le_bytes())
            .collect())
    }

    fn state_load(&mut self, state: &[u8]) -> Result<(), AbiError> {
        if state.is_empty() {
            return Ok(());
        }
        let c = self.spec.channels;
        if state.len() != 8 * c {
            return Err(AbiError::other(format!(
                "denoiser-guidance: saved feature statistics hold {} bytes; this config's {c} channels need {}",
                state.len(),
                8 * c
            )));
        }
        let v: Vec<f32> = state
            .chunks(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        self.spec.norm = Some((v[..c].to_vec(), v[c..].to_vec()));
        Ok(())
    }
}

export_plugin!(DenoiserGuidance);
