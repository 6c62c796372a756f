//! The kernels against a direct f64 evaluation of the convolution sum and
//! its adjoints (loops over every output and kernel tap, no im2col, no
//! GEMM). Tolerance: 1e-5 of the reference's largest magnitude (f32 sums of
//! up to a few thousand terms).

#![allow(clippy::needless_range_loop)] // index loops mirror the sums

use super::*;

fn values(len: usize, seed: u64) -> Vec<f32> {
    crate::kernels::test_values(len, seed, 1.0)
}

struct Reference {
    y: Vec<f64>,
    dx: Vec<f64>,
    dw: Vec<f64>,
    db: Vec<f64>,
}

/// Direct sums: `y = b + Σ w·x` per output, and the adjoints scattered
/// from `dy` tap by tap.
fn reference(g: &Geometry, x: &[f32], w: &[f32], b: &[f32], dy: &[f32]) -> Reference {
    let [oh, ow] = g.out_hw().unwrap();
    let [kh, kw] = g.k;
    let mut r = Reference {
        y: vec![0.0; g.n * g.o * oh * ow],
        dx: vec![0.0; x.len()],
        dw: vec![0.0; w.len()],
        db: vec![0.0; g.o],
    };
    for n in 0..g.n {
        for o in 0..g.o {
            for oy in 0..oh {
                for ox in 0..ow {
                    let yi = ((n * g.o + o) * oh + oy) * ow + ox;
                    let g_out = dy[yi] as f64;
                    let mut acc = b[o] as f64;
                    r.db[o] += g_out;
                    for c in 0..g.c {
                        for ki in 0..kh {
                            for kj in 0..kw {
                                let iy = (oy * g.stride[0] + ki) as isize - g.padding[0] as isize;
                                let ix = (ox * g.stride[1] + kj) as isize - g.padding[1] as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xi = ((n * g.c + c) * g.h + iy as usize) * g.w + ix as usize;
                                let wi = ((o * g.c + c) * kh + ki) * kw + kj;
                                acc += w[wi] as f64 * x[xi] as f64;
                                r.dx[xi] += w[wi] as f64 * g_out;
                                r.dw[wi] += x[xi] as f64 * g_out;
                            }
                        }
                    }
                    r.y[yi] = acc;
                }
            }
        }
    }
    r
}

fn assert_close(what: &str, g: &Geometry, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what} length for {g:?}");
    let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (*a as f64 - b).abs() <= 1e-5 * scale,
            "{what}[{i}] = {a}, reference {b} (scale {scale}) for {g:?}"
        );
    }
}

type Forward = fn(&Geometry, &[f32], &[f32], Option<&[f32]>) -> Vec<f32>;
type Backward = fn(&Geometry, &[f32], &[f32], &[f32], Wanted) -> Grads;

/// The public functions (the direct kernels where they apply).
fn check(g: Geometry) {
    check_with(g, forward, backward);
}

/// `forward` and `backward` against the f64 sums on `g`.
fn check_with(g: Geometry, forward: Forward, backward: Backward) {
    let [oh, ow] = g.out_hw().unwrap();
    let x = values(g.n * g.c * g.h * g.w, 1);
    let w = values(g.o * g.c * g.k[0] * g.k[1], 2);
    let b = values(g.o, 3);
    let dy = values(g.n * g.o * oh * ow, 4);
    let r = reference(&g, &x, &w, &b, &dy);
    assert_close("y", &g, &forward(&g, &x, &w, Some(&b)), &r.y);
    let no_bias: Vec<f64> =
        r.y.iter()
            .zip(0..)
            .map(|(y, i)| y - b[(i / (oh * ow)) % g.o] as f64)
            .collect();
    assert_close("y without bias", &g, &forward(&g, &x, &w, None), &no_bias);
    let all = Wanted {
        x: true,
        weight: true,
        bias: true,
    };
    let grads = backward(&g, &x, &w, &dy, all);
    assert_close("dx", &g, grads.x.as_deref().unwrap(), &r.dx);
    assert_close("dw", &g, grads.weight.as_deref().unwrap(), &r.dw);
    assert_close("db", &g, grads.bias.as_deref().unwrap(), &r.db);
    let only_w = backward(
        &g,
        &x,
        &w,
        &dy,
        Wanted {
            x: false,
            weight: true,
            bias: false,
        },
    );
    assert!(only_w.x.is_none() && only_w.bias.is_none());
    assert_close("dw alone", &g, only_w.weight.as_deref().unwrap(), &r.dw);
}

fn geometry(
    n: usize,
    c: usize,
    hw: [usize; 2],
    o: usize,
    k: usize,
    s: usize,
    p: usize,
) -> Geometry {
    Geometry {
        n,
        c,
        h: hw[0],
        w: hw[1],
        o,
        k: [k, k],
        stride: [s, s],
        padding: [p, p],
    }
}

