//! Evaluation: feature extractors and the distribution metrics over their
//! features (FD, KID, nearest-neighbour and paired distances), run at the end
//! of a run (`[eval]`) and by `dtx eval` on folders of images.
//!
//! Two extractors: `dtx` (embedded, trained on the procedural shapes; its
//! numbers are labelled `KID_dtx` / `FD_dtx`) and `inception` (the FID
//! Inception-v3 with weights the user gives; `KID` / `FID`).

pub mod dtx_net;
pub mod inception;
pub(crate) mod metrics;
pub mod paired;
pub mod train_extractor;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use metrics::{Features, Kid, MetricError};
use std::fmt::Write as _;
use std::path::Path;

/// Images per extractor forward pass.
const BATCH: usize = 50;

/// A feature extractor, ready to run.
pub enum Extractor<B: Backend> {
    /// The embedded shapes network.
    Dtx(dtx_net::DtxNet<B>),
    /// The FID Inception-v3 (boxed: it is large).
    Inception(Box<inception::InceptionV3<B>>),
}

/// Why an extractor cannot load, or features or metrics cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// An extractor name that is not one.
    #[error("unknown feature extractor `{0}` (dtx, inception)")]
    UnknownExtractor(String),
    /// The shipped extractor's weights do not load.
    #[error("the embedded dtx extractor: {0}")]
    Embedded(dtx_net::DtxNetError),
    /// Inception without its weights file.
    #[error(
        "the Inception extractor needs pytorch-fid's FID weights (pt_inception-2015-12-05-*.pth): give their path"
    )]
    InceptionWeightsNeeded,
    /// Inception's weights file does not load.
    #[error(transparent)]
    Inception(#[from] inception::InceptionError),
    /// Examples that are not images.
    #[error("feature extractors take images [C, H, W], not examples of shape {0:?}")]
    NotImages(Vec<usize>),
    /// Images of another channel count.
    #[error("feature extractors take 1- or 3-channel images, not {0}")]
    Channels(usize),
    /// Features that cannot be read back.
    #[error("{0}")]
    Read(String),
    /// A metric that cannot be computed, named as the run names it.
    #[error("{metric}: {reason}")]
    Metric {
        /// `KID_dtx`, `FID`, …
        metric: &'static str,
        /// Why.
        reason: MetricError,
    },
    /// `nearest` without the training images.
    #[error("`nearest` needs the training images")]
    NeedsTraining,
    /// `source_distance` without the source model's samples.
    #[error("`source_distance` needs the source model's samples")]
    NeedsSource,
    /// A distance that cannot be computed.
    #[error(transparent)]
    Distance(#[from] MetricError),
}

impl<B: Backend> Extractor<B> {
    /// The extractor called `name` (`dtx`, `inception`); Inception needs its
    /// weights file.
    pub fn load(name: &str, weights: Option<&Path>, device: &B::Device) -> Result<Self, EvalError> {
        match name {
            "dtx" => Ok(Extractor::Dtx(
                dtx_net::DtxNet::embedded(device).map_err(EvalError::Embedded)?,
            )),
            "inception" => {
                let path = weights.ok_or(EvalError::InceptionWeightsNeeded)?;
                Ok(Extractor::Inception(Box::new(
                    inception::InceptionV3::load(path, device)?,
                )))
            }
            other => Err(EvalError::UnknownExtractor(other.to_owned())),
        }
    }

    /// What the metrics are called with this extractor: `KID_dtx`, `FD_dtx`
    /// for the shapes network; `KID`, `FID` for Inception.
    pub fn metric_names(&self) -> (&'static str, &'static str) {
        match self {
            Extractor::Dtx(_) => ("KID_dtx", "FD_dtx"),
            Extractor::Inception(_) => ("KID", "FID"),
        }
    }

    /// Its name as a manifest writes it.
    pub fn name(&self) -> &'static str {
        match self {
            Extractor::Dtx(_) => "dtx",
            Extractor::Inception(_) => "inception",
        }
    }

    /// Features of images `[C, H, W]` in [−1, 1], flat, example after example.
    pub fn features(
        &self,
        images: &[f32],
        example: &[usize],
        device: &B::Device,
    ) -> Result<Features, EvalError> {
        let [c, h, w] = *example else {
            return Err(EvalError::NotImages(example.to_vec()));
        };
        if c != 1 && c != 3 {
            return Err(EvalError::Channels(c));
        }
        let per = c * h * w;
        let mut out = Vec::new();
        let mut dim = 0;
        for chunk in images.chunks(per * BATCH) {
            let n = chunk.len() / per;
            let x =
                Tensor::<B, 4>::from_data(TensorData::new(chunk.to_vec(), [n, c, h, w]), device);
            let f = match self {
                Extractor::Dtx(net) => net.features(x),
                Extractor::Inception(net) => net.features(x),
            };
            dim = f.dims()[1];
            out.extend(
                f.into_data()
                    .to_vec::<f32>()
                    .map_err(|e| EvalError::Read(format!("{e:?}")))?,
            );
        }
        Ok(Features::from_f32(&out, dim.max(1)))
    }
}

