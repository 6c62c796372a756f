//! `tgdp`: transfer learning for diffusion models by density-ratio guidance
//! ("Transfer Learning for Diffusion Models", the TGDP talk: its lemma,
//! Algorithms 3 and 4, the conditional extension). The source model stays
//! frozen; the target score is the source score plus a guidance gradient:
//!
//! ```text
//! ∇ log q_t(x_t) = ∇ log p_t(x_t) + ∇ log E_{p(x0|x_t)}[q(x0)/p(x0)]       (lemma)
//! q(x0)/p(x0) ≈ (1 − c_ω(x0)) / c_ω(x0) = exp(−logit c_ω(x0))             (step 1)
//! L_c  = −1/m Σ_source log c_ω(x) − 1/n Σ_target log(1 − c_ω(x'))         (step 1 loss)
//! L_c' = the same for c'_ω(x_t, t) on noised samples, t ~ U{0, …, T−1}    (step 2)
//! L_guidance    = mean_i (h_ψ(x_t, t) − (1 − c_ω(x0)) / c_ω(x0))²   source pairs  (Alg. 4, l. 4)
//! L_cycle       = mean_i (h_ψ(x'_t, t) − (1 − c'_ω(x'_t, t)) / c'_ω(x'_t, t))²  target pairs (l. 7)
//! L_consistence = mean_i (1 − ᾱ_t) ‖s_source(x'_t, t) + ∇ log h_ψ(x'_t, t)
//!                                  − ∇ log q(x'_t | x'_0)‖²             (l. 8, weight λ(t) = 1 − ᾱ_t)
//!                 (‖·‖² over all of a sample's dimensions: `losses`)
//! ψ ← Adam on L_guidance + η1 L_cycle + η2 L_consistence                  (l. 9)
//! ε_guided = ε_source − w · sqrt(1 − ᾱ_t) · ∇_{x_t} log h_ψ(x_t, t)        (score hook)
//! ```
//!
//! with h_ψ = exp(raw_ψ) (so log h_ψ = raw_ψ), s = −ε / sqrt(1 − ᾱ_t) and
//! ∇ log q(x'_t | x'_0) = −(x'_t − sqrt(ᾱ_t) x'_0) / (1 − ᾱ_t) = −ε' / sqrt(1 − ᾱ_t).
//! With λ(t) = 1 − ᾱ_t the consistency residual is in ε units:
//! ‖sqrt(1 − ᾱ_t) ∇ log h_ψ − (ε_source(x'_t) − ε')‖², summed over the
//! sample's dimensions and averaged over the batch.
//!
//! Conventions (docs/plugins/tgdp.md):
//! - **Sign**: the paper's. A positive ∇ log h (towards the target) lowers
//!   ε, which moves x towards the target; the authors' public code adds the
//!   gradient with the opposite sign. A test with two Gaussians fixes it.
//! - **Cycle target**: c'(x'_t, t), the lemma's q_t/p_t; Algorithm 4 writes
//!   c'(x'_0, t), read as a typo.
//! - **Balance**: the classifier losses average source and target separately.
//! - **Source samples**: `[source.data]` when the manifest has it, else
//!   `source_samples` drawn once from the source model (`sample_source`);
//!   logged as `source_from_model` (0 or 1).
//! - **Conditional** (`conditional = true`): the classifiers and h_ψ also take
//!   the class y (one-hot); the ratio is q(x0, y)/p(x0, y), and guidance adds
//!   to the source's conditional score. `label_map` maps target labels to
//!   the source's.

mod config;
pub mod losses;
mod nets;

pub use config::{Config, Network, SourceFrom};
pub use nets::{Inputs, ScalarNet};

use dtx_plugin_api::prelude::*;

/// A batch of samples with their (source-space) labels.
struct Batch {
    x: Tensor,
    labels: Option<Vec<i64>>,
}

/// The TGDP plugin.
pub struct Tgdp {
    config: Config,
    classifier: ScalarNet,
    time_classifier: ScalarNet,
    guidance: ScalarNet,
    /// Source samples drawn from the model, when it is the source.
    pool: Option<Batch>,
    timesteps: usize,
}

/// `[B]` → `[B, 1, …]` to broadcast over a sample of rank `rank`.
fn per_example(v: &Tensor, rank: usize) -> Tensor {
    let mut shape = vec![v.dim(0)];
    shape.extend(std::iter::repeat_n(1, rank - 1));
    v.reshape(&shape)
}

