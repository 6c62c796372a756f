//! A CLIP image and text encoder, inference only, on any burn backend:
//! loads a transformers `CLIPModel` folder (`config.json`,
//! `model.safetensors`, `tokenizer.json`) and embeds images and prompts in
//! its joint space, as `get_image_features` / `get_text_features` do, or
//! every image token through the visual projection.
//!
//! Radford, Kim, Hallacy, Ramesh, Goh, Agarwal, Sastry, Askell, Mishkin,
//! Clark, Krueger and Sutskever, "Learning Transferable Visual Models From
//! Natural Language Supervision", ICML 2021, arXiv:2103.00020. Behaviour and
//! key names follow transformers 5.24.0 (`models/clip/`).
//!
//! - `config`: `config.json` with transformers' defaults;
//! - `weights`: `model.safetensors`, every problem reported at once;
//! - `transformer`: the encoder layers both towers share;
//! - `vision`, `text`: the two towers;
//! - `preprocess`: resize, crop, normalise;
//! - `tokenizer`: `tokenizer.json` through the `tokenizers` crate.
//!
//! Parity with transformers is tested in `tests.rs` against
//! `tests/fixtures/clip/`; the user guide is `docs/models.md`.

mod config;
mod preprocess;
#[cfg(test)]
mod tests;
mod text;
mod tokenizer;
mod transformer;
mod vision;
mod weights;

pub use preprocess::{CLIP_MEAN, CLIP_STD};

use crate::model::ModelError;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use config::ClipConfig;
use std::path::Path;
use text::TextTower;
use tokenizer::ClipTokenizer;
use transformer::Linear;
use vision::VisionTower;
use weights::Loader;

/// Which image tokens an image embedding holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipTokens {
    /// The class token only: CLIP's image embedding (`get_image_features`).
    Pooled,
    /// The class token then every patch (row-major), each through
    /// `post_layernorm` and the visual projection.
    Patches,
}

/// A loaded CLIP model: both towers, both projections, the tokenizer.
#[derive(Debug, Clone)]
pub struct Clip<B: Backend> {
    config: ClipConfig,
    vision: VisionTower<B>,
    text: TextTower<B>,
    /// `visual_projection`: `[H_vision → D]`, no bias.
    visual_projection: Linear<B>,
    /// `text_projection`: `[H_text → D]`, no bias.
    text_projection: Linear<B>,
    tokenizer: ClipTokenizer,
    device: B::Device,
}

