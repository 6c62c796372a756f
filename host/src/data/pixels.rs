//! Pixels between image files and tensors: the resize-and-centre-crop every
//! folder image and condition image goes through, `[C, H, W]` values in
//! [-1, 1] to and from 8-bit RGB, and the sample grid of reports.

use image::RgbImage;
use image::imageops::{self, FilterType};

/// Resize filter: bilinear, widened when shrinking so it averages every
/// source pixel (what PIL's `BILINEAR` and torchvision's `Resize` with
/// antialias do).
pub const RESIZE_FILTER: FilterType = FilterType::Triangle;

/// Resizes the shorter side to `r` (the longer one in proportion, rounded)
/// with [`RESIZE_FILTER`], then crops the centre `r` × `r` square.
pub fn resize_crop(img: RgbImage, r: u32) -> RgbImage {
    resize_crop_with(img, r, RESIZE_FILTER)
}

/// [`resize_crop`] of any pixel type with `filter`.
pub(super) fn resize_crop_with<P: image::Pixel + 'static>(
    img: image::ImageBuffer<P, Vec<P::Subpixel>>,
    r: u32,
    filter: FilterType,
) -> image::ImageBuffer<P, Vec<P::Subpixel>> {
    let (w, h) = img.dimensions();
    let scale = r as f64 / w.min(h) as f64;
    let (nw, nh) = (
        ((w as f64 * scale).round() as u32).max(r),
        ((h as f64 * scale).round() as u32).max(r),
    );
    let resized = if (nw, nh) == (w, h) {
        img
    } else {
        imageops::resize(&img, nw, nh, filter)
    };
    let (x, y) = ((nw - r) / 2, (nh - r) / 2);
    imageops::crop_imm(&resized, x, y, r, r).to_image()
}

/// An 8-bit RGB image as `[3, H, W]` values in [-1, 1] (v / 127.5 − 1).
pub fn chw_from_rgb(img: &RgbImage) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let mut out = vec![0.0; 3 * (w * h) as usize];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            out[(c * h as usize + y as usize) * w as usize + x as usize] =
                p[c] as f32 / 127.5 - 1.0;
        }
    }
    out
}

/// One `[C, H, W]` sample in [-1, 1] as an 8-bit RGB image (the inverse of
/// [`chw_from_rgb`]: values clamped, then (v + 1) · 127.5 rounded); one
/// channel is shown as grey. `None` for other channel counts.
pub fn rgb_from_chw(values: &[f32], c: usize, h: usize, w: usize) -> Option<RgbImage> {
    if !(c == 1 || c == 3) || values.len() != c * h * w {
        return None;
    }
    let mut img = RgbImage::new(w as u32, h as u32);
    for y in 0..h {
        for x in 0..w {
            let px = std::array::from_fn(|k| {
                let ch = if c == 1 { 0 } else { k };
                ((values[(ch * h + y) * w + x].clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
            });
            img.put_pixel(x as u32, y as u32, image::Rgb(px));
        }
    }
    Some(img)
}

/// `[3, H, W]` samples in [-1, 1], one after another in `values`, tiled
/// `cols` to a row with a 2-pixel black border, as an RGB image (values
/// clamped, then (v + 1) · 127.5 rounded).
pub fn grid(values: &[f32], shape: [usize; 3], cols: usize) -> RgbImage {
    let [c, h, w] = shape;
    assert_eq!(c, 3, "grid wants RGB samples, got {c} channels");
    let n = values.len() / (c * h * w);
    let cols = cols.clamp(1, n.max(1));
    let rows = n.div_ceil(cols);
    const PAD: usize = 2;
    let mut img = RgbImage::new(
        (PAD + cols * (w + PAD)) as u32,
        (PAD + rows * (h + PAD)) as u32,
    );
    for (i, sample) in values.chunks_exact(c * h * w).enumerate() {
        let (x0, y0) = (PAD + (i % cols) * (w + PAD), PAD + (i / cols) * (h + PAD));
        for y in 0..h {
            for x in 0..w {
                let px = std::array::from_fn(|k| {
                    ((sample[(k * h + y) * w + x].clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
                });
                img.put_pixel((x0 + x) as u32, (y0 + y) as u32, image::Rgb(px));
            }
        }
    }
    img
}
