//! `builtin:gmm`: 2-D Gaussian mixtures with exact densities, for tests, the
//! quickstart and density-based metrics (log-likelihood, mode coverage).
//!
//! p(x) = Σ_k w_k N(x; μ_k, diag(σ_k,x², σ_k,y²)), Σ_k w_k = 1.
//!
//! The default source mixture has 8 equally weighted components on a circle
//! of radius 4 (component k at angle 2πk/8, starting on the +x axis), each
//! isotropic with σ = 0.5. The default target keeps those means and σs and
//! reweights them to [0.4, 0.4, 0.15, 0.01, 0.01, 0.01, 0.01, 0.01]: the
//! same support, mass concentrated on components 0–2 (the upper-right
//! quarter), as in a transfer from a broad source to a narrow target.

use super::DataError;
use super::config::{Config, show};
use super::dataset::Dataset;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

inventory::submit! {
    crate::registry::Builtin {
        kind: "dataset",
        name: "gmm",
        description: "2-D Gaussian mixture with exact density (default: 8 modes on a circle; preset = \"target\" reweights them)",
    }
}

/// Radius of the circle the default mixtures' means sit on.
pub const DEFAULT_RADIUS: f64 = 4.0;
/// Standard deviation of each default component.
pub const DEFAULT_STD: f64 = 0.5;
/// Weights of the default target mixture, by component.
pub const TARGET_WEIGHTS: [f64; 8] = [0.4, 0.4, 0.15, 0.01, 0.01, 0.01, 0.01, 0.01];

/// One mixture component: a weight and an axis-aligned Gaussian.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Component {
    /// Mixture weight w_k (normalised by [`Gmm::new`]).
    pub weight: f64,
    /// Mean μ_k.
    pub mean: [f64; 2],
    /// Standard deviation along x and y (equal for an isotropic component).
    pub std: [f64; 2],
}

/// A 2-D Gaussian mixture with diagonal covariances.
#[derive(Debug, Clone, PartialEq)]
pub struct Gmm {
    components: Vec<Component>,
}

/// Why components do not make a mixture ([`Gmm::new`]; [`Gmm::from_config`]
/// places it at the data set's key).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GmmError {
    /// No component.
    #[error("a mixture needs at least one component")]
    Empty,
    /// A weight that is negative or not finite.
    #[error("component {k}: weight {weight} is not a finite number >= 0")]
    Weight {
        /// The component.
        k: usize,
        /// Its weight.
        weight: f64,
    },
    /// A standard deviation that is not positive and finite.
    #[error("component {k}: std {std:?} must be positive and finite")]
    Std {
        /// The component.
        k: usize,
        /// Its standard deviations.
        std: [f64; 2],
    },
    /// A mean that is not finite.
    #[error("component {k}: mean {mean:?} is not finite")]
    Mean {
        /// The component.
        k: usize,
        /// Its mean.
        mean: [f64; 2],
    },
    /// Every weight is 0.
    #[error("the weights sum to 0")]
    ZeroWeights,
}

impl Gmm {
    /// A mixture of `components`; weights are normalised to sum to 1.
    /// Errors when there are no components, a weight is negative or all are
    /// zero, or a standard deviation is not positive and finite.
    pub fn new(mut components: Vec<Component>) -> Result<Gmm, GmmError> {
        if components.is_empty() {
            return Err(GmmError::Empty);
        }
        for (k, c) in components.iter().enumerate() {
            if !(c.weight >= 0.0 && c.weight.is_finite()) {
                return Err(GmmError::Weight {
                    k,
                    weight: c.weight,
                });
            }
            if c.std.iter().any(|s| !(*s > 0.0 && s.is_finite())) {
                return Err(GmmError::Std { k, std: c.std });
            }
            if c.mean.iter().any(|m| !m.is_finite()) {
                return Err(GmmError::Mean { k, mean: c.mean });
            }
        }
        let total: f64 = components.iter().map(|c| c.weight).sum();
        if total <= 0.0 {
            return Err(GmmError::ZeroWeights);
        }
        for c in &mut components {
            c.weight /= total;
        }
        Ok(Gmm { components })
    }

    /// 8 equal components on a circle of radius 4, σ = 0.5 (see the module
    /// doc).
    pub fn default_source() -> Gmm {
        Gmm::circle([1.0 / 8.0; 8])
    }

    /// The source's components reweighted by [`TARGET_WEIGHTS`].
    pub fn default_target() -> Gmm {
        Gmm::circle(TARGET_WEIGHTS)
    }

