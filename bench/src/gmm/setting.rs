//! The benchmark's setting — network, step counts, sampler — and the
//! manifests it runs, as TOML text written into the bench's output folder
//! (so every run can be repeated by hand with `dtx run`).
//!
//! One source model per seed: a residual MLP denoiser trained from scratch
//! on the built-in source mixture (8 equal modes on a circle of radius 4,
//! σ 0.5). The target is the built-in target mixture (the same modes
//! reweighted to 0.4, 0.4, 0.15, 0.01 × 5), of which each transfer sees n
//! points. The run seed picks those points (`builtin:gmm` draws its
//! points from `run.seed`), so within a seed every method sees the same
//! n points, and the n = 10 points are the first 10 of the n = 100 ones.

use std::fmt::Write as _;
use std::path::Path;

/// A name that is no [`Method`]'s, from [`Method::parse`]; its message lists
/// the valid names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown method `{name}`{}; methods: {} (the `exact` reference row is always there)",
    suggestion.map(|n| format!(" (did you mean `{n}`?)")).unwrap_or_default(),
    Method::ALL.map(|m| m.name()).join(", "))]
pub struct UnknownMethod {
    /// The name given.
    pub name: String,
    /// The method name nearest to it, when one is close.
    pub suggestion: Option<&'static str>,
}

/// A method the benchmark compares (the exact reference row is not one: it
/// runs no model).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The pretrained source model as it is.
    Source,
    /// A fresh model trained on the n target points only (the talk's
    /// "Vanilla Diffusion").
    Target,
    /// The source model, every weight fine-tuned on the n points.
    Finetune,
    /// `Finetune` plus the `sdft` plugin.
    Sdft,
    /// The frozen source with the `tgdp` plugin's guidance network.
    Tgdp,
}

impl Method {
    /// Every method, in table order.
    pub const ALL: [Method; 5] = [
        Method::Source,
        Method::Target,
        Method::Finetune,
        Method::Sdft,
        Method::Tgdp,
    ];

    /// The name used on the command line, in run names and in the table.
    pub fn name(self) -> &'static str {
        match self {
            Method::Source => "source",
            Method::Target => "target",
            Method::Finetune => "finetune",
            Method::Sdft => "sdft",
            Method::Tgdp => "tgdp",
        }
    }

    /// The method called `name`; the error lists the valid names.
    pub fn parse(name: &str) -> Result<Method, UnknownMethod> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| UnknownMethod {
                name: name.to_owned(),
                suggestion: dtx::util::nearest(name, Method::ALL.iter().map(|m| m.name())),
            })
    }

    /// Whether the method sees the n target points (all but `source`).
    pub fn uses_target(self) -> bool {
        self != Method::Source
    }

    /// Whether the method starts from the pretrained source model.
    pub fn needs_source(self) -> bool {
        self != Method::Target
    }

    /// The plugin library the method loads, if any.
    pub fn plugin(self) -> Option<&'static str> {
        match self {
            Method::Sdft => Some("dtx_plugin_sdft"),
            Method::Tgdp => Some("dtx_plugin_tgdp"),
            _ => None,
        }
    }

    /// The talk's "average likelihood" for this method at `n` (the
    /// simulation table of "Transfer Learning for Diffusion Models", the
    /// TGDP talk): Vanilla Diffusion, which METHOD-NOTES identifies as the
    /// target-only model, Finetune and TGDP, at n = 10, 100, 1000.
    pub fn paper(self, n: usize) -> Option<f64> {
        let row = match self {
            Method::Target => [0.145, 0.253, 0.328],
            Method::Finetune => [0.290, 0.329, 0.335],
            Method::Tgdp => [0.417, 0.627, 0.673],
            _ => return None,
        };
        match n {
            10 => Some(row[0]),
            100 => Some(row[1]),
            1000 => Some(row[2]),
            _ => None,
        }
    }

    /// One line on what the method runs.
    pub fn describe(self) -> &'static str {
        match self {
            Method::Source => {
                "the pretrained source model, sampled as it is (it never sees a target point)"
            }
            Method::Target => {
                "a fresh MLP of the same size trained on the n target points only (the talk's \"Vanilla Diffusion\")"
            }
            Method::Finetune => "the source model, every weight fine-tuned on the n target points",
            Method::Sdft => {
                "the fine-tune plus the `sdft` plugin (self-distillation from the frozen source, its default config)"
            }
            Method::Tgdp => {
                "the frozen source model guided by the `tgdp` plugin, trained on the source data and the n target points"
            }
        }
    }
}