#[test]
fn the_unet_shapes_match_the_direct_sums() {
    // 3×3 stride 1 padding 1 (resnet convs), stride 2 padding 1 (ADM and
    // diffusers downsampling), stride 2 padding 0 (diffusers' padded
    // variant), 1×1 (shortcuts), on even and odd batches.
    for n in [1, 2, 3, 4] {
        check(geometry(n, 3, [8, 8], 5, 3, 1, 1));
        check(geometry(n, 4, [8, 8], 4, 3, 2, 1));
        check(geometry(n, 4, [9, 9], 3, 3, 2, 0));
        check(geometry(n, 6, [5, 7], 4, 1, 1, 0));
    }
}

#[test]
fn odd_shapes_match_the_direct_sums() {
    // Non-square input, a kernel wider than the padding, a 1×1 kernel with
    // a stride, a kernel as large as the padded image, padding beyond the
    // kernel's reach.
    check(geometry(2, 2, [5, 11], 3, 3, 1, 1));
    check(geometry(2, 3, [7, 6], 2, 5, 1, 2));
    check(geometry(2, 3, [7, 7], 2, 1, 2, 0));
    check(geometry(2, 2, [3, 3], 2, 5, 1, 1));
    check(geometry(1, 2, [4, 4], 2, 3, 3, 3));
    check(Geometry {
        n: 2,
        c: 2,
        h: 6,
        w: 9,
        o: 3,
        k: [3, 1],
        stride: [2, 1],
        padding: [1, 0],
    });
    // Stride 1 with outputs as wide as the input (the column matrix as a
    // shifted copy): fewer output lines than input lines, and more (output
    // lines wholly in the padding).
    for (k, padding) in [([3, 1], [0, 0]), ([1, 3], [1, 1]), ([5, 3], [1, 1])] {
        check(Geometry {
            n: 2,
            c: 2,
            h: 5,
            w: 4,
            o: 3,
            k,
            stride: [1, 1],
            padding,
        });
    }
}

#[test]
fn the_output_size_follows_the_conv_formula() {
    let g = geometry(1, 1, [32, 32], 1, 3, 2, 1);
    assert_eq!(g.out_hw(), Some([16, 16]));
    assert_eq!(geometry(1, 1, [2, 2], 1, 5, 1, 1).out_hw(), None);
    assert_eq!(geometry(1, 1, [2, 2], 1, 3, 0, 1).out_hw(), None);
}

