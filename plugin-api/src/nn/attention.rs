//! Multi-head attention, as self-attention or cross-attention with a context.

use super::{Initializer, Linear, LinearConfig};
use crate::abi::AbiError;
use crate::{Scope, Tensor};

/// Configuration of [`MultiHeadAttention`].
#[derive(Debug, Clone)]
pub struct MultiHeadAttentionConfig {
    /// Width of the queries' input (and of the output).
    pub d_model: usize,
    /// Width of the context (keys and values' input); `d_model` for self-attention.
    pub d_context: usize,
    /// Total width of queries and keys (`d_k` in the papers), split over heads.
    pub d_attn: usize,
    /// Number of heads (must divide `d_attn`).
    pub heads: usize,
    /// Whether the four projections have biases (default `true`).
    pub bias: bool,
    /// Law of the query, key and value projections (default
    /// [`Initializer::KaimingUniform`]).
    pub initializer: Initializer,
    /// Law of the output projection (default [`Initializer::KaimingUniform`];
    /// [`Initializer::Zeros`]: the block starts at 0).
    pub out_initializer: Initializer,
}

setters!(MultiHeadAttentionConfig { with_bias: bias: bool, with_initializer: initializer: Initializer, with_out_initializer: out_initializer: Initializer });

impl MultiHeadAttentionConfig {
    /// Self-attention of width `d_model` with `heads` heads.
    pub fn self_attention(d_model: usize, heads: usize) -> Self {
        Self::cross_attention(d_model, d_model, d_model, heads)
    }
    /// Cross-attention from `d_model` queries to a `d_context` context.
    pub fn cross_attention(d_model: usize, d_context: usize, d_attn: usize, heads: usize) -> Self {
        MultiHeadAttentionConfig {
            d_model,
            d_context,
            d_attn,
            heads,
            bias: true,
            initializer: Initializer::KaimingUniform,
            out_initializer: Initializer::KaimingUniform,
        }
    }

    /// Registers `q`, `k`, `v` and `out` (each a [`Linear`]) in `scope`, in
    /// that order.
    pub fn init(&self, scope: &Scope) -> Result<MultiHeadAttention, AbiError> {
        if self.heads == 0 || !self.d_attn.is_multiple_of(self.heads) {
            return Err(AbiError::other(format!(
                "{}: d_attn {} is not divisible by heads {}",
                scope.prefix(),
                self.d_attn,
                self.heads
            )));
        }
        let linear = |d_in, d_out, init, name| {
            LinearConfig::new(d_in, d_out)
                .with_bias(self.bias)
                .with_initializer(init)
                .init(&scope.pp(name))
        };
        Ok(MultiHeadAttention {
            q: linear(self.d_model, self.d_attn, self.initializer, "q")?,
            k: linear(self.d_context, self.d_attn, self.initializer, "k")?,
            v: linear(self.d_context, self.d_attn, self.initializer, "v")?,
            out: linear(self.d_attn, self.d_model, self.out_initializer, "out")?,
            heads: self.heads,
        })
    }
}

/// `softmax(Q Kᵀ / sqrt(d_head)) V`, per head, then an output projection.
#[derive(Debug, Clone)]
pub struct MultiHeadAttention {
    /// Query projection `d_model → d_attn`.
    pub q: Linear,
    /// Key projection `d_context → d_attn`.
    pub k: Linear,
    /// Value projection `d_context → d_attn`.
    pub v: Linear,
    /// Output projection `d_attn → d_model`.
    pub out: Linear,
    /// Heads.
    pub heads: usize,
}

impl MultiHeadAttention {
    /// Attention of `x` over `context` (`None`: over `x` itself).
    ///
    /// # Shapes
    /// - x: `[B, N, d_model]`
    /// - context: `[B, M, d_context]`
    /// - output: `[B, N, d_model]`
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Tensor {
        let ctx = context.unwrap_or(x);
        let (q, k, v) = (self.q.forward(x), self.k.forward(ctx), self.v.forward(ctx));
        self.out.forward(&attention(&q, &k, &v, self.heads))
    }
}

/// Multi-head scaled dot-product attention of projected queries, keys and
/// values: each is split into `heads` heads along its last dim, each head
/// computes `softmax(Q Kᵀ / √d_head) V`, and the heads are concatenated
/// back. The core of [`MultiHeadAttention`], for blocks that project
/// differently (no output projection, no bias, their own layers).
///
/// # Shapes
/// - q: `[B, N, d_attn]`, k: `[B, M, d_attn]`, v: `[B, M, d_v]`
///   (`heads` divides `d_attn` and `d_v`)
/// - output: `[B, N, d_v]`
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Tensor {
    let [b, n, m] = [q.dim(0), q.dim(1), k.dim(1)];
    // [B, L, d] -> [B, heads, L, d / heads]
    let split = |t: &Tensor, len: usize| {
        t.reshape(&[b, len, heads, t.dim(-1) / heads])
            .permute(&[0, 2, 1, 3])
    };
    let (qh, kh, vh) = (split(q, n), split(k, m), split(v, m));
    let d_head = qh.dim(-1) as f32;
    let scores = qh.matmul(&kh.transpose(-2, -1)) * (1.0 / d_head.sqrt()); // [B, h, N, M]
    let out = scores.softmax(-1).matmul(&vh); // [B, h, N, d_v / h]
    out.permute(&[0, 2, 1, 3]).flatten(2) // [B, N, d_v]
}
