//! The forward pass of the ADM U-Net, guided-diffusion's `UNetModel`
//! (Dhariwal & Nichol, *Diffusion Models Beat GANs on Image Synthesis*, 2021,
//! arXiv:2105.05233, building on the improved-diffusion U-Net of Nichol &
//! Dhariwal, *Improved Denoising Diffusion Probabilistic Models*, 2021,
//! arXiv:2102.09672; layout and behaviour from guided-diffusion's
//! `guided_diffusion/unet.py` and `nn.py`), on parameters held in the
//! host's [`ParamStore`](crate::tensor_abi::ParamStore) under their
//! `state_dict()` keys (`input_blocks.1.0.in_layers.2.weight`).
//!
//! - `config.rs`: [`AdmNet`], the architecture read from an `adm`
//!   [`ModelDescription`](crate::model::ModelDescription), and its parameter
//!   list.
//! - `attention.rs`: `AttentionBlock` with `QKVAttentionLegacy` /
//!   `QKVAttention`. The ResBlock, group norm, resamplers and time embedding
//!   are `model::layers`, shared with the diffusers U-Net.
//! - `weights.rs`: [`load_weights`], from `.safetensors` or `torch.save`
//!   (`.pt`) checkpoints.
//!
//! Supported flags: everything `model::adm` accepts (`num_res_blocks`,
//! `channel_mult`, `attention_resolutions`, `num_heads`,
//! `num_head_channels`, `num_heads_upsample`, `use_scale_shift_norm`,
//! `resblock_updown`, `learn_sigma`, `class_cond`, `use_new_attention_order`).
//! `use_fp16` and `use_checkpoint` change neither names nor results (the host
//! computes in f32, as `GroupNorm32` does). `dropout` applies in the
//! training forward alone ([`AdmNet::forward_with`] with the step's
//! `DropoutRng`); every other forward is guided-diffusion's in eval mode.
//!
//! # Injection points and skip connections
//!
//! The forward calls the hook `(point, h, temb) -> h'` at `temb` (the time
//! embedding after the class embedding is added) and at the output of every
//! ResBlock that `model::adm` lists: `down.{l}.res.{j}` is
//! `input_blocks.{1 + l·(num_res_blocks + 1) + j}.0`, `mid.res.{0,1}` are
//! `middle_block.{0,2}`, `up.{i}.res.{j}` is
//! `output_blocks.{i·(num_res_blocks + 1) + j}.0` (docs/models.md). The
//! point is the ResBlock's output, *before* the attention block that follows
//! it. **The hook's result replaces the activation everywhere downstream,
//! skip connections included**: an input block's skip is its output after
//! the hook and the attention, as guided-diffusion stores `hs.append(h)`
//! after the whole block. Every ResBlock gets the hooked `temb`. The
//! resampling ResBlocks of `resblock_updown` are not injection points.

mod attention;
mod config;
mod error;
mod weights;

#[cfg(test)]
mod tests;

pub use config::{AdmNet, AttentionOrder};
pub use error::AdmError;
pub use weights::load_weights;

use crate::model::layers::{
    DropoutRng, Resample, ResnetKeys, ResnetSpec, conv, embed_time, group_norm, resnet, tensor,
    timestep_embedding, upsample,
};
use crate::model::mlp_net::PointHook;
use attention::attention;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Tensor, activation};
use config::{EPS, GROUPS};
use std::collections::HashMap;

type P<B> = FloatTensor<B>;

/// guided-diffusion's `ResBlock` layer names: `in_layers` is (norm, SiLU,
/// conv), `emb_layers` (SiLU, linear), `out_layers` (norm, SiLU, dropout,
/// conv).
const ADM_RESBLOCK: ResnetKeys = ResnetKeys {
    norm1: "in_layers.0",
    conv1: "in_layers.2",
    emb_proj: "emb_layers.1",
    norm2: "out_layers.0",
    conv2: "out_layers.3",
    shortcut: "skip_connection",
};

