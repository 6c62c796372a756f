//! What a run leaves for a person: its samples (`samples.json`, and a scatter
//! plot over the target for 2-D data) and `report.md`.

use super::RunSummary;
use super::dir::RunDir;
use super::error::{Result, run_error};
use crate::data::{Dataset, Gmm};
use crate::plan::Plan;
use image::{Rgb, RgbImage};
use std::fmt::Write as _;

const SIZE: u32 = 320;
const RANGE: f32 = 7.0;

fn to_px(v: f32) -> Option<u32> {
    let p = ((v + RANGE) / (2.0 * RANGE) * SIZE as f32).floor();
    (p >= 0.0 && p < SIZE as f32).then_some(p as u32)
}

fn dot(img: &mut RgbImage, x: f32, y: f32, colour: Rgb<u8>) {
    if let (Some(px), Some(py)) = (to_px(x), to_px(-y)) {
        for dx in 0..2 {
            for dy in 0..2 {
                if px + dx < SIZE && py + dy < SIZE {
                    img.put_pixel(px + dx, py + dy, colour);
                }
            }
        }
    }
}

/// Writes the samples (flat, `example` scalars each). Vectors: `samples.json`
/// and, for 2-D points, `samples.png` (target points in grey, samples in
/// blue, on [−7, 7]²). Images `[C, H, W]` in [−1, 1]: one PNG each under
/// `samples/` and a grid of them, `samples.png`. With `labels` (the class
/// each sample was drawn for), also `samples/labels.csv`: `file,label,class`.
pub fn write_samples(
    dir: &RunDir,
    samples: &[f32],
    example: &[usize],
    target: Option<&Dataset>,
    labels: Option<&[i64]>,
) -> Result<()> {
    if let (Some(labels), [_, _, _]) = (labels, example) {
        let sub = dir.path.join("samples");
        std::fs::create_dir_all(&sub)?;
        let names = target.map(|t| t.class_names.as_slice()).unwrap_or(&[]);
        let mut csv = String::from("file,label,class\n");
        for (i, &l) in labels.iter().enumerate() {
            let name = names.get(l as usize).map(String::as_str).unwrap_or("");
            let _ = writeln!(csv, "{i:05}.png,{l},{name}");
        }
        std::fs::write(sub.join("labels.csv"), csv)?;
    }
    if let [c, h, w] = *example {
        let sub = dir.path.join("samples");
        std::fs::create_dir_all(&sub)?;
        let mut rgb = Vec::with_capacity(samples.len() / c.max(1) * 3);
        for (i, one) in samples.chunks(c * h * w).enumerate() {
            let img = crate::data::rgb_from_chw(one, c, h, w).ok_or_else(|| {
                run_error!("cannot write {c}-channel samples as images (1 or 3 channels)")
            })?;
            img.save(sub.join(format!("{i:05}.png")))?;
            rgb.extend(crate::data::chw_from_rgb(&img));
        }
        // a square-ish grid, at most 16 to a row
        let n = samples.len() / (c * h * w);
        let cols = ((n as f64).sqrt().ceil() as usize).clamp(1, 16);
        crate::data::grid(&rgb, [3, h, w], cols).save(dir.path.join("samples.png"))?;
        return Ok(());
    }
    let dim = example.iter().product::<usize>().max(1);
    let rows: Vec<&[f32]> = samples.chunks(dim).collect();
    dir.write("samples.json", serde_json::to_string(&rows)?.as_bytes())?;
    if dim == 2 {
        let mut img = RgbImage::from_pixel(SIZE, SIZE, Rgb([255, 255, 255]));
        if let Some(t) = target.filter(|t| t.sample_shape == [2]) {
            for p in t.samples.chunks(2) {
                dot(&mut img, p[0], p[1], Rgb([190, 190, 190]));
            }
        }
        for p in samples.chunks(2) {
            dot(&mut img, p[0], p[1], Rgb([30, 80, 200]));
        }
        img.save(dir.path.join("samples.png"))?;
    }
    Ok(())
}