impl Tgdp {
    fn labels_of(
        &self,
        labels: Option<Tensor>,
        b: usize,
        map: bool,
    ) -> Result<Option<Vec<i64>>, AbiError> {
        if !self.config.conditional {
            return Ok(None);
        }
        let Some(l) = labels else {
            return Err(AbiError::other(
                "tgdp: `conditional = true` but the data has no labels (set `labels = true` in [target] and [source.data])",
            ));
        };
        let mut v = l.to_i64_vec();
        v.truncate(b);
        let k = self.config.num_classes as i64;
        for y in &mut v {
            if map && !self.config.label_map.is_empty() {
                *y = *self.config.label_map.get(*y as usize).ok_or_else(|| {
                    AbiError::other(format!("tgdp: target label {y} is not in `label_map`"))
                })? as i64;
            }
            if *y < 0 || *y >= k {
                return Err(AbiError::other(format!(
                    "tgdp: label {y} is outside 0..{k} (num_classes)"
                )));
            }
        }
        Ok(Some(v))
    }

    /// T of the run's schedule, once (`dtx sample` skips `prepare`), and
    /// the time features' scale 1000 / T.
    fn schedule(&mut self, host: &Host) -> Result<(), AbiError> {
        if self.timesteps == 0 {
            self.timesteps = host.num_timesteps()?;
            let scale = 1000.0 / self.timesteps as f32;
            for net in [
                &mut self.classifier,
                &mut self.time_classifier,
                &mut self.guidance,
            ] {
                net.set_time_scale(scale);
            }
        }
        Ok(())
    }

    fn target_batch(&self, host: &Host) -> Result<Batch, AbiError> {
        let (x, labels) = host.dataset_batch("target", self.config.batch)?;
        let labels = self.labels_of(labels, self.config.batch, true)?;
        Ok(Batch { x, labels })
    }

    fn source_batch(&self, host: &Host) -> Result<Batch, AbiError> {
        let b = self.config.batch;
        if let Some(pool) = &self.pool {
            let n = pool.x.dim(0);
            let idx: Vec<i64> = Tensor::rand(&[b], 0.0, n as f32)
                .to_f32_vec()
                .into_iter()
                .map(|u| (u as i64).min(n as i64 - 1))
                .collect();
            let x = pool.x.index_select(0, &Tensor::from_i64(&idx, &[b]));
            let labels = pool
                .labels
                .as_ref()
                .map(|l| idx.iter().map(|&i| l[i as usize]).collect());
            return Ok(Batch { x, labels });
        }
        let (x, labels) = host.dataset_batch("source", b)?;
        let labels = self.labels_of(labels, b, false)?;
        Ok(Batch { x, labels })
    }

    /// Uniform timesteps `[B]` in `0..T` (float) and `sqrt(ᾱ)`, `sqrt(1 − ᾱ)`.
    fn timesteps(&self, host: &Host, b: usize) -> Result<(Tensor, Tensor, Tensor), AbiError> {
        let t_max = self.timesteps as f32;
        let t: Vec<f32> = Tensor::rand(&[b], 0.0, t_max)
            .to_f32_vec()
            .into_iter()
            .map(|u| u.floor().min(t_max - 1.0))
            .collect();
        let t = Tensor::from_f32(&t, &[b]);
        let ab = host.alpha_bar(&t)?;
        Ok((t, ab.sqrt(), ab.rsub(1.0).sqrt()))
    }

    /// `x_t = sqrt(ᾱ) x0 + sqrt(1 − ᾱ) ε` at fresh uniform timesteps:
    /// `(x_t, t, ε, sqrt(1 − ᾱ))`.
    fn noised(
        &self,
        host: &Host,
        x0: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor, Tensor), AbiError> {
        let b = x0.dim(0);
        let r = x0.rank();
        let (t, sa, s1a) = self.timesteps(host, b)?;
        let eps = Tensor::randn(&x0.shape());
        let x_t = per_example(&sa, r) * x0 + per_example(&s1a, r) * &eps;
        Ok((x_t, t, eps, s1a))
    }

    fn log(&self, host: &Host, step: u64, values: &[(&str, &Tensor)]) {
        if step.is_multiple_of(self.config.log_every) {
            for (name, v) in values {
                host.log_scalar(name, v.item() as f64);
            }
        }
    }

