//! CLIP's tokenizer: the folder's `tokenizer.json` (as
//! `CLIPTokenizerFast.save_pretrained` writes it: normaliser, byte-level
//! BPE with `</w>` word ends, `<|startoftext|>` … `<|endoftext|>` around
//! each text) run by the `tokenizers` crate, with the padding and
//! truncation of transformers' `tokenizer(prompts, padding="max_length",
//! truncation=True, max_length=N)`: at most N ids, the end-of-text token
//! kept last when cut, then the pad token up to N.

use crate::model::ModelError;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, PostProcessor, Tokenizer,
    TruncationDirection, TruncationParams, TruncationStrategy,
};

/// The pad token when `tokenizer_config.json` does not name one:
/// `CLIPTokenizer`'s default.
const DEFAULT_PAD: &str = "<|endoftext|>";

/// A loaded tokenizer set to pad and truncate to a fixed length.
#[derive(Clone)]
pub(super) struct ClipTokenizer {
    tokenizer: Tokenizer,
    file: PathBuf,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// The pad token named by `tokenizer_config.json` in `dir` (`pad_token`, a
/// string or an `{"content": …}` object), or [`DEFAULT_PAD`] when the file
/// or the key is absent.
fn pad_token(dir: &Path) -> Result<String, ModelError> {
    let file = dir.join("tokenizer_config.json");
    let text = match crate::util::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DEFAULT_PAD.into()),
        Err(source) => return Err(ModelError::Io { path: file, source }),
    };
    let json: Value = serde_json::from_str(&text).map_err(|e| ModelError::BadJson {
        file: file.clone(),
        message: e.to_string(),
    })?;
    Ok(match json.get("pad_token") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => s.clone(),
            _ => DEFAULT_PAD.into(),
        },
        _ => DEFAULT_PAD.into(),
    })
}

impl ClipTokenizer {
    /// `dir/tokenizer.json`, padding with the pad token of
    /// `dir/tokenizer_config.json` and cutting at `max_len` ids.
    pub(super) fn load(dir: &Path, max_len: usize) -> Result<Self, ModelError> {
        let file = dir.join("tokenizer.json");
        if !file.is_file() {
            return Err(ModelError::MissingFile {
                path: file,
                expected: "the tokenizer, as `CLIPTokenizerFast.save_pretrained` writes it".into(),
            });
        }
        let bad = |reason: String| ModelError::Tokenizer {
            file: file.clone(),
            reason,
        };
        let mut tokenizer = Tokenizer::from_file(&file)
            .map_err(|e| bad(format!("not a tokenizers `tokenizer.json`: {e}")))?;
        let pad = pad_token(dir)?;
        let pad_id = tokenizer.token_to_id(&pad).ok_or_else(|| {
            bad(format!(
                "the pad token {pad:?} (tokenizer_config.json's `pad_token`, or CLIP's default) \
                 is not in the vocabulary"
            ))
        })?;
        // tokenizers subtracts the special tokens from `max_length` unchecked.
        let specials = tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        if max_len < specials {
            return Err(bad(format!(
                "max_position_embeddings {max_len} leaves no room for the {specials} special tokens"
            )));
        }
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| bad(format!("cannot truncate to {max_len} tokens: {e}")))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_len),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: pad,
        }));
        Ok(Self { tokenizer, file })
    }

    /// The ids of each prompt, each exactly `max_len` long.
    pub(super) fn encode(&self, prompts: &[&str]) -> Result<Vec<Vec<i64>>, ModelError> {
        let encodings = self
            .tokenizer
            .encode_batch(prompts.to_vec(), true)
            .map_err(|e| ModelError::Tokenizer {
                file: self.file.clone(),
                reason: format!("cannot encode the prompts: {e}"),
            })?;
        Ok(encodings
            .iter()
            .map(|e| e.get_ids().iter().map(|&id| i64::from(id)).collect())
            .collect())
    }

    /// The tokenizer file, for errors.
    pub(super) fn file(&self) -> &Path {
        &self.file
    }
}
