//! Upper bounds on counts, shared by the manifest's checks and the host
//! services that plugins call, so a typo is an error naming the key rather
//! than an allocation that aborts the process (docs/manifest.md, "Limits").

/// The most examples a data set, a held-out split or a sample count may hold.
pub const MAX_EXAMPLES: i64 = 10_000_000;
/// The largest training or sampling batch.
pub const MAX_BATCH: i64 = 65_536;
/// The most diffusion timesteps a schedule may have.
pub const MAX_TIMESTEPS: i64 = 100_000;
/// The largest class label (labels.csv, `sample.label`).
pub const MAX_CLASSES: i64 = 1_000_000;