    /// Steps 1 and 2: the logistic loss, source and target averaged apart
    /// (c = P(source) = sigmoid(logit): −log c = softplus(−logit),
    /// −log(1 − c) = softplus(logit)).
    fn train_classifier(&self, host: &Host, timed: bool) -> Result<(), AbiError> {
        let (net, steps, name) = if timed {
            (
                &self.time_classifier,
                self.config.time_classifier_steps,
                "time_classifier",
            )
        } else {
            (&self.classifier, self.config.classifier_steps, "classifier")
        };
        let params = net.params();
        let refs: Vec<&Param> = params.iter().collect();
        for step in 0..steps {
            let (zs, zt) = self.domain_logits(host, net, timed)?;
            let loss = losses::classifier(&zs, &zt);
            self.log(host, step, &[(&format!("l_{name}"), &loss)]);
            host.optimizer_step(&refs, loss, self.config.lr)?;
        }
        // accuracy on fresh batches, logged once
        let (zs, zt) = self.domain_logits(host, &net.detached(), timed)?;
        let right = zs.to_f32_vec().iter().filter(|&&z| z > 0.0).count()
            + zt.to_f32_vec().iter().filter(|&&z| z <= 0.0).count();
        host.log_scalar(
            &format!("{name}_accuracy"),
            right as f64 / (2 * self.config.batch) as f64,
        );
        Ok(())
    }

    /// Logits `[B]` of `net` on a fresh source batch and a fresh target
    /// batch, both noised to uniform timesteps when `timed` (c', step 2).
    fn domain_logits(
        &self,
        host: &Host,
        net: &ScalarNet,
        timed: bool,
    ) -> Result<(Tensor, Tensor), AbiError> {
        let mut out = Vec::with_capacity(2);
        for batch in [self.source_batch(host)?, self.target_batch(host)?] {
            let y = batch.labels.as_deref();
            out.push(if timed {
                let (x_t, t, _, _) = self.noised(host, &batch.x)?;
                net.forward(&x_t, Some(&t), y)
            } else {
                net.forward(&batch.x, None, y)
            });
        }
        let zt = out.pop().expect("two batches");
        Ok((out.pop().expect("two batches"), zt))
    }

    /// The ratio estimate exp(−logit) = (1 − c)/c, clipped, without a graph.
    fn ratio(&self, logit: &Tensor) -> Tensor {
        (-logit)
            .clamp(-30.0, self.config.max_ratio.ln())
            .exp()
            .detach()
    }

    /// Step 3: Algorithm 4.
    fn train_guidance(&self, host: &Host) -> Result<(), AbiError> {
        let params = self.guidance.params();
        let refs: Vec<&Param> = params.iter().collect();
        let h = |raw: &Tensor| raw.clamp(-30.0, 30.0).exp();
        // the trained classifiers give targets: evaluated without a graph
        let (classifier, time_classifier) =
            (self.classifier.detached(), self.time_classifier.detached());
        for step in 0..self.config.guidance_steps {
            // source pairs (x0, x_t) ~ p: L_guidance
            let src = self.source_batch(host)?;
            let (xs_t, ts, _, _) = self.noised(host, &src.x)?;
            let target_s = self.ratio(&classifier.forward(&src.x, None, src.labels.as_deref()));
            let raw_s = self
                .guidance
                .forward(&xs_t, Some(&ts), src.labels.as_deref());
            let l_guidance = losses::regression(&h(&raw_s), &target_s);
            let mut loss = l_guidance.clone();
            let mut logged = vec![("l_guidance", l_guidance)];
            // target pairs (x'0, x'_t) ~ q: L_cycle and L_consistence
            if self.config.eta1 > 0.0 || self.config.eta2 > 0.0 {
                let tgt = self.target_batch(host)?;
                let (xt_t, tt, eps, s1a) = self.noised(host, &tgt.x)?;
                let y = tgt.labels.as_deref();
                let (raw_t, grad) = self.guidance.forward_with_input_grad(&xt_t, Some(&tt), y);
                if self.config.eta1 > 0.0 {
                    let target_t = self.ratio(&time_classifier.forward(&xt_t, Some(&tt), y));
                    let l_cycle = losses::regression(&h(&raw_t), &target_t);
                    loss = loss + &l_cycle * self.config.eta1;
                    logged.push(("l_cycle", l_cycle));
                }
                if self.config.eta2 > 0.0 {
                    let labels = y.map(|y| Tensor::from_i64(y, &[y.len()]));
                    let eps_src = host
                        .denoise(&xt_t.detach(), &tt, Which::Source, labels.as_ref())?
                        .detach();
                    // (1 − ᾱ)‖s + ∇log h − ∇log q(x'_t|x'_0)‖² in ε units,
                    // the norm over each whole sample
                    let l_cons = losses::consistency(&s1a, &grad, &eps_src, &eps);
                    loss = loss + &l_cons * self.config.eta2;
                    logged.push(("l_consistence", l_cons));
                }
            }
            let named: Vec<(&str, &Tensor)> = logged.iter().map(|(n, t)| (*n, t)).collect();
            self.log(host, step, &named);
            host.optimizer_step(&refs, loss, self.config.lr)?;
        }
        Ok(())
    }
}

