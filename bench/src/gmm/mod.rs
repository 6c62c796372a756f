//! `dtx bench gmm`: the TGDP talk's simulation on dtx's built-in Gaussian
//! mixtures. A source model is pretrained on the source mixture, transferred
//! to n points of the reweighted target mixture by each method, and the
//! methods' samples are scored under the exact target density. This folder
//! owns the setting and the manifests it generates ([`setting`]), the
//! scores ([`metrics`]), the scatter plots ([`scatter`]) and the table
//! ([`table`]); the command itself is `cli/gmm.rs`.

pub mod metrics;
pub mod scatter;
pub mod setting;
pub mod table;

pub use metrics::{Scores, score};
pub use setting::{Method, Setting};
pub use table::Row;
