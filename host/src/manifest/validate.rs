//! Checks serde cannot make: value ranges, names, formats and which sections
//! need which. Every check runs and every problem is reported, so a user
//! fixes a manifest in one pass.
//!
//! Counts are checked on the raw TOML document, before serde, so that
//! `steps = -5` reads "`train.steps` must be a positive integer, got -5"
//! rather than serde's "invalid value: integer `-5`, expected u64", and so
//! that a bad count does not hide the other problems: it is reported, then
//! replaced by a placeholder for the rest of the load.

mod condition;
mod eval;
mod raw;

pub use crate::util::limits::{MAX_BATCH, MAX_CLASSES, MAX_EXAMPLES, MAX_TIMESTEPS};
pub(crate) use raw::{check_counts, check_raw_values};

use std::collections::{HashMap, HashSet};

use super::error::ManifestDiagnostic;
use super::load::Context;
use super::schema::{HOOK_NAMES, Manifest, PluginSpec, SourceKind, Trainable};
use super::spans::KeyPath;
use crate::util::nearest;

/// Every check on the deserialised manifest; paths in `reported` already had
/// a problem and are not checked again.
pub(crate) fn check(
    manifest: &Manifest,
    context: &Context,
    reported: &HashSet<KeyPath>,
) -> Vec<ManifestDiagnostic> {
    let mut checks = Checks {
        context,
        reported,
        problems: Vec::new(),
    };
    checks.run(manifest);
    checks.sections(manifest);
    checks.train(manifest);
    checks.sample(manifest);
    checks.condition(manifest);
    checks.eval(manifest);
    checks.eval_settings(manifest);
    checks.plugins(&manifest.plugins);
    checks.problems
}

struct Checks<'a> {
    context: &'a Context,
    reported: &'a HashSet<KeyPath>,
    problems: Vec<ManifestDiagnostic>,
}

fn path(text: &str) -> KeyPath {
    KeyPath::parse(text).expect("static key paths parse")
}

