//! The forward pass of diffusers' `UNet2DModel` (Ho et al., *Denoising
//! Diffusion Probabilistic Models*, 2020, arXiv:2006.11239; the diffusers
//! implementation, `src/diffusers/models/unets/unet_2d.py`, v0.42.1) on
//! parameters held in the host's [`ParamStore`](crate::tensor_abi::ParamStore)
//! under their checkpoint keys (`down_blocks.0.resnets.0.conv1.weight`).
//!
//! - `config.rs`: [`UNet2D`], the architecture read from a `diffusers`
//!   [`ModelDescription`](crate::model::ModelDescription), and its parameter list.
//! - the layers (`ResnetBlock2D`, `Attention`, down/upsamplers, group norm,
//!   the positional time embedding) are `model::layers`, shared with the ADM
//!   U-Net.
//! - `weights.rs`: [`load_safetensors`], reading
//!   `diffusion_pytorch_model.safetensors` into the store.
//!
//! Supported: `DownBlock2D`, `AttnDownBlock2D`, `UNetMidBlock2D`,
//! `UpBlock2D`, `AttnUpBlock2D`, positional time embedding, class embedding
//! (`num_class_embeds`), `resnet_time_scale_shift` `default` and
//! `scale_shift`, `downsample_padding` 0 and 1.
//!
//! # Injection points and skip connections
//!
//! The forward calls the hook `(point, h, temb) -> h'` at `temb` (after the
//! class embedding is added) and at the output of every resnet:
//! `down.{i}.res.{j}`, `mid.res.{j}`, `up.{i}.res.{j}` (docs/models.md). In
//! attention blocks the point is the resnet's output, *before* the attention
//! that follows it. **The hook's result replaces the activation everywhere
//! downstream, skip connections included**: a down level's skip stores the
//! value after the hook (and after the attention, as diffusers stores the
//! attention's output), so a module injected at `down.{i}.res.{j}` also
//! changes what the decoder receives through the skip. Every resnet gets the
//! hooked `temb`.

mod config;
mod error;
mod weights;

#[cfg(test)]
mod tests;

pub use crate::model::layers::timestep_embedding;
pub use config::{BlockKind, TimeShift, UNet2D};
pub use error::{UNetError, WeightProblem};
pub(crate) use weights::current_name;
pub use weights::{load_safetensors, weights_file};

use crate::model::layers::{
    DIFFUSERS_RESNET, DropoutRng, Resample, ResnetSpec, attention, conv, downsample, embed_time,
    group_norm, resnet, tensor, upsample,
};
use crate::model::mlp_net::PointHook;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Tensor, activation};
use std::collections::HashMap;

type P<B> = FloatTensor<B>;