    fn circle(weights: [f64; 8]) -> Gmm {
        let components = weights
            .iter()
            .enumerate()
            .map(|(k, &weight)| {
                let a = 2.0 * std::f64::consts::PI * k as f64 / 8.0;
                Component {
                    weight,
                    mean: [DEFAULT_RADIUS * a.cos(), DEFAULT_RADIUS * a.sin()],
                    std: [DEFAULT_STD; 2],
                }
            })
            .collect();
        Gmm { components }
    }

    /// The components, weights normalised.
    pub fn components(&self) -> &[Component] {
        &self.components
    }

    /// log p(x) for each point of `points` (flat `[n, 2]`), computed in f64
    /// with a log-sum-exp over components.
    pub fn log_density(&self, points: &[f32]) -> Vec<f64> {
        points
            .chunks_exact(2)
            .map(|p| log_sum_exp(&self.log_joint(p[0] as f64, p[1] as f64)))
            .collect()
    }

    /// p(x) for each point of `points` (flat `[n, 2]`).
    pub fn density(&self, points: &[f32]) -> Vec<f64> {
        self.log_density(points).into_iter().map(f64::exp).collect()
    }

    /// Posterior component probabilities p(k | x) for each point (rows of
    /// length `components().len()`, summing to 1): the soft mode assignment
    /// that mode-coverage metrics count.
    pub fn responsibilities(&self, points: &[f32]) -> Vec<Vec<f64>> {
        points
            .chunks_exact(2)
            .map(|p| {
                let joint = self.log_joint(p[0] as f64, p[1] as f64);
                let lse = log_sum_exp(&joint);
                joint.iter().map(|l| (l - lse).exp()).collect()
            })
            .collect()
    }

    /// log w_k + log N(x; μ_k, diag σ_k²) for every k.
    fn log_joint(&self, x: f64, y: f64) -> Vec<f64> {
        const LOG_2PI: f64 = 1.837_877_066_409_345_5;
        self.components
            .iter()
            .map(|c| {
                let (zx, zy) = ((x - c.mean[0]) / c.std[0], (y - c.mean[1]) / c.std[1]);
                c.weight.ln() - LOG_2PI - c.std[0].ln() - c.std[1].ln() - 0.5 * (zx * zx + zy * zy)
            })
            .collect()
    }

    /// `n` samples (flat `[n, 2]`) and the component each came from, from
    /// an rng seeded with `seed`. The first `m` of `n` samples equal the `m`
    /// samples of a call with `m`.
    pub fn sample(&self, n: usize, seed: u64) -> (Vec<f32>, Vec<i64>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut points = Vec::with_capacity(2 * n);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let u: f64 = rng.random();
            let mut k = 0;
            let mut acc = self.components[0].weight;
            while u >= acc && k + 1 < self.components.len() {
                k += 1;
                acc += self.components[k].weight;
            }
            let c = &self.components[k];
            let (zx, zy): (f64, f64) = (rng.sample(StandardNormal), rng.sample(StandardNormal));
            points.push((c.mean[0] + c.std[0] * zx) as f32);
            points.push((c.mean[1] + c.std[1] * zy) as f32);
            labels.push(k as i64);
        }
        (points, labels)
    }

    /// The mixture's exact mean Σ w_k μ_k.
    pub fn mean(&self) -> [f64; 2] {
        let mut m = [0.0; 2];
        for c in &self.components {
            m[0] += c.weight * c.mean[0];
            m[1] += c.weight * c.mean[1];
        }
        m
    }

    /// The mixture's exact covariance Σ w_k (diag σ_k² + μ_k μ_kᵀ) − μ μᵀ.
    pub fn covariance(&self) -> [[f64; 2]; 2] {
        let m = self.mean();
        std::array::from_fn(|i| {
            std::array::from_fn(|j| {
                let second_moment: f64 = self
                    .components
                    .iter()
                    .map(|c| {
                        let var = if i == j { c.std[i] * c.std[i] } else { 0.0 };
                        c.weight * (var + c.mean[i] * c.mean[j])
                    })
                    .sum();
                second_moment - m[i] * m[j]
            })
        })
    }

    /// `count` samples as a [`Dataset`] named `builtin:gmm`, labelled by
    /// component when `labels`.
    pub fn dataset(&self, count: usize, seed: u64, labels: bool) -> Dataset {
        let (samples, component) = self.sample(count, seed);
        Dataset {
            samples,
            sample_shape: vec![2],
            labels: labels.then_some(component),
            class_names: if labels {
                (0..self.components.len())
                    .map(|k| format!("component {k}"))
                    .collect()
            } else {
                Vec::new()
            },
            masks: None,
            source: "builtin:gmm".into(),
        }
    }

    /// The mixture a `builtin:gmm` config table describes: `preset`
    /// (`"source"`, the default, or `"target"`) or an explicit `components`
    /// list. `labels` is read by [`super::builtin`].
    pub fn from_config(table: &toml::Table) -> Result<Gmm, DataError> {
        let cfg = Config::new("gmm", table, &["preset", "components", "labels"])?;
        let preset = cfg.choice("preset", &["source", "target"], "source")?;
        let Some(list) = cfg.get("components") else {
            return Ok(match preset {
                "target" => Gmm::default_target(),
                _ => Gmm::default_source(),
            });
        };
        if cfg.get("preset").is_some() {
            return Err(cfg.bad(
                "components",
                "give either `preset` or `components`, not both",
            ));
        }
        let toml::Value::Array(items) = list else {
            return Err(cfg.bad(
                "components",
                format!(
                    "expected a list of tables {{ weight, mean, std }}, found {}",
                    show(list)
                ),
            ));
        };
        let mut components = Vec::with_capacity(items.len());
        for (k, item) in items.iter().enumerate() {
            let at = format!("components[{k}]");
            let toml::Value::Table(t) = item else {
                return Err(cfg.bad(
                    &at,
                    format!(
                        "expected a table {{ weight, mean, std }}, found {}",
                        show(item)
                    ),
                ));
            };
            let c = Config::nested("gmm", t, format!("{at}."), &["weight", "mean", "std"])?;
            let weight = c.f64("weight", 1.0)?;
            let mean = match c.get("mean") {
                None => return Err(c.bad("mean", "missing; write e.g. mean = [0.0, 4.0]")),
                Some(v) => pair(&c, "mean", v)?,
            };
            let std = match c.get("std") {
                None => [DEFAULT_STD; 2],
                Some(v @ toml::Value::Array(_)) => pair(&c, "std", v)?,
                Some(v) => [c.number("std", v)?; 2],
            };
            components.push(Component { weight, mean, std });
        }
        Gmm::new(components).map_err(|reason| cfg.bad("components", reason.to_string()))
    }
}

