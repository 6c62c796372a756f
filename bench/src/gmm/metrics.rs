//! Scores of a set of 2-D points under a known Gaussian mixture: mean
//! density, mean log-density and component coverage.
//!
//! - **mean density** (1/N) Σ_i q(x_i): the "average likelihood" of the TGDP
//!   talk's simulation table (a density, not a log-density; METHOD-NOTES).
//!   It rewards points near the modes, and most the heaviest ones: a model
//!   that collapses onto the heaviest mode beats exact samples on it.
//! - **mean log-density** (1/N) Σ_i log q(x_i): punishes points off the
//!   support (between the modes, far out) much harder than it rewards
//!   points at a mean.
//! - **coverage**: each point is assigned to its nearest component, the
//!   distance measured in that component's standard deviations
//!   (d_k(x)² = Σ_j ((x_j − μ_k,j) / σ_k,j)²; for the built-in mixtures, whose
//!   σ are all equal, the nearest mean). The fractions f_k of points per
//!   component are compared with the weights w_k by the total-variation
//!   distance TV = ½ Σ_k |f_k − w_k|: 0 when the modes are allocated as in
//!   the target, 1 − w_k when every point sits at component k. The
//!   assignment ignores the weights on purpose: an argmax of the
//!   responsibilities would move a point halfway between a heavy and a light
//!   component to the heavy one, and so flatter a method that undercovers
//!   the light ones.

use dtx::data::Gmm;

/// A point set's scores under a mixture.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// Number of points.
    pub count: usize,
    /// (1/N) Σ q(x_i).
    pub mean_density: f64,
    /// (1/N) Σ log q(x_i).
    pub mean_log_density: f64,
    /// Fraction of the points nearest each component, in component order.
    pub fractions: Vec<f64>,
    /// ½ Σ_k |fractions_k − w_k|.
    pub coverage_tv: f64,
}

/// The index of the component nearest each point (flat `[n, 2]`), distance
/// in the component's standard deviations; ties go to the lower index.
pub fn nearest_components(gmm: &Gmm, points: &[f32]) -> Vec<usize> {
    points
        .chunks_exact(2)
        .map(|p| {
            let mut best = (0, f64::INFINITY);
            for (k, c) in gmm.components().iter().enumerate() {
                let zx = (p[0] as f64 - c.mean[0]) / c.std[0];
                let zy = (p[1] as f64 - c.mean[1]) / c.std[1];
                let d2 = zx * zx + zy * zy;
                if d2 < best.1 {
                    best = (k, d2);
                }
            }
            best.0
        })
        .collect()
}

/// Fraction of the points nearest each component ([`nearest_components`]);
/// all zero for no points.
pub fn component_fractions(gmm: &Gmm, points: &[f32]) -> Vec<f64> {
    let mut counts = vec![0usize; gmm.components().len()];
    let nearest = nearest_components(gmm, points);
    for &k in &nearest {
        counts[k] += 1;
    }
    let n = nearest.len().max(1) as f64;
    counts.into_iter().map(|c| c as f64 / n).collect()
}

/// Total-variation distance ½ Σ_k |p_k − q_k| between two distributions
/// over the same components.
///
/// # Panics
/// When the lengths differ (a caller's bug).
pub fn total_variation(p: &[f64], q: &[f64]) -> f64 {
    assert_eq!(p.len(), q.len(), "distributions over different components");
    0.5 * p.iter().zip(q).map(|(a, b)| (a - b).abs()).sum::<f64>()
}

