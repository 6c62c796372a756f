//! The `[eval]` section of a run: the extractor and reference images are
//! loaded before training (a bad weights file or folder fails the run before
//! it costs anything), and the metrics run over the samples at the end.

use super::drawn::Drawn;
use super::error::{Context as _, Result, fail, run_error};
use crate::data::Dataset;
use crate::eval::{EvalInputs, Evaluation, Extractor, KidSettings, evaluate};
use crate::manifest::Reference;
use crate::plan::Plan;
use burn::tensor::backend::Backend;

/// What a run needs to evaluate its samples.
pub(super) struct EvalSetup<B: Backend> {
    extractor: Extractor<B>,
    metrics: Vec<String>,
    /// Reference images, one example's shape, and where they come from.
    reference: (Vec<f32>, Vec<usize>, String),
    /// The training images.
    train: Option<(Vec<f32>, Vec<usize>)>,
    subsets: usize,
    subset_size: usize,
}

/// The run's evaluation, or `None` when `[eval]` asks for no metric.
pub(super) fn prepare<B: Backend>(
    plan: &Plan,
    example: &[usize],
    target: Option<&Dataset>,
    held_out: Option<&Dataset>,
    device: &B::Device,
) -> Result<Option<EvalSetup<B>>> {
    let Some(e) = plan
        .manifest
        .manifest
        .eval
        .as_ref()
        .filter(|e| !e.metrics.is_empty())
    else {
        return Ok(None);
    };
    let weights = e
        .inception_weights
        .as_deref()
        .map(|p| plan.manifest.resolve_path(p));
    let extractor = Extractor::load(&e.extractor, weights.as_deref(), device)
        .with_context(|| format!("[eval] extractor `{}`", e.extractor))?;
    let shape_of = |d: &Dataset| d.sample_shape.clone();
    let reference = match (&e.reference, held_out, target) {
        (Some(Reference::HeldOut) | None, Some(h), _) => (
            h.samples.clone(),
            shape_of(h),
            "held-out target images".to_owned(),
        ),
        (Some(Reference::HeldOut), None, _) => fail!(
            "`eval.reference = \"held_out\"`, but the target holds out no images: set `target.holdout` (the number of target images kept out of training), or use `eval.reference = \"target\"`"
        ),
        (Some(Reference::Target) | None, _, Some(t)) => {
            let mut all = t.samples.clone();
            if let Some(h) = held_out {
                all.extend_from_slice(&h.samples);
            }
            (
                all,
                shape_of(t),
                "the target set, training images included".to_owned(),
            )
        }
        (Some(Reference::Folder(f)), _, _) => {
            let path = plan.manifest.resolve_path(f);
            let res = example.get(1).copied().unwrap_or(32);
            let ds = crate::data::load_folder(&path, res, false)
                .map_err(|err| run_error!("`eval.reference`: {err}"))?;
            (
                ds.samples.clone(),
                shape_of(&ds),
                format!("`{}`", path.display()),
            )
        }
        (_, _, None) => fail!(
            "`[eval]` compares samples with target images, but there is no [target]: set `eval.reference` to a folder of images"
        ),
    };
    if reference.1.len() != 3 {
        fail!(
            "`[eval]` metrics need image data; the reference set holds examples of shape {:?}",
            reference.1
        );
    }
    Ok(Some(EvalSetup {
        extractor,
        metrics: e.metrics.clone(),
        reference,
        train: target.map(|t| (t.samples.clone(), shape_of(t))),
        subsets: e.kid_subsets,
        subset_size: e.kid_subset_size,
    }))
}

impl<B: Backend> EvalSetup<B> {
    /// Whether sampling must pair each sample with the source model's.
    pub(super) fn wants_source(&self) -> bool {
        self.metrics.iter().any(|m| m == "source_distance")
    }

    /// The metrics over the run's samples, printed to `log` and written to
    /// `eval.json` and `metrics.jsonl`.
    pub(super) fn record(
        &self,
        drawn: &Drawn,
        example: &[usize],
        seed: u64,
        device: &B::Device,
        dir: &mut super::dir::RunDir,
        log: &mut dyn std::io::Write,
    ) -> Result<Evaluation> {
        let evaluation = self.evaluate(drawn, example, seed, device)?;
        for line in evaluation.lines() {
            writeln!(log, "{line}")?;
        }
        let json = evaluation.to_json();
        dir.log(&serde_json::json!({ "eval": json }))?;
        dir.write("eval.json", serde_json::to_string_pretty(&json)?.as_bytes())?;
        Ok(evaluation)
    }

    /// The metrics over the run's samples.
    fn evaluate(
        &self,
        drawn: &Drawn,
        example: &[usize],
        seed: u64,
        device: &B::Device,
    ) -> Result<Evaluation> {
        let inputs = EvalInputs {
            samples: (&drawn.accepted, example),
            reference: (
                &self.reference.0,
                &self.reference.1,
                self.reference.2.clone(),
            ),
            train: self
                .train
                .as_ref()
                .map(|(v, s)| (v.as_slice(), s.as_slice())),
            source_samples: self.wants_source().then_some(drawn.source.as_slice()),
        };
        let kid = KidSettings {
            subsets: self.subsets,
            max_subset_size: self.subset_size,
            seed,
        };
        evaluate(&self.extractor, &self.metrics, &inputs, kid, device).context("[eval]")
    }
}
