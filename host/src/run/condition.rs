//! The run's condition embeddings (`[condition]`): the encoders, the
//! embeddings of the training images (computed once per run, for both
//! flips when the run flips), the embedding the student's forwards see
//! (`Inject::cond`), and the conditions of samples: condition images with
//! ANL's masked sampling, or a text prompt.
//!
//! Training feeds each image's own embedding, c = φ(x) of the image that
//! is noised (Eq. 7 of the ANL paper); validation encodes the held-out
//! images; sampling encodes condition image `k mod n` for sample `k`, with a
//! rectangle masked out of it first (Sec. 3.3).

use super::error::{Context as _, Result, fail, run_error};
use super::student::Student;
use crate::condition::{ConditionPlan, MaskRect, mask_rect, mask_values};
use crate::data::Dataset;
use crate::manifest::{EncoderKind, Sample, TokenKind};
use crate::model::clip::{Clip, ClipTokens};
use crate::model::{Denoiser, Recorder};
use crate::plan::Plan;
use crate::tensor_abi::ConditionService;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use dtx_plugin_api::abi::{AbiError, ErrorKind};
use rand::rngs::StdRng;
use std::cell::RefCell;
use std::rc::Rc;

/// Embeddings `[n, N, D]` of the training images, and of their mirror images.
type Cached<B> = (Tensor<B, 3>, Option<Tensor<B, 3>>);

/// The run's encoder and the embedding its forwards see.
pub(super) struct RunCondition<B: AutodiffBackend> {
    pub(super) plan: ConditionPlan,
    clip: Option<Clip<B>>,
    /// Embeddings `[n, N, D]` of the training images, and of their mirror
    /// images when the run flips.
    cache: RefCell<Option<Cached<B>>>,
    /// The embedding `[B, N, D]` of the batch being denoised.
    pub(super) current: RefCell<Option<Tensor<B, 3>>>,
    /// What samples are conditioned on.
    pub(super) sampling: Option<SampleConditions<B>>,
}

/// Where the conditions of samples come from.
pub(super) enum SampleConditions<B: AutodiffBackend> {
    /// Condition images `k mod n`, masked at rate `delta`.
    Images {
        set: Dataset,
        /// `target`, `held_out` or the path, for `conditions.csv`.
        name: String,
        delta: f64,
        per_sample: bool,
    },
    /// One text embedding `[1, N, D]` for every sample.
    Prompt(Tensor<B, 3>),
}

fn clip_tokens(t: TokenKind) -> ClipTokens {
    match t {
        TokenKind::Pooled => ClipTokens::Pooled,
        TokenKind::Patches => ClipTokens::Patches,
    }
}

impl<B: AutodiffBackend> RunCondition<B> {
    /// Loads the encoder of `plan.condition` (CLIP weights are read here,
    /// before the run folder exists).
    pub(super) fn load(plan: &Plan, device: &B::Device) -> Result<Option<Self>> {
        let Some(c) = plan.condition.clone() else {
            return Ok(None);
        };
        let clip = match (&c.encoder, &c.clip_dir) {
            (EncoderKind::Clip, Some(dir)) => Some(
                Clip::<B>::load(dir, device)
                    .with_context(|| format!("[condition] path `{}`", dir.display()))?,
            ),
            _ => None,
        };
        Ok(Some(RunCondition {
            plan: c,
            clip,
            cache: RefCell::new(None),
            current: RefCell::new(None),
            sampling: None,
        }))
    }