impl AdmNet {
    fn spec<'a>(&self, dropout: Option<&'a DropoutRng>) -> ResnetSpec<'a> {
        ResnetSpec {
            dropout: dropout
                .filter(|_| self.dropout > 0.0)
                .map(|r| (self.dropout, r)),
            keys: &ADM_RESBLOCK,
            groups: GROUPS,
            eps: EPS,
            scale_shift: self.use_scale_shift_norm,
            output_scale: 1.0,
        }
    }

    /// The forward pass: the model output for `x` at timesteps `t` (float,
    /// one per sample), with class `labels` for a class-conditional model,
    /// calling `hook(point, h, temb)` at every injection point in forward
    /// order (see the module doc). Without `labels` no class embedding is
    /// added (guided-diffusion asserts instead).
    ///
    /// With `learn_sigma` the output is ε and the variance interpolation `v`
    /// (Nichol & Dhariwal 2021, eq. 15) concatenated along channels; the
    /// caller splits them (`diffusion::prediction::split_learned_sigma`).
    ///
    /// `dropout`: the training step's stream, with which every ResBlock
    /// applies the config's `dropout` rate; `None` is eval mode.
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
        let c = &self.channels;
        let levels = self.levels();
        let nrb = self.num_res_blocks;
        let spec = self.spec(dropout);

        // 1. time (and class) embedding -> `temb`:
        //    emb = time_embed(timestep_embedding(t, num_channels)) (+ label_emb(y))
        let e = timestep_embedding(tensor::<B, 1>(&t), self.model_channels, true, 0.0);
        let (temb, temb_act) = embed_time(
            params,
            e,
            ["time_embed.0", "time_embed.2", "label_emb.weight"],
            labels.filter(|_| self.num_classes.is_some()),
            hook,
        )?; // temb_act: every ResBlock's silu(emb)
        let mut at = |point: &str, h: Tensor<B, 4>| -> Result<Tensor<B, 4>, E> {
            Ok(tensor::<B, 4>(&hook(
                point,
                h.into_primitive().tensor(),
                &temb,
            )?))
        };
        let res = |pre: &str, h: Tensor<B, 4>, resample: Resample| {
            resnet(params, pre, h, &temb_act, &spec, resample)
        };
        let attend = |pre: &str, h: Tensor<B, 4>, ch: usize, up: bool| {
            let (heads, _) = self
                .heads(ch, up)
                .expect("head split checked by AdmNet::from_description");
            attention(params, pre, h, heads, self.attention_order)
        };

        // 2. input blocks: conv; per level ResBlock -> point -> attention,
        //    then a downsampler; every block's output is a skip
        let mut h = conv(params, "input_blocks.0.0", tensor::<B, 4>(&x), 1, 1);
        let mut skips = vec![h.clone()];
        let mut k = 1;
        for (l, &ch) in c.iter().enumerate() {
            for j in 0..nrb {
                h = res(&format!("input_blocks.{k}.0"), h, Resample::None);
                h = at(&format!("down.{l}.res.{j}"), h)?;
                if self.has_attention(l) {
                    h = attend(&format!("input_blocks.{k}.1"), h, ch, false);
                }
                skips.push(h.clone());
                k += 1;
            }
            if l + 1 < levels {
                let pre = format!("input_blocks.{k}.0");
                h = if self.resblock_updown {
                    res(&pre, h, Resample::Down)
                } else {
                    conv(params, &format!("{pre}.op"), h, 2, 1)
                };
                skips.push(h.clone());
                k += 1;
            }
        }

        // 3. middle block: ResBlock -> point -> attention -> ResBlock -> point
        h = res("middle_block.0", h, Resample::None);
        h = at("mid.res.0", h)?;
        h = attend("middle_block.1", h, c[levels - 1], false);
        h = res("middle_block.2", h, Resample::None);
        h = at("mid.res.1", h)?;

        // 4. output blocks, lowest resolution first: concat skip -> ResBlock
        //    -> point -> attention, and an upsampler after a level's last
        for (i, l) in (0..levels).rev().enumerate() {
            for j in 0..=nrb {
                let k = i * (nrb + 1) + j;
                let skip = skips
                    .pop()
                    .expect("one skip per output block (guided-diffusion's layout)");
                h = res(
                    &format!("output_blocks.{k}.0"),
                    Tensor::cat(vec![h, skip], 1),
                    Resample::None,
                );
                h = at(&format!("up.{i}.res.{j}"), h)?;
                let mut layer = 1;
                if self.has_attention(l) {
                    h = attend(&format!("output_blocks.{k}.1"), h, c[l], true);
                    layer = 2;
                }
                if l > 0 && j == nrb {
                    let pre = format!("output_blocks.{k}.{layer}");
                    h = if self.resblock_updown {
                        res(&pre, h, Resample::Up)
                    } else {
                        upsample(params, &pre, h)
                    };
                }
            }
        }

        // 5. out: norm, SiLU, conv
        let h = activation::silu(group_norm(params, "out.0", h, GROUPS, EPS));
        Ok(conv(params, "out.2", h, 1, 1).into_primitive().tensor())
    }
}
