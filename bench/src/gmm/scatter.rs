//! Scatter plots of 2-D samples over a mixture's density, drawn with `image`
//! alone (no fonts: the caption in `table.md` says what the picture shows).
//!
//! The background shades each pixel by the exact density at its centre,
//! white at 0 to light blue at the image's maximum (by the square root, so
//! the light components stay visible), and draws a contour line where the
//! density crosses one of [`CONTOUR_LEVELS`] between a pixel and its right
//! or lower neighbour. Samples are small dark squares, training points
//! larger red ones drawn over them. x grows to the right, y upwards.

use dtx::data::Gmm;
use image::{Rgb, RgbImage};

/// Side of the image in pixels.
pub const SIZE: u32 = 384;
/// The window shown is [−EXTENT, EXTENT]²: the built-in mixtures' modes sit
/// at radius 4 with σ = 0.5, so ±6 shows them with 4σ to spare.
pub const EXTENT: f64 = 6.0;
/// Densities at which a contour line is drawn. The default target's
/// heaviest components peak at 0.4 / (2π · 0.25) ≈ 0.255, its lightest at
/// 0.01 / (2π · 0.25) ≈ 0.0064: the 0.001 line circles every component, the
/// 0.01 and 0.1 lines only the heavy ones.
pub const CONTOUR_LEVELS: [f64; 3] = [0.001, 0.01, 0.1];

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
/// The shade at the image's highest density.
const SHADE: Rgb<u8> = Rgb([150, 180, 235]);
const CONTOUR: Rgb<u8> = Rgb([70, 95, 160]);
/// Colour of generated samples.
pub const SAMPLE: Rgb<u8> = Rgb([20, 20, 20]);
/// Colour of the training (target) points.
pub const TRAIN: Rgb<u8> = Rgb([220, 30, 30]);

/// A square window of the plane mapped onto a square image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Frame {
    /// Side in pixels.
    pub size: u32,
    /// The window is [lo, hi]² in data units.
    pub lo: f64,
    /// Upper end of the window.
    pub hi: f64,
}

impl Default for Frame {
    fn default() -> Self {
        Frame {
            size: SIZE,
            lo: -EXTENT,
            hi: EXTENT,
        }
    }
}

impl Frame {
    fn scale(&self) -> f64 {
        self.size as f64 / (self.hi - self.lo)
    }

    /// The pixel `(column, row)` holding the point `(x, y)`: column
    /// ⌊(x − lo) · size / (hi − lo)⌋, row ⌊(hi − y) · size / (hi − lo)⌋;
    /// `None` outside the window or for a non-finite point.
    pub fn pixel(&self, x: f64, y: f64) -> Option<(u32, u32)> {
        let c = ((x - self.lo) * self.scale()).floor();
        let r = ((self.hi - y) * self.scale()).floor();
        let inside = |v: f64| v >= 0.0 && v < self.size as f64;
        (inside(c) && inside(r)).then_some((c as u32, r as u32))
    }

    /// The point at the centre of pixel `(column, row)`.
    pub fn centre(&self, column: u32, row: u32) -> (f64, f64) {
        (
            self.lo + (column as f64 + 0.5) / self.scale(),
            self.hi - (row as f64 + 0.5) / self.scale(),
        )
    }
}

/// How many of [`CONTOUR_LEVELS`] lie at or below `p`.
fn band(p: f64) -> usize {
    CONTOUR_LEVELS.iter().filter(|&&l| p >= l).count()
}

/// The density background: shading and contour lines (module doc).
pub fn background(gmm: &Gmm, frame: &Frame) -> RgbImage {
    let n = frame.size;
    let mut centres = Vec::with_capacity(2 * (n * n) as usize);
    for r in 0..n {
        for c in 0..n {
            let (x, y) = frame.centre(c, r);
            centres.extend([x as f32, y as f32]);
        }
    }
    let p = gmm.density(&centres);
    let top = p
        .iter()
        .copied()
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let at = |c: u32, r: u32| p[(r * n + c) as usize];
    RgbImage::from_fn(n, n, |c, r| {
        let here = band(at(c, r));
        let crosses =
            (c + 1 < n && band(at(c + 1, r)) != here) || (r + 1 < n && band(at(c, r + 1)) != here);
        if crosses {
            return CONTOUR;
        }
        let s = (at(c, r) / top).sqrt();
        Rgb(std::array::from_fn(|i| {
            (WHITE[i] as f64 + s * (SHADE[i] as f64 - WHITE[i] as f64)).round() as u8
        }))
    })
}

/// Draws each point (flat `[n, 2]`) as a square of side `2 · radius + 1`
/// pixels centred on its pixel, clipped to the image; points outside the
/// window are skipped.
pub fn dots(img: &mut RgbImage, frame: &Frame, points: &[f32], colour: Rgb<u8>, radius: u32) {
    let (w, h) = img.dimensions();
    for p in points.chunks_exact(2) {
        let Some((c, r)) = frame.pixel(p[0] as f64, p[1] as f64) else {
            continue;
        };
        for y in r.saturating_sub(radius)..=(r + radius).min(h - 1) {
            for x in c.saturating_sub(radius)..=(c + radius).min(w - 1) {
                img.put_pixel(x, y, colour);
            }
        }
    }
}

