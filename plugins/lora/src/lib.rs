//! `lora`: low-rank adaptation of the base weights (Hu et al., 2021,
//! "LoRA: Low-Rank Adaptation of Large Language Models", Eq. 3), through
//! the `weights` hook of api 0.4.
//!
//! For each selected base weight `W₀` (`[out, in]` of a linear layer,
//! `[out, in, k, k]` of a convolution) the student's forward uses
//!
//! ```text
//! W' = W₀ + (α / r) · reshape(B · A, shape(W₀))
//! ```
//!
//! with `A` of rank `r` over the weight's fan-in and `B` over its outputs.
//! The shapes follow PEFT's convention (METHOD-NOTES.md), so a trained
//! adapter can be written in its layout:
//!
//! - linear: `lora_A.weight [r, in]`, `lora_B.weight [out, r]`;
//! - convolution: `lora_A.weight [r, in, k, k]` (a convolution with the base
//!   layer's kernel), `lora_B.weight [out, r, 1, 1]` (a 1×1 convolution);
//!   merged, `ΔW = B [out, r] × A [r, in·k·k]` reshaped to `[out, in, k, k]`
//!   — the update as one reshaped matrix, which is what the 1×1-after-k×k
//!   pair computes.
//!
//! `A` starts Kaiming-uniform as in the reference code (`a = √5`: uniform on
//! ±1/√fan_in) and `B` at zero, so the untrained plugin reproduces the
//! source exactly. The base stays frozen (`train.trainable = "none"`); only
//! `A` and `B` train. LoRA+ (Hayou et al., 2024): with `lr_ratio = λ`, `B`
//! trains at λ times the run's rate (a parameter group), `A` at the run's.
//!
//! A weight of rank 2 whose layout is `[in, out]` (the MLP denoiser's
//! `x · W`) is adapted as the same rank-`r` matrix of its shape.

use dtx_plugin_api::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `[plugin.config]` of the LoRA plugin.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Rank r of each update (>= 1).
    pub rank: usize,
    /// Scale α; the update is (α/r)·B·A (unset: r).
    pub alpha: Option<f32>,
    /// Base weights to adapt: checkpoint keys or globs (`*.to_q.weight`).
    pub targets: Vec<String>,
    /// Roles adapted among the targets: `linear`, `conv`.
    pub roles: Vec<String>,
    /// LoRA+: B's learning rate over A's (> 0; 1 is plain LoRA).
    pub lr_ratio: f32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            rank: 4,
            alpha: None,
            targets: vec!["*".into()],
            roles: vec!["linear".into(), "conv".into()],
            lr_ratio: 1.0,
        }
    }
}

/// The low-rank factors of one base weight.
struct Factors {
    key: String,
    shape: Vec<usize>,
    a: Param,
    b: Param,
}

/// The LoRA plugin.
pub struct Lora {
    factors: Vec<Factors>,
    scale: f32,
    lr_ratio: f32,
}

impl Lora {
    /// `(α / r) · B·A` shaped as the weight `f` adapts.
    fn delta(&self, f: &Factors) -> Tensor {
        let r = f.a.shape()[0];
        let out = f.shape[0];
        let ba =
            f.b.value()
                .reshape(&[out, r])
                .matmul(&f.a.value().flatten(1));
        ba.reshape(&f.shape) * self.scale
    }
}

fn check_config(c: &Config) -> Result<(f32, Vec<ParamRole>), AbiError> {
    if c.rank == 0 {
        return Err(AbiError::config("rank", "must be at least 1"));
    }
    let alpha = c.alpha.unwrap_or(c.rank as f32);
    if !(alpha.is_finite() && alpha > 0.0) {
        return Err(AbiError::config(
            "alpha",
            format!("must be > 0, got {alpha}"),
        ));
    }
    if !(c.lr_ratio.is_finite() && c.lr_ratio > 0.0) {
        return Err(AbiError::config(
            "lr_ratio",
            format!("must be > 0, got {}", c.lr_ratio),
        ));
    }
    if c.targets.is_empty() {
        return Err(AbiError::config("targets", "names no base weight"));
    }
    let roles = c
        .roles
        .iter()
        .enumerate()
        .map(|(i, r)| match ParamRole::from_name(r) {
            Some(role @ (ParamRole::LINEAR | ParamRole::CONV)) => Ok(role),
            _ => Err(AbiError::config(
                format!("roles[{i}]"),
                format!("`{r}` is not a role LoRA adapts (`linear`, `conv`)"),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((alpha, roles))
}

#[hooks]
impl Plugin for Lora {
    type Config = Config;
    const NAME: &'static str = "lora";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "LoRA: low-rank updates W + (α/r)·B·A of chosen base weights (Hu et al. 2021), LoRA+ rates";

    fn new(config: Config, host: &Host, _model: &ModelInfo) -> Result<Self, AbiError> {
        let (alpha, roles) = check_config(&config)?;
        let details = host.model_details()?;
        let r = config.rank;
        let mut factors = Vec::new();
        for p in details.parameters.iter() {
            let key = p.key.as_str();
            if !roles.contains(&p.role)
                || !config
                    .targets
                    .iter()
                    .any(|g| dtx_plugin_api::points::matches(g, key))
            {
                continue;
            }
            let shape: Vec<usize> = p.shape.to_vec();
            let (out, rest) = (shape[0], &shape[1..]);
            let fan_in: usize = rest.iter().product();
            let module = host.scope().pp(key.strip_suffix(".weight").unwrap_or(key));
            // PEFT's layout: A is a layer of the base kernel, B a 1×1 one
            let mut a_shape = vec![r];
            a_shape.extend_from_slice(rest);
            let mut b_shape = vec![out, r];
            b_shape.extend(std::iter::repeat_n(1, rest.len().saturating_sub(1)));
            let bound = 1.0 / (fan_in as f32).sqrt();
            let a =
                module
                    .pp("lora_A")
                    .param("weight", &a_shape, ParamInit::uniform(-bound, bound))?;
            let b = module
                .pp("lora_B")
                .param("weight", &b_shape, ParamInit::zeros())?;
            factors.push(Factors {
                key: key.to_owned(),
                shape,
                a,
                b,
            });
        }
        if factors.is_empty() {
            return Err(AbiError::config(
                "targets",
                format!(
                    "{:?} with roles {:?} select no base weight of this model (`dtx model inspect` lists them with their roles)",
                    config.targets, config.roles
                ),
            ));
        }
        Ok(Lora {
            factors,
            scale: alpha / r as f32,
            lr_ratio: config.lr_ratio,
        })
    }

    fn weight_targets(&self) -> Vec<String> {
        self.factors.iter().map(|f| f.key.clone()).collect()
    }

    fn weights(&mut self, ctx: &Weights<'_>) -> Result<Tensor, AbiError> {
        let f = self
            .factors
            .iter()
            .find(|f| f.key == ctx.key)
            .ok_or_else(|| AbiError::other(format!("not adapting `{}`", ctx.key)))?;
        Ok(&*ctx.w + self.delta(f))
    }

    fn recipe(&self) -> Recipe {
        let mut recipe = Recipe::default();
        if self.lr_ratio != 1.0 {
            recipe.groups.push(Group {
                name: "lora_B".into(),
                params: self.factors.iter().map(|f| f.b.clone()).collect(),
                lr_scale: self.lr_ratio,
                weight_decay: None,
            });
        }
        recipe
    }
}

export_plugin!(Lora);