/// Image sets a run or `dtx eval` compares.
pub struct EvalInputs<'a> {
    /// The samples, flat, and one example's shape `[C, H, W]`.
    pub samples: (&'a [f32], &'a [usize]),
    /// The reference images (held-out target, whole target or a folder), and
    /// where they come from, for the report.
    pub reference: (&'a [f32], &'a [usize], String),
    /// The images the model was trained on, for `nearest`.
    pub train: Option<(&'a [f32], &'a [usize])>,
    /// The source model's samples from the same noise, for `source_distance`.
    pub source_samples: Option<&'a [f32]>,
}

/// KID settings.
#[derive(Debug, Clone, Copy)]
pub struct KidSettings {
    /// Subsets (clean-fid: 100).
    pub subsets: usize,
    /// Largest subset (clean-fid: 1000).
    pub max_subset_size: usize,
    /// Seed of the subset draws.
    pub seed: u64,
}

/// Mean distance to the nearest training image, in feature space.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Nearest {
    /// From each sample.
    pub samples: f64,
    /// From each reference image, when the reference is not the training set
    /// itself: what a fresh image of the target family scores. Samples far
    /// below it are copies of training images.
    pub reference: Option<f64>,
}

/// The metrics of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// `dtx` or `inception`.
    pub extractor: String,
    /// Metric names as reported (`KID_dtx`/`FD_dtx`, or `KID`/`FID`).
    pub names: (String, String),
    /// Number of samples.
    pub samples: usize,
    /// Number of reference images and where they come from.
    pub reference: (usize, String),
    /// KID over subsets, and the deterministic full-set estimate.
    pub kid: Option<(Kid, f64)>,
    /// Fréchet distance.
    pub fd: Option<f64>,
    /// Nearest-training-image distances.
    pub nearest: Option<Nearest>,
    /// Mean distance between each sample and the source model's sample from
    /// the same noise.
    pub source_distance: Option<f64>,
}

/// Computes `metrics` (names from [`crate::manifest::METRICS`]) over `inputs`.
pub fn evaluate<B: Backend>(
    extractor: &Extractor<B>,
    metrics: &[String],
    inputs: &EvalInputs<'_>,
    kid: KidSettings,
    device: &B::Device,
) -> Result<Evaluation, EvalError> {
    let wants = |m: &str| metrics.iter().any(|x| x == m);
    let samples = extractor.features(inputs.samples.0, inputs.samples.1, device)?;
    let (reference_images, reference_shape, reference_name) = &inputs.reference;
    let needs_reference = wants("kid") || wants("fd") || wants("nearest");
    let reference = if needs_reference {
        Some(extractor.features(reference_images, reference_shape, device)?)
    } else {
        None
    };
    let (kid_name, fd_name) = extractor.metric_names();
    let mut out = Evaluation {
        extractor: extractor.name().to_owned(),
        names: (kid_name.to_owned(), fd_name.to_owned()),
        samples: samples.len(),
        reference: (
            reference.as_ref().map_or(0, |r| r.len()),
            reference_name.clone(),
        ),
        kid: None,
        fd: None,
        nearest: None,
        source_distance: None,
    };
    if let Some(r) = &reference {
        if wants("kid") {
            let named = |reason| EvalError::Metric {
                metric: kid_name,
                reason,
            };
            let k = metrics::kid(&samples, r, kid.subsets, kid.max_subset_size, kid.seed)
                .map_err(named)?;
            let full = metrics::kid_full(&samples, r).map_err(named)?;
            out.kid = Some((k, full));
        }
        if wants("fd") {
            out.fd = Some(metrics::frechet_distance(&samples, r).map_err(|reason| {
                EvalError::Metric {
                    metric: fd_name,
                    reason,
                }
            })?);
        }
        if wants("nearest") {
            let (images, shape) = inputs.train.ok_or(EvalError::NeedsTraining)?;
            let train = extractor.features(images, shape, device)?;
            let from_samples = metrics::nearest_distances(&samples, &train)?;
            let from_reference = (reference_name != "target")
                .then(|| metrics::nearest_distances(r, &train))
                .transpose()?;
            out.nearest = Some(Nearest {
                samples: metrics::mean(&from_samples),
                reference: from_reference.as_deref().map(metrics::mean),
            });
        }
    }
    if wants("source_distance") {
        let source = inputs.source_samples.ok_or(EvalError::NeedsSource)?;
        let s = extractor.features(source, inputs.samples.1, device)?;
        out.source_distance = Some(metrics::mean_paired_distance(&samples, &s)?);
    }
    Ok(out)
}

