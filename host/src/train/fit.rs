//! The training loop, whatever computes the loss: [`fit`] asks a
//! [`Trainee`] for each step's named loss terms, sums them (a non-finite
//! term is an error naming it), takes one optimizer step of every trainable
//! parameter of the session at the step's rate ([`Recipe`]: linear warmup,
//! then constant) with global-norm clipping, moves the EMA, collects what
//! plugins logged, and hands the trainee the step's [`StepRecord`]. The run
//! (`run/fit.rs`) is the trainee: it draws each batch, asks the objective
//! and the plugins for the terms, and keeps `metrics.jsonl`, validation and
//! checkpoints.

use super::ema::Ema;
use super::optim::{AdamConfig, Optimizer, Rule};
use crate::tensor_abi::Session;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use dtx_plugin_api::abi::AbiError;
use std::cell::RefCell;
use std::ops::Range;
use std::time::{Duration, Instant};

/// How the parameters train: the update rule and its hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recipe {
    /// The rate after warmup.
    pub lr: f64,
    /// Steps of linear warmup from 0.
    pub warmup: u64,
    /// The update rule.
    pub rule: Rule,
    /// Weight decay λ.
    pub weight_decay: f64,
    /// The gradient's global L2 norm is clipped to this.
    pub grad_clip: Option<f64>,
}

impl Recipe {
    /// The learning rate of step `step` (0-based): linear warmup from 0 to
    /// `lr` over `warmup` steps, then constant.
    pub fn lr_at(&self, step: u64) -> f64 {
        if self.warmup == 0 {
            self.lr
        } else {
            self.lr * ((step + 1) as f64 / self.warmup as f64).min(1.0)
        }
    }
}

/// What a training step did, for the run's record.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    /// Each loss term's value, in the order given.
    pub terms: TermValues,
    /// Their sum, the loss that was minimised.
    pub loss: f64,
    /// The step's learning rate.
    pub lr: f64,
    /// The gradient's global norm before clipping.
    pub grad_norm: f32,
    /// What plugins logged during the step (`<plugin>.<name>`).
    pub logs: Vec<(String, f64)>,
    /// How long computing the terms and the update took.
    pub elapsed: Duration,
}

/// What [`fit`] trains.
pub trait Trainee<B: AutodiffBackend> {
    /// What a step may fail with.
    type Error: From<FitError>;

    /// The named scalar loss terms of step `step` (0-based), `[1]` each.
    fn terms(&mut self, step: u64) -> Result<Vec<(String, Tensor<B, 1>)>, Self::Error>;

    /// The optimizer (shared with the `optimizer_step` service) and the EMA
    /// the update moves.
    fn state(&mut self) -> (&RefCell<Optimizer<B>>, Option<&mut Ema<B>>);

    /// Where a non-finite term at `step` stopped training, and what is kept
    /// to resume from.
    fn diverged(&self, step: u64) -> (String, String);

    /// After step `step`'s update.
    fn after(&mut self, step: u64, record: StepRecord) -> Result<(), Self::Error>;
}

/// Trains `trainee` over `steps` with `recipe`: per step its terms, the
/// update ([`step`]), then its [`Trainee::after`].
pub fn fit<B: AutodiffBackend, T: Trainee<B>>(
    trainee: &mut T,
    recipe: &Recipe,
    steps: Range<u64>,
) -> Result<(), T::Error> {
    for s in steps {
        let timer = Instant::now();
        let terms = trainee.terms(s)?;
        let result = {
            let (optimizer, ema) = trainee.state();
            step(recipe, &mut optimizer.borrow_mut(), ema, s, &terms)
        };
        let mut record = result.map_err(|e| match e {
            FitError::NonFinite {
                term, value, all, ..
            } => {
                let (at, kept) = trainee.diverged(s);
                FitError::NonFinite {
                    at,
                    term,
                    value,
                    all,
                    kept,
                }
            }
            e => e,
        })?;
        record.elapsed = timer.elapsed();
        trainee.after(s, record)?;
    }
    Ok(())
}

