//! Small pieces the stages of a run share: the per-step RNG, Gaussian
//! noise, batch shapes, scalars and progress bars.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng, rngs::StdRng};

pub(super) fn scalar<B: AutodiffBackend>(t: &Tensor<B, 1>) -> f64 {
    t.clone()
        .into_data()
        .iter::<f64>()
        .next()
        .unwrap_or(f64::NAN)
}

/// A progress bar on stderr when it is a terminal (and not `quiet`).
pub(super) fn progress_bar(quiet: bool, len: u64, what: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    (!quiet && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(len);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {msg} ({eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_prefix(what.to_owned());
        b
    })
}

/// A spinner on stderr when it is a terminal (and not `quiet`), for loops
/// whose length the host does not know (a plugin's `prepare`).
pub(super) fn progress_spinner(quiet: bool, what: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    (!quiet && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {prefix}: {msg} ({elapsed})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        b.set_prefix(what.to_owned());
        b.enable_steady_tick(std::time::Duration::from_millis(200));
        b
    })
}

/// The RNG of step `s`: independent streams per step, the same on resume.
pub(super) fn step_rng(seed: u64, step: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ step.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

pub(super) fn normal<B: AutodiffBackend, const D: usize>(
    rng: &mut StdRng,
    shape: [usize; D],
    dev: &B::Device,
) -> Tensor<B, D> {
    let n: usize = shape.iter().product();
    let d = rand_distr::StandardNormal;
    let v: Vec<f32> = (0..n).map(|_| rng.sample::<f32, _>(d)).collect();
    Tensor::from_data(TensorData::new(v, shape), dev)
}

/// `[n, …example shape]` as an array of rank `D`.
pub(super) fn batch_shape<const D: usize>(n: usize, example: &[usize]) -> [usize; D] {
    std::array::from_fn(|i| if i == 0 { n } else { example[i - 1] })
}
