//! `builtin:shapes`: procedural RGB images of one shape each, for tests and
//! the quickstart's image path. Every image is a deterministic function of
//! `(seed, index)` and the config: a kind (circle, square, …), a colour, a
//! texture (solid, stripes, checker), a size and a position on a black
//! background, values in [-1, 1], `[3, H, W]`.
//!
//! Families are chosen by config, so a source and a disjoint target family
//! can be defined: the `source` preset draws circles, squares and crosses,
//! solid or checkered; the `target` preset draws triangles and diamonds with
//! stripes. The label attribute (`kind` by default) cycles with the index,
//! so classes are balanced exactly; the other attributes are drawn from a
//! per-sample rng.

use super::DataError;
use super::config::Config;
use super::dataset::{Dataset, derive_seed};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

inventory::submit! {
    crate::registry::Builtin {
        kind: "dataset",
        name: "shapes",
        description: "procedural 32x32 RGB shapes (kind, colour, texture, size, position), labelled by kind; presets \"source\" and \"target\" are disjoint",
    }
}

/// Shape kinds, as written in config.
pub const KINDS: [&str; 6] = ["circle", "square", "triangle", "cross", "diamond", "ring"];
/// Colours, as written in config, and their RGB in [0, 1].
pub const COLOURS: [(&str, [f32; 3]); 7] = [
    ("red", [0.90, 0.15, 0.15]),
    ("green", [0.20, 0.80, 0.20]),
    ("blue", [0.20, 0.35, 0.95]),
    ("yellow", [0.95, 0.85, 0.20]),
    ("magenta", [0.85, 0.25, 0.85]),
    ("cyan", [0.20, 0.85, 0.90]),
    ("white", [0.95, 0.95, 0.95]),
];
/// Textures, as written in config.
pub const TEXTURES: [&str; 3] = ["solid", "stripes", "checker"];
/// Attributes that can serve as the label.
pub const LABEL_ATTRIBUTES: [&str; 4] = ["kind", "colour", "texture", "none"];
/// Presets, as written in config.
pub const PRESETS: [&str; 3] = ["all", "source", "target"];

/// Config keys `builtin:shapes` reads.
const KEYS: [&str; 8] = [
    "preset",
    "resolution",
    "kinds",
    "colours",
    "textures",
    "size",
    "label",
    "antialias",
];
/// Sub-samples per pixel side when antialiasing (4 × 4 = 16 per pixel).
const SUPERSAMPLE: usize = 4;
/// Brightness of the dark half of a stripe or checker pattern.
const SHADE: f32 = 0.4;
/// Rng stream of the per-sample attributes.
const SAMPLE_STREAM: u64 = 0x5AA9E5;

/// Which shapes a `builtin:shapes` set draws, and how. Lists hold indices
/// into [`KINDS`], [`COLOURS`] and [`TEXTURES`], in config order.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapesConfig {
    /// Image side in pixels. Default 32.
    pub resolution: usize,
    /// Kinds drawn. Default: all (preset `all`).
    pub kinds: Vec<usize>,
    /// Colours drawn. Default: all.
    pub colours: Vec<usize>,
    /// Textures drawn. Default: all.
    pub textures: Vec<usize>,
    /// Shape diameter as a fraction of the image side, drawn uniformly in
    /// `[size[0], size[1]]`. Default `[0.4, 0.8]`.
    pub size: [f64; 2],
    /// The attribute used as the label, an index into [`LABEL_ATTRIBUTES`]
    /// (`none` = no labels). Default `kind`.
    pub label: usize,
    /// Average 4 × 4 sub-samples per pixel. Default true.
    pub antialias: bool,
}

/// The attributes of one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShapeSpec {
    /// Index into [`KINDS`].
    pub kind: usize,
    /// Index into [`COLOURS`].
    pub colour: usize,
    /// Index into [`TEXTURES`].
    pub texture: usize,
    /// Centre in pixels (x, y), x to the right, y down.
    pub centre: [f64; 2],
    /// Radius in pixels (half the diameter).
    pub radius: f64,
}

