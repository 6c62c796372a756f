//! `dtx eval`: metrics between folders of images, outside a run, or (with
//! `--features`, in `eval_features`) between precomputed feature matrices.

use crate::eval::{EvalInputs, Extractor, KidSettings, evaluate};
use crate::manifest::METRICS;
use crate::tensor_abi::CpuBackend;
use anyhow::{Context, bail};
use burn::tensor::backend::AutodiffBackend;
use std::io::Write;
use std::path::{Path, PathBuf};

type B = <CpuBackend as AutodiffBackend>::InnerBackend;

/// `dtx eval` arguments.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Generated images: a folder (searched recursively), or a run folder
    /// (its `samples/`).
    #[arg(required_unless_present = "features")]
    pub samples: Option<PathBuf>,
    /// Reference images: a folder (held-out target images, say).
    #[arg(required_unless_present = "features")]
    pub reference: Option<PathBuf>,
    /// FD and KID between two precomputed feature matrices instead of
    /// images: each `file.safetensors` (its only 2-D tensor, rows ×
    /// features) or `file.safetensors:key`, F32 or F64.
    #[arg(long, num_args = 2, value_names = ["A", "B"],
          conflicts_with_all = ["samples", "reference", "train", "source_samples", "metrics",
                                "extractor", "inception_weights", "resolution"])]
    pub features: Option<Vec<String>>,
    /// The training images, for `nearest`.
    #[arg(long)]
    pub train: Option<PathBuf>,
    /// The source model's samples from the same noise, in the same file
    /// order as the samples, for `source_distance`.
    #[arg(long)]
    pub source_samples: Option<PathBuf>,
    /// Metrics, comma-separated: kid, fd, nearest, source_distance
    /// (default: kid, fd, plus nearest with --train and source_distance
    /// with --source-samples).
    #[arg(long, value_delimiter = ',')]
    pub metrics: Vec<String>,
    /// Feature extractor: `dtx` (embedded) or `inception`.
    #[arg(long, default_value = "dtx")]
    pub extractor: String,
    /// pytorch-fid's FID Inception weights, for `--extractor inception`.
    #[arg(long)]
    pub inception_weights: Option<PathBuf>,
    /// KID subsets.
    #[arg(long, alias = "kid-subsets", default_value_t = 100)]
    pub subsets: usize,
    /// Largest KID subset.
    #[arg(long, alias = "kid-subset-size", default_value_t = 1000)]
    pub subset_size: usize,
    /// Seed of the KID subsets.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Side images are loaded at (default: the first sample's width).
    #[arg(long)]
    pub resolution: Option<usize>,
    /// Print the numbers as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The folder of images `path` names: itself, or a run folder's `samples/`.
fn image_folder(path: &Path) -> PathBuf {
    let samples = path.join("samples");
    if path.join("manifest.toml").is_file() && samples.is_dir() {
        samples
    } else {
        path.to_path_buf()
    }
}

/// Width of the first image under `folder` (sorted order).
fn first_width(folder: &Path) -> anyhow::Result<usize> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(folder)
        .with_context(|| format!("reading `{}`", folder.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    for p in entries {
        if let Ok((w, _)) = image::image_dimensions(&p) {
            return Ok(w as usize);
        }
    }
    bail!(
        "no image found directly in `{}`: give --resolution",
        folder.display()
    )
}

/// Runs `dtx eval`.
pub fn run(a: &EvalArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    if a.subsets == 0 || a.subset_size < 2 {
        bail!("--subsets must be at least 1 and --subset-size at least 2");
    }
    if let Some(specs) = &a.features {
        let kid = super::eval_features::SubsetSettings {
            subsets: a.subsets,
            subset_size: a.subset_size,
            seed: a.seed,
        };
        return super::eval_features::run(specs, &kid, a.json, out);
    }
    let (Some(samples), Some(reference_dir)) = (&a.samples, &a.reference) else {
        bail!("give the samples and reference folders, or --features A B");
    };
    let mut metrics = a.metrics.clone();
    if metrics.is_empty() {
        metrics = vec!["kid".into(), "fd".into()];
        if a.train.is_some() {
            metrics.push("nearest".into());
        }
        if a.source_samples.is_some() {
            metrics.push("source_distance".into());
        }
    }
    for m in &metrics {
        if !METRICS.contains(&m.as_str()) {
            bail!("unknown metric `{m}` (metrics: {})", METRICS.join(", "));
        }
    }
    if metrics.iter().any(|m| m == "nearest") && a.train.is_none() {
        bail!("`nearest` needs the training images: give --train FOLDER");
    }
    if metrics.iter().any(|m| m == "source_distance") && a.source_samples.is_none() {
        bail!("`source_distance` needs the source model's samples: give --source-samples FOLDER");
    }
    let samples_dir = image_folder(samples);
    let res = match a.resolution {
        Some(r) => r,
        None => first_width(&samples_dir)?,
    };
    let load = |p: &Path, what: &str| {
        crate::data::load_folder(p, res, false).with_context(|| format!("{what} `{}`", p.display()))
    };
    let device = Default::default();
    let extractor = Extractor::<B>::load(&a.extractor, a.inception_weights.as_deref(), &device)?;
    let samples = load(&samples_dir, "samples")?;
    let reference = load(reference_dir, "reference images")?;
    let train = a
        .train
        .as_deref()
        .map(|p| load(p, "training images"))
        .transpose()?;
    let source = a
        .source_samples
        .as_deref()
        .map(|p| load(&image_folder(p), "source samples"))
        .transpose()?;
    if let Some(s) = &source
        && s.len() != samples.len()
    {
        bail!(
            "`source_distance` pairs images by file order: {} samples but {} source samples",
            samples.len(),
            s.len()
        );
    }
    let inputs = EvalInputs {
        samples: (&samples.samples, &samples.sample_shape),
        reference: (
            &reference.samples,
            &reference.sample_shape,
            format!("`{}`", reference_dir.display()),
        ),
        train: train
            .as_ref()
            .map(|t| (t.samples.as_slice(), t.sample_shape.as_slice())),
        source_samples: source.as_ref().map(|s| s.samples.as_slice()),
    };
    let kid = KidSettings {
        subsets: a.subsets,
        max_subset_size: a.subset_size,
        seed: a.seed,
    };
    let e = evaluate(&extractor, &metrics, &inputs, kid, &device)?;
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&e.to_json())?)?;
    } else {
        writeln!(
            out,
            "{} samples vs {} reference images, `{}` features, images at {res} px",
            e.samples, e.reference.0, e.extractor
        )?;
        for line in e.lines() {
            writeln!(out, "  {line}")?;
        }
    }
    Ok(())
}