impl Evaluation {
    /// The numbers as JSON (KID raw, not ×10³), for `metrics.jsonl` and
    /// `dtx eval --json`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("extractor".into(), self.extractor.clone().into());
        m.insert("samples".into(), self.samples.into());
        m.insert("reference".into(), self.reference.1.clone().into());
        m.insert("reference_images".into(), self.reference.0.into());
        if let Some((k, full)) = &self.kid {
            m.insert(self.names.0.clone(), k.mean.into());
            m.insert(format!("{}_std", self.names.0), k.std.into());
            m.insert(format!("{}_subsets", self.names.0), k.subsets.into());
            m.insert(
                format!("{}_subset_size", self.names.0),
                k.subset_size.into(),
            );
            m.insert(format!("{}_full", self.names.0), (*full).into());
        }
        if let Some(fd) = self.fd {
            m.insert(self.names.1.clone(), fd.into());
        }
        if let Some(n) = &self.nearest {
            m.insert("nearest_train_distance".into(), n.samples.into());
            if let Some(r) = n.reference {
                m.insert("reference_nearest_train_distance".into(), r.into());
            }
        }
        if let Some(d) = self.source_distance {
            m.insert("source_distance".into(), d.into());
        }
        serde_json::Value::Object(m)
    }

    /// A Markdown table of the numbers, KID first and ×10³ as clean-fid
    /// prints it.
    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "{} samples against {} reference images ({}), features of the `{}` extractor{}.\n",
            self.samples,
            self.reference.0,
            self.reference.1,
            self.extractor,
            if self.extractor == "dtx" {
                " (trained on procedural shapes: compare dtx runs with each other, not with published FID/KID)"
            } else {
                ""
            }
        );
        let _ = writeln!(o, "| metric | value |\n|---|---|");
        if let Some((k, full)) = &self.kid {
            let _ = writeln!(
                o,
                "| {} ×10³ | {:.3} ± {:.3} ({} subsets of {}) |",
                self.names.0,
                k.mean * 1e3,
                k.std * 1e3,
                k.subsets,
                k.subset_size
            );
            let _ = writeln!(
                o,
                "| {} ×10³, all images | {:.3} |",
                self.names.0,
                full * 1e3
            );
        }
        if let Some(fd) = self.fd {
            let _ = writeln!(o, "| {} | {fd:.4} |", self.names.1);
        }
        if let Some(n) = &self.nearest {
            let _ = writeln!(
                o,
                "| mean distance, sample → nearest training image | {:.4} |",
                n.samples
            );
            if let Some(r) = n.reference {
                let _ = writeln!(
                    o,
                    "| mean distance, reference image → nearest training image | {r:.4} |"
                );
            }
        }
        if let Some(d) = self.source_distance {
            let _ = writeln!(
                o,
                "| mean distance to the source model's sample from the same noise | {d:.4} |"
            );
        }
        o
    }

    /// One line per number for a terminal.
    pub fn lines(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some((k, full)) = &self.kid {
            v.push(format!(
                "{} x1e3: {:.3} ± {:.3} ({} subsets of {}; all images {:.3})",
                self.names.0,
                k.mean * 1e3,
                k.std * 1e3,
                k.subsets,
                k.subset_size,
                full * 1e3
            ));
        }
        if let Some(fd) = self.fd {
            v.push(format!("{}: {fd:.4}", self.names.1));
        }
        if let Some(n) = &self.nearest {
            let mut line = format!("nearest training image: {:.4} from samples", n.samples);
            if let Some(r) = n.reference {
                let _ = write!(line, ", {r:.4} from reference images");
            }
            v.push(line);
        }
        if let Some(d) = self.source_distance {
            v.push(format!("distance to the source's samples: {d:.4}"));
        }
        v
    }
}