/// Sizes and step counts of every run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Setting {
    /// `[source.config] hidden` of the MLP.
    pub hidden: usize,
    /// `[source.config] blocks` of the MLP.
    pub blocks: usize,
    /// Diffusion timesteps T (linear β schedule, ε prediction).
    pub timesteps: usize,
    /// Source points the source model trains on.
    pub pretrain_points: usize,
    /// Pretraining steps.
    pub pretrain_steps: u64,
    /// Pretraining learning rate.
    pub pretrain_lr: f64,
    /// Largest batch of any training run (pretraining uses it; a run on n
    /// points uses min(n, this)).
    pub batch: usize,
    /// EMA decay of pretraining and target-only training.
    pub ema_scratch: f64,
    /// Target-only training steps.
    pub target_steps: u64,
    /// Target-only learning rate.
    pub target_lr: f64,
    /// Fine-tuning steps (finetune, sdft).
    pub finetune_steps: u64,
    /// Fine-tuning learning rate.
    pub finetune_lr: f64,
    /// EMA decay of fine-tuning.
    pub ema_finetune: f64,
    /// Source points the `tgdp` plugin's domain classifiers see
    /// (`[source.data] limit`).
    pub tgdp_source_points: usize,
    /// `tgdp` config: `classifier_steps`, `time_classifier_steps`,
    /// `guidance_steps`.
    pub tgdp_steps: [u64; 3],
    /// DDIM steps (η = 0).
    pub sample_steps: usize,
    /// Samples per run.
    pub samples: usize,
    /// Samples per forward pass.
    pub sample_batch: usize,
}

impl Setting {
    /// The benchmark's setting, `samples` points a run.
    pub fn full(samples: usize) -> Setting {
        Setting {
            hidden: 128,
            blocks: 3,
            timesteps: 1000,
            pretrain_points: 4000,
            pretrain_steps: 4000,
            pretrain_lr: 1e-3,
            batch: 256,
            ema_scratch: 0.995,
            target_steps: 4000,
            target_lr: 1e-3,
            finetune_steps: 1000,
            finetune_lr: 2e-4,
            ema_finetune: 0.99,
            tgdp_source_points: 10_000,
            tgdp_steps: [1000, 1000, 2000],
            sample_steps: 100,
            samples,
            sample_batch: samples.min(1000),
        }
    }

    /// Tiny networks and step counts, for tests: the same runs, numbers
    /// that mean nothing.
    pub fn quick(samples: usize) -> Setting {
        Setting {
            hidden: 32,
            blocks: 1,
            pretrain_points: 512,
            pretrain_steps: 40,
            batch: 64,
            target_steps: 20,
            finetune_steps: 20,
            tgdp_source_points: 512,
            tgdp_steps: [20, 20, 20],
            sample_steps: 10,
            ..Setting::full(samples)
        }
    }

    /// The name of the source model's run for `seed`.
    pub fn pretrain_name(seed: u64) -> String {
        format!("gmm-pretrain-seed{seed}")
    }

    /// The run name of `method` at `n` points (ignored for `source`).
    pub fn run_name(method: Method, n: usize, seed: u64) -> String {
        match method {
            Method::Source => format!("gmm-source-seed{seed}"),
            m => format!("gmm-{}-n{n}-seed{seed}", m.name()),
        }
    }

    fn header(name: &str, seed: u64, output_dir: &Path) -> String {
        format!(
            "[run]\nname = \"{name}\"\nseed = {seed}\noutput_dir = {}\n",
            quoted(output_dir)
        )
    }

    fn mlp(&self) -> String {
        format!(
            "\n[source]\nkind = \"mlp\"\n\n[source.config]\nhidden = {}\nblocks = {}\n",
            self.hidden, self.blocks
        )
    }

    fn train(&self, steps: u64, batch: usize, lr: f64, ema: f64) -> String {
        format!(
            "\n[train]\nsteps = {steps}\nbatch = {batch}\nlr = {lr:e}\ntrainable = \"all\"\nema = {{ decay = {ema} }}\ntimesteps = {}\n",
            self.timesteps
        )
    }

    /// The source model's manifest: the MLP trained from scratch on
    /// `pretrain_points` points of the source mixture.
    pub fn pretrain_manifest(&self, seed: u64, output_dir: &Path) -> String {
        let mut s = format!(
            "# dtx bench gmm: the source model of seed {seed}, trained from scratch on\n# the source mixture.\n"
        );
        s += &Self::header(&Self::pretrain_name(seed), seed, output_dir);
        s += &self.mlp();
        let _ = write!(
            s,
            "\n[target]\ndataset = \"builtin:gmm\"\nlimit = {}\nconfig = {{ preset = \"source\" }}\n",
            self.pretrain_points
        );
        s += &self.train(
            self.pretrain_steps,
            self.batch,
            self.pretrain_lr,
            self.ema_scratch,
        );
        s
    }