/// Why a training step failed.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// A loss term is NaN or infinite.
    #[error("{at}: loss term `{term}` is {value} ({all}); {kept}")]
    NonFinite {
        /// Where it happened (`training stopped at step 12`).
        at: String,
        /// The term.
        term: String,
        /// Its value.
        value: f64,
        /// Every term with its value.
        all: String,
        /// What is kept to resume from.
        kept: String,
    },
    /// Nothing to minimise.
    #[error("no loss terms")]
    NoTerms,
    /// The session, or the optimizer's step (e.g. a term that is not a
    /// scalar).
    #[error(transparent)]
    Abi(#[from] AbiError),
}

/// Each loss term's value by name, in order.
pub type TermValues = Vec<(String, f64)>;

/// The value of a one-element tensor (NaN if it has none).
fn value_of<B: AutodiffBackend>(t: &Tensor<B, 1>) -> f64 {
    t.clone()
        .into_data()
        .iter::<f64>()
        .next()
        .unwrap_or(f64::NAN)
}

/// Adds up named scalar loss terms; returns the sum and each term's value.
/// A NaN or infinite term is an error naming it and every term's value
/// ([`fit`] says where it happened and what is kept).
pub fn sum_terms<B: AutodiffBackend>(
    terms: &[(String, Tensor<B, 1>)],
) -> Result<(Tensor<B, 1>, TermValues), FitError> {
    let mut total: Option<Tensor<B, 1>> = None;
    let mut values = Vec::with_capacity(terms.len());
    for (name, term) in terms {
        let t1 = term.clone().reshape([1]);
        let v = value_of(&t1);
        if !f64::is_finite(v) {
            let all: Vec<String> = terms
                .iter()
                .map(|(n, t)| format!("{n} = {}", value_of(&t.clone().reshape([1]))))
                .collect();
            return Err(FitError::NonFinite {
                at: String::new(),
                term: name.clone(),
                value: v,
                all: all.join(", "),
                kept: String::new(),
            });
        }
        values.push((name.clone(), v));
        total = Some(match total {
            Some(acc) => acc + t1,
            None => t1,
        });
    }
    Ok((total.ok_or(FitError::NoTerms)?, values))
}

/// Training step `step` (0-based) from its loss `terms`: their sum is
/// minimised by one step of `optimizer` on every trainable parameter of
/// the session at the recipe's rate, then `ema` follows the new values.
pub fn step<B: AutodiffBackend>(
    recipe: &Recipe,
    optimizer: &mut Optimizer<B>,
    ema: Option<&mut Ema<B>>,
    step: u64,
    terms: &[(String, Tensor<B, 1>)],
) -> Result<StepRecord, FitError> {
    let (total, values) = sum_terms::<B>(terms)?;
    let loss = value_of(&total);
    let lr = recipe.lr_at(step);
    let config = AdamConfig {
        rule: recipe.rule,
        lr: lr as f32,
        weight_decay: recipe.weight_decay as f32,
        ..Default::default()
    };
    let clip = recipe.grad_clip.map(|c| c as f32);
    let total = total.into_primitive().tensor();
    let grad_norm = Session::<B>::with(|s| {
        let ids = s.params.trainable_ids();
        optimizer.step_clipped(&mut s.params, total, &ids, config, clip)
    })??;
    if let Some(e) = ema {
        Session::<B>::with(|s| e.update(&s.params))?;
    }
    let logs = Session::<B>::with(|s| s.services.take_logs())?;
    Ok(StepRecord {
        terms: values,
        loss,
        lr,
        grad_norm,
        logs,
        elapsed: Duration::ZERO,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_rises_linearly_then_holds() {
        let r = Recipe {
            lr: 1.0,
            warmup: 4,
            rule: Rule::AdamW,
            weight_decay: 0.0,
            grad_clip: None,
        };
        let lrs: Vec<f64> = (0..6).map(|s| r.lr_at(s)).collect();
        assert_eq!(lrs, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
        assert_eq!(Recipe { warmup: 0, ..r }.lr_at(0), 1.0);
    }
}