    /// Sets what samples are conditioned on: `sample.prompt`, else the
    /// images `sample.condition` names (`target` by default).
    pub(super) fn sample_images(
        &mut self,
        plan: &Plan,
        sample: &Sample,
        target: Option<&Dataset>,
        held_out: Option<&Dataset>,
        data_shape: &[usize],
    ) -> Result<()> {
        if let Some(p) = &sample.prompt {
            return self.set_prompt(p);
        }
        let name = sample.condition.clone().unwrap_or_else(|| "target".into());
        let set = match name.as_str() {
            "target" => target.cloned().ok_or_else(|| {
                run_error!("`sample.condition = \"target\"`: the run has no [target] images")
            })?,
            "held_out" => held_out.filter(|h| !h.is_empty()).cloned().ok_or_else(|| {
                run_error!("`sample.condition = \"held_out\"`: the run holds out no target images (set `target.holdout`)")
            })?,
            path => load_images(&plan.manifest.resolve_path(std::path::Path::new(path)), data_shape)
                .with_context(|| format!("`sample.condition = \"{path}\"`"))?,
        };
        if set.sample_shape != data_shape {
            fail!(
                "`sample.condition`: `{}` gives images of shape {:?}, the model takes {:?}",
                set.source,
                set.sample_shape,
                data_shape
            );
        }
        self.sampling = Some(SampleConditions::Images {
            set,
            name,
            delta: sample
                .mask_rate
                .unwrap_or(crate::condition::DEFAULT_MASK_RATE),
            per_sample: sample.mask_per_sample,
        });
        Ok(())
    }
}

impl<B: AutodiffBackend> RunCondition<B> {
    /// The embedding `[1, N, D]` of `prompt` through the CLIP text tower.
    pub(super) fn encode_prompt(&self, prompt: &str) -> Result<Tensor<B, 3>, AbiError> {
        let clip = match (&self.clip, self.plan.tokens) {
            (Some(clip), TokenKind::Pooled) => clip,
            (Some(_), TokenKind::Patches) => {
                return Err(AbiError::new(
                    ErrorKind::UNSUPPORTED,
                    "text prompts need `[condition] tokens = \"pooled\"`: patch tokens embed images only",
                ));
            }
            (None, _) => {
                return Err(AbiError::new(
                    ErrorKind::UNSUPPORTED,
                    "text prompts need a CLIP text tower (`[condition] encoder = \"clip\"`): the embedded `unet` encoder embeds images only",
                ));
            }
        };
        let e = clip.encode_text(&[prompt]).map_err(abi)?;
        Ok(Tensor::from_inner(e.inner()))
    }

    /// Conditions every sample on `prompt` (`sample.prompt`, `--prompt`).
    pub(super) fn set_prompt(&mut self, prompt: &str) -> Result<()> {
        let e = self
            .encode_prompt(prompt)
            .map_err(|e| run_error!("the prompt {prompt:?}: {}", e.message))?;
        self.sampling = Some(SampleConditions::Prompt(e));
        Ok(())
    }
}

/// Condition images from a file or a folder, at the model's side.
fn load_images(path: &std::path::Path, data_shape: &[usize]) -> Result<Dataset> {
    let res = *data_shape.last().unwrap_or(&32);
    if path.is_dir() {
        return Ok(crate::data::load_folder(path, res, false)?);
    }
    let img = image::open(path)
        .map_err(|e| run_error!("cannot read image `{}`: {e}", path.display()))?
        .to_rgb8();
    let img = crate::data::pixels::resize_crop(img, res as u32);
    Ok(Dataset {
        samples: crate::data::chw_from_rgb(&img),
        sample_shape: vec![3, res, res],
        labels: None,
        class_names: Vec::new(),
        masks: None,
        source: path.display().to_string(),
    })
}

fn abi(e: impl std::fmt::Display) -> AbiError {
    AbiError::new(ErrorKind::OTHER, e.to_string())
}

impl<B: AutodiffBackend> Student<B> {
    fn run_condition(&self) -> Result<&RunCondition<B>, AbiError> {
        self.condition.as_ref().ok_or_else(|| {
            AbiError::new(
                ErrorKind::UNSUPPORTED,
                "this run has no condition encoder (add a [condition] table to the manifest)",
            )
        })
    }