    /// The manifest of `method` at `n` target points; `source` is the
    /// pretrained model's run folder (absolute).
    pub fn method_manifest(
        &self,
        method: Method,
        n: usize,
        seed: u64,
        output_dir: &Path,
        source: &Path,
    ) -> String {
        let mut s = format!("# dtx bench gmm: {}.\n", method.describe());
        s += &Self::header(&Self::run_name(method, n, seed), seed, output_dir);
        if method == Method::Target {
            s += &self.mlp();
        } else {
            let _ = write!(s, "\n[source]\nkind = \"dtx\"\npath = {}\n", quoted(source));
        }
        if method == Method::Tgdp {
            let _ = write!(
                s,
                "\n[source.data]\ndataset = \"builtin:gmm\"\nlimit = {}\nconfig = {{ preset = \"source\" }}\n",
                self.tgdp_source_points
            );
        }
        if method.uses_target() {
            let _ = write!(
                s,
                "\n[target]\ndataset = \"builtin:gmm\"\nlimit = {n}\nconfig = {{ preset = \"target\" }}\n"
            );
        }
        let batch = n.min(self.batch);
        match method {
            Method::Target => {
                s += &self.train(self.target_steps, batch, self.target_lr, self.ema_scratch)
            }
            Method::Finetune | Method::Sdft => {
                s += &self.train(
                    self.finetune_steps,
                    batch,
                    self.finetune_lr,
                    self.ema_finetune,
                )
            }
            Method::Source | Method::Tgdp => {}
        }
        match method {
            Method::Sdft => s += "\n[[plugin]]\nname = \"sdft\"\nlibrary = \"dtx_plugin_sdft\"\n",
            Method::Tgdp => {
                let [c, tc, g] = self.tgdp_steps;
                let _ = write!(
                    s,
                    "\n[[plugin]]\nname = \"tgdp\"\nlibrary = \"dtx_plugin_tgdp\"\n\n[plugin.config]\nclassifier_steps = {c}\ntime_classifier_steps = {tc}\nguidance_steps = {g}\n"
                );
            }
            _ => {}
        }
        let _ = write!(
            s,
            "\n[sample]\nsampler = \"ddim\"\nsteps = {}\ncount = {}\nbatch = {}\n",
            self.sample_steps, self.samples, self.sample_batch
        );
        s
    }

    /// The setting in a paragraph of Markdown, for `table.md`.
    pub fn describe(&self, methods: &[Method]) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "Setting (ours: the talk gives none). Source: `builtin:gmm` preset `source`, 8 equally weighted isotropic Gaussians (σ 0.5) on a circle of radius 4. Target: preset `target`, the same components reweighted to 0.4, 0.4, 0.15, 0.01 × 5; a run sees n of its points, drawn by the seed (the same n points for every method of a seed). \
             Network: residual MLP denoiser, hidden {h}, {b} blocks, ε prediction, linear β schedule, T = {t}. \
             Source model: trained from scratch on {pp} source points, {ps} AdamW steps, batch {batch}, lr {plr:e}, EMA {es}. \
             Sampling: {ss}-step DDIM (η 0), {ns} samples a run.",
            h = self.hidden,
            b = self.blocks,
            t = self.timesteps,
            pp = self.pretrain_points,
            ps = self.pretrain_steps,
            batch = self.batch,
            plr = self.pretrain_lr,
            es = self.ema_scratch,
            ss = self.sample_steps,
            ns = self.samples,
        );
        let mut items = vec![format!(
            "- `exact`: {} exact samples of the target mixture (the reference a perfect model would score)",
            self.samples
        )];
        for &m in methods {
            let steps = match m {
                Method::Target => format!(
                    " {} steps, batch min(n, {}), lr {:e}, EMA {}",
                    self.target_steps, self.batch, self.target_lr, self.ema_scratch
                ),
                Method::Finetune | Method::Sdft => format!(
                    " {} steps, batch min(n, {}), lr {:e}, EMA {}",
                    self.finetune_steps, self.batch, self.finetune_lr, self.ema_finetune
                ),
                Method::Tgdp => format!(
                    " {} source points; classifier, time-dependent classifier and guidance network trained {}, {} and {} steps, the plugin's other defaults",
                    self.tgdp_source_points,
                    self.tgdp_steps[0],
                    self.tgdp_steps[1],
                    self.tgdp_steps[2]
                ),
                Method::Source => String::new(),
            };
            items.push(format!(
                "- `{}`: {}{}{}",
                m.name(),
                m.describe(),
                if steps.is_empty() { "" } else { ":" },
                steps
            ));
        }
        let _ = writeln!(o, "\nMethods:\n\n{}.", items.join(";\n"));
        o
    }
}

