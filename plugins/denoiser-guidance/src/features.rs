//! The classifier's input: the frozen source U-Net's activations at named
//! points and feature timesteps, brought to one spatial size, concatenated
//! over channels, and standardised per channel with statistics from the
//! training pool. The same [`FeatureSpec::extract`] serves `prepare`,
//! guidance and rejection, so the normalisation cannot differ between them.

use dtx_plugin_api::PointInfo;
use dtx_plugin_api::prelude::*;

/// Which activations, where, and how they are normalised.
#[derive(Debug, Clone)]
pub struct FeatureSpec {
    /// Injection-point names.
    pub points: Vec<String>,
    /// Feature timesteps t_f.
    pub timesteps: Vec<u32>,
    /// Common spatial size: the smallest among the points.
    pub size: [usize; 2],
    /// Channels after concatenation (points × timesteps).
    pub channels: usize,
    /// q_sample the input at t_f first.
    pub noise: bool,
    /// Per-channel mean and standard deviation (set by `prepare`).
    pub norm: Option<(Vec<f32>, Vec<f32>)>,
}

/// The last residual block output of a block, `prefix` = `mid.res.`,
/// `up.1.res.`, … (`<prefix>{j}` with the largest `j`; branch points such as
/// `<prefix>{j}.branch` are not block outputs).
fn last_with_prefix<'a>(available: &'a [PointInfo], prefix: &str) -> Option<&'a PointInfo> {
    available
        .iter()
        .filter_map(|p| {
            let j = p
                .name
                .as_str()
                .strip_prefix(prefix)?
                .parse::<usize>()
                .ok()?;
            Some((j, p))
        })
        .max_by_key(|(j, _)| *j)
        .map(|(_, p)| p)
}

impl FeatureSpec {
    /// Resolves `names` (`bottleneck`, `decoder`, `up.{i}`, `down.{i}`, or
    /// point names) against the model's points. The common size is the
    /// smallest point's, or `size` when given (masks: the image's).
    pub fn new(
        names: &[String],
        timesteps: &[u32],
        noise: bool,
        available: &[PointInfo],
        size: Option<[usize; 2]>,
    ) -> Result<FeatureSpec, AbiError> {
        let mut points: Vec<&PointInfo> = Vec::new();
        let mut expanded = Vec::new();
        for name in names {
            if name == "decoder" {
                // the last residual output of every up block
                let mut i = 0;
                while last_with_prefix(available, &format!("up.{i}.res.")).is_some() {
                    expanded.push(format!("up.{i}"));
                    i += 1;
                }
            } else {
                expanded.push(name.clone());
            }
        }
        for name in &expanded {
            let found = match name.as_str() {
                "bottleneck" => last_with_prefix(available, "mid.res."),
                n if (n.starts_with("up.") || n.starts_with("down."))
                    && n.split('.').count() == 2 =>
                {
                    last_with_prefix(available, &format!("{n}.res."))
                }
                n => available.iter().find(|p| p.name.as_str() == n),
            };
            let p = found.ok_or_else(|| {
                let names: Vec<&str> = available.iter().map(|p| p.name.as_str()).collect();
                AbiError::config(
                    "points",
                    format!(
                        "`{name}` is not a point of this model (it has {})",
                        names.join(", ")
                    ),
                )
            })?;
            if p.height == 0 {
                return Err(AbiError::config(
                    "points",
                    format!(
                        "`{}` is a vector activation; the classifier reads feature maps [C, H, W]",
                        p.name
                    ),
                ));
            }
            points.push(p);
        }
        let smallest = points
            .iter()
            .map(|p| [p.height, p.width])
            .min_by_key(|s| s[0] * s[1])
            .ok_or_else(|| AbiError::config("points", "names no point of this model"))?;
        let size = size.unwrap_or(smallest);
        let channels = points.iter().map(|p| p.channels).sum::<usize>() * timesteps.len();
        Ok(FeatureSpec {
            points: points.iter().map(|p| p.name.to_string()).collect(),
            timesteps: timesteps.to_vec(),
            size,
            channels,
            noise,
            norm: None,
        })
    }