/// A `[a, b]` pair of numbers.
fn pair(c: &Config<'_>, key: &str, v: &toml::Value) -> Result<[f64; 2], DataError> {
    match v {
        toml::Value::Array(xs) if xs.len() == 2 => {
            Ok([c.number(key, &xs[0])?, c.number(key, &xs[1])?])
        }
        other => Err(c.bad(
            key,
            format!("expected two numbers [x, y], found {}", show(other)),
        )),
    }
}

fn log_sum_exp(xs: &[f64]) -> f64 {
    let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative tolerance for closed-form densities: f64 arithmetic, inputs
    /// exactly representable in f32.
    const EXACT: f64 = 1e-12;

    fn comp(weight: f64, mean: [f64; 2], std: [f64; 2]) -> Component {
        Component { weight, mean, std }
    }

    #[test]
    fn one_component_log_density_matches_hand_value() {
        // N((1, 2); (0, 0), diag(1, 4)):
        // log p = −log 2π − log 1 − log 2 − ½(1²/1 + 2²/4) = −1.837877… − 0.693147… − 1
        //       = −3.531024246969290.
        let g = Gmm::new(vec![comp(3.0, [0.0, 0.0], [1.0, 2.0])]).unwrap();
        let lp = g.log_density(&[1.0, 2.0]);
        let want = -3.531_024_246_969_29;
        assert!(
            (lp[0] - want).abs() < EXACT * want.abs(),
            "{} vs {want}",
            lp[0]
        );
        assert!((g.density(&[1.0, 2.0])[0] - want.exp()).abs() < 1e-15);
    }

    #[test]
    fn two_component_log_density_matches_hand_value() {
        // w = (0.25, 0.75), μ = (0,0) and (2,0), σ = 1 both, at x = (1, 0):
        // each N = exp(−½)/(2π) = 0.096532352630054; p = (0.25 + 0.75)·N,
        // log p = −½ − log 2π = −2.337877066409345.
        // At x = (0, 0): p = 0.25/(2π) + 0.75·exp(−2)/(2π)
        //               = 0.039788735772974 + 0.016154459476386 = 0.055943195249360.
        let g = Gmm::new(vec![
            comp(1.0, [0.0, 0.0], [1.0, 1.0]),
            comp(3.0, [2.0, 0.0], [1.0, 1.0]),
        ])
        .unwrap();
        let lp = g.log_density(&[1.0, 0.0, 0.0, 0.0]);
        assert!((lp[0] - -2.337_877_066_409_345).abs() < 1e-12);
        let p0 = lp[1].exp();
        assert!((p0 - 0.055_943_195_249_360).abs() < 1e-13, "{p0}");
        // Responsibilities at (1, 0) are the weights; rows sum to one.
        let r = g.responsibilities(&[1.0, 0.0, 0.0, 0.0]);
        assert!((r[0][0] - 0.25).abs() < EXACT && (r[0][1] - 0.75).abs() < EXACT);
        assert!((r[1].iter().sum::<f64>() - 1.0).abs() < EXACT);
    }

    #[test]
    fn sample_moments_match_the_exact_ones() {
        // Tolerance: with n = 40 000 the standard error of a mean coordinate
        // is sqrt(var / n) ≈ sqrt(8.25 / 40000) ≈ 0.014; 0.06 is > 4 standard
        // errors, and the covariance tolerance 0.3 likewise (var ≈ 8.25,
        // its standard error ≈ 8.25 · sqrt(2 / n) ≈ 0.06).
        for g in [Gmm::default_source(), Gmm::default_target()] {
            let n = 40_000;
            let (x, labels) = g.sample(n, 11);
            let (mut m, mut s) = ([0.0f64; 2], [[0.0f64; 2]; 2]);
            for p in x.chunks_exact(2) {
                m[0] += p[0] as f64 / n as f64;
                m[1] += p[1] as f64 / n as f64;
            }
            for p in x.chunks_exact(2) {
                let d = [p[0] as f64 - m[0], p[1] as f64 - m[1]];
                for i in 0..2 {
                    for j in 0..2 {
                        s[i][j] += d[i] * d[j] / (n - 1) as f64;
                    }
                }
            }
            let (em, es) = (g.mean(), g.covariance());
            for i in 0..2 {
                assert!((m[i] - em[i]).abs() < 0.06, "mean {m:?} vs {em:?}");
                for j in 0..2 {
                    assert!((s[i][j] - es[i][j]).abs() < 0.3, "cov {s:?} vs {es:?}");
                }
            }
            // Component frequencies within 0.01 of the weights (s.e. ≤ 0.0025).
            for (k, c) in g.components().iter().enumerate() {
                let f = labels.iter().filter(|&&l| l == k as i64).count() as f64 / n as f64;
                assert!(
                    (f - c.weight).abs() < 0.01,
                    "component {k}: {f} vs {}",
                    c.weight
                );
            }
        }
    }

    #[test]
    fn default_mixtures_share_means_and_reweight() {
        let (s, t) = (Gmm::default_source(), Gmm::default_target());
        assert_eq!(s.components().len(), 8);
        for (a, b) in s.components().iter().zip(t.components()) {
            assert_eq!((a.mean, a.std), (b.mean, b.std));
            assert!((a.mean[0].hypot(a.mean[1]) - 4.0).abs() < 1e-12);
        }
        let w: Vec<f64> = t.components().iter().map(|c| c.weight).collect();
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(w, TARGET_WEIGHTS);
    }

    #[test]
    fn config_reads_components_and_rejects_typos() {
        let t: toml::Table = toml::from_str(
            "components = [{ mean = [0, 1], std = 0.2 }, { weight = 3, mean = [1, 0], std = [0.1, 0.3] }]",
        )
        .unwrap();
        let g = Gmm::from_config(&t).unwrap();
        assert_eq!(g.components()[0], comp(0.25, [0.0, 1.0], [0.2, 0.2]));
        assert_eq!(g.components()[1], comp(0.75, [1.0, 0.0], [0.1, 0.3]));

        let t: toml::Table =
            toml::from_str("components = [{ mean = [0, 1], stdev = 0.2 }]").unwrap();
        let err = Gmm::from_config(&t).unwrap_err().to_string();
        assert_eq!(
            err,
            "builtin:gmm: unknown config key `components[0].stdev` (did you mean `std`?); valid keys: weight, mean, std"
        );
        let t: toml::Table = toml::from_str("preset = \"targte\"").unwrap();
        let err = Gmm::from_config(&t).unwrap_err().to_string();
        assert_eq!(
            err,
            "builtin:gmm: `preset`: unknown value \"targte\" (did you mean \"target\"?); expected one of \"source\", \"target\""
        );
        let t: toml::Table = toml::from_str("components = [{ mean = [0, 1], std = -1 }]").unwrap();
        let err = Gmm::from_config(&t).unwrap_err().to_string();
        assert!(
            err.contains("component 0: std [-1.0, -1.0] must be positive"),
            "{err}"
        );
    }
}
