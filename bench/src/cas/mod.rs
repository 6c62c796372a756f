//! `dtx bench cas`: the classification accuracy score of class-conditional
//! transfer (Sec. 5.3 of the denoiser-representations paper, Table 3) at
//! small scale. Each arm gives labelled images — the samples of a transfer
//! run, drawn for alternating classes, or the real target images — and the
//! same small classifier ([`classifier`]) trained on each is scored on real
//! test images no run has seen. This module holds the arms, the rule that
//! gives every arm the same number of images per class, the reading of a
//! run folder's samples, and the table ([`table`]).

pub mod classifier;
pub mod table;

use anyhow::{Context, bail};
use dtx::data::{Dataset, chw_from_rgb};
use dtx::run::SamplingStats;
use std::path::{Path, PathBuf};

pub use classifier::{ClassifierSettings, train_and_score};

/// Seed of the real test images (`builtin:shapes` with the target preset):
/// no run uses it, so they are neither a run's training images nor its
/// held-out images (the rejection classifier's validation set).
pub const TEST_SEED: u64 = 1 << 40;

/// Real test images per seed-independent test set.
pub const TEST_IMAGES: usize = 1000;

/// One arm of the benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct Arm {
    /// Name in the table (`finetune+cfg`).
    pub name: &'static str,
    /// Name in run folders (`finetune-cfg`): `bench-cas-<slug>-seed<s>`.
    pub slug: &'static str,
    /// The manifest, in the shipped manifests folder
    /// (`crate::shipped`); `None` for the real images.
    pub manifest: Option<&'static str>,
    /// Overrides that make the arm from its manifest.
    pub sets: &'static [&'static str],
    /// Index of the denoiser-guidance `[[plugin]]` in the manifest.
    pub guidance: usize,
}

/// The arms, in table order: fine-tuning alone, with classifier-free
/// guidance, with guidance and rejection, SDFT with guidance and
/// rejection, and the real target images.
pub const ARMS: [Arm; 5] = [
    Arm {
        name: "finetune",
        slug: "finetune",
        manifest: Some("rejection.toml"),
        sets: &[
            "plugin.0.config.cfg_weight=0",
            "plugin.0.config.reject=false",
        ],
        guidance: 0,
    },
    Arm {
        name: "finetune+cfg",
        slug: "finetune-cfg",
        manifest: Some("rejection.toml"),
        sets: &["plugin.0.config.reject=false"],
        guidance: 0,
    },
    Arm {
        name: "finetune+cfg+rejection",
        slug: "finetune-cfg-rejection",
        manifest: Some("rejection.toml"),
        sets: &[],
        guidance: 0,
    },
    Arm {
        name: "sdft+rejection",
        slug: "sdft-rejection",
        manifest: Some("sdft-rejection.toml"),
        sets: &[],
        guidance: 1,
    },
    Arm {
        name: "real",
        slug: "real",
        manifest: None,
        sets: &[],
        guidance: 0,
    },
];

/// The run folder name of `arm` at `seed`.
pub fn run_name(arm: &Arm, seed: u64) -> String {
    format!("bench-cas-{}-seed{seed}", arm.slug)
}

/// Overrides of `--quick` (for tests; the numbers mean nothing): two
/// training steps, two sampling steps, two classifier steps in the plugin.
pub fn quick_sets(arm: &Arm) -> Vec<String> {
    vec![
        "train.steps=2".into(),
        "train.checkpoint_every=2".into(),
        "sample.steps=2".into(),
        format!("plugin.{}.config.steps=2", arm.guidance),
    ]
}

/// Images per class `0..k` among `labels`.
pub fn per_class_counts(labels: &[i64], k: usize) -> Vec<usize> {
    let mut counts = vec![0; k];
    for &y in labels {
        if let Some(c) = usize::try_from(y).ok().and_then(|y| counts.get_mut(y)) {
            *c += 1;
        }
    }
    counts
}

/// Images per class every arm keeps: `requested`, or fewer when some arm
/// has fewer of some class (a rejection run stopped at its attempt cap),
/// so that every arm trains its classifier on equally many images of each
/// class.
pub fn common_per_class(requested: usize, counts: &[Vec<usize>]) -> usize {
    counts.iter().flatten().copied().fold(requested, usize::min)
}

