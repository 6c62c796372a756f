//! `anl`: "Attention-NonLinear" adapters in a frozen U-Net ("Transferring
//! pretrained diffusion probabilistic models", Sec. 3.1–3.3).
//!
//! After every residual block `i` (or the blocks `points` selects), with its
//! activation `h_i ∈ R^{B×d_i×H×W}` read as `HW` tokens of width `d_i`:
//!
//! ```text
//! Q = W_Q h_i,  K = W_K c,  V = W_V c                                  (Eq. 8)
//! A = softmax(Q Kᵀ / sqrt(d_k)) V          (per head, d_k split over heads)
//! ANL(h_i, c) = f(A),  f = Linear(d_k → m·d_i) → act → Linear(→ d_i)   (Eq. 9)
//! h_i ← h_i + ANL(h_i, c)                  (residual: our decision, below)
//! ```
//!
//! `c ∈ R^{B×N×d_c}` is the run's condition embedding (`[condition]`: the
//! embedded U-Net encoder, or CLIP), c = φ(x) of the image being noised in
//! training (Eq. 7); only the ANL parameters train (Eq. 10, with
//! `train.trainable = "none"`). `mode = "unconditional"` replaces the
//! cross-attention with self-attention over the block's positions (Sec. 3.3):
//! K and V come from `h_i` too, and no encoder is needed.
//!
//! Decisions the paper leaves open (docs/plugins/anl.md):
//! - the output rejoins the U-Net residually and f's last layer starts at
//!   zero, so step 0 is exactly the source model;
//! - Q, K and V have no bias (Eq. 8 writes matrices);
//! - with one condition token (N = 1, CLIP's pooled embedding) the softmax
//!   over one key is 1 and A = W_V c whatever W_Q and W_K are: they would
//!   get no gradient, so they are not created and not counted;
//! - f's hidden width is `hidden_mult · d_i` and d_k defaults to d_i (the
//!   paper gives neither).

mod config;

pub use config::{Config, Mode};

use dtx_plugin_api::nn::{Linear, LinearConfig, Mlp, MlpConfig};
use dtx_plugin_api::prelude::*;

/// One ANL module, at one injection point.
#[derive(Debug, Clone)]
pub struct AnlModule {
    /// W_Q (`None` with a single condition token).
    pub q: Option<Linear>,
    /// W_K (`None` with a single condition token).
    pub k: Option<Linear>,
    /// W_V.
    pub v: Linear,
    /// f of Eq. 9: `Linear → activation → Linear`, its last layer zero at
    /// initialisation by default.
    pub f: Mlp,
    /// Heads.
    pub heads: usize,
}

impl AnlModule {
    /// ANL(h, ctx) for tokens `x` `[B, L, d_i]` and context `[B, M, d_c]`
    /// (`None`: self-attention over `x`): `[B, L, d_i]`.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Tensor {
        let ctx = context.unwrap_or(x);
        let v = self.v.forward(ctx); // [B, M, d_k]
        let a = match (&self.q, &self.k) {
            (Some(q), Some(k)) => nn::attention(&q.forward(x), &k.forward(ctx), &v, self.heads),
            // one key: softmax = 1, every query reads V
            _ => {
                let l = x.dim(1);
                let ones = Tensor::ones(&[x.dim(0), l, 1]);
                ones.matmul(&v) // [B, L, d_k]
            }
        };
        self.f.forward(&a)
    }

    /// `h + ANL(h, c)` for an activation `h` `[B, C, H, W]`.
    pub fn apply(&self, h: &Tensor, cond: Option<&Tensor>) -> Tensor {
        let [b, c, hh, ww] = [h.dim(0), h.dim(1), h.dim(2), h.dim(3)];
        let tokens = h.flatten(2).permute(&[0, 2, 1]); // [B, HW, C]
        let out = self.forward(&tokens, cond);
        let back = out.permute(&[0, 2, 1]).reshape(&[b, c, hh, ww]);
        h + &back
    }
}

/// The ANL plugin: one [`AnlModule`] per selected residual block.
pub struct Anl {
    config: Config,
    /// `(point, module)` in forward order.
    modules: Vec<(String, AnlModule)>,
    /// `(N, d_c)` of the condition embedding, in conditional mode.
    cond_shape: Option<(usize, usize)>,
}

impl Anl {
    /// The module at `point`.
    pub fn module(&self, point: &str) -> Option<&AnlModule> {
        self.modules
            .iter()
            .find(|(p, _)| p == point)
            .map(|(_, m)| m)
    }
}

