//! The convolution kernels alone, without burn's tensors: `forward` and
//! `backward` (all gradients) of `dtx::kernels::conv` on the U-Net's 3×3
//! stride-1 shapes at batch 16, best of 6, with dtx's allocator settings.
//! `RAYON_NUM_THREADS=1 cargo bench -p dtx-tests --bench conv_direct`
//! gives the one-thread figures docs/performance.md compares with
//! PyTorch's `conv2d`.

use dtx::kernels::conv::{Geometry, Wanted, backward, forward};
use std::time::Instant;

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
        let (mut fwd, mut bwd) = (f64::MAX, f64::MAX);
        for _ in 0..6 {
            let t = Instant::now();
            std::hint::black_box(forward(&g, &x, &w, Some(&b)));
            fwd = fwd.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            std::hint::black_box(backward(&g, &x, &w, &dy, all).x);
            bwd = bwd.min(t.elapsed().as_secs_f64());
        }
        let gflop = 2.0 * (n * o * c * 9 * h * h) as f64 / 1e9;
        println!(
            "3x3 {c}->{o} at {h}x{h}: forward {:.2} ms ({:.0} GFLOP/s), backward {:.2} ms",
            fwd * 1e3,
            gflop / fwd,
            bwd * 1e3
        );
    }
}
