//! Loss curves as a PNG for `report.md`, drawn with `image` alone: one
//! panel per logged loss (the total, each named term, held-out validation),
//! steps along x, the panel's own value range along y. The image has no
//! text: the report's caption gives each panel's name and ranges, so no
//! font has to ship with the binary.

use image::{Rgb, RgbImage};

const W: u32 = 560;
const PANEL_H: u32 = 150;
const PAD: u32 = 12;
const LIGHT: Rgb<u8> = Rgb([170, 190, 230]);
const DARK: Rgb<u8> = Rgb([20, 60, 170]);
const VALIDATION: Rgb<u8> = Rgb([200, 40, 40]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const FRAME: Rgb<u8> = Rgb([120, 120, 120]);

/// One curve: its name and `(step, value)` points in step order.
pub struct Series {
    /// The `metrics.jsonl` key (`loss`, `loss.distill`, `val.simple`, …).
    pub name: String,
    /// Points.
    pub points: Vec<(f64, f64)>,
}

/// Per-step numbers that are not losses.
const NOT_LOSSES: [&str; 4] = ["step", "lr", "grad_norm", "samples_per_s"];

/// Every loss series in `metrics.jsonl` text, in first-seen order: every
/// number a training step logged (`loss`, `loss.simple`, the plugins' terms
/// and what they log, `val.simple`) except [`NOT_LOSSES`]; non-finite
/// values are skipped.
pub fn series_from_metrics(jsonl: &str) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    for line in jsonl.lines() {
        let Ok(serde_json::Value::Object(rec)) = serde_json::from_str::<serde_json::Value>(line)
        else {
            continue;
        };
        // a `prepare` value: one curve per key, against its count
        if rec.contains_key("prepare") {
            if let (Some(k), Some(n), Some(v)) = (
                rec.get("key").and_then(|k| k.as_str()),
                rec.get("n").and_then(|n| n.as_f64()),
                rec.get("value")
                    .and_then(|v| v.as_f64())
                    .filter(|v| v.is_finite()),
            ) {
                let name = format!("prepare {k}");
                match out.iter_mut().find(|s| s.name == name) {
                    Some(s) => s.points.push((n, v)),
                    None => out.push(Series {
                        name,
                        points: vec![(n, v)],
                    }),
                }
            }
            continue;
        }
        let Some(step) = rec.get("step").and_then(|s| s.as_f64()) else {
            continue;
        };
        for (k, v) in &rec {
            let wanted = !NOT_LOSSES.contains(&k.as_str());
            let Some(v) = v.as_f64().filter(|v| wanted && v.is_finite()) else {
                continue;
            };
            match out.iter_mut().find(|s| &s.name == k) {
                Some(s) => s.points.push((step, v)),
                None => out.push(Series {
                    name: k.clone(),
                    points: vec![(step, v)],
                }),
            }
        }
    }
    // a prepare value logged once is a number, not a curve (the report
    // lists it)
    out.retain(|s| !s.name.starts_with("prepare ") || s.points.len() > 1);
    out
}

/// The y range a panel shows: the series' minimum to its 98th percentile
/// (early spikes would flatten the rest), widened when flat.
fn y_range(points: &[(f64, f64)]) -> (f64, f64) {
    let mut v: Vec<f64> = points.iter().map(|p| p.1).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let lo = v[0];
    let hi = v[((v.len() - 1) as f64 * 0.98).round() as usize];
    if hi - lo < 1e-12 {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    }
}

/// Running mean over a window of `k` points (the last `k`).
fn running_mean(points: &[(f64, f64)], k: usize) -> Vec<(f64, f64)> {
    let mut acc = 0.0;
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, y))| {
            acc += y;
            if i >= k {
                acc -= points[i - k].1;
            }
            (x, acc / (i + 1).min(k) as f64)
        })
        .collect()
}

fn line(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), c: Rgb<u8>) {
    let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).max(1);
    for i in 0..=n {
        let t = i as f64 / n as f64;
        let (x, y) = (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1));
        if x >= 0.0 && y >= 0.0 && (x as u32) < img.width() && (y as u32) < img.height() {
            img.put_pixel(x as u32, y as u32, c);
        }
    }
}