/// The first `n` images of each class `0..k` of `set`, in their order.
pub fn take_per_class(set: &Dataset, n: usize, k: usize) -> anyhow::Result<Dataset> {
    let labels = set
        .labels
        .as_deref()
        .with_context(|| format!("`{}` has no labels", set.source))?;
    let mut taken = vec![0; k];
    let mut keep = Vec::new();
    for (i, &y) in labels.iter().enumerate() {
        let Some(t) = usize::try_from(y).ok().and_then(|y| taken.get_mut(y)) else {
            bail!("`{}`: label {y} is not one of the {k} classes", set.source);
        };
        if *t < n {
            *t += 1;
            keep.push(i);
        }
    }
    if let Some(c) = taken.iter().position(|&t| t < n) {
        bail!(
            "`{}` has {} images of class {c}, fewer than {n}",
            set.source,
            taken[c]
        );
    }
    Ok(set.subset(&keep))
}

/// What a finished run folder gives the benchmark.
pub struct RunSamples {
    /// The accepted samples, labelled by the class each was drawn for.
    pub set: Dataset,
    /// The sampling record of `metrics.jsonl`.
    pub stats: SamplingStats,
}

/// Whether `dir` holds a finished run of exactly `manifest_toml` (the
/// resolved manifest a run writes): its manifest, sampling record and
/// sample labels are there.
pub fn finished_run(dir: &Path, manifest_toml: &str) -> bool {
    std::fs::read_to_string(dir.join("manifest.toml")).is_ok_and(|m| m == manifest_toml)
        && dir.join("samples").join("labels.csv").is_file()
        && sampling_record(dir).is_ok()
}

fn sampling_record(dir: &Path) -> anyhow::Result<SamplingStats> {
    let path = dir.join("metrics.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading `{}`", path.display()))?;
    let v = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("sample").cloned())
        .next_back()
        .with_context(|| format!("`{}` has no sampling record", path.display()))?;
    let count = |k: &str| {
        v[k].as_u64()
            .map(|n| n as usize)
            .with_context(|| format!("`{}`: the sampling record has no `{k}`", path.display()))
    };
    Ok(SamplingStats {
        requested: count("requested")?,
        accepted: count("accepted")?,
        drawn: count("drawn")?,
        rejected: serde_json::from_value(v["rejected"].clone()).unwrap_or_default(),
    })
}

