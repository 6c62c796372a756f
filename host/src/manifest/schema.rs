//! The manifest as serde sees it: what the user wrote, with defaults filled in.
//!
//! Every struct denies unknown keys, so a typo is an error that names the key
//! (and, through [`super::load`], suggests the nearest valid one). Checks that
//! need more than one field, or that should all be reported together (counts,
//! ranges, names), live in `validate.rs`, not here: serde stops at the first
//! error, validation collects them all.
//!
//! Paths are kept as written; relative ones are relative to the manifest's
//! folder, resolved by [`super::LoadedManifest::resolve_path`].

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, SeqAccess, Unexpected, Visitor};
use serde::{Deserialize, Serialize, Serializer};

mod condition;
mod enums;
mod sample;
pub use condition::*;
pub use enums::*;
pub use sample::*;

/// Hook names a `[[plugin]]` entry may list in `hooks`, in the order the
/// stages run them (the names of `dtx_plugin_api::Hook::ALL`).
pub const HOOK_NAMES: &[&str] = &["prepare", "weights", "inject", "loss", "score", "filter"];

/// The keys each section accepts (for hints such as "`steps` belongs in
/// `[train]`"); a test checks them against the structs below.
pub const SECTION_KEYS: &[(&str, &[&str])] = &[
    ("run", &["name", "seed", "backend", "output_dir"]),
    (
        "source",
        &["kind", "path", "prediction", "config", "init", "data"],
    ),
    (
        "target",
        &[
            "dataset",
            "limit",
            "resolution",
            "split_seed",
            "holdout",
            "flip",
            "labels",
            "masks",
            "config",
        ],
    ),
    (
        "train",
        &[
            "steps",
            "batch",
            "optimizer",
            "lr",
            "weight_decay",
            "grad_clip",
            "trainable",
            "ema",
            "checkpoint_every",
            "schedule",
            "timesteps",
            "warmup",
            "loss_weight",
            "p2_gamma",
            "p2_k",
            "snr_gamma",
            "validate_every",
        ],
    ),
    ("plugin", &["name", "library", "sha256", "hooks", "config"]),
    (
        "sample",
        &[
            "sampler",
            "steps",
            "count",
            "eta",
            "batch",
            "guidance",
            "label",
            "clip_sample",
            "clip_range",
            "max_attempts_factor",
            "masks",
            "condition",
            "mask_rate",
            "mask_per_sample",
            "prompt",
        ],
    ),
    (
        "condition",
        &["encoder", "path", "tokens", "points", "t", "grid"],
    ),
    (
        "eval",
        &[
            "metrics",
            "reference",
            "extractor",
            "inception_weights",
            "kid_subsets",
            "kid_subset_size",
        ],
    ),
];

/// A whole manifest: one run, from a pretrained source to samples and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// `[run]`: name, seed, backend, output folder. Required.
    pub run: Run,
    /// `[source]`: the pretrained model. Default: none (nothing to train or
    /// sample from; only allowed without `[train]` and `[sample]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    /// `[target]`: the small dataset to transfer to. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// `[train]`: fine-tuning settings. Default: none (no training stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<Train>,
    /// `[[plugin]]` entries, in the order written (hooks run in this order).
    /// Default: empty.
    #[serde(default, rename = "plugin", skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginSpec>,
    /// `[condition]`: the encoder of condition embeddings for plugins that
    /// condition on images or text (ANL). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Condition>,
    /// `[sample]`: sampling settings. Default: none (no sampling stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<Sample>,
    /// `[eval]`: metrics over the samples. Default: none (no evaluation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<Eval>,
}

/// `[run]`: what the run is called and where and how it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// Run name, used as the folder name under `output_dir`. Required; only
    /// ASCII letters, digits, `_`, `.` and `-`.
    pub name: String,
    /// Seed of the host random generator (data order, noise, init). Default: 0.
    #[serde(default)]
    pub seed: u64,
    /// Tensor backend. Default: `cpu`. `cuda` is accepted here; the engine
    /// reports an error if dtx was built without the `cuda` feature.
    #[serde(default)]
    pub backend: Backend,
    /// Folder for checkpoints, samples and logs; relative to the manifest's
    /// folder. Default: `runs`.
    #[serde(default = "default_output_dir")]
    pub output_dir: PathBuf,
}