    /// Raw features `[B, channels, h, w]` of `x` `[B, C, H, W]` from the
    /// source model; differentiable with respect to `x`.
    pub fn raw(&self, host: &Host, x: &Tensor) -> Result<Tensor, AbiError> {
        let b = x.dim(0);
        let points: Vec<&str> = self.points.iter().map(String::as_str).collect();
        let mut parts = Vec::new();
        for &tf in &self.timesteps {
            let t = Tensor::full(&[b], tf as f64, dtx_plugin_api::DType::F32);
            let input = if self.noise {
                let ab = host.alpha_bar(&t)?.reshape(&[b, 1, 1, 1]);
                x * ab.sqrt() + Tensor::randn(&x.shape()) * ab.rsub(1.0).sqrt()
            } else {
                x.clone()
            };
            for f in host.features(&input, &t, &points, Which::Source)? {
                parts.push(self.resize(&f));
            }
        }
        Ok(Tensor::cat(&parts.iter().collect::<Vec<_>>(), 1))
    }

    /// Normalised features: [`FeatureSpec::raw`] standardised per channel.
    pub fn extract(&self, host: &Host, x: &Tensor) -> Result<Tensor, AbiError> {
        let f = self.raw(host, x)?;
        let (mean, std) = self.norm.as_ref().ok_or_else(|| {
            AbiError::other("denoiser-guidance: the classifier has not been prepared")
        })?;
        let shape = [1, self.channels, 1, 1];
        Ok((f - Tensor::from_f32(mean, &shape)) / Tensor::from_f32(std, &shape))
    }

    /// Per-channel mean and standard deviation of raw features `[N, C, h, w]`
    /// (the std floored at 1e-5).
    pub fn fit_norm(&mut self, raw: &Tensor) {
        let mean = raw.mean_dims(&[0, 2, 3], true);
        let var = (raw - &mean).square().mean_dims(&[0, 2, 3], false);
        let std: Vec<f32> = var
            .to_f32_vec()
            .into_iter()
            .map(|v| v.sqrt().max(1e-5))
            .collect();
        self.norm = Some((mean.to_f32_vec(), std));
    }

    /// `f` `[B, C, H, W]` at the common size: an average over blocks when
    /// it shrinks by a whole factor, else bilinear resampling (upsampling
    /// decoder features to the image for masks).
    fn resize(&self, f: &Tensor) -> Tensor {
        let (b, c, h, w) = (f.dim(0), f.dim(1), f.dim(2), f.dim(3));
        let [th, tw] = self.size;
        if [h, w] == self.size {
            return f.clone();
        }
        if h >= th && w >= tw && h % th == 0 && w % tw == 0 {
            let (kh, kw) = (h / th, w / tw);
            return f.reshape(&[b, c, th, kh, tw, kw]).mean_dims(&[3, 5], false);
        }
        f.interpolate([th, tw], dtx_plugin_api::abi::InterpolateMode::BILINEAR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(name: &str) -> PointInfo {
        PointInfo {
            name: name.into(),
            channels: 4,
            height: 2,
            width: 2,
        }
    }

    #[test]
    fn the_last_block_output_skips_branch_points() {
        let available: Vec<PointInfo> = [
            "temb",
            "mid.res.0.branch",
            "mid.res.0",
            "mid.attn.0.branch",
            "mid.res.1.branch",
            "mid.res.1",
            "up.0.res.0.branch",
            "up.0.res.0",
            "up.0.res.1.branch",
        ]
        .map(point)
        .to_vec();
        let last = |prefix| last_with_prefix(&available, prefix).map(|p| p.name.to_string());
        assert_eq!(last("mid.res.").as_deref(), Some("mid.res.1"));
        assert_eq!(last("up.0.res.").as_deref(), Some("up.0.res.0"));
        assert_eq!(last("down.0.res."), None);
    }
}