    /// Embeddings `[B, N, D]` of images `[B, C, H, W]` in data space, each
    /// multiplied by `mask` (`[B, 1, H, W]`, 0 = masked) in [0, 1] space
    /// first; untracked.
    pub(super) fn encode(
        &self,
        x: Tensor<B, 4>,
        mask: Option<Tensor<B, 4>>,
    ) -> Result<Tensor<B, 3>, AbiError> {
        let c = self.run_condition()?;
        let x = Tensor::<B, 4>::from_inner(x.inner());
        let x01 = (x + 1.0) * 0.5;
        let x01 = match mask {
            Some(m) => x01 * m,
            None => x01,
        };
        let out = match &c.clip {
            // CLIP's preprocessing repeats a grey channel to RGB itself
            Some(clip) => clip
                .encode_image(x01, clip_tokens(c.plan.tokens))
                .map_err(abi)?,
            None => self.unet_tokens(&c.plan, x01 * 2.0 - 1.0)?,
        };
        Ok(Tensor::from_inner(out.inner()))
    }

    /// The embedded encoder: the frozen source at `t` on √ᾱ_t·x, each
    /// point average-pooled to `grid × grid` tokens, zero-padded to the
    /// widest point's channels and standardised per token.
    fn unet_tokens(&self, plan: &ConditionPlan, x: Tensor<B, 4>) -> Result<Tensor<B, 3>, AbiError> {
        let b = x.dims()[0];
        let dev = x.device();
        let t = plan.t.min(self.alpha_bars.len() - 1);
        let scaled = x * (self.alpha_bars[t].sqrt() as f32);
        let ts = Tensor::<B, 1>::from_data(TensorData::new(vec![t as f32; b], [b]), &dev);
        let names: Vec<String> = plan.points.iter().map(|p| p.0.clone()).collect();
        let mut record = Recorder::<B, 4>::new(&names);
        match self
            .net
            .forward(&self.source, scaled, ts, None, &mut record, None)
        {
            Ok(_) => {}
            Err(never) => match never {},
        }
        let (_, d) = plan.shape;
        let g = plan.grid;
        let mut tokens = Vec::new();
        for (name, ch, ..) in &plan.points {
            let h = record
                .blocks
                .remove(name)
                .ok_or_else(|| abi(format!("the source model has no point `{name}`")))?;
            let h = Tensor::<B, 4>::from_inner(h.inner()); // untracked
            let pooled = burn::tensor::module::adaptive_avg_pool2d(h, [g, g]);
            let t = pooled.reshape([b, *ch, g * g]).swap_dims(1, 2); // [B, g², C]
            let t = if *ch < d {
                Tensor::cat(vec![t, Tensor::zeros([b, g * g, d - ch], &dev)], 2)
            } else {
                t
            };
            tokens.push(t);
        }
        let c = Tensor::cat(tokens, 1);
        let mean = c.clone().mean_dim(2);
        let centred = c - mean;
        let var = centred.clone().powf_scalar(2.0).mean_dim(2);
        Ok(centred / (var + 1e-5).sqrt())
    }

    /// The embedding of `prompt` through the CLIP text tower.
    pub(super) fn encode_prompt(&self, prompt: &str) -> Result<Tensor<B, 3>, AbiError> {
        self.run_condition()?.encode_prompt(prompt)
    }

    /// Sets the embedding the student's forwards see.
    pub(super) fn set_condition(&self, c: Option<Tensor<B, 3>>) {
        if let Some(rc) = &self.condition {
            *rc.current.borrow_mut() = c;
        }
    }

    /// The embedding the student's forwards see now.
    pub(super) fn current_condition(&self) -> Option<Tensor<B, 3>> {
        self.condition
            .as_ref()
            .and_then(|c| c.current.borrow().clone())
    }

    /// Encodes every training image once (and its mirror image when the
    /// run flips), in batches of `batch`.
    pub(super) fn cache_target(
        &self,
        target: &Dataset,
        flip: bool,
        batch: usize,
        device: &B::Device,
    ) -> Result<()> {
        let Some(c) = &self.condition else {
            return Ok(());
        };
        let idx: Vec<usize> = (0..target.len()).collect();
        let encode_all = |flipped: bool| -> Result<Tensor<B, 3>> {
            let mut parts = Vec::new();
            for chunk in idx.chunks(batch.max(1)) {
                let flips = vec![flipped; chunk.len()];
                let (x, _) = target.to_tensor_flipped::<B, 4>(chunk, Some(&flips), device);
                parts.push(self.encode(x, None)?);
            }
            Ok(Tensor::cat(parts, 0))
        };
        let plain = encode_all(false)?;
        let mirrored = if flip { Some(encode_all(true)?) } else { None };
        *c.cache.borrow_mut() = Some((plain, mirrored));
        Ok(())
    }