impl Checks<'_> {
    fn report(&mut self, path: &KeyPath, code: &str, message: String, help: Option<String>) {
        if self.reported.contains(path) {
            return;
        }
        let mut d = self.context.at_value(path, message).with_code(code);
        d.help = help;
        self.problems.push(d);
    }

    fn report_key(&mut self, path: &KeyPath, code: &str, message: String, help: Option<String>) {
        let mut d = self.context.at_key(path, message).with_code(code);
        d.help = help;
        self.problems.push(d);
    }

    /// `value` must be > 0 (or >= 0 when `zero_ok`) and finite.
    fn number(&mut self, at: &KeyPath, value: f64, zero_ok: bool, help: &str) {
        let fine = value.is_finite() && (value > 0.0 || (zero_ok && value == 0.0));
        if !fine {
            let wanted = if zero_ok {
                "a number >= 0"
            } else {
                "a positive number"
            };
            self.report(
                at,
                "manifest::out-of-range",
                format!("`{at}` must be {wanted}, got {value:?}"),
                Some(help.to_owned()),
            );
        }
    }

    fn run(&mut self, manifest: &Manifest) {
        let name = &manifest.run.name;
        let at = path("run.name");
        if let Some(problem) = name_problem(name, true) {
            let fixed: String = name
                .chars()
                .map(|c| if is_run_name_char(c) { c } else { '-' })
                .collect();
            let help = if fixed.trim_matches(['-', '.']).is_empty() {
                "for example `name = \"gmm-transfer\"`".to_owned()
            } else {
                format!("for example `name = \"{fixed}\"`")
            };
            self.report(
                &at,
                "manifest::bad-name",
                format!("`run.name` {problem}: it names the run's folder, so only letters, digits, `_`, `.` and `-` are allowed"),
                Some(help),
            );
        }
    }

    fn sections(&mut self, manifest: &Manifest) {
        if manifest.train.is_some() && manifest.target.is_none() {
            self.report_key(
                &path("train"),
                "manifest::missing-section",
                "`[train]` needs a `[target]` section: there is no dataset to train on".to_owned(),
                Some("add `[target]` with `dataset = \"path/to/images\"` or `dataset = \"builtin:gmm\"`".to_owned()),
            );
        }
        for (section, present) in [
            ("train", manifest.train.is_some()),
            ("sample", manifest.sample.is_some()),
        ] {
            if present && manifest.source.is_none() {
                self.report_key(
                    &path(section),
                    "manifest::missing-section",
                    format!("`[{section}]` needs a `[source]` section: there is no model to {section}"),
                    Some("add `[source]` with `kind` and `path` of the pretrained model (or `kind = \"mlp\"` for a fresh toy model)".to_owned()),
                );
            }
        }
        if let Some(source) = &manifest.source
            && source.path.is_none()
            && source.kind != SourceKind::Mlp
        {
            self.report_key(
                &path("source"),
                "manifest::missing-key",
                format!("`source.path` is required for `kind = \"{}\"`", source.kind),
                Some(
                    "add `path = \"…\"` naming the checkpoint (relative to this manifest's folder)"
                        .to_owned(),
                ),
            );
        }
        if let Some(data) = manifest.source.as_ref().and_then(|s| s.data.as_ref())
            && (data.dataset.trim().is_empty()
                || data.builtin().is_some_and(|n| n.trim().is_empty()))
        {
            self.report(
                &path("source.data.dataset"),
                "manifest::empty",
                "`source.data.dataset` names no dataset".to_owned(),
                Some("name a folder of images or a built-in such as `builtin:gmm`".to_owned()),
            );
        }
        if let Some(target) = &manifest.target {
            let at = path("target.dataset");
            if target.dataset.trim().is_empty() {
                self.report(
                    &at,
                    "manifest::empty",
                    "`target.dataset` is empty".to_owned(),
                    Some("name a folder of images or a built-in such as `builtin:gmm`".to_owned()),
                );
            } else if target.builtin().is_some_and(|name| name.trim().is_empty()) {
                self.report(
                    &at,
                    "manifest::empty",
                    "`target.dataset` names no built-in after `builtin:`".to_owned(),
                    Some(
                        "for example `dataset = \"builtin:gmm\"` or `dataset = \"builtin:shapes\"`"
                            .to_owned(),
                    ),
                );
            }
        }
    }

    fn train(&mut self, manifest: &Manifest) {
        let Some(train) = &manifest.train else {
            return;
        };
        self.number(
            &path("train.lr"),
            train.lr,
            false,
            "typical values are 1e-5 to 1e-3; the default is 1e-4",
        );
        self.number(
            &path("train.weight_decay"),
            train.weight_decay,
            true,
            "use 0.0 to disable weight decay",
        );
        self.number(
            &path("train.p2_gamma"),
            train.p2_gamma,
            true,
            "P2 uses γ = 1 (or 0.5); the default is 1.0",
        );
        self.number(
            &path("train.p2_k"),
            train.p2_k,
            false,
            "P2 uses k = 1; the default is 1.0",
        );
        self.number(
            &path("train.snr_gamma"),
            train.snr_gamma,
            false,
            "min-SNR uses γ = 5; the default is 5.0",
        );
        if train.validate_every == Some(0) {
            self.report(
                &path("train.validate_every"),
                "manifest::out-of-range",
                "`train.validate_every` must be a positive number of steps, got 0".to_owned(),
                Some("remove it to skip validation".to_owned()),
            );
        }
        if train.validate_every.is_some()
            && manifest.target.as_ref().is_some_and(|t| t.holdout == 0)
        {
            self.report(
                &path("train.validate_every"),
                "manifest::no-holdout",
                "`train.validate_every` needs held-out examples, but `target.holdout` is 0"
                    .to_owned(),
                Some("set `holdout = N` in [target] to keep N examples out of training".to_owned()),
            );
        }
        if let Some(clip) = train.grad_clip {
            self.number(
                &path("train.grad_clip"),
                clip,
                false,
                "remove `grad_clip` to disable clipping",
            );
        }
        if let Some(ema) = train.ema
            && !(ema.decay > 0.0 && ema.decay < 1.0)
        {
            self.report(
                &path("train.ema.decay"),
                "manifest::out-of-range",
                format!(
                    "`train.ema.decay` must be between 0 and 1 (both excluded), got {:?}",
                    ema.decay
                ),
                Some("typical values are 0.999 or 0.9999; remove `ema` to disable it".to_owned()),
            );
        }
        if let Trainable::Globs(globs) = &train.trainable {
            for (i, glob) in globs.iter().enumerate() {
                let at = path("train.trainable").index(i);
                if glob.trim().is_empty() {
                    self.report(
                        &at,
                        "manifest::bad-glob",
                        format!("`{at}` is an empty pattern"),
                        None,
                    );
                } else if let Err(err) = globset::Glob::new(glob) {
                    self.report(
                        &at,
                        "manifest::bad-glob",
                        format!("`{at}` is not a valid glob: {}", err.kind()),
                        Some(
                            "patterns match parameter names, e.g. `up_blocks.*.resnets.*`"
                                .to_owned(),
                        ),
                    );
                }
            }
        }
    }

    fn sample(&mut self, manifest: &Manifest) {
        let Some(sample) = &manifest.sample else {
            return;
        };
        self.number(
            &path("sample.eta"),
            sample.eta,
            true,
            "0 gives deterministic DDIM, 1 matches DDPM's noise",
        );
        self.number(
            &path("sample.clip_range"),
            sample.clip_range,
            false,
            "data scaled to [-1, 1] uses 1.0; set `clip_sample = false` to disable clipping",
        );
        self.number(
            &path("sample.guidance"),
            sample.guidance,
            true,
            "0 disables guidance",
        );
        if let Some(train) = &manifest.train {
            let steps = path("sample.steps");
            let timesteps = path("train.timesteps");
            if sample.steps > train.timesteps
                && !self.reported.contains(&steps)
                && !self.reported.contains(&timesteps)
            {
                self.report(
                    &steps,
                    "manifest::out-of-range",
                    format!(
                        "`sample.steps` is {}, more than the {} timesteps of the schedule (`train.timesteps`)",
                        sample.steps, train.timesteps
                    ),
                    Some(format!("use at most {} sampling steps", train.timesteps)),
                );
            }
        }
    }

    fn plugins(&mut self, plugins: &[PluginSpec]) {
        let mut first_by_name: HashMap<&str, usize> = HashMap::new();
        for (i, plugin) in plugins.iter().enumerate() {
            let entry = KeyPath::root().key("plugin").index(i);
            let name_at = entry.clone().key("name");
            if let Some(problem) = name_problem(&plugin.name, false) {
                self.report(
                    &name_at,
                    "manifest::bad-name",
                    format!("`{name_at}` {problem}: plugin names prefix loss logs (`<name>.<term>`), so only letters, digits, `_` and `-` are allowed"),
                    Some("for example `name = \"example\"`".to_owned()),
                );
            }
            match first_by_name.get(plugin.name.as_str()) {
                Some(&first) => {
                    let mut d = self
                        .context
                        .at_value(&name_at, format!("two `[[plugin]]` entries are named `{}`", plugin.name))
                        .with_code("manifest::duplicate-plugin")
                        .with_help("give each entry its own name; the same library may be loaded twice under two names");
                    let first_at = KeyPath::root().key("plugin").index(first).key("name");
                    if let Some(span) = self.context.spans.value_or_key(&first_at) {
                        d = d.with_related(span, "first used here");
                    }
                    self.problems.push(d);
                }
                None => {
                    first_by_name.insert(&plugin.name, i);
                }
            }
            if plugin.library.trim().is_empty() {
                self.report(
                    &entry.clone().key("library"),
                    "manifest::empty",
                    format!("`{entry}.library` is empty"),
                    Some(
                        "a bare name such as `dtx_plugin_example`, or a path to the library file"
                            .to_owned(),
                    ),
                );
            }
            if let Some(sha) = &plugin.sha256 {
                self.sha256(&entry.clone().key("sha256"), sha);
            }
            if let Some(hooks) = &plugin.hooks {
                self.hooks(&entry.clone().key("hooks"), hooks);
            }
        }
    }

    fn sha256(&mut self, at: &KeyPath, sha: &str) {
        let problem = if sha.len() != 64 {
            Some(format!(
                "has {} characters, a SHA-256 has 64 hex digits",
                sha.chars().count()
            ))
        } else if let Some(bad) = sha.chars().find(|c| !c.is_ascii_hexdigit()) {
            Some(format!("contains `{bad}`, which is not a hex digit"))
        } else if sha.chars().any(|c| c.is_ascii_uppercase()) {
            Some("has upper-case digits; write it in lower case".to_owned())
        } else {
            None
        };
        if let Some(problem) = problem {
            self.report(
                at,
                "manifest::bad-sha256",
                format!("`{at}` {problem}"),
                Some("copy the digest printed by `sha256sum <library>`".to_owned()),
            );
        }
    }

    fn hooks(&mut self, at: &KeyPath, hooks: &[String]) {
        if hooks.is_empty() {
            self.report(
                at,
                "manifest::empty",
                format!("`{at}` is empty, so the plugin would do nothing"),
                Some("remove `hooks` to bind every hook the plugin implements".to_owned()),
            );
        }
        let mut seen = HashSet::new();
        for (i, hook) in hooks.iter().enumerate() {
            let hook_at = at.clone().index(i);
            if !HOOK_NAMES.contains(&hook.as_str()) {
                let known = HOOK_NAMES
                    .iter()
                    .map(|h| format!("`{h}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let help = match nearest(hook, HOOK_NAMES.iter().copied()) {
                    Some(best) => format!("did you mean `{best}`? (hooks: {known})"),
                    None => format!("hooks are {known}"),
                };
                self.report(
                    &hook_at,
                    "manifest::unknown-hook",
                    format!("unknown hook `{hook}`"),
                    Some(help),
                );
            } else if !seen.insert(hook.as_str()) {
                self.report(
                    &hook_at,
                    "manifest::duplicate",
                    format!("hook `{hook}` is listed twice"),
                    None,
                );
            }
        }
    }
}

