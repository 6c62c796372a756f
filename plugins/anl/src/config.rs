//! `[plugin.config]` of `anl`: keys, defaults and their checks.

use dtx_plugin_api::nn::Activation;
use dtx_plugin_api::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Largest `d_attn` accepted.
pub const MAX_D_ATTN: usize = 65_536;
/// Largest `heads` accepted.
pub const MAX_HEADS: usize = 4096;
/// Largest `hidden_mult` accepted.
pub const MAX_HIDDEN_MULT: usize = 1024;

/// What the attention attends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Cross-attention to the run's condition embedding `c` (Eq. 8): needs a
    /// `[condition]` encoder.
    Conditional,
    /// Self-attention over the block's own positions (Sec. 3.3): no encoder.
    Unconditional,
}

/// `[plugin.config]` of `anl`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `conditional` (cross-attention to the [condition] embedding, Eq. 8) or `unconditional`
    /// (self-attention, Sec. 3.3).
    pub mode: Mode,
    /// Injection points, names or globs (every residual block by default).
    pub points: Vec<String>,
    /// d_k of Eq. 8; 0 = the point's channels d_i.
    pub d_attn: usize,
    /// Attention heads (Eq. 8 has one).
    pub heads: usize,
    /// Hidden width of f (Eq. 9) as a multiple of d_i.
    pub hidden_mult: usize,
    /// f's activation: gelu, silu, relu, tanh.
    pub activation: Activation,
    /// Zero-initialise f's last layer so step 0 equals the source model.
    pub zero_init: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::Conditional,
            points: ["down.*.res.*", "mid.res.*", "up.*.res.*"]
                .map(String::from)
                .to_vec(),
            d_attn: 0,
            heads: 1,
            hidden_mult: 1,
            activation: Activation::Gelu,
            zero_init: true,
        }
    }
}

impl Config {
    /// Checks that need more than serde.
    pub fn validate(&self) -> Result<(), AbiError> {
        if self.points.is_empty() {
            return Err(AbiError::config("points", "lists no injection point"));
        }
        if self.heads == 0 {
            return Err(AbiError::config("heads", "must be at least 1"));
        }
        if self.hidden_mult == 0 {
            return Err(AbiError::config("hidden_mult", "must be at least 1"));
        }
        // Upper bounds keep a typo from asking the host for a weight matrix
        // that would fail allocation: widths are products of these and the
        // point's channels.
        for (key, v, max) in [
            ("d_attn", self.d_attn, MAX_D_ATTN),
            ("heads", self.heads, MAX_HEADS),
            ("hidden_mult", self.hidden_mult, MAX_HIDDEN_MULT),
        ] {
            if v > max {
                return Err(AbiError::config(
                    key,
                    format!("must be at most {max}, got {v}"),
                ));
            }
        }
        if self.d_attn > 0 && !self.d_attn.is_multiple_of(self.heads) {
            return Err(AbiError::config(
                "d_attn",
                format!("{} is not divisible by heads = {}", self.d_attn, self.heads),
            ));
        }
        Ok(())
    }
}