#[hooks]
impl Plugin for Anl {
    type Config = Config;
    const NAME: &'static str = "anl";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Attention-NonLinear adapters after the residual blocks of a frozen U-Net, conditioned on [condition] embeddings (or self-attention)";

    fn new(config: Config, host: &Host, model: &ModelInfo) -> Result<Self, AbiError> {
        config.validate()?;
        let cond_shape = match config.mode {
            Mode::Unconditional => None,
            Mode::Conditional => Some(host.condition_shape()?.ok_or_else(|| {
                AbiError::config(
                    "mode",
                    "`conditional` needs the run's condition embeddings: add a [condition] table to the manifest (e.g. `encoder = \"unet\"`), or use `mode = \"unconditional\"`",
                )
            })?),
        };
        let mut modules = Vec::new();
        for p in model.points.iter() {
            let name = p.name.as_str();
            if name == "temb"
                || !config
                    .points
                    .iter()
                    .any(|g| dtx_plugin_api::points::matches(g, name))
            {
                continue;
            }
            if p.height == 0 {
                return Err(AbiError::config(
                    "points",
                    format!(
                        "`{name}` is a vector activation; ANL modules attend over the positions of image activations"
                    ),
                ));
            }
            let d_i = p.channels;
            let d_k = if config.d_attn == 0 {
                d_i
            } else {
                config.d_attn
            };
            if !d_k.is_multiple_of(config.heads) {
                return Err(AbiError::config(
                    "heads",
                    format!(
                        "{} heads do not divide d_k = {d_k} at `{name}`",
                        config.heads
                    ),
                ));
            }
            let (tokens, d_c) = cond_shape.unwrap_or((2, d_i));
            let scope = host.scope().pp(name);
            let lin = |i: usize, o: usize, part: &str| {
                LinearConfig::new(i, o)
                    .with_bias(false)
                    .init(&scope.pp(part))
            };
            let (q, k) = if tokens > 1 {
                (Some(lin(d_i, d_k, "q")?), Some(lin(d_c, d_k, "k")?))
            } else {
                (None, None)
            };
            let v = lin(d_c, d_k, "v")?;
            let last = if config.zero_init {
                Initializer::Zeros
            } else {
                Initializer::KaimingUniform
            };
            let f = MlpConfig::new(&[d_k, config.hidden_mult * d_i, d_i])
                .with_activation(config.activation)
                .with_last_initializer(last)
                .init(&scope.pp("f"))?;
            let module = AnlModule {
                q,
                k,
                v,
                f,
                heads: config.heads,
            };
            modules.push((name.to_owned(), module));
        }
        if modules.is_empty() {
            let names: Vec<&str> = model.points.iter().map(|p| p.name.as_str()).collect();
            return Err(AbiError::config(
                "points",
                format!(
                    "{:?} select no residual block of this model (points: {})",
                    config.points,
                    names.join(", ")
                ),
            ));
        }
        Ok(Anl {
            config,
            modules,
            cond_shape,
        })
    }

    fn points(&self) -> Vec<String> {
        self.modules.iter().map(|(p, _)| p.clone()).collect()
    }

    fn inject(&mut self, ctx: &Inject<'_>) -> Result<Tensor, AbiError> {
        let module = self
            .module(ctx.point)
            .ok_or_else(|| AbiError::other(format!("anl has no module at `{}`", ctx.point)))?;
        let h: &Tensor = &ctx.h;
        if h.shape().len() != 4 {
            return Err(AbiError::other(format!(
                "anl at `{}`: expected an activation [B, C, H, W], got {:?}",
                ctx.point,
                h.shape()
            )));
        }
        let cond = match self.config.mode {
            Mode::Unconditional => None,
            Mode::Conditional => {
                let c: &Tensor = ctx.cond.as_deref().ok_or_else(|| {
                    AbiError::other(format!(
                        "anl at `{}`: this forward has no condition embedding (conditional ANL runs in training and sampling with [condition]; a plugin hook that calls denoise(student) outside them has none)",
                        ctx.point
                    ))
                })?;
                let (n, d) = self.cond_shape.expect("conditional mode has a shape");
                let s = c.shape();
                if s.len() != 3 || s[0] != h.dim(0) || s[1] != n || s[2] != d {
                    return Err(AbiError::other(format!(
                        "anl at `{}`: condition embedding of shape {s:?}, expected [{}, {n}, {d}]",
                        ctx.point,
                        h.dim(0)
                    )));
                }
                Some(c)
            }
        };
        Ok(module.apply(h, cond))
    }
}

export_plugin!(Anl);