/// Reads a finished run's samples (`samples/*.png`, as the run wrote them)
/// with their classes (`samples/labels.csv`) and its sampling record.
pub fn read_run(dir: &Path, class_names: &[String]) -> anyhow::Result<RunSamples> {
    let samples = dir.join("samples");
    let csv = samples.join("labels.csv");
    let text =
        std::fs::read_to_string(&csv).with_context(|| format!("reading `{}`", csv.display()))?;
    let mut values = Vec::new();
    let mut labels = Vec::new();
    let mut shape: Option<Vec<usize>> = None;
    for (n, line) in text.lines().enumerate().skip(1) {
        let mut cols = line.split(',');
        let (Some(file), Some(label)) = (cols.next(), cols.next()) else {
            bail!(
                "`{}` line {}: expected `file,label,class`",
                csv.display(),
                n + 1
            );
        };
        let label: i64 = label
            .trim()
            .parse()
            .with_context(|| format!("`{}` line {}: label `{label}`", csv.display(), n + 1))?;
        if label < 0 || label as usize >= class_names.len() {
            bail!(
                "`{}` line {}: class {label}, but the target has {} classes",
                csv.display(),
                n + 1,
                class_names.len()
            );
        }
        let png: PathBuf = samples.join(file.trim());
        let img = image::open(&png)
            .with_context(|| format!("reading `{}`", png.display()))?
            .to_rgb8();
        let s = vec![3, img.height() as usize, img.width() as usize];
        if shape.get_or_insert_with(|| s.clone()) != &s {
            bail!("`{}` is {s:?}, unlike the samples before it", png.display());
        }
        values.extend(chw_from_rgb(&img));
        labels.push(label);
    }
    let Some(sample_shape) = shape else {
        bail!("`{}` lists no samples", csv.display());
    };
    Ok(RunSamples {
        set: Dataset {
            samples: values,
            sample_shape,
            labels: Some(labels),
            class_names: class_names.to_vec(),
            masks: None,
            source: samples.display().to_string(),
        },
        stats: sampling_record(dir)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labelled(labels: &[i64]) -> Dataset {
        Dataset {
            samples: labels.iter().map(|&y| y as f32).collect(),
            sample_shape: vec![1],
            labels: Some(labels.to_vec()),
            class_names: vec!["a".into(), "b".into()],
            masks: None,
            source: "test".into(),
        }
    }

    #[test]
    fn every_arm_is_cut_to_the_smallest_per_class_count() {
        // 32 requested; a rejection arm stopped at 29 of class 1.
        let counts = [vec![32, 32], vec![32, 29], vec![100, 100]];
        assert_eq!(common_per_class(32, &counts), 29);
        assert_eq!(common_per_class(32, &[vec![32, 32], vec![40, 33]]), 32);
        // a class no sample was drawn for leaves nothing to compare
        assert_eq!(common_per_class(32, &[vec![32, 0]]), 0);

        let full = labelled(&[0, 1, 0, 1, 0, 1, 1]);
        let cut = take_per_class(&full, 2, 2).unwrap();
        assert_eq!(cut.labels.as_deref(), Some(&[0, 1, 0, 1][..]));
        assert_eq!(per_class_counts(cut.labels.as_deref().unwrap(), 2), [2, 2]);
        let e = take_per_class(&labelled(&[0, 0, 1]), 2, 2).unwrap_err();
        assert!(e.to_string().contains("1 images of class 1"), "{e}");
    }

    #[test]
    fn counts_ignore_nothing_in_range() {
        assert_eq!(per_class_counts(&[0, 1, 1, 2, 1], 3), [1, 3, 1]);
    }

    #[test]
    fn arms_have_distinct_run_names() {
        let names: std::collections::BTreeSet<String> =
            ARMS.iter().map(|a| run_name(a, 0)).collect();
        assert_eq!(names.len(), ARMS.len());
        assert_eq!(run_name(&ARMS[1], 2), "bench-cas-finetune-cfg-seed2");
    }

    #[test]
    fn a_run_folder_reads_back_as_labelled_images() {
        let dir = std::env::temp_dir().join(format!("dtx-bench-cas-read-{}", std::process::id()));
        let samples = dir.join("samples");
        std::fs::create_dir_all(&samples).unwrap();
        let mut csv = String::from("file,label,class\n");
        for (i, y) in [0i64, 1, 0].iter().enumerate() {
            let v = if *y == 0 { 255 } else { 0 };
            image::RgbImage::from_pixel(4, 4, image::Rgb([v, v, v]))
                .save(samples.join(format!("{i:05}.png")))
                .unwrap();
            csv.push_str(&format!("{i:05}.png,{y},c{y}\n"));
        }
        std::fs::write(samples.join("labels.csv"), csv).unwrap();
        std::fs::write(
            dir.join("metrics.jsonl"),
            "{\"step\":1}\n{\"sample\":{\"requested\":4,\"accepted\":3,\"drawn\":40,\"acceptance_rate\":0.075,\"rejected\":{\"g\":37}}}\n",
        )
        .unwrap();
        let names = vec!["c0".to_owned(), "c1".to_owned()];
        let r = read_run(&dir, &names).unwrap();
        assert_eq!(r.set.sample_shape, [3, 4, 4]);
        assert_eq!(r.set.labels.as_deref(), Some(&[0, 1, 0][..]));
        assert_eq!((r.set.sample(0)[0], r.set.sample(1)[0]), (1.0, -1.0));
        assert_eq!((r.stats.accepted, r.stats.drawn), (3, 40));
        assert_eq!(r.stats.rejected["g"], 37);
        // a run of another manifest is not reused
        std::fs::write(dir.join("manifest.toml"), "a").unwrap();
        assert!(finished_run(&dir, "a") && !finished_run(&dir, "b"));
        // a label beyond the classes is refused
        let e = read_run(&dir, &names[..1]).err().unwrap();
        assert!(e.to_string().contains("class 1"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
