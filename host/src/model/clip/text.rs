//! The text tower (`CLIPTextTransformer`, checkpoint prefix `text_model`):
//! token and position embeddings, the encoder under a causal mask, a final
//! layer norm, and the hidden state of one token per sequence (the end of
//! text) as the sequence's feature.

use super::config::TextConfig;
use super::transformer::{Encoder, LayerNorm};
use super::weights::Loader;
use burn::tensor::backend::Backend;
use burn::tensor::module::embedding;
use burn::tensor::{Int, Tensor, TensorData};

/// `text_model.*`.
#[derive(Debug, Clone)]
pub(super) struct TextTower<B: Backend> {
    /// `embeddings.token_embedding.weight`: `[vocab, H]`.
    token_embedding: Tensor<B, 2>,
    /// `embeddings.position_embedding.weight`: `[max_len, H]`.
    position_embedding: Tensor<B, 2>,
    encoder: Encoder<B>,
    final_layer_norm: LayerNorm<B>,
    eos_token_id: i64,
}

/// The position each sequence is pooled at, as transformers'
/// `CLIPTextTransformer` chooses it. With `eos_token_id == 2` (configs from
/// before transformers PR #24773, whose end-of-text token is the largest id
/// of the vocabulary): the first position of the largest id. Otherwise: the
/// first position of `eos_token_id`, or 0 when the sequence has none (as
/// `argmax` of an all-false row gives).
pub(super) fn pool_position(ids: &[i64], eos_token_id: i64) -> usize {
    if eos_token_id == 2 {
        let max = ids.iter().copied().max().unwrap_or(0);
        ids.iter().position(|&id| id == max).unwrap_or(0)
    } else {
        ids.iter().position(|&id| id == eos_token_id).unwrap_or(0)
    }
}

impl<B: Backend> TextTower<B> {
    pub(super) fn load(l: &mut Loader<B>, c: &TextConfig) -> Self {
        let h = c.encoder.hidden;
        Self {
            token_embedding: l.tensor("text_model.embeddings.token_embedding.weight", [c.vocab, h]),
            position_embedding: l.tensor(
                "text_model.embeddings.position_embedding.weight",
                [c.max_len, h],
            ),
            encoder: Encoder::load(l, "text_model", &c.encoder),
            final_layer_norm: LayerNorm::load(l, "text_model.final_layer_norm", h, c.encoder.eps),
            eos_token_id: c.eos_token_id,
        }
    }

    /// The pooled feature of each sequence of `ids` (all of one length
    /// T ≤ max_len, every id < vocab: the caller checks).
    ///
    /// # Shapes
    /// - ids: B rows of T; output `[B, H]`
    pub(super) fn forward(&self, ids: &[Vec<i64>], device: &B::Device) -> Tensor<B, 2> {
        let (b, t) = (ids.len(), ids.first().map_or(0, Vec::len));
        let hidden = self.token_embedding.dims()[1];
        let flat: Vec<i64> = ids.iter().flatten().copied().collect();
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [b, t]), device);
        // 1. token + position embeddings
        let positions = self.position_embedding.clone().narrow(0, 0, t); // [T, H]
        let x = embedding(self.token_embedding.clone(), tokens) + positions.unsqueeze(); // [B, T, H]
        // 2. the encoder, each token seeing itself and those before it
        let x = self.encoder.forward(x, Some(&causal_mask(t, device)));
        let x = self.final_layer_norm.forward(x);
        // 3. one token per sequence
        let rows: Vec<i64> = ids
            .iter()
            .enumerate()
            .map(|(i, row)| (i * t + pool_position(row, self.eos_token_id)) as i64)
            .collect();
        let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [b]), device);
        x.reshape([b * t, hidden]).select(0, rows) // [B, H]
    }
}

/// `[T, T]`: 0 where column ≤ row, −∞ above the diagonal.
fn causal_mask<B: Backend>(t: usize, device: &B::Device) -> Tensor<B, 2> {
    let values: Vec<f32> = (0..t * t)
        .map(|i| {
            if i % t > i / t {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_data(TensorData::new(values, [t, t]), device)
}