impl ShapesConfig {
    /// A preset: `all` (every kind, colour and texture), `source` (circle,
    /// square, cross; solid, checker; all colours) or `target` (triangle,
    /// diamond; stripes; all colours). Panics on another name.
    pub fn preset(name: &str) -> ShapesConfig {
        let all = |n: usize| (0..n).collect::<Vec<_>>();
        let (kinds, textures) = match name {
            "all" => (all(KINDS.len()), all(TEXTURES.len())),
            "source" => (vec![0, 1, 3], vec![0, 2]),
            "target" => (vec![2, 4], vec![1]),
            other => panic!("no shapes preset `{other}`"),
        };
        ShapesConfig {
            resolution: 32,
            kinds,
            colours: all(COLOURS.len()),
            textures,
            size: [0.4, 0.8],
            label: 0,
            antialias: true,
        }
    }

    /// The config a `builtin:shapes` table describes: a `preset` (default
    /// `all`), with `kinds`, `colours`, `textures` replacing its lists.
    pub fn from_config(table: &toml::Table) -> Result<ShapesConfig, DataError> {
        let cfg = Config::new("shapes", table, &KEYS)?;
        let mut out = ShapesConfig::preset(cfg.choice("preset", &PRESETS, "all")?);
        out.resolution = cfg.positive("resolution", out.resolution)?;
        if out.resolution < 4 || out.resolution > 1024 {
            return Err(cfg.bad(
                "resolution",
                format!("{} is outside 4..=1024 pixels", out.resolution),
            ));
        }
        let colour_names: Vec<&'static str> = COLOURS.iter().map(|c| c.0).collect();
        for (key, names, list) in [
            ("kinds", &KINDS[..], &mut out.kinds),
            ("colours", &colour_names[..], &mut out.colours),
            ("textures", &TEXTURES[..], &mut out.textures),
        ] {
            if let Some(chosen) = cfg.choices(key, names)? {
                *list = chosen
                    .iter()
                    .map(|c| names.iter().position(|n| n == c).unwrap_or(0))
                    .collect();
            }
        }
        if let Some(v) = cfg.get("size") {
            let pair = match v {
                toml::Value::Array(xs) if xs.len() == 2 => {
                    [cfg.number("size", &xs[0])?, cfg.number("size", &xs[1])?]
                }
                _ => [cfg.number("size", v)?; 2],
            };
            if !(0.05 <= pair[0] && pair[0] <= pair[1] && pair[1] <= 1.0) {
                return Err(cfg.bad(
                    "size",
                    format!(
                        "{pair:?} must be a fraction of the image side or a range [min, max] with 0.05 <= min <= max <= 1"
                    ),
                ));
            }
            out.size = pair;
        }
        let label = cfg.choice("label", &LABEL_ATTRIBUTES, "kind")?;
        out.label = LABEL_ATTRIBUTES
            .iter()
            .position(|l| *l == label)
            .unwrap_or(0);
        out.antialias = cfg.bool("antialias", out.antialias)?;
        Ok(out)
    }

    /// The attributes of image `index`: the label attribute (kind when the
    /// label is `none`) is `list[index % list.len()]`; the rest come from an
    /// rng seeded from `(seed, index)`.
    pub fn spec(&self, seed: u64, index: usize) -> ShapeSpec {
        let mut rng = StdRng::seed_from_u64(derive_seed(seed, SAMPLE_STREAM, index as u64));
        let mut pick = |list: &[usize], cycles: bool| {
            let r = rng.random_range(0..list.len());
            if cycles {
                list[index % list.len()]
            } else {
                list[r]
            }
        };
        let by = LABEL_ATTRIBUTES[self.label];
        let kind = pick(&self.kinds, by == "kind" || by == "none");
        let colour = pick(&self.colours, by == "colour");
        let texture = pick(&self.textures, by == "texture");
        let res = self.resolution as f64;
        let radius = 0.5 * res * rng.random_range(self.size[0]..=self.size[1]);
        let mut place = || {
            if res - 2.0 * radius <= 0.0 {
                res / 2.0
            } else {
                rng.random_range(radius..=res - radius)
            }
        };
        let centre = [place(), place()];
        ShapeSpec {
            kind,
            colour,
            texture,
            centre,
            radius,
        }
    }

