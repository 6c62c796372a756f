//! `block`: the cross-attention + MLP block of the ABI benchmark, injected at
//! every selected point of shape `[B, C, H, W]`:
//!
//! ```text
//! x = tokens(h)                        [B, HW, C]
//! x = x + Attention(x, cond)           queries from x, keys/values from cond [B, M, C]
//! x = x + W₂ · gelu(W₁ · x)            C → 4C → C
//! h = image(x)                         [B, C, H, W]
//! ```
//! The host's benchmark runs the same block written directly in burn with the
//! same parameters (read back by name), so the two differ only by the ABI.

use dtx_plugin_api::nn::{
    Activation, Mlp, MlpConfig, MultiHeadAttention, MultiHeadAttentionConfig,
};
use dtx_plugin_api::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `[plugin.config]`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Injection points.
    pub points: Vec<String>,
    /// Attention heads.
    pub heads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            points: vec!["mid.res.0".into()],
            heads: 1,
        }
    }
}

/// The block plugin (one block shared by its points, all of width `C`).
pub struct Block {
    points: Vec<String>,
    attn: MultiHeadAttention,
    mlp: Mlp,
}

#[hooks]
impl Plugin for Block {
    type Config = Config;
    const NAME: &'static str = "block";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Cross-attention + MLP block (ABI benchmark)";

    fn injection_points() -> Vec<String> {
        Config::default().points
    }

    fn new(cfg: Config, host: &Host, model: &ModelInfo) -> Result<Self, AbiError> {
        let available: Vec<String> = model.points.iter().map(|p| p.name.to_string()).collect();
        let points: Vec<String> = dtx_plugin_api::points::resolve(&cfg.points, &available)
            .map_err(|m| AbiError::config("points", m))?
            .into_iter()
            .cloned()
            .collect();
        let c = model
            .points
            .iter()
            .find(|p| points.first() == Some(&p.name.to_string()))
            .map(|p| p.channels)
            .ok_or_else(|| AbiError::config("points", "select at least one point"))?;
        Ok(Block {
            points,
            attn: MultiHeadAttentionConfig::cross_attention(c, c, c, cfg.heads)
                .init(&host.scope().pp("attn"))?,
            mlp: MlpConfig::new(&[c, 4 * c, c])
                .with_activation(Activation::Gelu)
                .init(&host.scope().pp("mlp"))?,
        })
    }

    fn points(&self) -> Vec<String> {
        self.points.clone()
    }

    fn inject(&mut self, ctx: &Inject<'_>) -> Result<Tensor, AbiError> {
        let h: &Tensor = &ctx.h;
        let [b, c, hh, ww] = <[usize; 4]>::try_from(h.shape())
            .map_err(|_| AbiError::other("block expects [B, C, H, W]"))?;
        let cond = ctx
            .cond
            .as_ref()
            .ok_or_else(|| AbiError::other("block needs a condition embedding"))?;
        let x = h.reshape(&[b, c, hh * ww]).transpose(1, 2); // [B, HW, C]
        let x = &x + self.attn.forward(&x, Some(cond)); // [B, HW, C]
        let x = &x + self.mlp.forward(&x); // [B, HW, C]
        Ok(x.transpose(1, 2).reshape(&[b, c, hh, ww]))
    }
}

export_plugin!(Block);
