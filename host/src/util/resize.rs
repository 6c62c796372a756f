//! PIL's antialiased bicubic resize in float mode (`Image.resize(...,
//! Image.BICUBIC)` on a mode-"F" image), one channel at a time: the kernel
//! that both the FID Inception's clean-fid preprocessing (eval) and CLIP's
//! image preprocessing (model) use. It is pure pixel maths, so it sits at the
//! bottom of the layers (docs/architecture.md), below both of its users.

/// PIL's bicubic kernel (`Resample.c` `bicubic_filter`, Keys' cubic with
/// a = −0.5): for |x| < 1, (a + 2)|x|³ − (a + 3)|x|² + 1; for 1 ≤ |x| < 2,
/// a(|x|³ − 5|x|² + 8|x| − 4); 0 beyond its support of 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The taps of one output pixel along one axis: the first input index and
/// the normalised weights of it and the inputs after it.
struct Taps {
    start: usize,
    weights: Vec<f64>,
}

/// PIL's `precompute_coeffs` for resizing `size` pixels to `out` (whole
/// image, no box). Output pixel o is centred on input coordinate
/// (o + 0.5) · scale, scale = size / out; when shrinking, the kernel is
/// stretched by the scale (antialiasing), so its support is 2 · max(scale, 1)
/// input pixels either side. The taps are the inputs whose index lies in
/// [centre − support, centre + support), each rounded as PIL does (C's
/// truncating cast of `x + 0.5`), clipped to the image; their weights are
/// divided by their sum, so edge pixels are renormalised, not padded.
fn taps(size: usize, out: usize) -> Vec<Taps> {
    let scale = size as f64 / out as f64;
    let filter_scale = scale.max(1.0);
    let support = 2.0 * filter_scale;
    (0..out)
        .map(|o| {
            let centre = (o as f64 + 0.5) * scale;
            // `as` truncates toward zero, as C's `(int)` does.
            let start = ((centre - support + 0.5) as i64).max(0) as usize;
            let end = ((centre + support + 0.5) as i64).min(size as i64) as usize;
            let mut weights: Vec<f64> = (start..end)
                .map(|x| bicubic((x as f64 - centre + 0.5) / filter_scale))
                .collect();
            let total: f64 = weights.iter().sum();
            if total != 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            }
            Taps { start, weights }
        })
        .collect()
}

/// One pass of the separable filter along the axis of length `size`:
/// `lines` lines of `size` pixels, each `stride` apart along the axis and
/// `line_step` apart from the next line. Sums run in f64 and are stored as
/// f32, as PIL's mode-F resampler does (`ImagingResampleHorizontal_32bpc`).
fn pass(
    input: &[f32],
    lines: usize,
    line_step: usize,
    stride: usize,
    taps: &[Taps],
    out_line_step: usize,
    out_stride: usize,
) -> Vec<f32> {
    let mut out = vec![0.0f32; lines * taps.len()];
    for line in 0..lines {
        for (o, t) in taps.iter().enumerate() {
            let sum: f64 = t
                .weights
                .iter()
                .enumerate()
                .map(|(j, w)| f64::from(input[line * line_step + (t.start + j) * stride]) * w)
                .sum();
            out[line * out_line_step + o * out_stride] = sum as f32;
        }
    }
    out
}

/// Resizes one channel (`h × w`, row-major) to `out_h × out_w` exactly as
/// PIL's `Image.fromarray(channel, mode="F").resize((out_w, out_h),
/// Image.BICUBIC)` does: the separable bicubic filter of `taps`, the
/// horizontal pass first, each pass accumulating in f64 and storing f32.
/// Values are not clipped (bicubic overshoots at edges; clean-fid clips
/// after this).
///
/// # Panics
/// When `channel.len() != h · w`, or a size is zero.
pub fn pil_bicubic_resize(
    channel: &[f32],
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    assert_eq!(
        channel.len(),
        h * w,
        "channel holds {} values, not {h} × {w}",
        channel.len()
    );
    assert!(h > 0 && w > 0 && out_h > 0 && out_w > 0, "empty image");
    // PIL skips a pass whose size does not change; its taps would be the
    // identity anyway.
    let wide = if out_w == w {
        channel.to_vec()
    } else {
        pass(channel, h, w, 1, &taps(w, out_w), out_w, 1)
    };
    if out_h == h {
        wide
    } else {
        pass(&wide, out_w, 1, out_w, &taps(h, out_h), 1, out_w)
    }
}