/// All scores of `points` (flat `[n, 2]`) under `gmm`. Non-finite points
/// make the means NaN: a diverged model shows as such in the table.
pub fn score(gmm: &Gmm, points: &[f32]) -> Scores {
    let log_density = gmm.log_density(points);
    let n = log_density.len().max(1) as f64;
    let fractions = component_fractions(gmm, points);
    let weights: Vec<f64> = gmm.components().iter().map(|c| c.weight).collect();
    Scores {
        count: log_density.len(),
        mean_density: log_density.iter().map(|l| l.exp()).sum::<f64>() / n,
        mean_log_density: log_density.iter().sum::<f64>() / n,
        coverage_tv: total_variation(&fractions, &weights),
        fractions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dtx::data::gmm::{DEFAULT_STD, TARGET_WEIGHTS};

    /// f64 sums of at most a few thousand terms.
    const EXACT: f64 = 1e-12;

    fn means(g: &Gmm) -> Vec<[f32; 2]> {
        g.components()
            .iter()
            .map(|c| [c.mean[0] as f32, c.mean[1] as f32])
            .collect()
    }

    #[test]
    fn a_point_at_a_component_mean_scores_the_hand_value() {
        // At μ_0 = (4, 0) of the default target: component 0 contributes
        // w_0 / (2π σ²) = 0.4 / (2π · 0.25) = 0.254647908947033; component 1
        // (at distance 2·4·sin(π/8) = 3.0615, z² = 37.49) adds
        // 0.4/(2π·0.25)·exp(−18.75) ≈ 1.8e-9, the rest less.
        let g = Gmm::default_target();
        let s = score(&g, &means(&g)[0]);
        assert_eq!(s.count, 1);
        assert!(
            (s.mean_density - 0.254_647_908_947_033).abs() < 1e-8,
            "{}",
            s.mean_density
        );
        assert!((s.mean_log_density - s.mean_density.ln()).abs() < 1e-8);
        // One point at component 0: TV = 1 − w_0.
        assert_eq!(s.fractions[0], 1.0);
        assert!((s.coverage_tv - (1.0 - TARGET_WEIGHTS[0])).abs() < EXACT);
    }

    #[test]
    fn all_points_on_one_component_give_one_minus_its_weight() {
        let g = Gmm::default_target();
        for (k, m) in means(&g).iter().enumerate() {
            // 50 points jittered by 0.3σ around μ_k, all nearest to it.
            let pts: Vec<f32> = (0..50)
                .flat_map(|i| {
                    let a = i as f32 * 0.7;
                    let r = 0.3 * DEFAULT_STD as f32;
                    [m[0] + r * a.cos(), m[1] + r * a.sin()]
                })
                .collect();
            let s = score(&g, &pts);
            assert_eq!(s.fractions[k], 1.0, "component {k}");
            assert!(
                (s.coverage_tv - (1.0 - TARGET_WEIGHTS[k])).abs() < EXACT,
                "component {k}: {}",
                s.coverage_tv
            );
        }
    }

    #[test]
    fn exact_samples_cover_the_components_as_weighted() {
        // N = 100 000 exact samples: f_k − w_k has standard error
        // sqrt(w_k(1 − w_k)/N) ≤ 0.0016, and E[TV] ≈ ½ Σ_k sqrt(2/π) ·
        // sqrt(w_k(1 − w_k)/N) ≈ 0.0023. Misassignments (a point nearer a
        // neighbour's mean: 3.06σ out, P ≈ 0.001 per side) add at most ~0.002.
        // 0.01 is over 4 times both together.
        let g = Gmm::default_target();
        let (x, _) = g.sample(100_000, 3);
        let s = score(&g, &x);
        assert!(s.coverage_tv < 0.01, "TV {}", s.coverage_tv);
        assert!((s.fractions.iter().sum::<f64>() - 1.0).abs() < EXACT);
        // The mean density of exact samples is E_q[q(x)] = ∫ q²; for
        // well-separated components ≈ Σ_k w_k² / (4πσ²) = 0.3425/π = 0.10902.
        // Its standard error at N = 100 000 is < 0.0004.
        assert!(
            (s.mean_density - 0.10902).abs() < 0.002,
            "{}",
            s.mean_density
        );
    }

    #[test]
    fn nearest_component_uses_distance_not_weight() {
        // Halfway between μ_2 (w 0.15) and μ_3 (w 0.01), a hair closer to μ_3:
        // the responsibilities favour component 2 (its weight is 15 times
        // larger), the nearest mean is component 3.
        let g = Gmm::default_target();
        let m = means(&g);
        let p = [
            0.49 * m[2][0] + 0.51 * m[3][0],
            0.49 * m[2][1] + 0.51 * m[3][1],
        ];
        assert_eq!(nearest_components(&g, &p), vec![3]);
        let r = g.responsibilities(&p);
        assert!(r[0][2] > r[0][3], "{:?}", r[0]);
    }

    #[test]
    fn total_variation_matches_hand_values() {
        assert_eq!(total_variation(&[0.5, 0.5], &[0.5, 0.5]), 0.0);
        assert_eq!(total_variation(&[1.0, 0.0], &[0.0, 1.0]), 1.0);
        assert!((total_variation(&[0.2, 0.3, 0.5], &[0.3, 0.3, 0.4]) - 0.1).abs() < EXACT);
    }
}
