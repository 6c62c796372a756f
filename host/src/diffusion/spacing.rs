//! Which timesteps a sampler visits: diffusers' `timestep_spacing` rules,
//! with its exact (numpy) rounding, apart from the samplers that use them.

use super::sampler::SamplerError;

/// How the visited timesteps are spread over 0..T−1, as diffusers'
/// `timestep_spacing` ("Common Diffusion Noise Schedules and Sample Steps are
/// Flawed", Lin et al., 2024, arXiv:2305.08891, Table 2), with
/// `steps_offset = 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Spacing {
    /// t_i = i · ⌊T / n⌋, i = n−1 … 0 (diffusers' default; never visits T−1).
    #[default]
    Leading,
    /// t_i = round(T − i · T/n) − 1, i = 0 … n−1 (starts at T−1).
    Trailing,
    /// t_i = round(linspace(0, T−1, n))_i, descending.
    Linspace,
}

impl Spacing {
    /// The name diffusers writes in `timestep_spacing`.
    pub fn diffusers_name(self) -> &'static str {
        match self {
            Spacing::Leading => "leading",
            Spacing::Trailing => "trailing",
            Spacing::Linspace => "linspace",
        }
    }
}

/// The timesteps a sampler visits, descending, as diffusers'
/// `set_timesteps(steps)` with `steps_offset = 0`.
///
/// Rounding is numpy's (`round` is half-to-even): "leading" is
/// `arange(n) * (T // n)`; "trailing" is `round(arange(T, 0, -T/n)) - 1`, with
/// numpy's `arange` values `T + i·δ`, δ = (T − T/n) − T; "linspace" is
/// `round(linspace(0, T−1, n))`. One deliberate difference: where numpy's
/// float `arange` yields n + 1 values (T = 50, n = 29 or 31: the length
/// ⌈T / (T/n)⌉ rounds up to n + 1) diffusers visits an extra timestep −1; dtx
/// visits the n asked for.
pub fn timesteps(
    spacing: Spacing,
    train_timesteps: usize,
    steps: usize,
) -> Result<Vec<i64>, SamplerError> {
    let (t_train, n) = (train_timesteps, steps);
    if n == 0 || n > t_train {
        return Err(SamplerError::Steps {
            steps,
            train_timesteps,
        });
    }
    let ts: Vec<i64> = match spacing {
        Spacing::Leading => {
            let ratio = (t_train / n) as i64;
            (0..n as i64).rev().map(|i| i * ratio).collect()
        }
        Spacing::Trailing => {
            let start = t_train as f64;
            let delta = (start - t_train as f64 / n as f64) - start;
            (0..n)
                .map(|i| (start + i as f64 * delta).round_ties_even() as i64 - 1)
                .collect()
        }
        Spacing::Linspace => {
            let stop = (t_train - 1) as f64;
            let mut v: Vec<f64> = if n == 1 {
                vec![0.0]
            } else {
                let step = stop / (n - 1) as f64;
                (0..n).map(|i| i as f64 * step).collect()
            };
            if n > 1 {
                v[n - 1] = stop;
            }
            v.into_iter()
                .rev()
                .map(|x| x.round_ties_even() as i64)
                .collect()
        }
    };
    Ok(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacing_examples_from_diffusers() {
        // Printed by diffusers 0.42.1 `DDIMScheduler(timestep_spacing=…).set_timesteps(n)`.
        let t = |s, n| timesteps(s, 1000, n).unwrap();
        assert_eq!(t(Spacing::Leading, 3), [666, 333, 0]);
        assert_eq!(t(Spacing::Trailing, 3), [999, 666, 332]);
        assert_eq!(t(Spacing::Linspace, 3), [999, 500, 0]);
        assert_eq!(t(Spacing::Trailing, 7)[..3], [999, 856, 713]);
        assert_eq!(t(Spacing::Linspace, 7)[..3], [999, 832, 666]);
        assert_eq!(t(Spacing::Linspace, 1), [0]);
        assert_eq!(t(Spacing::Trailing, 1), [999]);
    }

    #[test]
    fn trailing_spacing_visits_the_steps_asked_for_where_numpy_arange_adds_one() {
        // diffusers: T = 50, n = 29 gives 30 timesteps ending in −1.
        let ts = timesteps(Spacing::Trailing, 50, 29).unwrap();
        assert_eq!(ts.len(), 29);
        assert_eq!(*ts.last().unwrap(), 1);
    }

    #[test]
    fn steps_out_of_range_are_refused() {
        assert_eq!(
            timesteps(Spacing::Leading, 10, 11),
            Err(SamplerError::Steps {
                steps: 11,
                train_timesteps: 10
            })
        );
        assert!(timesteps(Spacing::Leading, 10, 0).is_err());
    }
}
