//! Tuning TGDP's η2 (weight of the consistency term) on the sign test's two
//! Gaussians (`dtx_tests::two_gaussians`), where the ideal guidance is
//! closed-form. For each η2 and seed: the plugin's `prepare` with the sign
//! test's settings, then the learned ∇ log h against the exact one at
//! t = 20, 50, 95 (mean error over 256 target-like points) and the mean of
//! 1000 guided DDIM samples against μ_q. Prints one row per η2 (mean ± sd
//! over seeds) and, against the first η2 listed, the paired difference of
//! the guided mean's distance with its 95 % t interval.
//!
//! ```sh
//! cargo bench -p dtx-tests --bench tgdp_eta2                 # η2 1,0,0.25,0.5,2,4; seeds 0..5
//! cargo bench -p dtx-tests --bench tgdp_eta2 -- 1,0.5 0,1,2  # η2 list, seed list
//! ```

use dtx::eval::paired::Paired;
use dtx::tensor_abi::Session;
use dtx_tests::mock::Normal;
use dtx_tests::two_gaussians::{
    B, ExactSource, MU_Q, alpha_bars, ddim, learned_grads, mean, mean_error, score_fn,
    session_seeded, tgdp,
};
use std::rc::Rc;

fn list<T: std::str::FromStr + Clone>(arg: Option<&String>, default: &[T]) -> Vec<T> {
    match arg {
        Some(a) => a
            .split(',')
            .map(|v| {
                v.trim()
                    .parse()
                    .ok()
                    .expect("a comma-separated list of numbers")
            })
            .collect(),
        None => default.to_vec(),
    }
}

/// (errors at t = 20, 50, 95; guided mean's distance to μ_q) for one run.
fn measure(eta2: f64, seed: u64) -> ([f64; 3], f64) {
    let source = Rc::new(ExactSource {
        alpha_bars: alpha_bars(),
    });
    let _s = session_seeded(source.clone(), seed);
    let cfg = format!(
        r#"{{"hidden": 64, "depth": 2, "time_dim": 16, "classifier_steps": 400,
            "time_classifier_steps": 400, "guidance_steps": 800, "lr": 0.003,
            "batch": 256, "source": "data", "eta2": {eta2}, "log_every": 100000}}"#
    );
    let mut inst = tgdp(&cfg);
    inst.prepare("sample", "").expect("prepare");
    let _ = Session::<B>::with(|s| s.services.take_logs());
    let mut score = score_fn(&mut inst);
    let mut rng = Normal(777 + seed);
    let mut errors = [0.0; 3];
    for (k, t) in [20usize, 50, 95].into_iter().enumerate() {
        let (learned, want) = learned_grads(&source, &mut score, t, &mut rng);
        errors[k] = mean_error(&learned, want);
    }
    let m = mean(&ddim(&source, 1000, &mut score));
    let dist = ((m[0] - MU_Q[0]).powi(2) + (m[1] - MU_Q[1]).powi(2)).sqrt();
    (errors, dist)
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, var.sqrt())
}

fn main() {
    // `cargo bench` passes `--bench`; the lists are the other arguments
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let etas: Vec<f64> = list(args.first(), &[1.0, 0.0, 0.25, 0.5, 2.0, 4.0]);
    let seeds: Vec<u64> = list(args.get(1), &[0, 1, 2, 3, 4]);
    println!(
        "| η2 | ∇ log h error t = 20 | t = 50 | t = 95 | guided mean's distance to μ_q | paired difference vs η2 = {} (95 % CI) |",
        etas[0]
    );
    println!("|---|---|---|---|---|---|");
    let mut baseline: Option<Vec<f64>> = None;
    for &eta2 in &etas {
        let runs: Vec<([f64; 3], f64)> = seeds.iter().map(|&s| measure(eta2, s)).collect();
        let col = |k: usize| mean_sd(&runs.iter().map(|r| r.0[k]).collect::<Vec<_>>());
        let dists: Vec<f64> = runs.iter().map(|r| r.1).collect();
        let (d, dsd) = mean_sd(&dists);
        let paired = match &baseline {
            None => "(baseline)".to_owned(),
            Some(b) => {
                let diffs = dists.iter().zip(b).map(|(x, y)| x - y).collect();
                Paired::of_differences(seeds.clone(), diffs).cell(3)
            }
        };
        let (e20, e50, e95) = (col(0), col(1), col(2));
        println!(
            "| {eta2} | {:.3} ± {:.3} | {:.3} ± {:.3} | {:.3} ± {:.3} | {d:.3} ± {dsd:.3} | {paired} |",
            e20.0, e20.1, e50.0, e50.1, e95.0, e95.1
        );
        baseline.get_or_insert(dists);
    }
    println!("seeds {seeds:?}; mean ± sd over seeds; |μ_q − μ_p| = 0.72");
}
