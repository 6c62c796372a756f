//! The classifier on denoiser features: `layers` 3×3 convolutions (padding
//! 1, the first from the feature channels to `channels`), each followed by
//! SiLU, then a global mean over space and a linear layer to the class
//! logits.

use dtx_plugin_api::nn::{Activation, Conv2d, Conv2dConfig, Linear, LinearConfig};
use dtx_plugin_api::prelude::*;

/// A small conv net from features `[B, C, h, w]` to logits `[B, K]`.
#[derive(Debug, Clone)]
pub struct Classifier {
    convs: Vec<Conv2d>,
    head: Linear,
}

impl Classifier {
    /// Registers the parameters `classifier.conv{i}.*` and `classifier.head.*`.
    pub fn new(
        host: &Host,
        in_channels: usize,
        channels: usize,
        layers: usize,
        classes: usize,
    ) -> Result<Classifier, AbiError> {
        let mut convs = Vec::new();
        let mut c_in = in_channels;
        for i in 0..layers {
            let cfg = Conv2dConfig::new(c_in, channels, 3);
            convs.push(cfg.init(host, &format!("classifier.conv{i}"))?);
            c_in = channels;
        }
        let head = LinearConfig::new(c_in, classes).init(host, "classifier.head")?;
        Ok(Classifier { convs, head })
    }

    /// Logits `[B, K]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = x.clone();
        for conv in &self.convs {
            h = Activation::Silu.apply(&conv.forward(&h));
        }
        self.head.forward(&h.mean_dims(&[2, 3], false))
    }

    /// The same net with [detached](Param::detached) parameters, for
    /// evaluating it at sampling time without recording their graph.
    pub fn detached(&self) -> Classifier {
        Classifier {
            convs: self
                .convs
                .iter()
                .map(|c| Conv2d {
                    weight: c.weight.detached(),
                    bias: c.bias.as_ref().map(Param::detached),
                    options: c.options,
                })
                .collect(),
            head: Linear {
                weight: self.head.weight.detached(),
                bias: self.head.bias.as_ref().map(Param::detached),
            },
        }
    }

    /// Every parameter, for the host's `optimizer_step`.
    pub fn params(&self) -> Vec<Param> {
        let mut v = Vec::new();
        for c in &self.convs {
            v.push(c.weight.clone());
            v.extend(c.bias.clone());
        }
        v.push(self.head.weight.clone());
        v.extend(self.head.bias.clone());
        v
    }
}