#[test]
fn pieces_cover_the_column_matrix_once() {
    // Every (row, output line) of a task's column matrix lies in exactly
    // one piece, and no piece holds more than the largest reported: one
    // sample (line blocks × row slices) and several (row slices only),
    // with and without a stride.
    for (c, side, k, stride, count) in [
        (3, 9, 3, 1, 1),
        (64, 16, 3, 1, 1),
        (64, 16, 3, 2, 1),
        (40, 7, 1, 1, 3),
        (64, 8, 3, 1, 2),
    ] {
        let g = Geometry {
            n: count,
            c,
            h: side,
            w: side,
            o: 4,
            k: [k; 2],
            stride: [stride; 2],
            padding: [k / 2; 2],
        };
        let (most, pieces) = pieces(&g, count);
        let oh = g.oh_ow()[0];
        let mut seen = vec![0u32; g.ckk() * oh];
        for p in &pieces {
            assert!(p.rows.len() * p.width(&g, count) <= most, "{g:?}");
            if count > 1 {
                assert_eq!(p.lines, 0..oh, "{g:?}: several samples keep whole images");
            }
            for r in p.rows.clone() {
                for y in p.lines.clone() {
                    seen[r * oh + y] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&s| s == 1), "{g:?}");
        assert!(pieces.len() > 1, "{g:?}: the test sizes cut every case");
    }
}

#[test]
fn the_direct_kernel_and_the_column_matrix_match_the_direct_sums() {
    // Stride-1 shapes of the direct kernel: lines 4 to 32 wide, 8 and 16
    // output channels, square and oblong kernels, padding from 0 to k − 1.
    // Under `cfg(test)` its passes take 7 values of k (cutting channels)
    // and its blocks hold about 1,024 outputs: several small samples, or a
    // few lines of one. Each shape is also run through the column matrix.
    let oblong = |h, w, k, padding| Geometry {
        n: 2,
        c: 8,
        h,
        w,
        o: 16,
        k,
        stride: [1, 1],
        padding,
    };
    let cases = [
        (geometry(5, 8, [4, 4], 8, 3, 1, 1), true),
        (geometry(5, 8, [4, 4], 32, 3, 1, 1), true),
        (geometry(2, 8, [8, 8], 32, 3, 1, 1), true),
        (geometry(3, 8, [6, 8], 32, 3, 1, 1), true),
        (geometry(2, 8, [8, 8], 8, 5, 1, 2), true),
        (geometry(2, 8, [5, 16], 16, 3, 1, 1), true),
        (geometry(3, 16, [4, 32], 32, 3, 1, 1), true),
        (geometry(3, 8, [1, 16], 32, 3, 1, 1), true),
        (geometry(2, 3, [6, 16], 32, 3, 1, 1), false),
        (oblong(7, 18, [5, 3], [1, 0]), false),
        (oblong(6, 16, [3, 5], [0, 2]), true),
    ];
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");
    for (g, input_grad) in cases {
        assert_eq!(direct::applies(&g), avx512, "{g:?}");
        let t = direct::transposed(&g).unwrap();
        assert_eq!(direct::applies(&t), avx512 && input_grad, "{g:?}");
        let ow = g.out_hw().unwrap()[1];
        let runs = ow % 16 == 0 || ow == 8 || ow == 4;
        let weight_grad = avx512 && g.k == [3, 3] && g.o % 32 == 0 && runs;
        assert_eq!(direct::weight_grad_applies(&g), weight_grad, "{g:?}");
        // Without Winograd's algorithm, which some of these shapes take.
        check_with(
            g,
            |g, x, w, b| forward_with(g, x, w, b, false),
            |g, x, w, dy, want| backward_with(g, x, w, dy, want, false),
        );
        check_with(g, forward_columns, backward_columns);
    }
}

#[test]
fn winograd_matches_the_direct_sums() {
    // 3×3, stride 1, padding 1: lines of 4 patches (four lines of them to
    // a vector), of 8 (two lines to a vector) and of 16 and 32; input
    // gradients with fewer and more channels than the output; shapes too
    // small for it or whose lines of patches do not fill vectors, and one
    // with output channels not in eights. Its weight gradient takes output
    // channels in 32s, and input channels in tiles of 12, 8, 4 and 1 (21 =
    // 12 + 8 + 1, 28 = 12 + 12 + 4). Under `cfg(test)` a chunk is one
    // sample, so every batch is several chunks.
    let cases = [
        (geometry(3, 16, [16, 16], 24, 3, 1, 1), true, true),
        (geometry(2, 24, [4, 16], 16, 3, 1, 1), true, true),
        (geometry(2, 16, [2, 32], 32, 3, 1, 1), true, true),
        (geometry(1, 16, [6, 64], 16, 3, 1, 1), true, true),
        (geometry(2, 20, [16, 16], 16, 3, 1, 1), true, false),
        (geometry(2, 16, [16, 16], 20, 3, 1, 1), false, true),
        (geometry(3, 16, [8, 8], 16, 3, 1, 1), true, true),
        (geometry(2, 24, [16, 8], 32, 3, 1, 1), true, true),
        (geometry(2, 16, [4, 4], 16, 3, 1, 1), false, false),
        (geometry(2, 16, [12, 8], 16, 3, 1, 1), false, false),
        (geometry(2, 16, [6, 16], 16, 3, 1, 1), false, false),
        (geometry(3, 21, [8, 8], 32, 3, 1, 1), true, false),
        (geometry(2, 28, [4, 32], 64, 3, 1, 1), true, false),
        (geometry(4, 16, [16, 16], 32, 3, 1, 1), true, true),
    ];
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");
    for (g, forward, input_grad) in cases {
        assert_eq!(winograd::applies(&g), avx512 && forward, "{g:?}");
        let t = winograd::transposed(&g);
        assert_eq!(winograd::applies(&t), avx512 && input_grad, "{g:?}");
        let weight_grad = avx512 && forward && g.o % 32 == 0;
        assert_eq!(winograd::weight_grad_applies(&g), weight_grad, "{g:?}");
        check(g);
    }
}

#[test]
fn summed_transpose_adds_the_parts_in_order_and_transposes() {
    // Output rows in blocks of 8 and a partial block (37 columns), and
    // none, one or three parts; the sum in the parts' order, bit for bit.
    let (rows, cols) = (5, 37);
    for count in [0, 1, 3] {
        let parts: Vec<Vec<f32>> = (0..count)
            .map(|p| values(rows * cols, 10 + p as u64))
            .collect();
        let got = sums::summed_transpose(&parts, rows, cols);
        assert_eq!(got.len(), rows * cols);
        for c in 0..cols {
            for r in 0..rows {
                let want = parts
                    .iter()
                    .map(|p| p[r * cols + c])
                    .reduce(|s, v| s + v)
                    .unwrap_or(0.0);
                assert_eq!(
                    got[c * rows + r].to_bits(),
                    want.to_bits(),
                    "{count} parts, ({c}, {r})"
                );
            }
        }
    }
}
