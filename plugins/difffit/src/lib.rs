//! `difffit`: DiffFit (Xie et al., ICCV 2023, "DiffFit: Unlocking
//! Transferability of Large Diffusion Models via Simple Parameter-Efficient
//! Fine-Tuning"), on api 0.4.
//!
//! The base model is frozen except its bias terms, normalisation scales and
//! shifts and class embedding (this plugin's recipe asks the host to train
//! the base parameters of those roles), and a learnable scale γ, initialised
//! to 1, multiplies the residual branch of each block:
//!
//! ```text
//! x ← x + γ · f(x)
//! ```
//!
//! The paper writes this for DiT blocks (γ on the attention and the MLP
//! branch of each transformer block). On dtx's U-Nets, our reading puts one
//! γ on each residual block's branch (`….res.{j}.branch`, the output of the
//! block's second convolution before the skip sum) and one on each
//! attention block's branch (`….attn.{j}.branch`); on the MLP denoiser, one
//! on each residual block's branch. Each γ is a scalar per block.
//!
//! The paper fine-tunes at a larger learning rate than full fine-tuning.
//! The factor `manifests/difffit.toml` uses, 10× the pre-training rate,
//! comes from secondary summaries of the paper: its text is not among the
//! papers this project ships, and we could not check the factor against
//! it, so take it as a starting point. That rate is the run's `train.lr`;
//! γ may train at its own multiple of it (`gamma_lr_scale`, a parameter
//! group).

use dtx_plugin_api::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `[plugin.config]` of the DiffFit plugin.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Branch points that get a γ (`….branch`; names or globs).
    pub points: Vec<String>,
    /// Roles of base parameters that train: `bias`, `norm`, `embedding`.
    pub train_roles: Vec<String>,
    /// γ's learning rate over the run's (> 0).
    pub gamma_lr_scale: f32,
    /// γ's initial value (1: the source model).
    pub gamma_init: f32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            points: vec!["*.branch".into()],
            train_roles: vec!["bias".into(), "norm".into(), "embedding".into()],
            gamma_lr_scale: 1.0,
            gamma_init: 1.0,
        }
    }
}

/// The DiffFit plugin.
pub struct DiffFit {
    /// One γ per branch point.
    gammas: Vec<(String, Param)>,
    /// The base parameters that train (checkpoint keys).
    train_base: Vec<String>,
    gamma_lr_scale: f32,
}

fn check(c: &Config) -> Result<Vec<ParamRole>, AbiError> {
    if !(c.gamma_lr_scale.is_finite() && c.gamma_lr_scale > 0.0) {
        return Err(AbiError::config(
            "gamma_lr_scale",
            format!("must be > 0, got {}", c.gamma_lr_scale),
        ));
    }
    if !c.gamma_init.is_finite() {
        return Err(AbiError::config(
            "gamma_init",
            format!("must be finite, got {}", c.gamma_init),
        ));
    }
    if let Some((i, p)) = c
        .points
        .iter()
        .enumerate()
        .find(|(_, p)| !p.ends_with("branch"))
    {
        return Err(AbiError::config(
            format!("points[{i}]"),
            format!("`{p}` is not a branch point: γ scales `….branch` points (x + γ·f(x))"),
        ));
    }
    c.train_roles
        .iter()
        .enumerate()
        .map(|(i, r)| match ParamRole::from_name(r) {
            Some(role @ (ParamRole::BIAS | ParamRole::NORM | ParamRole::EMBEDDING)) => Ok(role),
            _ => Err(AbiError::config(
                format!("train_roles[{i}]"),
                format!("`{r}` is not a role DiffFit trains (`bias`, `norm`, `embedding`)"),
            )),
        })
        .collect()
}

#[hooks]
impl Plugin for DiffFit {
    type Config = Config;
    const NAME: &'static str = "difffit";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "DiffFit: biases, norms and a scale γ on each residual branch train (Xie et al. 2023)";

    fn injection_points() -> Vec<String> {
        Config::default().points
    }

    fn new(config: Config, host: &Host, model: &ModelInfo) -> Result<Self, AbiError> {
        let roles = check(&config)?;
        let available: Vec<String> = model.points.iter().map(|p| p.name.to_string()).collect();
        let selected = dtx_plugin_api::points::resolve(&config.points, &available)
            .map_err(|msg| AbiError::config("points", msg))?;
        let mut gammas = Vec::new();
        for point in selected {
            let gamma = host.scope().pp(point).param(
                "gamma",
                &[1],
                ParamInit::constant(config.gamma_init),
            )?;
            gammas.push((point.clone(), gamma));
        }
        let details = host.model_details()?;
        let train_base = details
            .parameters
            .iter()
            .filter(|p| roles.contains(&p.role))
            .map(|p| p.key.to_string())
            .collect();
        Ok(DiffFit {
            gammas,
            train_base,
            gamma_lr_scale: config.gamma_lr_scale,
        })
    }

    fn points(&self) -> Vec<String> {
        self.gammas.iter().map(|(p, _)| p.clone()).collect()
    }

    fn inject(&mut self, ctx: &Inject<'_>) -> Result<Tensor, AbiError> {
        let (_, gamma) = self
            .gammas
            .iter()
            .find(|(p, _)| p == ctx.point)
            .ok_or_else(|| AbiError::other(format!("no γ at `{}`", ctx.point)))?;
        Ok(&*ctx.h * gamma.value())
    }

    fn recipe(&self) -> Recipe {
        Recipe {
            train_base: self.train_base.clone(),
            groups: vec![Group {
                name: "gamma".into(),
                params: self.gammas.iter().map(|(_, g)| g.clone()).collect(),
                lr_scale: self.gamma_lr_scale,
                weight_decay: None,
            }],
        }
    }
}

export_plugin!(DiffFit);