/// `[source]`: the pretrained model the run starts from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Checkpoint format. Required.
    pub kind: SourceKind,
    /// Checkpoint file or folder, relative to the manifest's folder. Required
    /// except for `kind = "mlp"`, which may build a fresh model from `config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// What the network predicts. Default: `epsilon`.
    #[serde(default)]
    pub prediction: Prediction,
    /// Model hyperparameters, read by the loader of `kind` (ADM flags such as
    /// `num_res_blocks`, MLP sizes such as `hidden`). Default: empty.
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub config: toml::Table,
    /// Where the weights come from: the checkpoint (`pretrained`), or fresh
    /// random weights from `run.seed` in the checkpoint's architecture
    /// (`random`: training from scratch, the baseline every transfer method
    /// is compared with). Default: `pretrained` (MLP sources are always
    /// random).
    #[serde(default)]
    pub init: Init,
    /// `[source.data]`: examples of the source's own distribution, for
    /// methods that need them (TGDP's domain classifier). Default: none
    /// (such a method then samples the source model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<SourceData>,
}

/// `[source.data]`: the source domain's data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceData {
    /// A folder of images (relative to the manifest's folder) or a built-in
    /// written `builtin:NAME`. Required.
    pub dataset: String,
    /// Use at most this many examples (a built-in generates exactly this
    /// many). Default: all of a folder; 10000 of a built-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Read class labels (sub-folder names, or the built-in's labels).
    /// Default: false.
    #[serde(default)]
    pub labels: bool,
    /// Options of a built-in set (as `target.config`). Default: empty.
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub config: toml::Table,
}

impl SourceData {
    /// The built-in dataset name when `dataset` is `builtin:NAME`.
    pub fn builtin(&self) -> Option<&str> {
        self.dataset.strip_prefix("builtin:")
    }
}

/// `[target]`: the small dataset the model is transferred to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// A folder of images (relative to the manifest's folder) or a built-in
    /// dataset written `builtin:NAME` (`builtin:gmm`, `builtin:shapes`).
    /// Required.
    pub dataset: String,
    /// Use only the first `limit` examples (after the split shuffle).
    /// Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Square side, in pixels, images are resized to. Default: the source
    /// model's resolution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<usize>,
    /// Seed of the train / held-out split shuffle. Default: `run.seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_seed: Option<u64>,
    /// Hold this many examples out of training, for the validation loss
    /// (`train.validate_every`). Chosen by `split_seed`, before `limit`.
    /// Default: 0.
    #[serde(default)]
    pub holdout: usize,
    /// Mirror training images left–right with probability ½ (images only).
    /// Default: false.
    #[serde(default)]
    pub flip: bool,
    /// Read class labels (sub-folder names, or the built-in's labels).
    /// Default: false.
    #[serde(default)]
    pub labels: bool,
    /// A folder of per-pixel class masks for a folder dataset: image
    /// `REL.ext` has mask `masks/REL.png` (8-bit gray, value = class),
    /// relative to the manifest's folder. `builtin:shapes` always has masks
    /// (0 background, 1 shape). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masks: Option<String>,
    /// Options of a built-in set (`preset = "target"` for `builtin:gmm`, shape
    /// families for `builtin:shapes`; docs/data.md). Default: empty.
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub config: toml::Table,
}

impl Target {
    /// The built-in dataset name when `dataset` is `builtin:NAME`.
    pub fn builtin(&self) -> Option<&str> {
        self.dataset.strip_prefix("builtin:")
    }
}

/// `[train]`: how the pretrained model is fine-tuned on the target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Train {
    /// Optimiser steps. Required, positive.
    pub steps: u64,
    /// Examples per step. Default: 16.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Optimiser. Default: `adamw`.
    #[serde(default)]
    pub optimizer: Optimizer,
    /// Learning rate, positive. Default: 1e-4.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Decoupled weight decay (AdamW) or L2 penalty (Adam, SGD), >= 0.
    /// Default: 0.0.
    #[serde(default)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value. Default: no clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_clip: Option<f64>,
    /// Which base-model parameters train, besides the plugins' own.
    /// Default: `none` (the base model is frozen).
    #[serde(default)]
    pub trainable: Trainable,
    /// Keep an exponential moving average of the trained weights.
    /// Default: no EMA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<Ema>,
    /// Write a checkpoint every this many steps (and at the end).
    /// Default: only at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<u64>,
    /// Noise schedule β_t. Default: `linear` (β from 1e-4 to 0.02, DDPM).
    #[serde(default)]
    pub schedule: Schedule,
    /// Number of diffusion timesteps T of the schedule. Default: 1000.
    #[serde(default = "default_timesteps")]
    pub timesteps: usize,
    /// Linear learning-rate warmup from 0 over this many steps. Default: 0.
    #[serde(default)]
    pub warmup: u64,
    /// Per-timestep weight of the denoising loss. Default: `none`.
    #[serde(default)]
    pub loss_weight: LossWeight,
    /// γ of `loss_weight = "p2"`: w(t) = 1 / (k + SNR(t))^γ. Default: 1.0.
    #[serde(default = "default_one")]
    pub p2_gamma: f64,
    /// k of `loss_weight = "p2"`. Default: 1.0.
    #[serde(default = "default_one")]
    pub p2_k: f64,
    /// γ of `loss_weight = "min_snr"`: w(t) = min(SNR(t), γ) / SNR(t) for
    /// ε-prediction. Default: 5.0.
    #[serde(default = "default_snr_gamma")]
    pub snr_gamma: f64,
    /// Compute the loss on the held-out split (`target.holdout`) every this
    /// many steps (and at the end). Default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate_every: Option<u64>,
}