fn is_run_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// What is wrong with a run name (`allow_dot`) or plugin name, if anything.
fn name_problem(name: &str, allow_dot: bool) -> Option<String> {
    if name.is_empty() {
        return Some("is empty".to_owned());
    }
    if allow_dot && (name == "." || name == "..") {
        return Some(format!("is `{name}`"));
    }
    let bad = name
        .chars()
        .find(|&c| !(is_run_name_char(c) && (allow_dot || c != '.')))?;
    Some(format!("contains {bad:?}"))
}

#[cfg(test)]
mod tests {
    use crate::manifest::{ManifestError, load_str};

    fn problems(text: &str) -> ManifestError {
        load_str(text, "m.toml", &[]).expect_err("should be rejected")
    }

    #[test]
    fn several_problems_are_collected_at_once() {
        let text = r#"
[run]
name = "my run"

[source]
kind = "mlp"

[target]
dataset = "builtin:gmm"

[train]
steps = -5
batch = 0
lr = 0.0
ema = { decay = 1.5 }

[[plugin]]
name = "a"
library = "dtx_plugin_example"
sha256 = "abc"
hooks = ["loss", "scroe"]

[[plugin]]
name = "a"
library = "dtx_test_plugin"

[sample]
eta = -1.0
"#;
        let err = problems(text);
        let rendered = err.render();
        let messages: Vec<&str> = err
            .diagnostics()
            .iter()
            .map(|d| d.message.as_str())
            .collect();
        let expected = [
            "`run.name` contains ' '",
            "`train.steps` must be a positive integer, got -5",
            "`train.batch` must be a positive integer, got 0",
            "`train.lr` must be a positive number, got 0.0",
            "`train.ema.decay` must be between 0 and 1 (both excluded), got 1.5",
            "`plugin[0].sha256` has 3 characters",
            "unknown hook `scroe`",
            "two `[[plugin]]` entries are named `a`",
            "`sample.eta` must be a number >= 0, got -1.0",
        ];
        assert_eq!(messages.len(), expected.len(), "{rendered}");
        for (message, want) in messages.iter().zip(expected) {
            assert!(
                message.starts_with(want),
                "{message:?} should start with {want:?}\n{rendered}"
            );
        }
        assert!(rendered.contains("did you mean `score`?"), "{rendered}");
        assert!(rendered.contains("first used here"), "{rendered}");
        assert!(
            rendered.ends_with("error: 9 problems in m.toml\n"),
            "{rendered}"
        );
    }

