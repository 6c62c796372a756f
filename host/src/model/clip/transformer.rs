//! The pre-norm transformer encoder both CLIP towers run: per layer,
//! `x + attn(layer_norm1(x))` then `x + fc2(act(fc1(layer_norm2(x))))`.
//! Fields are the checkpoint's key segments (`self_attn.q_proj`,
//! `layer_norm1`, `mlp.fc1`), loaded from `<prefix>.encoder.layers.{i}`.
//!
//! Architecture: Radford et al., "Learning Transferable Visual Models From
//! Natural Language Supervision", ICML 2021, arXiv:2103.00020, as
//! transformers' `CLIPEncoderLayer` arranges it.

use super::config::{Activation, EncoderConfig};
use super::weights::Loader;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, activation};

/// `nn.Linear`, the weight kept transposed (`[in, out]`) for `x · W`.
#[derive(Debug, Clone)]
pub(super) struct Linear<B: Backend> {
    /// `Wᵀ`: `[in, out]`.
    weight_t: Tensor<B, 2>,
    /// `[out]`, absent for the projections (`bias=False`).
    bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> Linear<B> {
    /// `<name>.weight` `[out, in]` and, when `bias`, `<name>.bias` `[out]`.
    pub(super) fn load(
        l: &mut Loader<B>,
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Self {
        let weight: Tensor<B, 2> = l.tensor(&format!("{name}.weight"), [d_out, d_in]);
        Self {
            weight_t: weight.transpose(),
            bias: bias.then(|| l.tensor(&format!("{name}.bias"), [d_out])),
        }
    }

    /// `x · Wᵀ + b` over the last axis.
    ///
    /// # Shapes
    /// - x: `[B, T, in]`; output `[B, T, out]`
    pub(super) fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, d_in] = x.dims();
        let d_out = self.weight_t.dims()[1];
        let y = x.reshape([b * t, d_in]).matmul(self.weight_t.clone()); // [B·T, out]
        let y = match &self.bias {
            Some(bias) => y + bias.clone().unsqueeze(),
            None => y,
        };
        y.reshape([b, t, d_out])
    }
}

/// `nn.LayerNorm(hidden, eps)`: over the last axis,
/// `y = (x − mean) / sqrt(var + eps) · γ + β` with the biased variance.
#[derive(Debug, Clone)]
pub(super) struct LayerNorm<B: Backend> {
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// `<name>.weight` and `<name>.bias`, both `[hidden]`.
    pub(super) fn load(l: &mut Loader<B>, name: &str, hidden: usize, eps: f64) -> Self {
        Self {
            gamma: l.tensor(&format!("{name}.weight"), [hidden]),
            beta: l.tensor(&format!("{name}.bias"), [hidden]),
            eps,
        }
    }

    /// # Shapes
    /// - x: `[B, T, H]`; output `[B, T, H]`
    pub(super) fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let mean = x.clone().mean_dim(2); // [B, T, 1]
        let centered = x - mean;
        let var = centered.clone().powf_scalar(2.0).mean_dim(2);
        let y = centered / (var + self.eps).sqrt();
        y * self.gamma.clone().unsqueeze::<3>() + self.beta.clone().unsqueeze::<3>()
    }
}

/// Multi-head self-attention: `softmax(q kᵀ · d^-½ + mask) v` per head
/// (d = hidden / heads), heads concatenated, then `out_proj`.
#[derive(Debug, Clone)]
struct Attention<B: Backend> {
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    out_proj: Linear<B>,
    heads: usize,
}

impl<B: Backend> Attention<B> {
    /// # Shapes
    /// - x: `[B, T, H]`; mask: `[T, T]` added to the scores (0 or −∞);
    ///   output `[B, T, H]`
    fn forward(&self, x: Tensor<B, 3>, mask: Option<&Tensor<B, 2>>) -> Tensor<B, 3> {
        let [b, t, h] = x.dims();
        let (n, d) = (self.heads, h / self.heads);
        let split = |y: Tensor<B, 3>| y.reshape([b, t, n, d]).swap_dims(1, 2); // [B, n, T, d]
        let q = split(self.q_proj.forward(x.clone()));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        let mut scores = q.matmul(k.swap_dims(2, 3)) * (d as f64).powf(-0.5); // [B, n, T, T]
        if let Some(mask) = mask {
            scores = scores + mask.clone().unsqueeze::<4>();
        }
        let y = activation::softmax(scores, 3).matmul(v); // [B, n, T, d]
        self.out_proj.forward(y.swap_dims(1, 2).reshape([b, t, h]))
    }
}

/// One `CLIPEncoderLayer`.
#[derive(Debug, Clone)]
struct EncoderLayer<B: Backend> {
    layer_norm1: LayerNorm<B>,
    self_attn: Attention<B>,
    layer_norm2: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
}

/// `hidden_act` applied element-wise.
fn act<B: Backend>(x: Tensor<B, 3>, act: Activation) -> Tensor<B, 3> {
    match act {
        Activation::QuickGelu => x.clone() * activation::sigmoid(x * 1.702),
        Activation::Gelu => activation::gelu(x),
    }
}

/// `CLIPEncoder`: the layers in order.
#[derive(Debug, Clone)]
pub(super) struct Encoder<B: Backend> {
    layers: Vec<EncoderLayer<B>>,
    act: Activation,
}

impl<B: Backend> Encoder<B> {
    /// `<prefix>.encoder.layers.{i}.*` for every layer of `c`.
    pub(super) fn load(l: &mut Loader<B>, prefix: &str, c: &EncoderConfig) -> Self {
        let (h, m) = (c.hidden, c.intermediate);
        let layers = (0..c.layers)
            .map(|i| {
                let p = format!("{prefix}.encoder.layers.{i}");
                let proj = |l: &mut Loader<B>, name: &str| {
                    Linear::load(l, &format!("{p}.self_attn.{name}"), h, h, true)
                };
                EncoderLayer {
                    layer_norm1: LayerNorm::load(l, &format!("{p}.layer_norm1"), h, c.eps),
                    self_attn: Attention {
                        q_proj: proj(l, "q_proj"),
                        k_proj: proj(l, "k_proj"),
                        v_proj: proj(l, "v_proj"),
                        out_proj: proj(l, "out_proj"),
                        heads: c.heads,
                    },
                    layer_norm2: LayerNorm::load(l, &format!("{p}.layer_norm2"), h, c.eps),
                    fc1: Linear::load(l, &format!("{p}.mlp.fc1"), h, m, true),
                    fc2: Linear::load(l, &format!("{p}.mlp.fc2"), m, h, true),
                }
            })
            .collect();
        Self { layers, act: c.act }
    }

    /// Every layer: `x += attn(ln1(x))`, then `x += fc2(act(fc1(ln2(x))))`.
    ///
    /// # Shapes
    /// - x: `[B, T, H]`; mask `[T, T]`; output `[B, T, H]`
    pub(super) fn forward(&self, mut x: Tensor<B, 3>, mask: Option<&Tensor<B, 2>>) -> Tensor<B, 3> {
        for layer in &self.layers {
            let attn = layer
                .self_attn
                .forward(layer.layer_norm1.forward(x.clone()), mask);
            x = x + attn;
            let hidden = act(
                layer.fc1.forward(layer.layer_norm2.forward(x.clone())),
                self.act,
            );
            x = x + layer.fc2.forward(hidden);
        }
        x
    }
}
