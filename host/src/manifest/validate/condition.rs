//! The `[condition]` section's checks and the `[sample]` keys that need it:
//! keys of the other encoder, ranges, and a prompt without a text tower.
//! Injection points are checked against the model by the plan.

use super::{Checks, path};
use crate::manifest::schema::{Condition, EncoderKind, Manifest, Sample, TokenKind};

impl Checks<'_> {
    pub(super) fn condition(&mut self, manifest: &Manifest) {
        if let Some(c) = &manifest.condition {
            self.condition_encoder(c, manifest);
        }
        if let Some(sample) = &manifest.sample {
            self.sample_condition(sample, manifest);
        }
    }

    /// `[condition]` keys that belong to the other encoder, and ranges.
    fn condition_encoder(&mut self, c: &Condition, manifest: &Manifest) {
        let other = |key: &str| format!("`condition.{key}` belongs to the other encoder");
        match c.encoder {
            EncoderKind::Clip => {
                if c.path.is_none() {
                    self.report_key(
                        &path("condition.encoder"),
                        "manifest::missing-key",
                        "`condition.encoder = \"clip\"` needs `condition.path`, the CLIP model folder".into(),
                        Some("for example `path = \"models/clip-vit-base-patch32\"` (config.json, model.safetensors, tokenizer.json)".into()),
                    );
                }
                for (key, given) in [
                    ("points", c.points.is_some()),
                    ("t", c.t.is_some()),
                    ("grid", c.grid.is_some()),
                ] {
                    if given {
                        self.report_key(
                            &path(&format!("condition.{key}")),
                            "manifest::wrong-encoder",
                            other(key),
                            Some("`points`, `t` and `grid` set the embedded `unet` encoder; remove it or set `encoder = \"unet\"`".into()),
                        );
                    }
                }
            }
            EncoderKind::Unet => {
                for (key, given) in [("path", c.path.is_some()), ("tokens", c.tokens.is_some())] {
                    if given {
                        self.report_key(
                            &path(&format!("condition.{key}")),
                            "manifest::wrong-encoder",
                            other(key),
                            Some("`path` and `tokens` set the `clip` encoder; remove it or set `encoder = \"clip\"`".into()),
                        );
                    }
                }
                if c.grid == Some(0) {
                    self.report(
                        &path("condition.grid"),
                        "manifest::out-of-range",
                        "`condition.grid` must be 1 or more".into(),
                        Some("each point is pooled to grid × grid tokens".into()),
                    );
                }
                if let (Some(t), Some(train)) = (c.t, &manifest.train)
                    && t >= train.timesteps
                {
                    self.report(
                        &path("condition.t"),
                        "manifest::out-of-range",
                        format!(
                            "`condition.t` is {t}, outside the schedule's 0..{} (`train.timesteps`)",
                            train.timesteps
                        ),
                        Some("a small t (the default 50) sees the image nearly clean".into()),
                    );
                }
                if c.points.as_ref().is_some_and(|p| p.is_empty()) {
                    self.report(
                        &path("condition.points"),
                        "manifest::empty",
                        "`condition.points` lists no injection point".into(),
                        Some("for example `points = [\"mid.res.*\"]`".into()),
                    );
                }
            }
        }
    }

    /// The `[sample]` keys that need `[condition]`, and a prompt without a
    /// text tower.
    fn sample_condition(&mut self, sample: &Sample, manifest: &Manifest) {
        // what the run would find missing when it loads its data
        let holdout = manifest.target.as_ref().map_or(0, |t| t.holdout);
        if holdout == 0 {
            let held_out = [
                // (without `[condition]`, `sample.condition` is refused anyway)
                (
                    "condition",
                    manifest.condition.is_some() && sample.condition.as_deref() == Some("held_out"),
                ),
                (
                    "masks",
                    sample.masks == Some(crate::manifest::MaskSource::HeldOut),
                ),
            ];
            for (key, given) in held_out {
                if given {
                    self.report(
                        &path(&format!("sample.{key}")),
                        "manifest::no-holdout",
                        format!(
                            "`sample.{key} = \"held_out\"` needs held-out examples, but `target.holdout` is 0"
                        ),
                        Some("set `holdout = N` in [target], or use `\"target\"`".into()),
                    );
                }
            }
        }
        let needs = |key: &str| format!("`sample.{key}` needs a `[condition]` table");
        let help = "add `[condition]` (e.g. `encoder = \"unet\"`) or remove the key";
        if manifest.condition.is_none() {
            for (key, given) in [
                ("condition", sample.condition.is_some()),
                ("mask_rate", sample.mask_rate.is_some()),
                ("mask_per_sample", sample.mask_per_sample),
                ("prompt", sample.prompt.is_some()),
            ] {
                if given {
                    self.report_key(
                        &path(&format!("sample.{key}")),
                        "manifest::needs-condition",
                        needs(key),
                        Some(help.into()),
                    );
                }
            }
            return;
        }
        if let Some(d) = sample.mask_rate
            && !(0.0..1.0).contains(&d)
        {
            self.report(
                &path("sample.mask_rate"),
                "manifest::out-of-range",
                format!("`sample.mask_rate` must be in [0, 1), got {d}"),
                Some("δ is the side fraction of the masked rectangle; 0 masks nothing".into()),
            );
        }
        if sample.prompt.is_some() {
            let c = manifest.condition.as_ref().expect("checked above");
            let problem = match (c.encoder, c.tokens()) {
                (EncoderKind::Unet, _) => Some("the embedded `unet` encoder has no text tower"),
                (EncoderKind::Clip, TokenKind::Patches) => {
                    Some("`tokens = \"patches\"` embeds images only (text has no patch tokens)")
                }
                _ => None,
            };
            if let Some(p) = problem {
                self.report(
                    &path("sample.prompt"),
                    "manifest::no-text-encoder",
                    format!("`sample.prompt` needs a CLIP text tower: {p}"),
                    Some("use `[condition] encoder = \"clip\"` with `tokens = \"pooled\"`".into()),
                );
            }
        }
    }
}