    /// Sets the condition of a training batch: the cached embeddings of
    /// `indices` (mirrored where `flips` says so).
    pub(super) fn condition_batch(
        &self,
        indices: &[usize],
        flips: Option<&[bool]>,
        device: &B::Device,
    ) -> Result<()> {
        let Some(c) = &self.condition else {
            return Ok(());
        };
        let cache = c.cache.borrow();
        let (plain, mirrored) = cache
            .as_ref()
            .ok_or_else(|| run_error!("the training images' embeddings were not computed"))?;
        let rows = |t: &Tensor<B, 3>| {
            let ids: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
            let ids = Tensor::<B, 1, burn::tensor::Int>::from_data(
                TensorData::new(ids, [indices.len()]),
                device,
            );
            t.clone().select(0, ids)
        };
        let mut out = rows(plain);
        if let (Some(m), Some(f)) = (mirrored, flips) {
            let mask: Vec<f32> = f.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect();
            let mask = Tensor::<B, 1>::from_data(TensorData::new(mask, [f.len()]), device)
                .reshape([f.len() as i32, 1, 1]);
            let m = rows(m);
            out = out.clone() + (m - out) * mask;
        }
        drop(cache);
        self.set_condition(Some(out));
        Ok(())
    }

    /// Sets the condition of samples `first .. first + n` of the run:
    /// condition image `k mod len` masked by a rectangle from `rng` (one
    /// per batch, or one per sample), or the prompt's embedding. Returns
    /// each sample's condition image and mask.
    pub(super) fn condition_samples(
        &self,
        first: usize,
        n: usize,
        rng: &mut StdRng,
        device: &B::Device,
    ) -> Result<Vec<(usize, MaskRect)>> {
        let Some(c) = &self.condition else {
            return Ok(Vec::new());
        };
        match &c.sampling {
            None => Ok(Vec::new()),
            Some(SampleConditions::Prompt(e)) => {
                self.set_condition(Some(e.clone().repeat_dim(0, n)));
                Ok(Vec::new())
            }
            Some(SampleConditions::Images {
                set,
                delta,
                per_sample,
                ..
            }) => {
                let [h, w] = [set.sample_shape[1], set.sample_shape[2]];
                let idx: Vec<usize> = (0..n).map(|i| (first + i) % set.len()).collect();
                let rects: Vec<MaskRect> = if *per_sample {
                    (0..n).map(|_| mask_rect(rng, h, w, *delta)).collect()
                } else {
                    vec![mask_rect(rng, h, w, *delta); n]
                };
                let mask = Tensor::<B, 4>::from_data(
                    TensorData::new(mask_values(&rects, h, w), [n, 1, h, w]),
                    device,
                );
                let (x, _) = set.to_tensor::<B, 4>(&idx, device);
                let e = self.encode(x, Some(mask))?;
                self.set_condition(Some(e));
                Ok(idx.into_iter().zip(rects).collect())
            }
        }
    }

    /// The name `conditions.csv` gives the condition images.
    pub(super) fn condition_source(&self) -> Option<String> {
        match self.condition.as_ref()?.sampling.as_ref()? {
            SampleConditions::Images { name, .. } => Some(name.clone()),
            SampleConditions::Prompt(_) => None,
        }
    }
}

impl<B: AutodiffBackend> ConditionService<B> for Rc<Student<B>> {
    fn encode_image(&self, x: Tensor<B, 4>) -> Result<Tensor<B, 3>, AbiError> {
        self.encode(x, None)
    }
    fn encode_text(&self, prompt: &str) -> Result<Tensor<B, 3>, AbiError> {
        self.encode_prompt(prompt)
    }
}
