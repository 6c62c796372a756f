//! What sampling produced ([`Drawn`]): the accepted samples with what
//! each was drawn for, every filter's score of every drawn sample, and
//! what plugins logged while sampling; and [`record`], which writes it to
//! the run folder and `metrics.jsonl`.

use super::error::Result;
use crate::manifest::Sample;
use std::collections::HashMap;

/// The filters' bookkeeping at the end of a run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SamplingStats {
    /// `sample.count`.
    pub requested: usize,
    /// Samples kept.
    pub accepted: usize,
    /// Samples drawn in all (accepted and rejected).
    pub drawn: usize,
    /// Rejections per filter plugin, by name.
    pub rejected: std::collections::BTreeMap<String, usize>,
}

impl SamplingStats {
    /// Accepted over drawn (1 when nothing was drawn).
    pub fn acceptance_rate(&self) -> f64 {
        if self.drawn == 0 {
            1.0
        } else {
            self.accepted as f64 / self.drawn as f64
        }
    }
}

/// Logs and writes what sampling produced: the log lines, the `sample`
/// record in `metrics.jsonl`, the samples (with `labels.csv` and the masks
/// they followed); returns the record and the accepted samples' classes.
pub(super) fn record(
    drawn: &Drawn,
    sm: &Sample,
    dir: &mut super::dir::RunDir,
    log: &mut dyn std::io::Write,
    example: &[usize],
    target: Option<&crate::data::Dataset>,
) -> Result<(SamplingStats, Option<Vec<i64>>)> {
    writeln!(
        log,
        "sampled {} of {} ({} drawn)",
        drawn.accepted_count(),
        sm.count,
        drawn.attempts
    )?;
    for (p, r) in &drawn.rejected {
        writeln!(log, "  filter `{p}` rejected {r}")?;
    }
    let stats = SamplingStats {
        requested: sm.count,
        accepted: drawn.accepted_count(),
        drawn: drawn.attempts,
        rejected: drawn.rejected.clone().into_iter().collect(),
    };
    dir.log(&serde_json::json!({"sample": {"requested": sm.count, "accepted": stats.accepted, "drawn": stats.drawn, "acceptance_rate": stats.acceptance_rate(), "rejected": stats.rejected}}))?;
    if !drawn.rejected.is_empty() || stats.accepted < sm.count {
        writeln!(
            log,
            "  acceptance rate {:.1}%",
            100.0 * stats.acceptance_rate()
        )?;
    }
    let labels = (!drawn.labels.is_empty()).then(|| drawn.labels.clone());
    super::report::write_samples(dir, &drawn.accepted, example, target, labels.as_deref())?;
    if let [_, h, w] = example[..] {
        super::report::write_masks(dir, &drawn.masks, [h, w])?;
    }
    if let Some(source) = &drawn.condition_source {
        let mut csv = String::from("file,condition,image,top,left,height,width\n");
        for (i, (k, r)) in drawn.conditions.iter().enumerate() {
            csv.push_str(&format!(
                "{i:05}.png,{source},{k},{},{},{},{}\n",
                r.top, r.left, r.height, r.width
            ));
        }
        std::fs::create_dir_all(dir.path.join("samples"))?;
        std::fs::write(dir.path.join("samples").join("conditions.csv"), csv)?;
    }
    if !drawn.scores.is_empty() {
        // `sample`: the saved sample (`samples/{sample:05}.png` for images,
        // row `sample` of `samples.json` for vectors); empty when rejected
        let mut csv = String::from("drawn,plugin,score,keep,sample\n");
        for r in &drawn.scores {
            let saved = r.saved.map(|i| i.to_string()).unwrap_or_default();
            csv.push_str(&format!(
                "{},{},{},{},{saved}\n",
                r.drawn, r.plugin, r.score, r.keep
            ));
        }
        std::fs::create_dir_all(dir.path.join("samples"))?;
        std::fs::write(dir.path.join("samples").join("scores.csv"), csv)?;
    }
    for (batch, key, value) in &drawn.logs {
        dir.log(&serde_json::json!({"sampling_batch": batch, "key": key, "value": value}))?;
    }
    Ok((stats, labels))
}

