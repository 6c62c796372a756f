//! CLIP's image preprocessing, as transformers' `CLIPImageProcessor` does it
//! (5.24.0, torchvision backend, on float images in [0, 1], so
//! `do_rescale=False`): the shorter side resized to `image_size` by bicubic
//! interpolation (the longer to ⌊image_size · long / short⌋), a centre crop
//! of `image_size²` (top and left offsets rounded down), and per-channel
//! normalisation with OpenAI's mean and std.
//!
//! The resize is PIL's antialiased bicubic filter in float mode
//! ([`crate::util::resize::pil_bicubic_resize`], the one the FID
//! Inception's clean-fid path uses), which torchvision's
//! `resize(..., antialias=True)` follows. transformers' other paths differ:
//! an 8-bit image (a PIL image, or uint8 tensors) is resized in 8 bits and
//! rounded, so its pixels differ from ours by up to about one grey level
//! (1/255 before normalisation) plus the filter's rounding. An image already
//! `image_size` on its shorter side is not resampled at all, and for it the
//! output matches transformers to float rounding.

use crate::model::ModelError;
use crate::util::resize::pil_bicubic_resize;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// OpenAI CLIP's per-channel mean (`OPENAI_CLIP_MEAN`, RGB).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's per-channel std (`OPENAI_CLIP_STD`, RGB).
// The digits as OpenAI and transformers write them; f32 rounds them as
// torch does when it normalises a float32 image.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// `(height, width)` after resizing the shorter side of `h × w` to `size`:
/// transformers' `get_resize_output_image_size(default_to_square=False)`,
/// whose `int(size * long / short)` is the floor of the exact quotient.
pub(super) fn resized_size(h: usize, w: usize, size: usize) -> (usize, usize) {
    if w <= h {
        (size * h / w, size)
    } else {
        (size, size * w / h)
    }
}

/// Images `[B, C, H, W]` in [0, 1] (C = 1 repeated to RGB, C = 3 as is) as
/// CLIP `pixel_values` `[B, 3, S, S]`, on the images' device. Runs on the
/// host CPU: the resize is a per-pixel filter, not a tensor op.
pub(super) fn preprocess<B: Backend>(
    images: Tensor<B, 4>,
    size: usize,
) -> Result<Tensor<B, 4>, ModelError> {
    let [b, c, h, w] = images.dims();
    if c != 1 && c != 3 {
        return Err(ModelError::BadInput {
            what: "Clip::preprocess images".into(),
            reason: format!(
                "[{b}, {c}, {h}, {w}] has {c} channels; CLIP takes RGB (3) or grey (1, repeated)"
            ),
        });
    }
    if h == 0 || w == 0 {
        return Err(ModelError::BadInput {
            what: "Clip::preprocess images".into(),
            reason: format!("[{b}, {c}, {h}, {w}] is empty"),
        });
    }
    let device = images.device();
    let data = images.into_data().convert::<f32>();
    let values = data.as_slice::<f32>().map_err(|e| ModelError::BadInput {
        what: "Clip::preprocess images".into(),
        reason: format!("cannot read the values: {e:?}"),
    })?;
    let (rh, rw) = resized_size(h, w, size);
    // Offsets of the centre crop: int((rh - size) / 2), rounded down.
    let (top, left) = ((rh - size) / 2, (rw - size) / 2);
    let plane = h * w;
    let mut out = Vec::with_capacity(b * 3 * size * size);
    for i in 0..b {
        for k in 0..3 {
            let ch = if c == 1 { 0 } else { k };
            let start = (i * c + ch) * plane;
            let channel = &values[start..start + plane];
            let resized = if (rh, rw) == (h, w) {
                channel.to_vec()
            } else {
                pil_bicubic_resize(channel, h, w, rh, rw)
            };
            for y in top..top + size {
                let row = &resized[y * rw + left..y * rw + left + size];
                out.extend(row.iter().map(|&v| (v - CLIP_MEAN[k]) / CLIP_STD[k]));
            }
        }
    }
    Ok(Tensor::from_data(
        TensorData::new(out, [b, 3, size, size]),
        &device,
    ))
}
