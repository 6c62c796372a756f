//! Group and layer normalisation with a learned affine.

use super::Initializer;
use crate::abi::{AbiError, ParamInit};
use crate::{Param, Scope, Tensor};

/// Configuration of a [`GroupNorm`].
#[derive(Debug, Clone)]
pub struct GroupNormConfig {
    /// Number of groups (must divide `channels`).
    pub groups: usize,
    /// Channels.
    pub channels: usize,
    /// Added to the variance (default 1e-5 as PyTorch; diffusers U-Nets use 1e-6).
    pub eps: f32,
    /// Whether there is a learned shift β (default `true`).
    pub bias: bool,
    /// Law of the scale γ (default [`Initializer::Constant`]`(1.0)`); β starts at 0.
    pub initializer: Initializer,
}

setters!(GroupNormConfig { with_eps: eps: f32, with_bias: bias: bool, with_initializer: initializer: Initializer });

impl GroupNormConfig {
    /// `groups` groups over `channels` channels, with eps 1e-5, γ = 1, β = 0.
    pub fn new(groups: usize, channels: usize) -> Self {
        GroupNormConfig {
            groups,
            channels,
            eps: 1e-5,
            bias: true,
            initializer: Initializer::Constant(1.0),
        }
    }

    /// Registers `gamma` and `beta` `[channels]` in `scope`.
    pub fn init(&self, scope: &Scope) -> Result<GroupNorm, AbiError> {
        let (groups, channels) = (self.groups, self.channels);
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(AbiError::other(format!(
                "{}: {channels} channels are not divisible into {groups} groups",
                scope.prefix()
            )));
        }
        let (gamma, beta) = affine(scope, channels, self.initializer, self.bias)?;
        Ok(GroupNorm {
            groups,
            gamma,
            beta,
            eps: self.eps,
        })
    }
}

/// γ (from `initializer`, fan-in 1) and β (zeros, when `bias`) of a norm.
fn affine(
    scope: &Scope,
    d: usize,
    initializer: Initializer,
    bias: bool,
) -> Result<(Param, Option<Param>), AbiError> {
    let gamma = scope.param("gamma", &[d], initializer.law(1))?;
    let beta = if bias {
        Some(scope.param("beta", &[d], ParamInit::zeros())?)
    } else {
        None
    };
    Ok((gamma, beta))
}

/// Group normalisation with a learned affine.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    /// Number of groups.
    pub groups: usize,
    /// `[C]`.
    pub gamma: Param,
    /// `[C]`, when the config has a bias.
    pub beta: Option<Param>,
    /// Added to the variance.
    pub eps: f32,
}

impl GroupNorm {
    /// # Shapes
    /// - x: `[B, C, ...]`
    /// - output: same
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let beta = self.beta.as_ref().map(Param::value);
        x.group_norm(
            self.groups,
            Some(&self.gamma.value()),
            beta.as_ref(),
            self.eps,
        )
    }
}

/// Configuration of a [`LayerNorm`] over the last dim.
#[derive(Debug, Clone)]
pub struct LayerNormConfig {
    /// Size of the last dim.
    pub d: usize,
    /// Added to the variance (default 1e-5).
    pub eps: f32,
    /// Whether there is a learned shift β (default `true`).
    pub bias: bool,
    /// Law of the scale γ (default [`Initializer::Constant`]`(1.0)`); β starts at 0.
    pub initializer: Initializer,
}

setters!(LayerNormConfig { with_eps: eps: f32, with_bias: bias: bool, with_initializer: initializer: Initializer });

impl LayerNormConfig {
    /// Normalises a last dim of size `d`, with eps 1e-5, γ = 1, β = 0.
    pub fn new(d: usize) -> Self {
        LayerNormConfig {
            d,
            eps: 1e-5,
            bias: true,
            initializer: Initializer::Constant(1.0),
        }
    }

    /// Registers `gamma` and `beta` `[d]` in `scope`.
    pub fn init(&self, scope: &Scope) -> Result<LayerNorm, AbiError> {
        let (gamma, beta) = affine(scope, self.d, self.initializer, self.bias)?;
        Ok(LayerNorm {
            gamma,
            beta,
            eps: self.eps,
        })
    }
}

/// Layer normalisation over the last dim with a learned affine.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// `[D]`.
    pub gamma: Param,
    /// `[D]`, when the config has a bias.
    pub beta: Option<Param>,
    /// Added to the variance.
    pub eps: f32,
}

impl LayerNorm {
    /// # Shapes
    /// - x: `[..., D]`
    /// - output: same
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let beta = self.beta.as_ref().map(Param::value);
        x.layer_norm(Some(&self.gamma.value()), beta.as_ref(), self.eps)
    }
}
