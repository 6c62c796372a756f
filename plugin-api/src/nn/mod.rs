//! Small neural-network blocks written on the host's tensor ops, shaped like
//! burn-nn's modules: a config with documented defaults (every one has an
//! [`Initializer`] and, where the block has one, a bias option), `init(&scope)`
//! that registers the parameters in a [`crate::Scope`] (named
//! `<scope>.<param>`), and `forward` with a `# Shapes` section. Their
//! parameters are trained by the host.

/// `with_<field>(value)` setters of a config, each documented as setting
/// its field (the field's own doc says what it means and its default).
macro_rules! setters {
    ($config:ty { $($setter:ident: $field:ident: $ty:ty),* $(,)? }) => {
        impl $config {
            $(
                #[doc = concat!("Sets `", stringify!($field), "`.")]
                pub fn $setter(mut self, value: $ty) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

mod attention;
mod basic;
mod conv;
mod embedding;
mod init;
mod norm;

pub use attention::{MultiHeadAttention, MultiHeadAttentionConfig, attention};
pub use basic::{Activation, Linear, LinearConfig, Mlp, MlpConfig};
pub use conv::{Conv2d, Conv2dConfig};
pub use embedding::{TimestepEmbedding, TimestepEmbeddingConfig, sinusoidal_embedding};
pub use init::Initializer;
pub use norm::{GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig};
