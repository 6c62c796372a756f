//! `example`: the plugin to copy when you start a new method.
//!
//! It shows every part a method needs, on the smallest useful idea:
//!
//! - **`inject`**: at each selected injection point `h` of shape `[B, C, H, W]`,
//!   a residual bottleneck `h ← h + W₂ · silu(W₁ · h)` made of two 1×1
//!   convolutions (`[B, D]` points use linear layers). `W₂` starts at zero, so the
//!   model with the plugin is exactly the source model until training moves it.
//! - **`loss`**: an L2 penalty `λ · Σ_p mean(p²)` over the plugin's own
//!   parameters, logged as `example.l2`.
//! - a typed **config** (`points`, `bottleneck`, `lambda`) whose bad values come
//!   back to the user with the manifest key.
//!
//! `docs/plugin-authoring.md` walks through this file.

use dtx_plugin_api::nn::{Conv2d, Conv2dConfig, Linear, LinearConfig};
use dtx_plugin_api::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `[plugin.config]` of the example plugin. Each field's doc comment is its
/// help in `dtx plugins inspect example`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Injection points (names or globs) to adapt.
    pub points: Vec<String>,
    /// Bottleneck width as a fraction of the channels at each point, in (0, 1].
    pub bottleneck: f32,
    /// Weight λ of the L2 penalty on the adapter's parameters (>= 0).
    pub lambda: f32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            points: vec!["mid.*".into()],
            bottleneck: 0.25,
            lambda: 0.0,
        }
    }
}

/// One adapter: two layers, the second zero-initialised.
enum Adapter {
    /// For `[B, C, H, W]` activations.
    Conv(Conv2d, Conv2d),
    /// For `[B, D]` activations.
    Dense(Linear, Linear),
}

impl Adapter {
    /// Its parameters, for the L2 penalty.
    fn params(&self) -> Vec<Param> {
        let (w, b): (Vec<&Param>, Vec<&Option<Param>>) = match self {
            Adapter::Conv(d, u) => (vec![&d.weight, &u.weight], vec![&d.bias, &u.bias]),
            Adapter::Dense(d, u) => (vec![&d.weight, &u.weight], vec![&d.bias, &u.bias]),
        };
        w.into_iter()
            .chain(b.into_iter().flatten())
            .cloned()
            .collect()
    }
}

/// The example plugin.
pub struct Example {
    adapters: Vec<(String, Adapter)>,
    params: Vec<Param>,
    lambda: f32,
}

#[hooks]
impl Plugin for Example {
    type Config = Config;
    const NAME: &'static str = "example";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "Zero-initialised residual bottleneck adapters with an L2 penalty (a template)";

    fn injection_points() -> Vec<String> {
        Config::default().points
    }

    fn new(config: Config, host: &Host, model: &ModelInfo) -> Result<Self, AbiError> {
        if config.lambda.is_nan() || config.lambda < 0.0 {
            return Err(AbiError::config(
                "lambda",
                format!("must be >= 0, got {}", config.lambda),
            ));
        }
        if !(config.bottleneck > 0.0 && config.bottleneck <= 1.0) {
            return Err(AbiError::config(
                "bottleneck",
                format!("must be in (0, 1], got {}", config.bottleneck),
            ));
        }
        let available: Vec<String> = model.points.iter().map(|p| p.name.to_string()).collect();
        let selected = dtx_plugin_api::points::resolve(&config.points, &available)
            .map_err(|msg| AbiError::config("points", msg))?;
        let mut adapters = Vec::new();
        let mut params = Vec::new();
        for name in selected {
            let info = model
                .points
                .iter()
                .find(|p| p.name.as_str() == name.as_str())
                .expect("resolved");
            let c = info.channels;
            let d = ((c as f32 * config.bottleneck).round() as usize).max(1);
            let scope = host.scope().pp(name.replace('.', "_"));
            let (down, up) = (scope.pp("down"), scope.pp("up"));
            let adapter = if info.height > 0 {
                let down = Conv2dConfig::new(c, d, 1).init(&down)?; // [d, c, 1, 1]
                let up = Conv2dConfig::new(d, c, 1)
                    .with_initializer(Initializer::Zeros)
                    .init(&up)?; // [c, d, 1, 1]
                Adapter::Conv(down, up)
            } else {
                let down = LinearConfig::new(c, d).init(&down)?; // [c, d]
                let up = LinearConfig::new(d, c)
                    .with_initializer(Initializer::Zeros)
                    .init(&up)?; // [d, c]
                Adapter::Dense(down, up)
            };
            params.extend(adapter.params());
            adapters.push((name.clone(), adapter));
        }
        Ok(Example {
            adapters,
            params,
            lambda: config.lambda,
        })
    }

    fn points(&self) -> Vec<String> {
        self.adapters.iter().map(|(n, _)| n.clone()).collect()
    }

    fn inject(&mut self, ctx: &Inject<'_>) -> Result<Tensor, AbiError> {
        let (_, adapter) = self
            .adapters
            .iter()
            .find(|(n, _)| n == ctx.point)
            .ok_or_else(|| AbiError::other(format!("not bound to `{}`", ctx.point)))?;
        let h: &Tensor = &ctx.h;
        let delta = match adapter {
            Adapter::Conv(down, up) => up.forward(&down.forward(h).silu()), // [B, C, H, W]
            Adapter::Dense(down, up) => up.forward(&down.forward(h).silu()), // [B, D]
        };
        Ok(h + delta)
    }

    fn loss(&mut self, _ctx: &Loss<'_>) -> Result<Vec<(String, Tensor)>, AbiError> {
        let mut total = Tensor::zeros(&[1]);
        for p in &self.params {
            total = total + p.value().square().mean();
        }
        Ok(vec![("l2".into(), total * self.lambda)])
    }
}

export_plugin!(Example);