/// Writes the mask each sample was conditioned on as
/// `samples/masks/NNNNN.png` (8-bit gray, the class index: the same layout
/// `target.masks` reads).
pub fn write_masks(dir: &RunDir, masks: &[i64], hw: [usize; 2]) -> Result<()> {
    let [h, w] = hw;
    if masks.is_empty() || h * w == 0 {
        return Ok(());
    }
    let sub = dir.path.join("samples").join("masks");
    std::fs::create_dir_all(&sub)?;
    for (i, m) in masks.chunks(h * w).enumerate() {
        let img = image::GrayImage::from_fn(w as u32, h as u32, |x, y| {
            image::Luma([m[y as usize * w + x as usize].clamp(0, 255) as u8])
        });
        img.save(sub.join(format!("{i:05}.png")))?;
    }
    Ok(())
}

/// Writes `report.md`: what ran, the final loss, and for a `builtin:gmm`
/// target the samples' mean density and log-density under the exact target.
pub fn write_report(dir: &RunDir, plan: &Plan, s: &RunSummary) -> Result<()> {
    let m = &plan.manifest.manifest;
    let mut o = String::new();
    let _ = writeln!(o, "# Run `{}`\n", m.run.name);
    let _ = writeln!(o, "- seed: {}", m.run.seed);
    let _ = writeln!(o, "- steps trained: {}", s.steps);
    if let Some(l) = s.final_loss {
        let _ = writeln!(o, "- final training loss: {l:.6}");
    }
    let plugins: Vec<&str> = plan.plugins.iter().map(|p| p.name.as_str()).collect();
    let _ = writeln!(
        o,
        "- plugins: {}",
        if plugins.is_empty() {
            "none".into()
        } else {
            plugins.join(", ")
        }
    );
    let _ = writeln!(o, "- metrics per step: `metrics.jsonl`");
    if let Some(e) = &s.evaluation {
        let _ = writeln!(o, "\n## Evaluation\n\n{}", e.markdown());
        let _ = writeln!(o, "The numbers are also in `eval.json`.");
    }
    let jsonl = std::fs::read_to_string(dir.path.join("metrics.jsonl")).unwrap_or_default();
    let (tail, trained) = training_values(&jsonl);
    if !trained.is_empty() {
        let _ = writeln!(
            o,
            "\n## Training\n\nThe loss and every plugin term, averaged over the last {tail} steps:\n\n| term | mean |\n|---|---|"
        );
        for (k, v) in trained {
            let _ = writeln!(o, "| `{k}` | {v:.6} |");
        }
    }
    if let Some(st) = s.sampling.as_ref().filter(|st| st.drawn > 0) {
        let _ = writeln!(
            o,
            "\n## Sampling\n\n- accepted {} of {} drawn: acceptance rate {:.1}% ({} requested)",
            st.accepted,
            st.drawn,
            100.0 * st.acceptance_rate(),
            st.requested
        );
        for (p, r) in &st.rejected {
            let _ = writeln!(o, "- filter `{p}` rejected {r}");
        }
        if st.accepted < st.requested {
            let _ = writeln!(
                o,
                "- stopped at `sample.max_attempts_factor` × count drawn, short of the count"
            );
        }
    }
    let prepared = prepare_values(&jsonl);
    if !prepared.is_empty() {
        let _ = writeln!(
            o,
            "\n## Prepare\n\nThe last value each plugin logged in `prepare` (curves below, when there are several):\n\n| value | last |\n|---|---|"
        );
        for (k, v) in prepared {
            let _ = writeln!(o, "| `{k}` | {v:.6} |");
        }
    }
    if let Some((img, captions)) =
        super::plot::loss_curves(&super::plot::series_from_metrics(&jsonl))
    {
        img.save(dir.path.join("loss.png"))?;
        let _ = writeln!(o, "\n## Loss curves\n\n![loss curves](loss.png)\n");
        for c in captions {
            let _ = writeln!(o, "- {c}");
        }
    }
    if let Some((samples, shape)) = &s.samples {
        if shape.len() == 4 {
            let _ = writeln!(
                o,
                "\n## Samples\n\n{} samples (`samples/`).\n\n![samples](samples.png)",
                shape[0]
            );
        } else {
            let _ = writeln!(o, "\n## Samples\n\n{} samples (`samples.json`).", shape[0]);
        }
        if shape.len() == 2 && shape[1] == 2 {
            let _ = writeln!(o, "\n![samples over the target](samples.png)");
            if let Some(t) = m.target.as_ref().filter(|t| t.builtin() == Some("gmm")) {
                let gmm = Gmm::from_config(&t.config)?;
                let dens = gmm.density(samples);
                let logd = gmm.log_density(samples);
                let n = dens.len().max(1) as f64;
                let _ = writeln!(
                    o,
                    "\nUnder the exact target density: mean density {:.4}, mean log-density {:.4}.",
                    dens.iter().sum::<f64>() / n,
                    logd.iter().sum::<f64>() / n
                );
            }
        }
    }
    dir.write("report.md", o.as_bytes())?;
    Ok(())
}

