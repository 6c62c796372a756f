//! The `[eval]` section's checks: metric and extractor names, the
//! Inception weights, KID settings, and samples to evaluate.

use super::{Checks, path};
use crate::manifest::schema::{EXTRACTORS, METRICS, Manifest};
use crate::util::nearest;
use std::collections::HashSet;

/// "did you mean `x`? (metrics: `a`, `b`)" for a name not in `known`.
fn one_of(name: &str, known: &[&str], what: &str) -> String {
    let list = known
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match nearest(name, known.iter().copied()) {
        Some(best) => format!("did you mean `{best}`? ({what}: {list})"),
        None => format!("{what} are {list}"),
    }
}

impl Checks<'_> {
    pub(super) fn eval(&mut self, manifest: &Manifest) {
        let Some(eval) = &manifest.eval else {
            return;
        };
        let mut seen = HashSet::new();
        for (i, metric) in eval.metrics.iter().enumerate() {
            let at = path("eval.metrics").index(i);
            if metric.trim().is_empty() {
                self.report(
                    &at,
                    "manifest::empty",
                    format!("`{at}` is an empty metric name"),
                    None,
                );
            } else if !METRICS.contains(&metric.as_str()) {
                let help = one_of(metric, &METRICS, "metrics");
                self.report(
                    &at,
                    "manifest::unknown-metric",
                    format!("unknown metric `{metric}`"),
                    Some(help),
                );
            } else if !seen.insert(metric.as_str()) {
                self.report(
                    &at,
                    "manifest::duplicate",
                    format!("metric `{metric}` is listed twice"),
                    None,
                );
            }
        }
    }

    pub(super) fn eval_settings(&mut self, manifest: &Manifest) {
        let Some(eval) = &manifest.eval else {
            return;
        };
        if eval.reference == Some(crate::manifest::Reference::HeldOut)
            && manifest.target.as_ref().is_none_or(|t| t.holdout == 0)
        {
            self.report(
                &path("eval.reference"),
                "manifest::no-holdout",
                "`eval.reference = \"held_out\"` needs held-out examples, but `target.holdout` is 0"
                    .to_owned(),
                Some(
                    "set `holdout = N` in [target], or use `reference = \"target\"` or a folder"
                        .to_owned(),
                ),
            );
        }
        if !EXTRACTORS.contains(&eval.extractor.as_str()) {
            let help = one_of(&eval.extractor, &EXTRACTORS, "extractors");
            self.report(
                &path("eval.extractor"),
                "manifest::unknown-extractor",
                format!("unknown feature extractor `{}`", eval.extractor),
                Some(help),
            );
        } else if eval.extractor == "inception"
            && eval.inception_weights.is_none()
            && !eval.metrics.is_empty()
        {
            self.report(
                &path("eval.extractor"),
                "manifest::missing-weights",
                "`extractor = \"inception\"` needs `eval.inception_weights`".to_owned(),
                Some(
                    "give the path of pytorch-fid's pt_inception-2015-12-05 weights (dtx cannot download them), or use `extractor = \"dtx\"`"
                        .to_owned(),
                ),
            );
        }
        if eval.kid_subsets == 0 {
            self.report(
                &path("eval.kid_subsets"),
                "manifest::out-of-range",
                "`eval.kid_subsets` must be at least 1".to_owned(),
                None,
            );
        }
        if eval.kid_subset_size < 2 {
            self.report(
                &path("eval.kid_subset_size"),
                "manifest::out-of-range",
                "`eval.kid_subset_size` must be at least 2 (KID's unbiased estimate divides by m - 1)".to_owned(),
                None,
            );
        }
        if !eval.metrics.is_empty() && manifest.sample.is_none() {
            self.report_key(
                &path("eval.metrics"),
                "manifest::needs-samples",
                "`[eval] metrics` are computed over the run's samples, but there is no `[sample]` section".to_owned(),
                Some("add a `[sample]` section (its `count` is how many images are evaluated)".to_owned()),
            );
        }
    }
}
