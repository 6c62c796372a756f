//! clean-fid's "clean" preprocessing: dtx's [-1, 1] samples become the 8-bit
//! values a saved image would hold, each channel is resized to 299 × 299 by
//! PIL's bicubic filter in float mode, and the result is scaled to the
//! network's [-1, 1].
//!
//! Reference: Parmar, Zhang and Zhu, "On Aliased Resizing and Surprising
//! Subtleties in GAN Evaluation", CVPR 2022, arXiv:2104.11222;
//! `cleanfid/resize.py` `make_resizer("PIL", False, "bicubic", (299, 299))`:
//! per channel `Image.fromarray(x, mode="F").resize((299, 299),
//! Image.BICUBIC)`, then `clip(0, 255)`. The scaling to [-1, 1] is
//! pytorch-fid's (`x / 255`, then `normalize_input`'s `2x − 1`), since its
//! weights are the ones dtx loads.

use crate::util::resize::pil_bicubic_resize;

/// Side of the square image the network sees.
pub const INPUT_SIZE: usize = 299;

/// One `[C, H, W]` sample in dtx's [-1, 1] (C = 1 or 3) as the network's
/// `[3, 299, 299]` input in [-1, 1], by clean-fid's recipe: the 8-bit value
/// a saved image holds (round((clamp(x, −1, 1) + 1) · 127.5), as
/// `data::pixels::rgb_from_chw` saves samples), PIL bicubic to 299 × 299,
/// clipped to [0, 255], then v / 255 · 2 − 1. One channel is repeated to
/// three, as converting a grey image to RGB does.
pub(super) fn clean_fid_input(sample: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    let plane = h * w;
    let mut out = Vec::with_capacity(3 * INPUT_SIZE * INPUT_SIZE);
    for k in 0..3 {
        let ch = if c == 1 { 0 } else { k };
        let bytes: Vec<f32> = sample[ch * plane..(ch + 1) * plane]
            .iter()
            .map(|&x| f32::from(((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8))
            .collect();
        let resized = pil_bicubic_resize(&bytes, h, w, INPUT_SIZE, INPUT_SIZE);
        out.extend(
            resized
                .into_iter()
                .map(|v| v.clamp(0.0, 255.0) / 255.0 * 2.0 - 1.0),
        );
    }
    out
}