impl<B: Backend> Clip<B> {
    /// Loads the `CLIPModel` folder `dir` as `CLIPModel.save_pretrained` and
    /// `CLIPTokenizerFast.save_pretrained` write it: `config.json` (absent
    /// keys take transformers' defaults; `text_config_dict` /
    /// `vision_config_dict` win over `text_config` / `vision_config` as in
    /// transformers), `model.safetensors` (`vision_model.*`, `text_model.*`,
    /// `visual_projection.weight`, `text_projection.weight`; `logit_scale`
    /// and `*.position_ids` are skipped; F32, F16, BF16 and F64 are read as
    /// f32), `tokenizer.json` and, if present, `tokenizer_config.json` (its
    /// `pad_token`).
    ///
    /// # Errors
    /// A missing file names it; a config value names file and key; weights
    /// that do not fit list every missing, unexpected, mis-shaped and
    /// unreadable key with the file.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::MissingFile {
                path: dir.to_owned(),
                expected: "a CLIPModel folder (config.json, model.safetensors, tokenizer.json)"
                    .into(),
            });
        }
        let config_file = dir.join("config.json");
        let text = crate::util::fs::read_to_string(&config_file).map_err(|source| match source
            .kind()
        {
            std::io::ErrorKind::NotFound => ModelError::MissingFile {
                path: config_file.clone(),
                expected: "the CLIPConfig, as `CLIPModel.save_pretrained` writes it".into(),
            },
            _ => ModelError::Io {
                path: config_file.clone(),
                source,
            },
        })?;
        let config = ClipConfig::parse(&config_file, &text)?;
        let tokenizer = ClipTokenizer::load(dir, config.text.max_len)?;

        let weights_file = dir.join("model.safetensors");
        let mut l = Loader::open(&weights_file, device)?;
        let d = config.projection_dim;
        let vision = VisionTower::load(&mut l, &config.vision);
        let text = TextTower::load(&mut l, &config.text);
        let visual_projection = Linear::load(
            &mut l,
            "visual_projection",
            config.vision.encoder.hidden,
            d,
            false,
        );
        let text_projection = Linear::load(
            &mut l,
            "text_projection",
            config.text.encoder.hidden,
            d,
            false,
        );
        l.finish(&weights_file)?;
        Ok(Self {
            config,
            vision,
            text,
            visual_projection,
            text_projection,
            tokenizer,
            device: device.clone(),
        })
    }

    /// What `dtx plan` checks of a CLIP folder without loading it: the
    /// config parses, the tokenizer loads, and the weights file's header is
    /// a valid safetensors header. That the weights fit the config is
    /// checked when the run loads them.
    ///
    /// # Errors
    /// As [`Clip::load`] would give them for these files.
    pub fn check_folder(dir: &Path) -> Result<(), ModelError> {
        let config_file = dir.join("config.json");
        let text =
            crate::util::fs::read_to_string(&config_file).map_err(|source| ModelError::Io {
                path: config_file.clone(),
                source,
            })?;
        let config = ClipConfig::parse(&config_file, &text)?;
        ClipTokenizer::load(dir, config.text.max_len)?;
        crate::model::read_safetensors_header(&dir.join("model.safetensors"))?;
        Ok(())
    }

    /// Width of the embeddings (projection_dim).
    pub fn embed_dim(&self) -> usize {
        self.config.projection_dim
    }

    /// Tokens per image embedding: 1 for Pooled, 1 + (image_size/patch_size)^2 for Patches.
    pub fn image_tokens(&self, tokens: ClipTokens) -> usize {
        match tokens {
            ClipTokens::Pooled => 1,
            ClipTokens::Patches => 1 + self.config.vision.grid().pow(2),
        }
    }

    /// Side of the square input (`vision_config.image_size`).
    pub fn image_size(&self) -> usize {
        self.config.vision.image_size
    }

    /// CLIP preprocessing of images with values in [0, 1], `[B, C, H, W]`
    /// (C = 1 is repeated to 3; C = 3 as is; other C an error): resize the
    /// shorter side to image_size (bicubic), center crop image_size²,
    /// normalise with CLIP's mean/std (0.48145466, 0.4578275, 0.40821073) /
    /// (0.26862954, 0.26130258, 0.27577711). Returns pixel_values
    /// `[B, 3, S, S]`.
    ///
    /// The bicubic filter is PIL's, in float (torchvision's antialiased
    /// bicubic); transformers fed 8-bit images resizes them in 8 bits, so
    /// resized pixels differ from its by up to about 1/255 (see
    /// `docs/models.md`). Images already image_size on the shorter side are
    /// not resampled.
    ///
    /// # Errors
    /// [`ModelError::BadInput`] for a channel count other than 1 or 3, an
    /// empty image, or a model whose `num_channels` is not 3.
    pub fn preprocess(&self, images: Tensor<B, 4>) -> Result<Tensor<B, 4>, ModelError> {
        if self.config.vision.channels != 3 {
            return Err(ModelError::BadInput {
                what: "Clip::preprocess".into(),
                reason: format!(
                    "the model takes {} channels (vision_config.num_channels); CLIP \
                     preprocessing makes RGB: pass pixel_values to encode_pixels instead",
                    self.config.vision.channels
                ),
            });
        }
        preprocess::preprocess(images, self.config.vision.image_size)
    }

    /// Image embeddings from pixel_values `[B, num_channels, S, S]`:
    /// Pooled → visual_projection(post_layernorm(CLS)) as `[B, 1, D]`;
    /// Patches → visual_projection(post_layernorm(last_hidden_state)) for
    /// every token, `[B, 1+P, D]`. Not normalised to unit length.
    ///
    /// # Panics
    /// When pixel_values is not `[B, num_channels, image_size, image_size]`
    /// (what [`Clip::preprocess`] returns).
    pub fn encode_pixels(&self, pixel_values: Tensor<B, 4>, tokens: ClipTokens) -> Tensor<B, 3> {
        let hidden = self.vision.forward(pixel_values); // [B, 1+P, H]
        let hidden = match tokens {
            ClipTokens::Pooled => hidden.narrow(1, 0, 1), // [B, 1, H]
            ClipTokens::Patches => hidden,
        };
        self.visual_projection.forward(hidden)
    }

    /// preprocess + encode_pixels.
    pub fn encode_image(
        &self,
        images: Tensor<B, 4>,
        tokens: ClipTokens,
    ) -> Result<Tensor<B, 3>, ModelError> {
        Ok(self.encode_pixels(self.preprocess(images)?, tokens))
    }

    /// Token ids as transformers' `tokenizer(prompts, padding="max_length",
    /// truncation=True, max_length=max_position_embeddings)`: each row
    /// `<|startoftext|>`, the text's BPE ids, `<|endoftext|>` (kept when the
    /// text is cut), then the pad token, max_position_embeddings long.
    pub fn tokenize(&self, prompts: &[&str]) -> Result<Vec<Vec<i64>>, ModelError> {
        self.tokenizer.encode(prompts)
    }

    /// text_projection(pooled) as `[B, 1, D]`, pooled exactly as
    /// transformers' `CLIPTextTransformer` pools (eos_token_id == 2 → argmax
    /// of ids, else first position of eos_token_id); causal mask. Not
    /// normalised to unit length.
    ///
    /// # Errors
    /// The tokenizer's, or an id the model's vocabulary does not hold (a
    /// `tokenizer.json` of another model).
    pub fn encode_text(&self, prompts: &[&str]) -> Result<Tensor<B, 3>, ModelError> {
        if prompts.is_empty() {
            return Ok(Tensor::zeros([0, 1, self.embed_dim()], &self.device));
        }
        let ids = self.tokenize(prompts)?;
        let vocab = self.config.text.vocab;
        if let Some(&id) = ids
            .iter()
            .flatten()
            .find(|&&id| id < 0 || id as usize >= vocab)
        {
            return Err(ModelError::Tokenizer {
                file: self.tokenizer.file().to_owned(),
                reason: format!(
                    "token id {id} is outside the model's vocabulary of {vocab} \
                     (text_config.vocab_size); the tokenizer belongs to another model"
                ),
            });
        }
        let pooled = self.text.forward(&ids, &self.device); // [B, H]
        Ok(self.text_projection.forward(pooled.unsqueeze_dim(1)))
    }
}
