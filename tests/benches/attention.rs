//! dtx's attention kernels (`dtx::kernels::attention`) on the shapes of the
//! `dtx bench engine` U-Net (batch 16, 4 heads of 32, the token counts of
//! its attention levels at 16², 32² and 64² images): forward, and
//! backward from the kept log-sum-exp. Medians over `ITERS` runs after
//! one untimed run. Run with
//! `RAYON_NUM_THREADS=2 cargo bench -p dtx-tests --bench attention`;
//! figures go in docs/performance.md.

use dtx::bench::median;
use dtx::kernels::attention::{Heads, backward, forward};
use std::time::Instant;

const ITERS: usize = 7;

/// (tokens, heads, values per head) at batch 16.
const CASES: [(usize, usize, usize); 4] =
    [(64, 4, 32), (256, 4, 32), (1024, 4, 32), (1024, 1, 128)];

fn values(len: usize, seed: u32) -> Vec<f32> {
    // A fixed pseudo-random fill in [-1, 1) (no RNG crate needed).
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

fn time(f: &mut dyn FnMut()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64() * 1e3
}

fn main() {
    // The allocator as `dtx` sets it: fresh pages on every call otherwise.
    dtx::util::keep_freed_memory();
    println!(
        "{:<26} {:>10} {:>10} {:>12}",
        "case", "forward", "backward", "GFLOP/s f+b"
    );
    for (n, heads, d) in CASES {
        let g = Heads { b: 16, n, heads, d };
        let len = g.b * g.n * heads * d;
        let (q, k, v, dout) = (
            values(len, 1),
            values(len, 2),
            values(len, 3),
            values(len, 4),
        );
        let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
        for i in 0..=ITERS {
            let mut kept = None;
            let f = time(&mut || kept = Some(forward(&g, &q, &k, &v)));
            let (_, lse) = kept.expect("forward ran");
            let b = time(&mut || {
                let _ = backward(&g, &q, &k, &v, &lse, &dout);
            });
            if i > 0 {
                fwd.push(f);
                bwd.push(b);
            }
        }
        let (f, b) = (median(fwd), median(bwd));
        // Forward 2 GEMMs, backward 5 (with the recomputed scores), each
        // 2·N²·d per sample and head.
        let flop = 7.0 * 2.0 * (n * n * d * heads * g.b) as f64;
        println!(
            "{:<26} {:>8.1}ms {:>8.1}ms {:>12.0}",
            format!("N={n} {heads}x{d}"),
            f,
            b,
            flop / ((f + b) * 1e-3) / 1e9
        );
    }
}
