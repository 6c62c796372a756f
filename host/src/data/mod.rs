//! Datasets: where training and evaluation samples come from. `data/` owns
//! the backend-free [`Dataset`] (flat f32 samples, optional labels, few-shot
//! [`Dataset::limit`], [`Dataset::split`], conversion of a batch to backend
//! tensors), the resumable [`BatchIter`], the built-in synthetic sets
//! (`builtin:gmm`, a 2-D Gaussian mixture with exact density, and
//! `builtin:shapes`, procedural images) made by [`builtin`] from a config
//! table, and image folders ([`load_folder`]). docs/data.md is the user's
//! reference for all of it.

mod config;
mod dataset;
mod error;
pub(crate) mod folder;
pub mod gmm;
mod iter;
pub(crate) mod pixels;
pub mod shapes;

pub use dataset::Dataset;
pub use error::DataError;
pub use folder::{load_folder, load_folder_with_masks};
pub use gmm::{Component, Gmm};
pub use iter::{Batch, BatchIter, BatchPosition};
pub use pixels::{chw_from_rgb, grid, rgb_from_chw};
pub use shapes::{ShapeSpec, ShapesConfig};

/// Names of the built-in sets, as written after `builtin:`.
pub const BUILTINS: [&str; 2] = ["gmm", "shapes"];

/// Built-in set `name` with options from `config`: `count` samples,
/// deterministic in `seed`. Unknown names and config keys are errors that
/// suggest the nearest valid one.
pub fn builtin(
    name: &str,
    config: &toml::Table,
    seed: u64,
    count: usize,
) -> Result<Dataset, DataError> {
    match name {
        "gmm" => {
            let gmm = Gmm::from_config(config)?;
            let labels = config::Config::new("gmm", config, &["preset", "components", "labels"])?
                .bool("labels", true)?;
            Ok(gmm.dataset(count, seed, labels))
        }
        "shapes" => Ok(ShapesConfig::from_config(config)?.dataset(seed, count)),
        _ => Err(DataError::UnknownDataset {
            name: name.to_owned(),
            suggestion: crate::util::nearest(name, BUILTINS).map(str::to_owned),
            valid: BUILTINS.iter().map(|b| (*b).to_owned()).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_registered_and_buildable() {
        let names: Vec<&str> = crate::registry::of_kind("dataset")
            .iter()
            .map(|b| b.name)
            .collect();
        assert_eq!(names, BUILTINS);
        let empty = toml::Table::new();
        let g = builtin("gmm", &empty, 0, 10).unwrap();
        assert_eq!(
            (g.len(), g.sample_shape.as_slice(), g.class_names.len()),
            (10, &[2][..], 8)
        );
        let s = builtin("shapes", &empty, 0, 4).unwrap();
        assert_eq!((s.len(), s.sample_shape.as_slice()), (4, &[3, 32, 32][..]));
        assert_eq!(builtin("shapes", &empty, 0, 4).unwrap(), s);
    }

    #[test]
    fn unknown_builtin_suggests_a_name() {
        let err = builtin("gmn", &toml::Table::new(), 0, 1)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "no built-in dataset `gmn` (did you mean `gmm`?); built-in datasets: gmm, shapes"
        );
        let t: toml::Table = toml::from_str("label = false").unwrap();
        let err = builtin("gmm", &t, 0, 1).unwrap_err().to_string();
        assert!(
            err.starts_with("builtin:gmm: unknown config key `label` (did you mean `labels`?)"),
            "{err}"
        );
    }
}