/// `path` as a TOML basic string.
fn quoted(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dtx::manifest;

    #[test]
    fn methods_parse_by_name_and_suggest() {
        for m in Method::ALL {
            assert_eq!(Method::parse(m.name()), Ok(m));
        }
        let e = Method::parse("finetun").unwrap_err().to_string();
        assert!(e.contains("did you mean `finetune`?"), "{e}");
        assert_eq!(Method::Target.paper(100), Some(0.253));
        assert_eq!(Method::Tgdp.paper(1000), Some(0.673));
        assert_eq!(Method::Sdft.paper(10), None);
        assert_eq!(Method::Finetune.paper(50), None);
    }

    /// Every generated manifest but `tgdp` loads and validates (`tgdp`'s
    /// `[source.data]` needs the manifest section of the TGDP work).
    #[test]
    fn generated_manifests_load() {
        let dir =
            std::env::temp_dir().join(format!("dtx-bench-gmm-setting-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let runs = dir.join("runs with space");
        let source = runs.join("gmm-pretrain-seed3");
        let s = Setting::full(500);
        let mut texts = vec![("pretrain".to_owned(), s.pretrain_manifest(3, &runs))];
        for m in [
            Method::Source,
            Method::Target,
            Method::Finetune,
            Method::Sdft,
        ] {
            texts.push((m.name().into(), s.method_manifest(m, 10, 3, &runs, &source)));
        }
        for (name, text) in texts {
            let path = dir.join(format!("{name}.toml"));
            std::fs::write(&path, &text).unwrap();
            let loaded = manifest::load(&path, &[])
                .unwrap_or_else(|e| panic!("{name}: {}\n{text}", e.render()));
            let m = &loaded.manifest;
            assert_eq!(m.run.seed, 3);
            assert_eq!(loaded.output_dir(), runs, "{name}");
            let sample = m.sample.as_ref();
            match name.as_str() {
                "pretrain" => {
                    assert!(sample.is_none());
                    let t = m.train.as_ref().unwrap();
                    assert_eq!((t.steps, t.batch), (4000, 256));
                }
                "source" => assert!(m.train.is_none() && m.target.is_none()),
                "target" => {
                    let t = m.target.as_ref().unwrap();
                    assert_eq!(t.limit, Some(10));
                    assert_eq!(m.train.as_ref().unwrap().batch, 10, "batch min(n, 256)");
                }
                "sdft" => assert_eq!(m.plugins[0].library, "dtx_plugin_sdft"),
                _ => {}
            }
            if name != "pretrain" {
                let sample = sample.unwrap();
                assert_eq!((sample.steps, sample.count, sample.batch), (100, 500, 500));
            }
            if matches!(name.as_str(), "source" | "finetune" | "sdft") {
                let src = m.source.as_ref().unwrap();
                assert_eq!(src.path.as_deref(), Some(source.as_path()), "{name}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_setting_is_written_out_with_the_methods_asked_for() {
        let d = Setting::full(2000).describe(&[Method::Target, Method::Tgdp]);
        for part in [
            "hidden 128, 3 blocks",
            "T = 1000",
            "4000 AdamW steps",
            "100-step DDIM",
            "- `exact`: 2000 exact samples",
            "- `target`: a fresh MLP",
            "4000 steps, batch min(n, 256), lr 1e-3, EMA 0.995;",
            "trained 1000, 1000 and 2000 steps",
        ] {
            assert!(d.contains(part), "no `{part}` in:\n{d}");
        }
        assert!(!d.contains("`finetune`"), "{d}");
        assert!(d.trim_end().ends_with("defaults."), "{d}");
    }

    #[test]
    fn the_tgdp_manifest_has_source_data_and_no_train() {
        let s = Setting::full(2000);
        let text = s.method_manifest(Method::Tgdp, 100, 1, Path::new("/r"), Path::new("/r/src"));
        let v: toml::Table = toml::from_str(&text).unwrap();
        assert!(v.get("train").is_none());
        assert_eq!(v["source"]["kind"].as_str(), Some("dtx"));
        assert_eq!(v["source"]["data"]["limit"].as_integer(), Some(10_000));
        assert_eq!(v["target"]["limit"].as_integer(), Some(100));
        let p = &v["plugin"][0];
        assert_eq!(p["library"].as_str(), Some("dtx_plugin_tgdp"));
        assert_eq!(p["config"]["guidance_steps"].as_integer(), Some(2000));
    }
}