/// `samples` (dark, 3 × 3 px) over `gmm`'s density in the default frame,
/// with `train` (red, 5 × 5 px) on top when given.
pub fn scatter(gmm: &Gmm, samples: &[f32], train: Option<&[f32]>) -> RgbImage {
    let frame = Frame::default();
    let mut img = background(gmm, &frame);
    dots(&mut img, &frame, samples, SAMPLE, 1);
    if let Some(t) = train {
        dots(&mut img, &frame, t, TRAIN, 2);
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixels_map_as_written() {
        // 384 px over 12 units: 32 px a unit. (0, 0) is the corner of
        // pixels 191/192, so falls in column 192 and row 192; (3, 3) is
        // column ⌊9 · 32⌋ = 288, row ⌊3 · 32⌋ = 96.
        let f = Frame::default();
        assert_eq!(f.pixel(0.0, 0.0), Some((192, 192)));
        assert_eq!(f.pixel(3.0, 3.0), Some((288, 96)));
        assert_eq!(f.pixel(-6.0, 5.99), Some((0, 0)));
        assert_eq!(f.pixel(6.0, 0.0), None, "the right edge is outside");
        assert_eq!(f.pixel(f64::NAN, 0.0), None);
        assert_eq!(f.centre(288, 96), (3.0 + 1.0 / 64.0, 3.0 - 1.0 / 64.0));
        let (x, y) = f.centre(17, 301);
        assert_eq!(f.pixel(x, y), Some((17, 301)));
    }

    #[test]
    fn a_dot_lands_on_its_pixel_and_no_further() {
        let f = Frame::default();
        let mut img = RgbImage::from_pixel(SIZE, SIZE, WHITE);
        let (x, y) = f.centre(100, 50);
        dots(&mut img, &f, &[x as f32, y as f32, 99.0, 0.0], SAMPLE, 1);
        for dy in -2i32..=2 {
            for dx in -2i32..=2 {
                let px = *img.get_pixel((100 + dx) as u32, (50 + dy) as u32);
                let inside = dx.abs() <= 1 && dy.abs() <= 1;
                assert_eq!(px, if inside { SAMPLE } else { WHITE }, "({dx}, {dy})");
            }
        }
        let dark = img.pixels().filter(|p| **p == SAMPLE).count();
        assert_eq!(dark, 9, "the point outside the window draws nothing");
        // A dot at the corner is clipped, not wrapped.
        dots(&mut img, &f, &[-5.99, 5.99], TRAIN, 2);
        assert_eq!(img.pixels().filter(|p| **p == TRAIN).count(), 9);
    }

    #[test]
    fn background_shades_the_modes_and_draws_the_contours() {
        let g = Gmm::default_target();
        let f = Frame::default();
        let img = scatter(&g, &[], None);
        assert_eq!(img.dimensions(), (SIZE, SIZE));
        // Far from every mode: white. At μ_0 = (4, 0), the densest point:
        // the full shade.
        assert_eq!(*img.get_pixel(0, SIZE - 1), WHITE);
        let (c, r) = f.pixel(4.0 + 1.0 / 64.0, 1.0 / 64.0).unwrap();
        let at_mode = *img.get_pixel(c, r);
        assert!(
            at_mode[0] < 160 && at_mode != CONTOUR,
            "shaded at the mode: {at_mode:?}"
        );
        // Along y = 0 right of μ_0 the density is ≈ 0.2546 · exp(−2 d²)
        // (d = x − 4): it crosses 0.1 at d = sqrt(ln(2.546) / 2) = 0.684,
        // 0.01 at d = 1.272, 0.001 at d = 1.664 (hand values; the other
        // components add < 1e-6 there). A contour pixel lies within a pixel
        // of each crossing (32 px a unit).
        let row = r;
        for d in [0.684, 1.272, 1.664] {
            let (cc, _) = f.pixel(4.0 + d, 0.0).unwrap();
            let found = (cc - 1..=cc + 1).any(|c| *img.get_pixel(c, row) == CONTOUR);
            assert!(found, "no contour near x = 4 + {d}");
        }
        // And none in between the lines.
        for d in [0.3, 1.0, 1.45, 1.95] {
            let (cc, _) = f.pixel(4.0 + d, 0.0).unwrap();
            assert_ne!(*img.get_pixel(cc, row), CONTOUR, "x = 4 + {d}");
        }
    }

    #[test]
    fn training_points_are_drawn_over_samples() {
        let g = Gmm::default_target();
        let f = Frame::default();
        let (x, y) = f.centre(40, 40);
        let p = [x as f32, y as f32];
        let img = scatter(&g, &p, Some(&p));
        assert_eq!(*img.get_pixel(40, 40), TRAIN);
        assert_eq!(*img.get_pixel(42, 42), TRAIN);
        assert_ne!(*img.get_pixel(43, 43), SAMPLE);
    }
}
