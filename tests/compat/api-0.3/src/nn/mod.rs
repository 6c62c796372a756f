//! Small neural-network blocks written on the host's tensor ops, shaped like
//! burn-nn's modules: a config with documented defaults, `init` that registers
//! parameters with the host (named `<prefix>.<param>`), and `forward` with a
//! `# Shapes` section. Their parameters are trained by the host.

mod attention;
mod basic;

pub use attention::{MultiHeadAttention, MultiHeadAttentionConfig};
pub use basic::{
    Activation, Conv2d, Conv2dConfig, GroupNorm, LayerNorm, Linear, LinearConfig, Mlp, MlpConfig,
    TimestepEmbedding, sinusoidal_embedding,
};