#[hooks]
impl Plugin for Tgdp {
    type Config = Config;
    const NAME: &'static str = "tgdp";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Density-ratio guidance: domain classifiers and a guidance network trained in prepare, the frozen source's score plus ∇log h at sampling";

    fn new(config: Config, host: &Host, model: &ModelInfo) -> Result<Self, AbiError> {
        config.validate()?;
        let image = model.resolution > 0;
        let network = match (config.network, image) {
            (Network::Auto, true) | (Network::Conv, true) => Network::Conv,
            (Network::Auto, false) | (Network::Mlp, false) => Network::Mlp,
            (Network::Conv, false) => {
                return Err(AbiError::config(
                    "network",
                    "\"conv\" needs an image model; this one takes vectors",
                ));
            }
            (Network::Mlp, true) => {
                return Err(AbiError::config(
                    "network",
                    "\"mlp\" needs a vector model; this one takes images",
                ));
            }
        };
        let classes = if config.conditional {
            config.num_classes
        } else {
            0
        };
        let build = |name: &str, time_dim: usize| {
            let scope = host.scope().pp(name);
            let inputs = Inputs {
                time_dim,
                time_scale: 1.0,
                classes,
            };
            match network {
                Network::Conv => {
                    ScalarNet::conv(&scope, model.data_channels, config.channels, inputs)
                }
                _ => ScalarNet::mlp(
                    &scope,
                    model.data_channels,
                    config.hidden,
                    config.depth,
                    inputs,
                ),
            }
        };
        Ok(Tgdp {
            classifier: build("classifier", 0)?,
            time_classifier: build("time_classifier", config.time_dim)?,
            guidance: build("guidance", config.time_dim)?,
            config,
            pool: None,
            timesteps: 0,
        })
    }

    fn prepare(&mut self, ctx: &Prepare<'_>) -> Result<(), AbiError> {
        let host = ctx.host;
        self.schedule(host)?;
        let from_model = match self.config.source {
            SourceFrom::Model => true,
            SourceFrom::Data => false,
            SourceFrom::Auto => match host.dataset_batch("source", 1) {
                Ok(_) => false,
                Err(e) if e.kind == dtx_plugin_api::abi::ErrorKind::UNSUPPORTED => true,
                Err(e) => return Err(e),
            },
        };
        host.log_scalar("source_from_model", if from_model { 1.0 } else { 0.0 });
        if from_model {
            let n = self.config.source_samples;
            let labels = self.config.conditional.then(|| {
                let k = self.config.num_classes as f32;
                Tensor::rand(&[n], 0.0, k)
                    .to_f32_vec()
                    .into_iter()
                    .map(|u| (u as i64).min(self.config.num_classes as i64 - 1))
                    .collect::<Vec<i64>>()
            });
            let lt = labels.as_ref().map(|l| Tensor::from_i64(l, &[n]));
            let x = host.sample_source(n, lt.as_ref())?.detach();
            self.pool = Some(Batch { x, labels });
        }
        self.train_classifier(host, false)?;
        self.train_classifier(host, true)?;
        self.train_guidance(host)
    }

    fn score(&mut self, ctx: &Score<'_>) -> Result<Tensor, AbiError> {
        self.schedule(ctx.host)?;
        let x = ctx.x_t.detach();
        let b = x.dim(0);
        let labels = match (&ctx.labels, self.config.conditional) {
            (Some(l), true) => Some(l.to_i64_vec()),
            (None, true) => {
                return Err(AbiError::other(
                    "tgdp: `conditional = true` but sampling has no class labels (set `sample.label`)",
                ));
            }
            _ => None,
        };
        let t = ctx.t.cast(dtx_plugin_api::DType::F32);
        // evaluated without a graph (tracked weights would leave one behind
        // at every sampling step)
        let (_, grad) =
            self.guidance
                .detached()
                .forward_with_input_grad(&x, Some(&t), labels.as_deref());
        let s1a = ctx.host.alpha_bar(&t)?.rsub(1.0).sqrt();
        debug_assert_eq!(s1a.dim(0), b);
        let scale = per_example(&(s1a * self.config.w), x.rank());
        Ok(&*ctx.eps - scale * grad.detach())
    }
}

dtx_plugin_api::export_plugin!(Tgdp);
