//! `dtx-bench`: dtx's research benchmarks — `dtx bench transfer`, `gmm`,
//! `cas` and `anl` — on top of the `dtx` host library, which they reach
//! only through its public interface (manifests, plans, runs, data, eval).
//! The `dtx` binary forwards those subcommands to the `dtx-bench`
//! executable (`dtx bench engine` stays in the host).
//!
//! [`cas`] and [`gmm`] hold the benches' own logic (arms, classifier,
//! settings, scores, tables, plots); [`cli`] the commands; [`shipped`]
//! finds the shipped `manifests/` folder from any working folder.
#![warn(missing_docs)]

pub mod cas;
pub mod cli;
pub mod gmm;
pub mod shipped;
