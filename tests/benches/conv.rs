//! dtx's conv2d kernels (`dtx::kernels::conv`) against burn-flex's conv2d
//! on the convolutions of the `dtx bench engine` U-Net (batch 16, 32×32):
//! forward, and forward + backward (input, weight and bias gradients)
//! through burn's autodiff, each side the same op on the same tensors.
//! Medians over `ITERS` runs after one untimed run, interleaved. Run with
//! `RAYON_NUM_THREADS=2 cargo bench -p dtx-tests --bench conv`; figures go
//! in docs/performance.md. `-- --size 64` times the U-Net's convolutions
//! at 64×64 instead (dtx only: burn takes minutes on them).

use burn::backend::{Autodiff, Flex};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, Tensor};
use dtx::bench::median;
use dtx::kernels::conv2d_tensor;
use std::time::Instant;

type B = Autodiff<Flex>;
const ITERS: usize = 7;

/// A case: (name, in channels, out channels, image side, kernel, stride)
/// at batch 16, padding `kernel / 2`.
type Case = (&'static str, usize, usize, usize, usize, usize);

/// The 32×32 U-Net's convolutions; the same cases as `python/conv_bench.py`.
const CASES: [Case; 7] = [
    ("3x3 64->64 at 32x32", 64, 64, 32, 3, 1),
    ("3x3 128->128 at 16x16", 128, 128, 16, 3, 1),
    ("3x3 256->128 at 16x16", 256, 128, 16, 3, 1),
    ("3x3 128->128 at 8x8", 128, 128, 8, 3, 1),
    ("3x3 s2 64->64 at 32x32", 64, 64, 32, 3, 2),
    ("1x1 256->128 at 16x16", 256, 128, 16, 1, 1),
    ("3x3 3->64 at 32x32", 3, 64, 32, 3, 1),
];

/// The 64×64 U-Net's convolutions that take most of its time (with how
/// many of each one forward has); `python/conv_bench.py --size 64`.
const CASES_64: [Case; 8] = [
    ("3x3 64->64 at 64x64 (7)", 64, 64, 64, 3, 1),
    ("3x3 128->128 at 32x32 (7)", 128, 128, 32, 3, 1),
    ("3x3 128->128 at 16x16 (11)", 128, 128, 16, 3, 1),
    ("3x3 256->128 at 32x32 (2)", 256, 128, 32, 3, 1),
    ("3x3 128->64 at 64x64 (2)", 128, 64, 64, 3, 1),
    ("3x3 s2 64->64 at 64x64 (1)", 64, 64, 64, 3, 2),
    ("1x1 128->64 at 64x64 (2)", 128, 64, 64, 1, 1),
    ("3x3 3->64 at 64x64 (1)", 3, 64, 64, 3, 1),
];

fn time(f: &mut dyn FnMut()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64() * 1e3
}

fn main() {
    // The allocator as `dtx` sets it: fresh pages on every call otherwise.
    dtx::util::keep_freed_memory();
    let dev = Default::default();
    let at_64 = std::env::args()
        .collect::<Vec<_>>()
        .windows(2)
        .any(|a| a[0] == "--size" && a[1] == "64");
    let (cases, sides): (&[Case], usize) = if at_64 { (&CASES_64, 1) } else { (&CASES, 2) };
    println!(
        "{:<28} {:>10} {:>10} {:>7} {:>12} {:>12} {:>7}",
        "case", "fwd dtx", "fwd burn", "ratio", "f+b dtx", "f+b burn", "ratio"
    );
    for &(name, ci, co, side, k, stride) in cases {
        let x = Tensor::<B, 4>::random([16, ci, side, side], Distribution::Normal(0.0, 1.0), &dev);
        let w = Tensor::<B, 4>::random([co, ci, k, k], Distribution::Normal(0.0, 0.1), &dev);
        let b = Tensor::<B, 1>::random([co], Distribution::Normal(0.0, 0.1), &dev);
        let o = ConvOptions::new([stride; 2], [k / 2; 2], [1, 1], 1);
        type Op =
            fn(Tensor<B, 4>, Tensor<B, 4>, Option<Tensor<B, 1>>, ConvOptions<2>) -> Tensor<B, 4>;
        let ops: [Op; 2] = [conv2d_tensor::<B>, conv2d::<B>];
        let mut fwd = [Vec::new(), Vec::new()];
        let mut both = [Vec::new(), Vec::new()];
        for i in 0..=ITERS {
            for (side, op) in ops.iter().enumerate().take(sides) {
                let f = time(&mut || {
                    let y = op(x.clone(), w.clone(), Some(b.clone()), o.clone());
                    let _ = y.inner().into_data();
                });
                let (xg, wg, bg) = (
                    x.clone().require_grad(),
                    w.clone().require_grad(),
                    b.clone().require_grad(),
                );
                let fb = time(&mut || {
                    let y = op(xg.clone(), wg.clone(), Some(bg.clone()), o.clone());
                    let grads = y.sum().backward();
                    let _ = xg.grad(&grads).map(|g| g.into_data());
                });
                if i > 0 {
                    fwd[side].push(f);
                    both[side].push(fb);
                }
            }
        }
        let [fd, fb_] = fwd.map(median);
        let [bd, bb] = both.map(median);
        // Burn's columns, or dashes where it was not timed.
        let burn = |v: f64, mine: f64| {
            if sides > 1 {
                (format!("{v:.1}ms"), format!("{:.2}x", mine / v))
            } else {
                ("-".to_string(), "-".to_string())
            }
        };
        let ((fb_, fr), (bb, br)) = (burn(fb_, fd), burn(bb, bd));
        println!("{name:<28} {fd:>8.1}ms {fb_:>10} {fr:>7} {bd:>10.1}ms {bb:>12} {br:>7}");
    }
}