/// What sampling produced.
pub(super) struct Drawn {
    /// Accepted samples, flat, example after example.
    pub(super) accepted: Vec<f32>,
    /// The source model's samples from the accepted samples' initial noise
    /// (empty unless asked for).
    pub(super) source: Vec<f32>,
    /// Scalars per example.
    pub(super) per_example: usize,
    /// Examples drawn in all.
    pub(super) attempts: usize,
    /// Rejections per filter plugin.
    pub(super) rejected: HashMap<String, usize>,
    /// The class each accepted sample was drawn for (empty when the run
    /// samples without labels).
    pub(super) labels: Vec<i64>,
    /// The mask each accepted sample was conditioned on, `[H, W]` each,
    /// flat (empty without `sample.masks`).
    pub(super) masks: Vec<i64>,
    /// The condition image (its index) and the masked rectangle of each
    /// accepted sample (empty unless the run conditions on images).
    pub(super) conditions: Vec<(usize, crate::condition::MaskRect)>,
    /// Where the condition images came from (`target`, `held_out`, a path).
    pub(super) condition_source: Option<String>,
    /// Every filter's score of every drawn sample, in drawing order.
    pub(super) scores: Vec<ScoreRow>,
    /// What plugins logged while sampling (`score`, `filter` and the
    /// hooks they ran): `(batch, <plugin>.<name>, value)`.
    pub(super) logs: Vec<(usize, String, f64)>,
}

impl Drawn {
    pub(super) fn accepted_count(&self) -> usize {
        self.accepted.len() / self.per_example.max(1)
    }
}

/// One sampled batch as [`Drawn::accept`] reads it.
pub(super) struct Batch<'a> {
    /// The samples, flat.
    pub(super) values: &'a [f32],
    /// Whether every filter keeps each.
    pub(super) keep: &'a [bool],
    /// Each filter's scores and decisions on the batch, in manifest order.
    pub(super) filters: &'a [FilterScores],
    /// The class each was drawn for.
    pub(super) labels: Option<&'a [i64]>,
    /// The index of the mask each followed (`sample.masks`).
    pub(super) mask_idx: &'a [usize],
    /// The condition image each was drawn for.
    pub(super) conditions: &'a [(usize, crate::condition::MaskRect)],
    /// The source's sample from the same noise, flat.
    pub(super) source: Option<&'a [f32]>,
}

/// One filter plugin's answer on a batch.
pub(super) struct FilterScores {
    /// The plugin.
    pub(super) plugin: String,
    /// Its score of each sample.
    pub(super) scores: Vec<f32>,
    /// Its decision on each sample.
    pub(super) keep: Vec<bool>,
}

/// One filter's score of one drawn sample (`samples/scores.csv`).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ScoreRow {
    /// The sample's index among all drawn (accepted and rejected).
    pub(super) drawn: usize,
    /// The filter plugin.
    pub(super) plugin: String,
    /// Its score.
    pub(super) score: f32,
    /// Its decision.
    pub(super) keep: bool,
    /// The index of the saved sample, when it was accepted.
    pub(super) saved: Option<usize>,
}

impl Drawn {
    /// Keeps the samples of `batch` that every filter kept, with their
    /// labels, masks, conditions and source samples, until `count` are
    /// accepted; returns how many it kept.
    pub(super) fn accept(
        &mut self,
        batch: &Batch,
        masks: Option<&crate::data::Dataset>,
        count: usize,
    ) -> usize {
        let per_example = self.per_example;
        let first = self.attempts - batch.keep.len();
        let mut kept = 0;
        for (i, chunk) in batch.values.chunks(per_example).enumerate() {
            let saved =
                (batch.keep[i] && self.accepted_count() < count).then(|| self.accepted_count());
            for f in batch.filters {
                self.scores.push(ScoreRow {
                    drawn: first + i,
                    plugin: f.plugin.clone(),
                    score: f.scores[i],
                    keep: f.keep[i],
                    saved,
                });
            }
            if saved.is_none() {
                continue;
            }
            self.accepted.extend_from_slice(chunk);
            if let Some(v) = batch.labels {
                self.labels.push(v[i]);
            }
            if let Some(m) = masks {
                let per = m.mask_size();
                let k = batch.mask_idx[i];
                self.masks.extend_from_slice(
                    &m.masks.as_ref().expect("checked by sample_masks")[k * per..(k + 1) * per],
                );
            }
            if let Some(c) = batch.conditions.get(i) {
                self.conditions.push(*c);
            }
            if let Some(s) = batch.source {
                self.source
                    .extend_from_slice(&s[i * per_example..(i + 1) * per_example]);
            }
            kept += 1;
        }
        kept
    }
}