    /// The label of `spec` under this config, or `None` for `label = "none"`.
    pub fn label_of(&self, spec: &ShapeSpec) -> Option<i64> {
        let (list, value) = match LABEL_ATTRIBUTES[self.label] {
            "kind" => (&self.kinds, spec.kind),
            "colour" => (&self.colours, spec.colour),
            "texture" => (&self.textures, spec.texture),
            _ => return None,
        };
        list.iter().position(|&v| v == value).map(|p| p as i64)
    }

    /// Class names by label, in config order (empty for `label = "none"`).
    pub fn class_names(&self) -> Vec<String> {
        let names = |list: &[usize], f: &dyn Fn(usize) -> &'static str| {
            list.iter().map(|&i| f(i).to_owned()).collect()
        };
        match LABEL_ATTRIBUTES[self.label] {
            "kind" => names(&self.kinds, &|i| KINDS[i]),
            "colour" => names(&self.colours, &|i| COLOURS[i].0),
            "texture" => names(&self.textures, &|i| TEXTURES[i]),
            _ => Vec::new(),
        }
    }

    /// The mask of `spec`: `[H, W]`, 1 where at least half of a pixel's
    /// sub-samples fall inside the shape, else 0 (background).
    pub fn mask(&self, spec: &ShapeSpec) -> Vec<i64> {
        let res = self.resolution;
        let s = if self.antialias { SUPERSAMPLE } else { 1 };
        let mut out = vec![0i64; res * res];
        for y in 0..res {
            for x in 0..res {
                let mut hits = 0;
                for sy in 0..s {
                    for sx in 0..s {
                        let px = x as f64 + (sx as f64 + 0.5) / s as f64;
                        let py = y as f64 + (sy as f64 + 0.5) / s as f64;
                        let (dx, dy) = (px - spec.centre[0], py - spec.centre[1]);
                        hits += inside(spec.kind, dx / spec.radius, dy / spec.radius) as usize;
                    }
                }
                out[y * res + x] = (2 * hits >= s * s) as i64;
            }
        }
        out
    }

    /// Renders `spec` as `[3, H, W]` values in [-1, 1].
    pub fn render(&self, spec: &ShapeSpec) -> Vec<f32> {
        let res = self.resolution;
        let s = if self.antialias { SUPERSAMPLE } else { 1 };
        let rgb = COLOURS[spec.colour].1;
        let period = (spec.radius / 2.0).max(2.0);
        let mut out = vec![-1.0f32; 3 * res * res];
        for y in 0..res {
            for x in 0..res {
                // Average of the sub-samples' brightness factors (0 outside).
                let mut acc = 0.0f32;
                for sy in 0..s {
                    for sx in 0..s {
                        let px = x as f64 + (sx as f64 + 0.5) / s as f64;
                        let py = y as f64 + (sy as f64 + 0.5) / s as f64;
                        let (dx, dy) = (px - spec.centre[0], py - spec.centre[1]);
                        if inside(spec.kind, dx / spec.radius, dy / spec.radius) {
                            acc += shade(spec.texture, dx, dy, period);
                        }
                    }
                }
                let a = acc / (s * s) as f32;
                for (c, &v) in rgb.iter().enumerate() {
                    // Background is 0 (→ −1); the shape's colour v scaled by a.
                    out[(c * res + y) * res + x] = 2.0 * a * v - 1.0;
                }
            }
        }
        out
    }

    /// `count` images `0..count` of this family as a [`Dataset`] named
    /// `builtin:shapes`.
    pub fn dataset(&self, seed: u64, count: usize) -> Dataset {
        let res = self.resolution;
        let mut samples = Vec::with_capacity(count * 3 * res * res);
        let mut labels = Vec::with_capacity(count);
        let mut masks = Vec::with_capacity(count * res * res);
        for i in 0..count {
            let spec = self.spec(seed, i);
            samples.extend(self.render(&spec));
            masks.extend(self.mask(&spec));
            labels.extend(self.label_of(&spec));
        }
        let has_labels = LABEL_ATTRIBUTES[self.label] != "none";
        Dataset {
            samples,
            sample_shape: vec![3, res, res],
            labels: has_labels.then_some(labels),
            class_names: self.class_names(),
            masks: Some(masks),
            source: "builtin:shapes".into(),
        }
    }
}