/// The panels' picture and one caption line per panel (name, step range,
/// value range), or `None` when there is nothing to draw.
pub fn loss_curves(series: &[Series]) -> Option<(RgbImage, Vec<String>)> {
    let series: Vec<&Series> = series.iter().filter(|s| !s.points.is_empty()).collect();
    if series.is_empty() {
        return None;
    }
    let x_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let x_min = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(f64::INFINITY, f64::min)
        .min(x_max - 1.0);
    let mut img = RgbImage::from_pixel(W, PANEL_H * series.len() as u32, Rgb([255, 255, 255]));
    let mut captions = Vec::new();
    for (i, s) in series.iter().enumerate() {
        let top = i as u32 * PANEL_H + PAD;
        let bottom = (i as u32 + 1) * PANEL_H - PAD;
        let (left, right) = (PAD, W - PAD);
        let (lo, hi) = y_range(&s.points);
        let px = |x: f64| left as f64 + (x - x_min) / (x_max - x_min) * (right - left) as f64;
        let py = |y: f64| {
            let f = ((y - lo) / (hi - lo)).clamp(-0.02, 1.02);
            bottom as f64 - f * (bottom - top) as f64
        };
        for g in 1..4 {
            let y = top as f64 + g as f64 / 4.0 * (bottom - top) as f64;
            line(&mut img, (left as f64, y), (right as f64, y), GRID);
        }
        for (a, b) in [
            ((left, top), (right, top)),
            ((right, top), (right, bottom)),
            ((right, bottom), (left, bottom)),
            ((left, bottom), (left, top)),
        ] {
            line(
                &mut img,
                (a.0 as f64, a.1 as f64),
                (b.0 as f64, b.1 as f64),
                FRAME,
            );
        }
        let validation = s.name.starts_with("val.");
        if validation {
            for &(x, y) in &s.points {
                let (cx, cy) = (px(x), py(y));
                for dx in -2..=2 {
                    for dy in -2..=2 {
                        line(
                            &mut img,
                            (cx + dx as f64, cy + dy as f64),
                            (cx + dx as f64, cy + dy as f64),
                            VALIDATION,
                        );
                    }
                }
            }
            for w in s.points.windows(2) {
                line(
                    &mut img,
                    (px(w[0].0), py(w[0].1)),
                    (px(w[1].0), py(w[1].1)),
                    VALIDATION,
                );
            }
        } else {
            for w in s.points.windows(2) {
                line(
                    &mut img,
                    (px(w[0].0), py(w[0].1)),
                    (px(w[1].0), py(w[1].1)),
                    LIGHT,
                );
            }
            let k = (s.points.len() / 30).max(1);
            let smooth = running_mean(&s.points, k);
            for w in smooth.windows(2) {
                line(
                    &mut img,
                    (px(w[0].0), py(w[0].1)),
                    (px(w[1].0), py(w[1].1)),
                    DARK,
                );
            }
        }
        let last = s.points.last().map_or(0.0, |p| p.1);
        captions.push(format!(
            "panel {}: `{}`{}, steps {:.0}–{:.0}, y from {lo:.4} (bottom) to {hi:.4} (top), last {last:.4}",
            i + 1,
            s.name,
            if validation {
                " (held-out validation, red)"
            } else {
                " (per step light, running mean dark)"
            },
            x_min,
            x_max,
        ));
    }
    Some((img, captions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_come_from_loss_and_validation_keys() {
        let jsonl = r#"{"step":1,"loss":0.5,"loss.distill":0.1,"lr":0.001,"grad_norm":2}
{"sample":{"requested":4}}
{"step":2,"loss":0.4,"loss.distill":0.08,"val.simple":0.3}
{"step":3,"loss":null}
"#;
        let s = series_from_metrics(jsonl);
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["loss", "loss.distill", "val.simple"]);
        assert_eq!(s[0].points, vec![(1.0, 0.5), (2.0, 0.4)]);
        let (img, captions) = loss_curves(&s).unwrap();
        assert_eq!(img.dimensions(), (W, 3 * PANEL_H));
        assert!(captions[0].contains("`loss`") && captions[0].contains("steps 1–2"));
        // something other than white was drawn in every panel
        for p in 0..3 {
            let drawn = (p * PANEL_H..(p + 1) * PANEL_H)
                .flat_map(|y| (0..W).map(move |x| (x, y)))
                .any(|(x, y)| {
                    let c = img.get_pixel(x, y);
                    *c == DARK || *c == VALIDATION
                });
            assert!(drawn, "panel {p}");
        }
        assert!(loss_curves(&[]).is_none());
    }

    #[test]
    fn prepare_values_make_curves_by_count() {
        let jsonl = r#"{"prepare":"tgdp","key":"tgdp.l_classifier","n":1,"value":0.7}
{"prepare":"tgdp","key":"tgdp.source_from_model","n":1,"value":0.0}
{"prepare":"tgdp","key":"tgdp.l_classifier","n":2,"value":0.6}
{"step":1,"loss":0.5}
"#;
        let s = series_from_metrics(jsonl);
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["prepare tgdp.l_classifier", "loss"]);
        assert_eq!(s[0].points, vec![(1.0, 0.7), (2.0, 0.6)]);
    }

    #[test]
    fn running_mean_and_range() {
        let pts: Vec<(f64, f64)> = (0..4).map(|i| (i as f64, i as f64)).collect();
        assert_eq!(
            running_mean(&pts, 2),
            vec![(0.0, 0.0), (1.0, 0.5), (2.0, 1.5), (3.0, 2.5)]
        );
        assert_eq!(y_range(&[(0.0, 2.0), (1.0, 2.0)]), (1.5, 2.5));
    }
}