/// The mean of each loss and plugin term of the training step lines in
/// `metrics.jsonl` text over the last tenth of the steps (at least one),
/// in name order, with the number of steps averaged.
fn training_values(jsonl: &str) -> (usize, Vec<(String, f64)>) {
    const NOT_TERMS: [&str; 4] = ["step", "lr", "samples_per_s", "grad_norm"];
    let steps: Vec<serde_json::Map<String, serde_json::Value>> = jsonl
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| match v {
            serde_json::Value::Object(m) if m.contains_key("step") => Some(m),
            _ => None,
        })
        .collect();
    let tail = (steps.len() / 10).max(1).min(steps.len());
    let mut sums: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
    for m in &steps[steps.len() - tail..] {
        for (k, v) in m {
            if let (false, Some(v)) = (NOT_TERMS.contains(&k.as_str()), v.as_f64()) {
                let e = sums.entry(k.clone()).or_default();
                e.0 += v;
                e.1 += 1;
            }
        }
    }
    let values = sums
        .into_iter()
        .map(|(k, (sum, n))| (k, sum / n as f64))
        .collect();
    (tail, values)
}

/// The last value of each `prepare` key in `metrics.jsonl` text, in
/// first-seen order.
fn prepare_values(jsonl: &str) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for line in jsonl.lines() {
        let Ok(rec) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if rec.get("prepare").is_none() {
            continue;
        }
        if let (Some(k), Some(v)) = (rec["key"].as_str(), rec["value"].as_f64()) {
            match out.iter_mut().find(|(n, _)| n == k) {
                Some(e) => e.1 = v,
                None => out.push((k.to_owned(), v)),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The training table averages the last tenth of the step lines (at
    /// least one), skips the non-loss keys and the prepare/sample lines.
    #[test]
    fn training_values_average_the_last_tenth_of_the_steps() {
        let mut jsonl = String::from("{\"prepare\":\"p\",\"key\":\"p.x\",\"n\":1,\"value\":9}\n");
        for step in 0..20 {
            jsonl.push_str(&format!(
                "{{\"step\":{step},\"loss\":{},\"sdft.distill\":{},\"lr\":0.1,\"grad_norm\":3}}\n",
                step as f64,
                2.0 * step as f64
            ));
        }
        jsonl.push_str("{\"sample\":{\"requested\":4}}\n");
        let (tail, v) = training_values(&jsonl);
        assert_eq!(tail, 2);
        assert_eq!(
            v,
            vec![("loss".to_owned(), 18.5), ("sdft.distill".to_owned(), 37.0)]
        );
        assert_eq!(training_values("").1, vec![]);
    }
}