    #[test]
    fn counts_have_clear_messages() {
        let base =
            "[run]\nname = \"r\"\n[source]\nkind = \"mlp\"\n[target]\ndataset = \"d\"\n[train]\n";
        let message = |line: &str| {
            problems(&format!("{base}{line}\n")).diagnostics()[0]
                .message
                .clone()
        };
        assert_eq!(
            message("steps = 10.0"),
            "`train.steps` must be a positive integer, got 10.0"
        );
        assert_eq!(
            message("steps = \"10\""),
            "`train.steps` must be a positive integer, got the string \"10\""
        );
        assert_eq!(
            message("steps = true"),
            "`train.steps` must be a positive integer, got true"
        );
    }

    #[test]
    fn sections_need_their_inputs() {
        let err = problems("[run]\nname = \"r\"\n[train]\nsteps = 1\n[sample]\n");
        let messages: Vec<&str> = err
            .diagnostics()
            .iter()
            .map(|d| d.message.as_str())
            .collect();
        assert_eq!(
            messages,
            [
                "`[train]` needs a `[target]` section: there is no dataset to train on",
                "`[train]` needs a `[source]` section: there is no model to train",
                "`[sample]` needs a `[source]` section: there is no model to sample",
            ]
        );
        let err = problems("[run]\nname = \"r\"\n[source]\nkind = \"adm\"\n");
        assert_eq!(
            err.diagnostics()[0].message,
            "`source.path` is required for `kind = \"adm\"`"
        );
    }

    #[test]
    fn overridden_bad_value_notes_the_override() {
        let text = "[run]\nname = \"r\"\n[source]\nkind = \"mlp\"\n[target]\ndataset = \"d\"\n[train]\nsteps = 3\n";
        let err = load_str(text, "m.toml", &["train.steps=-1".to_owned()]).unwrap_err();
        let d = &err.diagnostics()[0];
        assert_eq!(d.span, None);
        assert!(
            d.render()
                .contains("the value comes from `--set train.steps=-1`"),
            "{}",
            d.render()
        );
    }
}