/// `train.ema`: exponential moving average of the trained weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ema {
    /// Decay per step, in (0, 1): `ema = decay * ema + (1 - decay) * w`.
    /// Default: 0.999.
    #[serde(default = "default_ema_decay")]
    pub decay: f64,
}

/// `[[plugin]]`: one transfer method loaded at run time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    /// Name of this entry, unique in the manifest; loss terms log as
    /// `<name>.<term>`. Required; ASCII letters, digits, `_` and `-`.
    pub name: String,
    /// The plugin library: a path (relative to the manifest's folder) or a
    /// bare name such as `dtx_plugin_example`, looked up in the plugin search
    /// path. Required.
    pub library: String,
    /// Expected SHA-256 of the library file, 64 lowercase hex digits.
    /// Default: not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Bind only these hooks (names from [`HOOK_NAMES`]). Default: every hook
    /// the plugin implements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<Vec<String>>,
    /// Settings passed to the plugin, which validates them. Default: empty.
    #[serde(default)]
    pub config: toml::Table,
}

impl PluginSpec {
    /// True when `library` names a file (has a path separator or a library
    /// extension) rather than a bare name to search for.
    pub fn library_is_path(&self) -> bool {
        self.library.contains(['/', '\\'])
            || [".so", ".dylib", ".dll"]
                .iter()
                .any(|ext| self.library.ends_with(ext))
    }
}

/// `[eval]`: metrics computed over the samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eval {
    /// Metrics computed over the run's samples at its end: `kid`, `fd`,
    /// `nearest` (mean distance from each sample to its nearest training
    /// image) and `source_distance` (mean distance between the fine-tuned
    /// model's and the source model's samples from the same noise).
    /// Default: none.
    #[serde(default)]
    pub metrics: Vec<String>,
    /// Reference set: `target`, `held_out`, or a folder. Default: none (the
    /// engine picks `held_out` when the target has one, else `target`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
    /// Feature extractor: `dtx` (embedded, trained on procedural shapes;
    /// metrics read `KID_dtx`, `FD_dtx`) or `inception` (the FID
    /// Inception-v3, weights from `inception_weights`). Default: `dtx`.
    #[serde(default = "default_extractor")]
    pub extractor: String,
    /// pytorch-fid's FID Inception weights (`pt_inception-2015-12-05-*.pth`
    /// or a `.safetensors` with the same keys), relative to the manifest.
    /// Required with `extractor = "inception"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inception_weights: Option<PathBuf>,
    /// KID subsets (clean-fid: 100). Default 100.
    #[serde(default = "default_kid_subsets")]
    pub kid_subsets: usize,
    /// Largest KID subset (clean-fid: 1000). Default 1000.
    #[serde(default = "default_kid_subset_size")]
    pub kid_subset_size: usize,
}

/// Metric names `eval.metrics` accepts.
pub const METRICS: [&str; 4] = ["kid", "fd", "nearest", "source_distance"];
/// Extractor names `eval.extractor` accepts.
pub const EXTRACTORS: [&str; 2] = ["dtx", "inception"];

/// `eval.reference`: which images the samples are compared to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// `"target"`: the whole target dataset.
    Target,
    /// `"held_out"`: the target examples not used for training.
    HeldOut,
    /// Any other string: a folder of images, relative to the manifest.
    Folder(PathBuf),
}

impl Serialize for Reference {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Reference::Target => serializer.serialize_str("target"),
            Reference::HeldOut => serializer.serialize_str("held_out"),
            Reference::Folder(path) => path.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Reference {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(match text.as_str() {
            "target" => Reference::Target,
            "held_out" => Reference::HeldOut,
            _ => Reference::Folder(PathBuf::from(text)),
        })
    }
}

/// `train.trainable`: which base-model parameters the optimiser updates.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Trainable {
    /// `"none"`: the base model is frozen; only plugin parameters train.
    #[default]
    None,
    /// `"all"`: every base parameter trains (plain fine-tuning).
    All,
    /// An array of glob patterns over base parameter names (checkpoint keys
    /// such as `up_blocks.*.resnets.*.norm*`); matching parameters train.
    Globs(Vec<String>),
}

