//! A plan-time estimate of the memory a run needs, so that a count far
//! beyond the machine (a batch of a million, ten billion samples) is refused
//! at its key before anything allocates, rather than aborting the process
//! mid-run.
//!
//! The estimate is deliberately rough and errs high only by small factors:
//! - data: every example of a built-in set is generated up front (4 bytes a
//!   value; image folders are bounded by their files and not estimated);
//! - training: the weights with gradients and two Adam moments (4 copies),
//!   plus per example the activations kept for backward, taken as 10 values
//!   per value of every injection point (each point stands for a block of
//!   norms, activations and convolutions);
//! - sampling: the kept samples (twice: drawn and accepted), plus per example
//!   of a batch the forward's activations (3 per injection-point value).
//!
//! It is compared with the machine's physical memory (`MemTotal` of
//! `/proc/meminfo`; 16 GiB where that cannot be read).

use crate::manifest::Manifest;
use crate::model::ModelDescription;

/// Bytes of one stored value (f32).
const VALUE: f64 = 4.0;

/// One estimate that does not fit: the key whose value drives it, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct TooLarge {
    /// The key to lower (`train.batch`).
    pub key: &'static str,
    /// What needs the memory, with the figure.
    pub message: String,
}

pub use crate::util::machine_memory;

const GIB: f64 = crate::util::GIB;

fn gib(bytes: f64) -> String {
    format!("{:.1} GiB", bytes / GIB)
}

/// Values in one example of the model's data.
fn example_values(d: &ModelDescription) -> f64 {
    let side = d.resolution.max(1) as f64;
    if d.resolution == 0 {
        d.data_channels as f64
    } else {
        d.data_channels as f64 * side * side
    }
}

/// Values of every block output (and `temb`) for one example: the
/// activations the estimate scales. Branch points are left out: they are
/// views inside the blocks the outputs already stand for, and counting
/// them would change no memory the forward uses.
fn point_values(d: &ModelDescription) -> f64 {
    d.points
        .iter()
        .filter(|p| !p.name.ends_with(dtx_plugin_api::points::BRANCH_SUFFIX))
        .map(|p| p.channels as f64 * p.height.max(1) as f64 * p.width.max(1) as f64)
        .sum::<f64>()
        .max(example_values(d))
}

/// Every estimate of `m` on model `d` that exceeds `available` bytes.
pub fn check(m: &Manifest, d: &ModelDescription, available: f64) -> Vec<TooLarge> {
    let mut out = Vec::new();
    let example = example_values(d) * VALUE;
    let mut over = |key: &'static str, what: String, bytes: f64| {
        if bytes > available {
            out.push(TooLarge {
                key,
                message: format!(
                    "{what} needs about {} of memory, more than this machine's {}",
                    gib(bytes),
                    gib(available)
                ),
            });
        }
    };
    if let Some(t) = &m.target
        && t.builtin().is_some()
    {
        let n = t.limit.unwrap_or(1000) + t.holdout;
        over(
            if t.limit.is_some() {
                "target.limit"
            } else {
                "target.holdout"
            },
            format!("generating {n} examples of the built-in target set"),
            n as f64 * example,
        );
    }
    if let Some(sd) = m.source.as_ref().and_then(|s| s.data.as_ref())
        && sd.builtin().is_some()
    {
        let n = sd.limit.unwrap_or(10_000);
        over(
            "source.data.limit",
            format!("generating {n} examples of the built-in source set"),
            n as f64 * example,
        );
    }
    let weights = d.total_parameters() as f64 * VALUE;
    if let Some(t) = &m.train {
        let per = point_values(d) * 10.0 * VALUE + 4.0 * example;
        over(
            "train.batch",
            format!("a training step on a batch of {}", t.batch),
            4.0 * weights + t.batch as f64 * per,
        );
    }
    if let Some(s) = &m.sample {
        over(
            "sample.count",
            format!("keeping {} samples", s.count),
            2.0 * s.count as f64 * example,
        );
        let per = point_values(d) * 3.0 * VALUE + 4.0 * example;
        over(
            "sample.batch",
            format!("a sampling step on a batch of {}", s.batch),
            2.0 * weights + s.batch as f64 * per,
        );
    }
    out
}
