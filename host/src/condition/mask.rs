//! ANL's masked sampling (Sec. 3.3): a rectangle of side fraction δ is
//! blacked out of each condition image before it is encoded, so samples
//! conditioned on one image vary.
//!
//! The paper draws the upper-left corner as (rand(0, (1−δ)H), rand(0,
//! (1−δ)W)) and the lower-right one as (δH + rand(0, (1−δ)H), δW + rand(0,
//! (1−δ)W)) with an integer `rand`. Read with one draw per axis (the reading
//! of METHOD-NOTES.md), the rectangle is `round(δH) × round(δW)` pixels at
//! an offset drawn uniformly from `0..=H − round(δH)` (rows, drawn first)
//! and `0..=W − round(δW)` (columns): it always lies inside the image, and
//! δ = 0 masks nothing.

use rand::Rng;

/// The masked rectangle: rows `top .. top + height`, columns
/// `left .. left + width`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskRect {
    /// First masked row.
    pub top: usize,
    /// First masked column.
    pub left: usize,
    /// Masked rows.
    pub height: usize,
    /// Masked columns.
    pub width: usize,
}

impl MaskRect {
    /// Whether pixel `(row, col)` is masked.
    pub fn contains(&self, row: usize, col: usize) -> bool {
        (self.top..self.top + self.height).contains(&row)
            && (self.left..self.left + self.width).contains(&col)
    }
}

/// Draws the rectangle for an `h × w` image at mask rate `delta` in [0, 1):
/// the row offset, then the column offset, from `rng`.
pub fn mask_rect(rng: &mut impl Rng, h: usize, w: usize, delta: f64) -> MaskRect {
    let height = ((delta * h as f64).round() as usize).min(h);
    let width = ((delta * w as f64).round() as usize).min(w);
    let top = rng.random_range(0..=h - height);
    let left = rng.random_range(0..=w - width);
    MaskRect {
        top,
        left,
        height,
        width,
    }
}

/// The multiplicative mask `[B, H, W]` (row-major) for one rectangle per
/// image: 0 inside, 1 outside.
pub fn mask_values(rects: &[MaskRect], h: usize, w: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rects.len() * h * w);
    for r in rects {
        for row in 0..h {
            for col in 0..w {
                out.push(if r.contains(row, col) { 0.0 } else { 1.0 });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// The rule for fixed seeds: the offsets are the RNG's first two draws
    /// on `0..=H−n` and `0..=W−m`, the size is `round(δ·side)`.
    #[test]
    fn rectangles_follow_the_rule_for_fixed_seeds() {
        for seed in 0..20u64 {
            for &(h, w, delta) in &[(16, 16, 0.5), (32, 24, 0.3), (64, 64, 0.9), (8, 8, 0.0)] {
                let r = mask_rect(&mut StdRng::seed_from_u64(seed), h, w, delta);
                let mut rng = StdRng::seed_from_u64(seed);
                let n = (delta * h as f64).round() as usize;
                let m = (delta * w as f64).round() as usize;
                let top: usize = rng.random_range(0..=h - n);
                let left: usize = rng.random_range(0..=w - m);
                assert_eq!(
                    r,
                    MaskRect {
                        top,
                        left,
                        height: n,
                        width: m
                    }
                );
                assert!(r.top + r.height <= h && r.left + r.width <= w);
            }
        }
        // the paper's corners for δ = 0.5 on 16×16: upper-left in [0, 8]²,
        // lower-right = upper-left + 8
        let r = mask_rect(&mut StdRng::seed_from_u64(3), 16, 16, 0.5);
        assert!(r.top <= 8 && r.left <= 8);
        assert_eq!((r.height, r.width), (8, 8));
    }

    #[test]
    fn every_offset_is_reachable_and_zero_masks_nothing() {
        let mut rng = StdRng::seed_from_u64(0);
        let mut seen = [false; 9];
        for _ in 0..500 {
            seen[mask_rect(&mut rng, 16, 16, 0.5).top] = true;
        }
        assert!(seen.iter().all(|&s| s), "offsets 0..=8 all drawn: {seen:?}");
        let r = mask_rect(&mut rng, 16, 16, 0.0);
        assert_eq!(mask_values(&[r], 16, 16), vec![1.0; 256]);
    }

    #[test]
    fn the_mask_zeroes_exactly_the_rectangle() {
        let r = MaskRect {
            top: 1,
            left: 2,
            height: 2,
            width: 3,
        };
        let m = mask_values(&[r], 4, 6);
        let zeros: Vec<usize> = (0..24).filter(|&i| m[i] == 0.0).collect();
        assert_eq!(zeros, vec![8, 9, 10, 14, 15, 16]);
    }
}
