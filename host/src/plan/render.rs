//! `dtx plan`'s text: the run, its stages and hook bindings, the injection
//! points, trainable parameters (with what plugins' recipes add), the base
//! weights plugins re-parameterise, and the plugin files.

use super::{Plan, PlannedPlugin, with_hook};
use dtx_plugin_api::abi::Hook;
use std::fmt::Write as _;

/// `1234567` → `1,234,567`.
pub(crate) fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Plan {
    /// Trainable base parameters: `None` when the model's parameters are not
    /// known without its checkpoint.
    pub fn base_trainable(&self) -> Option<usize> {
        use crate::manifest::Trainable;
        let model = self.model.as_ref()?;
        let trainable = self
            .manifest
            .manifest
            .train
            .as_ref()
            .map(|t| t.trainable.clone())
            .unwrap_or_default();
        let asked = self.recipe_globs();
        match trainable {
            Trainable::None if asked.is_empty() => Some(0),
            _ if !model.parameters_known() => None,
            Trainable::All => Some(model.total_parameters()),
            Trainable::None => Some(model.count_matching(&asked)),
            Trainable::Globs(mut g) => {
                g.extend(asked);
                Some(model.count_matching(&g))
            }
        }
    }

    /// The base parameters plugins' recipes ask to train.
    fn recipe_globs(&self) -> Vec<String> {
        self.plugins
            .iter()
            .flat_map(|p| p.recipe.train_base.iter().map(|g| g.to_string()))
            .collect()
    }

    /// The plan as text: stages, hook bindings, injection points, parameter
    /// counts and plugin files.
    pub fn render(&self) -> String {
        let mut o = String::new();
        self.render_header(&mut o);
        self.render_stages(&mut o);
        self.render_points(&mut o);
        self.render_parameters(&mut o);
        self.render_weights(&mut o);
        self.render_plugins(&mut o);
        o
    }

    /// The run, the model, the target and the source data.
    fn render_header(&self, o: &mut String) {
        let m = &self.manifest.manifest;
        let _ = writeln!(
            o,
            "plan for run `{}` (backend {}, seed {})",
            m.run.name,
            m.run.backend.as_str(),
            m.run.seed
        );
        let _ = writeln!(o, "manifest: {}", self.manifest.file.display());
        match &self.model {
            Some(d) => {
                let _ = writeln!(
                    o,
                    "model: {}{} ({} data channels{}, time embedding {}), {} injection points",
                    d.kind,
                    match &self.manifest.manifest.source {
                        Some(s) if s.init == crate::manifest::Init::Random && d.kind != "mlp" => {
                            ", random init"
                        }
                        _ => "",
                    },
                    d.data_channels,
                    if d.resolution > 0 {
                        format!(", {0}x{0}", d.resolution)
                    } else {
                        String::new()
                    },
                    d.temb_channels,
                    d.points.len()
                );
            }
            None => o.push_str("model: none ([source] not given)\n"),
        }
        self.render_source_run(o);
        if let Some(t) = &m.target {
            let limit = t.limit.map(|l| format!(", {l}-shot")).unwrap_or_default();
            let held = if t.holdout > 0 {
                format!(", {} held out", t.holdout)
            } else {
                String::new()
            };
            let flip = if t.flip { ", random flips" } else { "" };
            let _ = writeln!(o, "target: {}{limit}{held}{flip}", t.dataset);
        }
        if let Some(d) = m.source.as_ref().and_then(|s| s.data.as_ref()) {
            let n = match (d.limit, d.builtin()) {
                (Some(n), _) => format!(", {n} examples"),
                (None, Some(_)) => ", 10000 examples".to_owned(),
                (None, None) => String::new(),
            };
            let _ = writeln!(o, "source data: {}{n} (dataset split `source`)", d.dataset);
        }
    }

    /// For a `kind = "dtx"` source: the checkpoint read, and the source
    /// run's plugins merged into it.
    fn render_source_run(&self, o: &mut String) {
        let Some(src) = self.manifest.manifest.source.as_ref() else {
            return;
        };
        let (crate::manifest::SourceKind::Dtx, Some(path), crate::manifest::Init::Pretrained) =
            (&src.kind, &src.path, &src.init)
        else {
            return;
        };
        let ckpt = crate::model::dtx_checkpoint(&self.manifest.resolve_path(path));
        let merged = match self.source_run.as_deref() {
            Some(run) => {
                let names = super::merge::merged_plugins(run);
                format!(
                    "its plugin{} {} merged (`weights` hooks, EMA values where kept)",
                    if names.len() == 1 { "" } else { "s" },
                    names
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
            None => "its base parameters (EMA values where kept)".into(),
        };
        let _ = writeln!(o, "source weights: {}, {merged}", ckpt.display());
    }

    /// The stages in order and the plugins bound to each hook.
    fn render_stages(&self, o: &mut String) {
        o.push_str("\nstages:\n");
        if self.stages.is_empty() {
            o.push_str("  (none: add [train] or [sample])\n");
        }
        for (i, s) in self.stages.iter().enumerate() {
            let _ = writeln!(o, "  {}. {:<8} {}", i + 1, s.name, s.detail);
        }

        o.push_str("\nhooks:\n");
        for hook in Hook::ALL {
            let bound = with_hook(&self.plugins, hook);
            let _ = writeln!(
                o,
                "  {:<8} {}",
                hook.name(),
                if bound.is_empty() {
                    "-".into()
                } else {
                    bound.join(" -> ")
                }
            );
        }
    }

    /// Every injection point with its size and the plugins injecting there.
    fn render_points(&self, o: &mut String) {
        if let Some(d) = &self.model {
            o.push_str("\ninjection points:\n");
            let width = d.points.iter().map(|p| p.name.len()).max().unwrap_or(0);
            for p in &d.points {
                let size = if p.height > 0 {
                    format!("{}x{}x{}", p.channels, p.height, p.width)
                } else {
                    format!("{}", p.channels)
                };
                let here: Vec<&str> = self
                    .plugins
                    .iter()
                    .filter(|pl| pl.points.contains(&p.name))
                    .map(|pl| pl.name.as_str())
                    .collect();
                let _ = writeln!(
                    o,
                    "  {:<width$}  {:<12} {}",
                    p.name,
                    size,
                    if here.is_empty() {
                        "-".into()
                    } else {
                        here.join(" -> ")
                    }
                );
            }
        }
    }

    /// Trainable parameters of the base model and of each plugin.
    fn render_parameters(&self, o: &mut String) {
        o.push_str("\ntrainable parameters:\n");
        let base_total = self
            .model
            .as_ref()
            .filter(|d| d.parameters_known())
            .map(|d| d.total_parameters());
        let base = match (self.base_trainable(), base_total) {
            (Some(n), Some(t)) => format!("{} of {}", thousands(n), thousands(t)),
            (Some(0), None) => "0 (frozen)".into(),
            (Some(n), None) => thousands(n),
            (None, _) => "unknown until the checkpoint is read".into(),
        };
        let _ = writeln!(o, "  {:<12} {}", "base", base);
        let mut plugin_total = 0;
        for p in &self.plugins {
            plugin_total += p.parameters;
            let _ = writeln!(o, "  {:<12} {}", p.name, thousands(p.parameters));
        }
        if !self.plugins.is_empty() {
            let _ = writeln!(o, "  {:<12} {}", "plugins", thousands(plugin_total));
        }
    }

    /// The base weights each plugin re-parameterises, what its recipe
    /// trains of the base, and its parameter groups (api 0.4; nothing when
    /// no plugin asks).
    fn render_weights(&self, o: &mut String) {
        let asking: Vec<&PlannedPlugin> = self
            .plugins
            .iter()
            .filter(|p| {
                !p.weight_targets.is_empty()
                    || !p.recipe.train_base.is_empty()
                    || !p.recipe.groups.is_empty()
            })
            .collect();
        if asking.is_empty() {
            return;
        }
        o.push_str(
            "
plugin recipes:
",
        );
        let model = self.model.as_ref();
        for p in asking {
            if !p.weight_targets.is_empty() {
                let scalars = model.map_or(0, |d| d.count_matching(&p.weight_targets));
                let _ = writeln!(
                    o,
                    "  {}: re-parameterises {} base weights ({} scalars): {}",
                    p.name,
                    p.weight_targets.len(),
                    thousands(scalars),
                    abbreviate(&p.weight_targets, 3)
                );
            }
            if !p.recipe.train_base.is_empty() {
                let globs: Vec<String> =
                    p.recipe.train_base.iter().map(|g| g.to_string()).collect();
                let n = model.map_or(0, |d| d.count_matching(&globs));
                let _ = writeln!(
                    o,
                    "  {}: trains base {} ({} scalars)",
                    p.name,
                    abbreviate(&globs, 3),
                    thousands(n)
                );
            }
            for g in p.recipe.groups.iter() {
                let decay = g
                    .weight_decay
                    .into_option()
                    .map(|d| format!(", weight decay {d}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    o,
                    "  {}: group `{}` of {} parameters, learning rate x{}{decay}",
                    p.name,
                    g.name,
                    g.params.len(),
                    g.lr_scale
                );
            }
        }
    }

    /// Each plugin with its library and version.
    fn render_plugins(&self, o: &mut String) {
        if !self.plugins.is_empty() {
            o.push_str("\nplugins:\n");
            for p in &self.plugins {
                let d = &p.library.description;
                let _ = writeln!(
                    o,
                    "  {}: {} {} (dtx-plugin-api {}) {}",
                    p.name,
                    d.name,
                    d.version,
                    d.api_version,
                    p.library.path.display()
                );
            }
        }
    }
}

/// The first `n` of `names`, then how many more.
fn abbreviate(names: &[String], n: usize) -> String {
    let shown = names.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > n {
        format!("{shown}, … ({} more)", names.len() - n)
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