impl UNet2D {
    fn spec<'a>(&self, output_scale: f64, dropout: Option<&'a DropoutRng>) -> ResnetSpec<'a> {
        ResnetSpec {
            dropout: dropout
                .filter(|_| self.dropout > 0.0)
                .map(|r| (self.dropout, r)),
            keys: &DIFFUSERS_RESNET,
            groups: self.norm_num_groups,
            eps: self.norm_eps,
            scale_shift: self.time_shift == TimeShift::ScaleShift,
            output_scale,
        }
    }

    /// The forward pass: the model output (ε, or whatever the checkpoint
    /// predicts) for `x` at timesteps `t` (float, one per sample), with class
    /// `labels` for a class-conditional model, calling
    /// `hook(point, h, temb)` at every injection point in forward order (see
    /// the module doc). Without `labels` no class embedding is added
    /// (diffusers raises instead). `dropout`: the training step's stream,
    /// with which every resnet applies the config's `dropout` rate; `None`
    /// is eval mode.
    ///
    /// # Shapes
    /// - x: `[B, in_channels, S, S]`, t: `[B]`, labels: `[B]`
    /// - output: `[B, out_channels, S, S]`
    pub fn forward<B: AutodiffBackend, E>(
        &self,
        params: &HashMap<String, P<B>>,
        x: P<B>,
        t: P<B>,
        labels: Option<IntTensor<B>>,
        hook: &mut PointHook<'_, B, E>,
        dropout: Option<&DropoutRng>,
    ) -> Result<P<B>, E> {
        let c = &self.block_out_channels;
        let levels = self.levels();
        // 0. center the input
        let mut h = tensor::<B, 4>(&x);
        if self.center_input_sample {
            h = h.mul_scalar(2.0).sub_scalar(1.0);
        }

        // 1. time (and class) embedding -> `temb`
        let e = timestep_embedding(
            tensor::<B, 1>(&t),
            c[0],
            self.flip_sin_to_cos,
            self.freq_shift,
        );
        let (temb, temb_act) = embed_time(
            params,
            e,
            [
                "time_embedding.linear_1",
                "time_embedding.linear_2",
                "class_embedding.weight",
            ],
            labels.filter(|_| self.num_class_embeds.is_some()),
            hook,
        )?; // temb_act: every resnet's silu(temb)
        let mut at = |point: &str, h: Tensor<B, 4>, temb: &P<B>| -> Result<Tensor<B, 4>, E> {
            Ok(tensor::<B, 4>(&hook(
                point,
                h.into_primitive().tensor(),
                temb,
            )?))
        };

        // One layer of a down or up block: resnet -> injection point ->
        // attention (Attn blocks).
        let spec = self.spec(1.0, dropout);
        type At<'h, B, E> = dyn FnMut(&str, Tensor<B, 4>, &P<B>) -> Result<Tensor<B, 4>, E> + 'h;
        let layer = |at: &mut At<'_, B, E>,
                     block: &str,
                     j: usize,
                     point: &str,
                     kind: BlockKind,
                     ch: usize,
                     h: Tensor<B, 4>|
         -> Result<Tensor<B, 4>, E> {
            let h = resnet(
                params,
                &format!("{block}.resnets.{j}"),
                h,
                &temb_act,
                &spec,
                Resample::None,
            );
            let h = at(point, h, &temb)?;
            Ok(if kind == BlockKind::Attn {
                let (heads, d) = self.heads(ch);
                let pre = format!("{block}.attentions.{j}");
                attention(
                    params,
                    &pre,
                    h,
                    heads,
                    d,
                    Some(self.norm_num_groups),
                    self.norm_eps,
                    1.0,
                )
            } else {
                h
            })
        };

        // 2. pre-process
        h = conv(params, "conv_in", h, 1, 1);
        let mut skips = vec![h.clone()];

        // 3. down: resnet -> point -> attention, skip after each; downsampler
        for (i, &ch) in c.iter().enumerate() {
            for j in 0..self.layers_per_block {
                let block = format!("down_blocks.{i}");
                h = layer(
                    &mut at,
                    &block,
                    j,
                    &format!("down.{i}.res.{j}"),
                    self.down[i],
                    ch,
                    h,
                )?;
                skips.push(h.clone());
            }
            if i + 1 < levels {
                let pre = format!("down_blocks.{i}.downsamplers.0");
                h = downsample(params, &pre, h, self.downsample_padding);
                skips.push(h.clone());
            }
        }

        // 4. mid: resnet -> point -> attention -> resnet -> point
        if self.mid_block {
            let m = self.mid_block_scale_factor;
            let mid = self.spec(m, dropout);
            h = resnet(
                params,
                "mid_block.resnets.0",
                h,
                &temb_act,
                &mid,
                Resample::None,
            );
            h = at("mid.res.0", h, &temb)?;
            if self.add_attention {
                let (heads, d) = self.heads(c[levels - 1]);
                let groups = self.mid_attn_groups();
                h = attention(
                    params,
                    "mid_block.attentions.0",
                    h,
                    heads,
                    d,
                    groups,
                    self.norm_eps,
                    m,
                );
            }
            h = resnet(
                params,
                "mid_block.resnets.1",
                h,
                &temb_act,
                &mid,
                Resample::None,
            );
            h = at("mid.res.1", h, &temb)?;
        }

        // 5. up: concat skip -> resnet -> point -> attention; upsampler
        for i in 0..levels {
            let ch = c[levels - 1 - i];
            for j in 0..=self.layers_per_block {
                let skip = skips
                    .pop()
                    .expect("one skip per up resnet (diffusers' layout)");
                h = Tensor::cat(vec![h, skip], 1);
                let block = format!("up_blocks.{i}");
                h = layer(
                    &mut at,
                    &block,
                    j,
                    &format!("up.{i}.res.{j}"),
                    self.up[i],
                    ch,
                    h,
                )?;
            }
            if i + 1 < levels {
                h = upsample(params, &format!("up_blocks.{i}.upsamplers.0"), h);
            }
        }

        // 6. post-process
        let h = activation::silu(group_norm(
            params,
            "conv_norm_out",
            h,
            self.norm_num_groups,
            self.norm_eps,
        ));
        Ok(conv(params, "conv_out", h, 1, 1).into_primitive().tensor())
    }
}
