//! The convolution kernels alone, without burn's tensors: `forward`,
//! `backward` (all gradients) and the weight gradient alone of
//! `dtx::kernels::conv` on the U-Net's 3×3 stride-1 shapes at batch 16,
//! best of 6, with dtx's allocator settings; each also without Winograd's
//! algorithm (`forward_with` and `backward_with`, `fast` off: the direct
//! kernel). `RAYON_NUM_THREADS=1 cargo bench -p dtx-tests --bench
//! conv_direct` gives the one-thread figures docs/performance.md compares
//! with PyTorch's `conv2d`.

use dtx::kernels::conv::{Geometry, Wanted, backward_with, forward_with};
use std::time::Instant;

/// The best of 6 runs of `f`, in ms.
fn best<T>(mut f: impl FnMut() -> T) -> f64 {
    (0..6)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    dtx::util::keep_freed_memory();
    let shapes = [
        (128, 128, 16),
        (64, 64, 32),
        (128, 64, 64),
        (256, 128, 16),
        (128, 128, 8),
        (128, 128, 4),
    ];
    for (c, o, h) in shapes {
        let n = 16;
        let g = Geometry {
            n,
            c,
            h,
            w: h,
            o,
            k: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
        };
        let x: Vec<f32> = (0..n * c * h * h)
            .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let w: Vec<f32> = (0..o * c * 9)
            .map(|i| ((i * 104729) % 97) as f32 / 48.0 - 1.0)
            .collect();
        let dy: Vec<f32> = (0..n * o * h * h)
            .map(|i| ((i * 7901) % 103) as f32 / 50.0 - 1.0)
            .collect();
        let b = vec![0.5f32; o];
        let all = Wanted {
            x: true,
            weight: true,
            bias: true,
        };
        let weight = Wanted {
            x: false,
            weight: true,
            bias: false,
        };
        let [fwd, fwd_d] =
            [true, false].map(|fast| best(|| forward_with(&g, &x, &w, Some(&b), fast)));
        let [bwd, bwd_d] =
            [true, false].map(|fast| best(|| backward_with(&g, &x, &w, &dy, all, fast)));
        let [dw, dw_d] =
            [true, false].map(|fast| best(|| backward_with(&g, &x, &w, &dy, weight, fast)));
        let gflop = 2.0 * (n * o * c * 9 * h * h) as f64 / 1e9;
        println!(
            "3x3 {c}->{o} at {h}x{h}: forward {fwd:.2} ms ({:.0} GFLOP/s; direct {fwd_d:.2}), \
             backward {bwd:.2} ms (direct {bwd_d:.2}), weight gradient {dw:.2} ms (direct {dw_d:.2})",
            gflop / fwd * 1e3,
        );
    }
}