/// Whether `(u, v)` (offset from the centre in radii, v down) is inside a
/// shape of kind `kind` inscribed in the unit circle.
fn inside(kind: usize, u: f64, v: f64) -> bool {
    match KINDS[kind] {
        "circle" => u * u + v * v <= 1.0,
        // Side 1.6 radii: close to the circle's area (2.56 vs π).
        "square" => u.abs() <= 0.8 && v.abs() <= 0.8,
        // Upright equilateral triangle with vertices on the unit circle:
        // apex (0, −1), base at v = ½ from u = −√3/2 to √3/2.
        "triangle" => v <= 0.5 && u.abs() <= (v + 1.0) / 1.5 * 0.866_025_403_784_438_6,
        "cross" => (u.abs() <= 0.3 && v.abs() <= 0.95) || (v.abs() <= 0.3 && u.abs() <= 0.95),
        "diamond" => u.abs() + v.abs() <= 1.0,
        "ring" => {
            let r2 = u * u + v * v;
            (0.3..=1.0).contains(&r2)
        }
        _ => false,
    }
}

/// Brightness factor of texture `texture` at offset `(dx, dy)` pixels from
/// the centre: 1, or [`SHADE`] on the dark half of a pattern of `period`
/// pixels (stripes run diagonally, down-left to up-right).
fn shade(texture: usize, dx: f64, dy: f64, period: f64) -> f32 {
    let dark = match TEXTURES[texture] {
        "stripes" => ((dx + dy) / period).floor() as i64 % 2 != 0,
        "checker" => ((dx / period).floor() as i64 + (dy / period).floor() as i64) % 2 != 0,
        _ => false,
    };
    if dark { SHADE } else { 1.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// The mask is 1 exactly where the (un-antialiased) shape is drawn.
    #[test]
    fn masks_cover_the_drawn_shape() {
        let mut cfg = ShapesConfig::preset("all");
        cfg.antialias = false;
        let d = cfg.dataset(3, 8);
        let m = d.masks.as_ref().expect("shapes have masks");
        assert_eq!(m.len(), 8 * 32 * 32);
        for i in 0..8 {
            let img = d.sample(i);
            for p in 0..32 * 32 {
                let lit = (0..3).any(|c| img[c * 32 * 32 + p] > -1.0);
                assert_eq!(m[i * 32 * 32 + p] == 1, lit, "image {i} pixel {p}");
            }
        }
        // subsets keep each image's mask
        let s = d.subset(&[5, 2]);
        let masks = s.masks.unwrap();
        assert_eq!(masks[..1024], m[5 * 1024..6 * 1024]);
        assert_eq!(masks[1024..], m[2 * 1024..3 * 1024]);
    }

    #[test]
    fn rendering_is_deterministic_and_in_range() {
        let cfg = ShapesConfig::preset("all");
        let a = cfg.dataset(5, 12);
        assert_eq!(a, cfg.dataset(5, 12));
        assert_ne!(a.samples, cfg.dataset(6, 12).samples);
        assert_eq!(a.sample_shape, [3, 32, 32]);
        // Image i depends only on (seed, i): a longer set starts the same.
        assert_eq!(cfg.dataset(5, 20).subset(&(0..12).collect::<Vec<_>>()), a);
        assert!(a.samples.iter().all(|v| (-1.0..=1.0).contains(v)));
        for i in 0..a.len() {
            let s = a.sample(i);
            assert!(s.iter().any(|&v| v > -0.5), "image {i} draws something");
            assert!(s.iter().any(|&v| v == -1.0), "image {i} shows background");
        }
    }

    #[test]
    fn labels_are_balanced_and_match_names() {
        let cfg = ShapesConfig::preset("all");
        let d = cfg.dataset(1, 6 * 7 + 3);
        let labels = d.labels.as_ref().unwrap();
        let mut counts = [0; 6];
        for &l in labels {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, [8, 8, 8, 7, 7, 7]);
        assert_eq!(d.class_names, KINDS);

        let t: toml::Table =
            toml::from_str("label = \"colour\"\ncolours = [\"cyan\", \"red\"]").unwrap();
        let cfg = ShapesConfig::from_config(&t).unwrap();
        let d = cfg.dataset(1, 10);
        assert_eq!(d.class_names, ["cyan", "red"]);
        for i in 0..10 {
            let spec = cfg.spec(1, i);
            assert_eq!(spec.colour, if i % 2 == 0 { 5 } else { 0 });
            assert_eq!(d.labels.as_ref().unwrap()[i], (i % 2) as i64);
        }
        let t: toml::Table = toml::from_str("label = \"none\"").unwrap();
        let d = ShapesConfig::from_config(&t).unwrap().dataset(1, 3);
        assert_eq!((d.labels, d.class_names.len()), (None, 0));
    }

    #[test]
    fn source_and_target_presets_are_disjoint() {
        let (s, t) = (
            ShapesConfig::preset("source"),
            ShapesConfig::preset("target"),
        );
        assert!(s.kinds.iter().all(|k| !t.kinds.contains(k)));
        assert!(s.textures.iter().all(|k| !t.textures.contains(k)));
        for i in 0..20 {
            assert!(t.kinds.contains(&t.spec(0, i).kind));
            assert_eq!(TEXTURES[t.spec(0, i).texture], "stripes");
        }
    }

    #[test]
    fn config_errors_name_the_key() {
        let t: toml::Table = toml::from_str("colors = [\"red\"]").unwrap();
        let err = ShapesConfig::from_config(&t).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "builtin:shapes: unknown config key `colors` (did you mean `colours`?)"
            ),
            "{err}"
        );
        let t: toml::Table = toml::from_str("kinds = [\"circle\", \"triangel\"]").unwrap();
        let err = ShapesConfig::from_config(&t).unwrap_err().to_string();
        assert!(
            err.starts_with("builtin:shapes: `kinds[1]`: unknown value \"triangel\" (did you mean \"triangle\"?)"),
            "{err}"
        );
        let t: toml::Table = toml::from_str("size = [0.9, 0.2]").unwrap();
        assert!(ShapesConfig::from_config(&t).is_err());
    }

    /// Renders the source and target presets (one row each) and compares
    /// them with tests/fixtures/data/shapes-preview.png, pixel for pixel;
    /// writes the file when it is missing or `DTX_UPDATE_FIXTURES` is set,
    /// so a person can look at what the sets draw.
    #[test]
    fn preview_grid_matches_fixture() {
        let mut rows = Vec::new();
        for preset in ["source", "target"] {
            rows.extend(ShapesConfig::preset(preset).dataset(0, 8).samples);
        }
        let grid = super::super::pixels::grid(&rows, [3, 32, 32], 8);
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/data/shapes-preview.png");
        if !path.exists() || std::env::var_os("DTX_UPDATE_FIXTURES").is_some() {
            grid.save(&path).unwrap();
        }
        let stored = image::open(&path).unwrap().to_rgb8();
        assert!(
            stored == grid,
            "{} differs from the rendering; look at both, then rerun with DTX_UPDATE_FIXTURES=1",
            path.display()
        );
    }
}
