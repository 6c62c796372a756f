//! The vision tower (`CLIPVisionTransformer`, checkpoint prefix
//! `vision_model`): a ViT over `patch_size²` patches with a class token,
//! pre- and post-layer norms. Dosovitskiy et al., "An Image is Worth 16x16
//! Words: Transformers for Image Recognition at Scale", ICLR 2021,
//! arXiv:2010.11929; CLIP adds the norm before the encoder (`pre_layrnorm`,
//! spelled as in the checkpoints).

use super::config::VisionConfig;
use super::transformer::{Encoder, LayerNorm};
use super::weights::Loader;
use crate::kernels::conv2d_tensor as conv2d;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::ops::ConvOptions;

/// `vision_model.*`.
#[derive(Debug, Clone)]
pub(super) struct VisionTower<B: Backend> {
    /// `embeddings.patch_embedding.weight`: `[H, C, P, P]`, no bias.
    patch_embedding: Tensor<B, 4>,
    /// `embeddings.class_embedding`: `[H]`.
    class_embedding: Tensor<B, 1>,
    /// `embeddings.position_embedding.weight`: `[1 + grid², H]`.
    position_embedding: Tensor<B, 2>,
    pre_layrnorm: LayerNorm<B>,
    encoder: Encoder<B>,
    post_layernorm: LayerNorm<B>,
    patch_size: usize,
    image_size: usize,
    channels: usize,
}

impl<B: Backend> VisionTower<B> {
    pub(super) fn load(l: &mut Loader<B>, c: &VisionConfig) -> Self {
        let (h, p, eps) = (c.encoder.hidden, c.patch_size, c.encoder.eps);
        let tokens = 1 + c.grid() * c.grid();
        Self {
            patch_embedding: l.tensor(
                "vision_model.embeddings.patch_embedding.weight",
                [h, c.channels, p, p],
            ),
            class_embedding: l.tensor("vision_model.embeddings.class_embedding", [h]),
            position_embedding: l.tensor(
                "vision_model.embeddings.position_embedding.weight",
                [tokens, h],
            ),
            pre_layrnorm: LayerNorm::load(l, "vision_model.pre_layrnorm", h, eps),
            encoder: Encoder::load(l, "vision_model", &c.encoder),
            post_layernorm: LayerNorm::load(l, "vision_model.post_layernorm", h, eps),
            patch_size: p,
            image_size: c.image_size,
            channels: c.channels,
        }
    }

    /// `post_layernorm` of every token of the last hidden state: index 0 is
    /// the class token (what CLIP pools), 1.. the patches in row-major order.
    ///
    /// # Shapes
    /// - pixel_values: `[B, C, S, S]`; output `[B, 1 + grid², H]`
    ///
    /// # Panics
    /// When pixel_values is not `[B, num_channels, image_size, image_size]`.
    pub(super) fn forward(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, c, height, width] = pixel_values.dims();
        let s = self.image_size;
        assert!(
            c == self.channels && height == s && width == s,
            "CLIP pixel_values must be [B, {}, {s}, {s}], not [{b}, {c}, {height}, {width}]",
            self.channels
        );
        let hidden = self.class_embedding.dims()[0];
        // 1. patches: a P×P convolution with stride P, one token per patch
        let p = self.patch_size;
        let options = ConvOptions::new([p, p], [0, 0], [1, 1], 1);
        let patches = conv2d(pixel_values, self.patch_embedding.clone(), None, options); // [B, H, g, g]
        let [_, _, gh, gw] = patches.dims();
        let patches = patches.reshape([b, hidden, gh * gw]).swap_dims(1, 2); // [B, g², H]
        // 2. the class token first, then position embeddings
        let class = self
            .class_embedding
            .clone()
            .reshape([1, 1, hidden])
            .repeat_dim(0, b); // [B, 1, H]
        let x = Tensor::cat(vec![class, patches], 1) + self.position_embedding.clone().unsqueeze(); // [B, 1+g², H]
        // 3. pre-norm, encoder, post-norm (per token)
        let x = self.pre_layrnorm.forward(x);
        let x = self.encoder.forward(x, None);
        self.post_layernorm.forward(x)
    }
}