impl Serialize for Trainable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Trainable::None => serializer.serialize_str("none"),
            Trainable::All => serializer.serialize_str("all"),
            Trainable::Globs(globs) => globs.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Trainable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TrainableVisitor;
        impl<'de> Visitor<'de> for TrainableVisitor {
            type Value = Trainable;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`none`, `all` or an array of glob patterns")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Trainable, E> {
                match text {
                    "none" => Ok(Trainable::None),
                    "all" => Ok(Trainable::All),
                    _ => Err(E::invalid_value(Unexpected::Str(text), &self)),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Trainable, A::Error> {
                let mut globs = Vec::new();
                while let Some(glob) = seq.next_element::<String>()? {
                    globs.push(glob);
                }
                Ok(Trainable::Globs(globs))
            }
        }
        deserializer.deserialize_any(TrainableVisitor)
    }
}

fn default_output_dir() -> PathBuf {
    PathBuf::from("runs")
}

fn default_batch() -> usize {
    16
}

fn default_attempts_factor() -> usize {
    10
}

fn default_one() -> f64 {
    1.0
}

fn default_snr_gamma() -> f64 {
    5.0
}

fn default_lr() -> f64 {
    1e-4
}

fn default_timesteps() -> usize {
    1000
}

fn default_ema_decay() -> f64 {
    0.999
}

fn default_sample_steps() -> usize {
    50
}

fn default_extractor() -> String {
    "dtx".to_owned()
}

fn default_kid_subsets() -> usize {
    100
}

fn default_kid_subset_size() -> usize {
    1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_enums_round_trip_and_list_variants() {
        assert_eq!(
            "v_prediction".parse::<Prediction>(),
            Ok(Prediction::VPrediction)
        );
        assert_eq!(Optimizer::AdamW.to_string(), "adamw");
        let err = "cdua".parse::<Backend>().unwrap_err().to_string();
        assert_eq!(err, "unknown variant `cdua`, expected `cpu` or `cuda`");
        assert_eq!(SourceKind::VARIANTS, ["diffusers", "adm", "mlp", "dtx"]);
    }

    /// The fields serde knows for `T`, read from its unknown-field error.
    fn serde_fields<T: for<'de> Deserialize<'de> + fmt::Debug>() -> Vec<String> {
        let err = toml::from_str::<T>("not_a_field_of_any_section = 0").unwrap_err();
        let message = err.message().to_owned();
        let expected = message
            .split_once("expected")
            .expect("unknown-field error")
            .1;
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn section_keys_match_the_structs() {
        let actual = [
            ("run", serde_fields::<Run>()),
            ("source", serde_fields::<Source>()),
            ("target", serde_fields::<Target>()),
            ("train", serde_fields::<Train>()),
            ("plugin", serde_fields::<PluginSpec>()),
            ("sample", serde_fields::<Sample>()),
            ("condition", serde_fields::<Condition>()),
            ("eval", serde_fields::<Eval>()),
        ];
        for ((section, keys), (name, fields)) in SECTION_KEYS.iter().zip(actual) {
            assert_eq!(*section, name);
            assert_eq!(*keys, fields.as_slice(), "[{section}]");
        }
        let sections: Vec<&str> = SECTION_KEYS.iter().map(|(s, _)| *s).collect();
        let mut top = serde_fields::<Manifest>();
        top.sort();
        let mut sections: Vec<String> = sections.iter().map(|s| s.to_string()).collect();
        sections.sort();
        assert_eq!(top, sections);
    }

    #[test]
    fn hook_names_match_the_plugin_api() {
        let api: Vec<&str> = dtx_plugin_api::Hook::ALL.iter().map(|h| h.name()).collect();
        assert_eq!(HOOK_NAMES, api.as_slice());
    }

    #[test]
    fn trainable_accepts_keywords_and_globs() {
        #[derive(Deserialize)]
        struct T {
            t: Trainable,
        }
        let parse = |text: &str| toml::from_str::<T>(text).map(|t| t.t);
        assert_eq!(parse("t = 'none'").unwrap(), Trainable::None);
        assert_eq!(parse("t = 'all'").unwrap(), Trainable::All);
        assert_eq!(
            parse("t = ['up.*', 'mid.*']").unwrap(),
            Trainable::Globs(vec!["up.*".into(), "mid.*".into()])
        );
        let err = parse("t = 'some'").unwrap_err().to_string();
        assert!(
            err.contains("`none`, `all` or an array of glob patterns"),
            "{err}"
        );
    }

    #[test]
    fn library_is_path_tells_files_from_names() {
        let spec = |library: &str| PluginSpec {
            name: "p".into(),
            library: library.into(),
            sha256: None,
            hooks: None,
            config: toml::Table::new(),
        };
        assert!(!spec("dtx_plugin_example").library_is_path());
        assert!(spec("./missing/libnothing.so").library_is_path());
        assert!(spec("libfoo.dylib").library_is_path());
    }
}
