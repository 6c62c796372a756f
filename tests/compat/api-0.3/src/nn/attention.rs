//! Multi-head attention, as self-attention or cross-attention with a context.

use super::{Linear, LinearConfig};
use crate::abi::AbiError;
use crate::{Host, Tensor};

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
    /// Zero-initialise the output projection (default `false`).
    pub zero_out: bool,
}

impl MultiHeadAttentionConfig {
    /// Self-attention of width `d_model` with `heads` heads.
    pub fn self_attention(d_model: usize, heads: usize) -> Self {
        MultiHeadAttentionConfig {
            d_model,
            d_context: d_model,
            d_attn: d_model,
            heads,
            zero_out: false,
        }
    }
    /// Cross-attention from `d_model` queries to a `d_context` context.
    pub fn cross_attention(d_model: usize, d_context: usize, d_attn: usize, heads: usize) -> Self {
        MultiHeadAttentionConfig {
            d_model,
            d_context,
            d_attn,
            heads,
            zero_out: false,
        }
    }
    /// Sets `zero_out`.
    pub fn with_zero_out(mut self, z: bool) -> Self {
        self.zero_out = z;
        self
    }

    /// Registers `<prefix>.{q,k,v,out}`.
    pub fn init(&self, host: &Host, prefix: &str) -> Result<MultiHeadAttention, AbiError> {
        if self.heads == 0 || !self.d_attn.is_multiple_of(self.heads) {
            return Err(AbiError::other(format!(
                "{prefix}: d_attn {} is not divisible by heads {}",
                self.d_attn, self.heads
            )));
        }
        Ok(MultiHeadAttention {
            q: LinearConfig::new(self.d_model, self.d_attn).init(host, &format!("{prefix}.q"))?,
            k: LinearConfig::new(self.d_context, self.d_attn).init(host, &format!("{prefix}.k"))?,
            v: LinearConfig::new(self.d_context, self.d_attn).init(host, &format!("{prefix}.v"))?,
            out: LinearConfig::new(self.d_attn, self.d_model)
                .with_zero_init(self.zero_out)
                .init(host, &format!("{prefix}.out"))?,
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
        let [b, n] = [x.dim(0) as i64, x.dim(1) as i64];
        let m = ctx.dim(1) as i64;
        let h = self.heads as i64;
        let split = |t: Tensor, len: i64| {
            let d = t.dim(-1) as i64;
            // [B, L, d_attn] -> [B, heads, L, d_head]
            t.reshape(&[b, len, h, d / h]).permute(&[0, 2, 1, 3])
        };
        let q = split(self.q.forward(x), n); // [B, h, N, dh]
        let k = split(self.k.forward(ctx), m); // [B, h, M, dh]
        let v = split(self.v.forward(ctx), m); // [B, h, M, dh]
        let d_head = q.dim(-1) as f32;
        let scores = q.matmul(&k.transpose(-2, -1)) * (1.0 / d_head.sqrt()); // [B, h, N, M]
        let attn = scores.softmax(-1).matmul(&v); // [B, h, N, dh]
        let merged = attn.permute(&[0, 2, 1, 3]).reshape(&[b, n, -1]); // [B, N, d_attn]
        self.out.forward(&merged)
    }
}
