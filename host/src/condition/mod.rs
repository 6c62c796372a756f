//! Condition embeddings: the `[condition]` encoder as the plan resolves it
//! (which points or which CLIP folder, and the shape `[N, D_c]` of one
//! embedding, known before anything runs), and ANL's masked-sampling rule
//! (Sec. 3.3 of "Transferring pretrained diffusion probabilistic models").
//! The encoders themselves run in `run::condition` (the U-Net one needs the
//! run's frozen source) and `model::clip`.

mod mask;

/// `sample.mask_rate` when the manifest gives none (the paper's δ = 0.5).
pub const DEFAULT_MASK_RATE: f64 = 0.5;

pub use mask::{MaskRect, mask_rect, mask_values};

use crate::manifest::{Condition, EncoderKind, TokenKind};
use crate::model::{ModelDescription, ModelError};
use std::path::{Path, PathBuf};

/// A `[condition]` table resolved against the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionPlan {
    /// Which encoder.
    pub encoder: EncoderKind,
    /// U-Net encoder: the points pooled, with channels, height and width.
    pub points: Vec<(String, usize, usize, usize)>,
    /// U-Net encoder: the timestep.
    pub t: usize,
    /// U-Net encoder: tokens per side of each point's grid.
    pub grid: usize,
    /// CLIP encoder: the model folder.
    pub clip_dir: Option<PathBuf>,
    /// CLIP encoder: pooled or patch tokens.
    pub tokens: TokenKind,
    /// `(N, D_c)` of one embedding.
    pub shape: (usize, usize),
}

/// Why a `[condition]` table does not fit: the key and the message.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionProblem {
    /// Manifest key path (`condition.points`, `condition.path`, …).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

fn problem(key: &str, message: String) -> ConditionProblem {
    ConditionProblem {
        key: key.to_owned(),
        message,
    }
}

/// Resolves `c` against `model` (the U-Net encoder's points and their
/// shapes) or against the CLIP folder's `config.json` (`clip_dir`,
/// already resolved against the manifest's folder).
pub fn resolve(
    c: &Condition,
    model: &ModelDescription,
    clip_dir: Option<&Path>,
) -> Result<ConditionPlan, ConditionProblem> {
    match c.encoder {
        EncoderKind::Unet => {
            let mut points: Vec<(String, usize, usize, usize)> = Vec::new();
            for pattern in &c.points() {
                let found: Vec<_> = model
                    .points
                    .iter()
                    .filter(|p| {
                        p.name != "temb" && dtx_plugin_api::points::matches(pattern, &p.name)
                    })
                    .collect();
                if found.is_empty() {
                    let names: Vec<&str> = model.points.iter().map(|p| p.name.as_str()).collect();
                    return Err(problem(
                        "condition.points",
                        format!(
                            "`{pattern}` matches no injection point of this model (points: {})",
                            names.join(", ")
                        ),
                    ));
                }
                for p in found {
                    if p.height == 0 {
                        return Err(problem(
                            "condition.encoder",
                            "the embedded `unet` encoder needs an image U-Net; this model's activations are vectors".into(),
                        ));
                    }
                    if !points.iter().any(|(n, ..)| n == &p.name) {
                        points.push((p.name.clone(), p.channels, p.height, p.width));
                    }
                }
            }
            let grid = c.grid();
            if let Some((name, _, h, w)) = points
                .iter()
                .find(|(_, _, h, w)| h % grid != 0 || w % grid != 0)
            {
                return Err(problem(
                    "condition.grid",
                    format!("`{name}` is {h}×{w}, which a {grid}×{grid} grid does not divide"),
                ));
            }
            let n = points.len() * grid * grid;
            let d = points.iter().map(|p| p.1).max().unwrap_or(0);
            Ok(ConditionPlan {
                encoder: EncoderKind::Unet,
                points,
                t: c.t(),
                grid,
                clip_dir: None,
                tokens: TokenKind::Pooled,
                shape: (n, d),
            })
        }
        EncoderKind::Clip => {
            let dir = clip_dir.ok_or_else(|| {
                problem("condition.path", "`encoder = \"clip\"` needs `path`".into())
            })?;
            let shape = clip_shape(dir, c.tokens())
                .map_err(|e| problem("condition.path", e.to_string()))?;
            Ok(ConditionPlan {
                encoder: EncoderKind::Clip,
                points: Vec::new(),
                t: 0,
                grid: 0,
                clip_dir: Some(dir.to_owned()),
                tokens: c.tokens(),
                shape,
            })
        }
    }
}

/// Why a CLIP folder cannot give the embedding shape.
#[derive(Debug, thiserror::Error)]
enum ClipFolderError {
    /// One of the three files the encoder loads is not there.
    #[error(
        "the CLIP folder `{}` has no `{file}` (it needs config.json, model.safetensors and tokenizer.json, as transformers' CLIPModel and CLIPTokenizerFast save them)",
        dir.display()
    )]
    MissingFile {
        /// The folder.
        dir: PathBuf,
        /// The file it lacks.
        file: &'static str,
    },
    /// The folder's config or weights do not describe a CLIP model dtx runs.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// `config.json` cannot be read.
    #[error("`{}`: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// `config.json` is not JSON.
    #[error("`{}`: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// serde_json's message (with line and column).
        source: serde_json::Error,
    },
}

/// `(N, D_c)` from a CLIP folder's `config.json`, with transformers'
/// defaults (projection 512, image 224, patch 32); the three files the
/// encoder loads must exist.
fn clip_shape(dir: &Path, tokens: TokenKind) -> Result<(usize, usize), ClipFolderError> {
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        if !dir.join(file).is_file() {
            return Err(ClipFolderError::MissingFile {
                dir: dir.to_owned(),
                file,
            });
        }
    }
    crate::model::clip::Clip::<crate::tensor_abi::CpuBackend>::check_folder(dir)?;
    let path = dir.join("config.json");
    let text = match crate::util::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(source) => return Err(ClipFolderError::Read { path, source }),
    };
    let v: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(source) => return Err(ClipFolderError::Json { path, source }),
    };
    let num = |v: Option<&serde_json::Value>, default: usize| {
        v.and_then(|x| x.as_u64()).map_or(default, |x| x as usize)
    };
    let d = num(v.get("projection_dim"), 512);
    let vision = v.get("vision_config");
    let image = num(vision.and_then(|x| x.get("image_size")), 224);
    let patch = num(vision.and_then(|x| x.get("patch_size")), 32).max(1);
    let n = match tokens {
        TokenKind::Pooled => 1,
        TokenKind::Patches => 1 + (image / patch) * (image / patch),
    };
    Ok((n, d))
}

impl ConditionPlan {
    /// One line for `dtx plan`.
    pub fn describe(&self) -> String {
        let (n, d) = self.shape;
        let s = if n == 1 { "" } else { "s" };
        match self.encoder {
            EncoderKind::Unet => format!(
                "embedded U-Net encoder: frozen source at t = {} on {}, each pooled to {}×{} tokens; c is {n} token{s} × {d}",
                self.t,
                self.points
                    .iter()
                    .map(|p| p.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                self.grid,
                self.grid
            ),
            EncoderKind::Clip => format!(
                "CLIP encoder `{}` ({} tokens); c is {n} token{s} × {d}",
                self.clip_dir
                    .as_ref()
                    .and_then(|p| p.file_name())
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                self.tokens.as_str()
            ),
        }
    }
}
