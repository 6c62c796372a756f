//! Where the benches find dtx's shipped `manifests/` folder (which holds
//! `models/shapes-source` too), so that `dtx bench …` works from any
//! working folder: `--manifests DIR`, else `DTX_MANIFESTS`, else relative
//! to the executable — `<exe dir>/../../manifests` for a build in
//! `target/<profile>/`, `<exe dir>/../share/dtx/manifests` for an installed
//! layout — else `./manifests`. The first folder that holds every manifest
//! a bench needs is taken; the error lists the places tried.
//!
//! Runs go where the manifests' `run.output_dir` says (`../runs` beside
//! the shipped folder), unless `--runs DIR` names another folder
//! ([`runs_override`]).

use std::path::{Path, PathBuf};

/// Where a benchmark finds the shipped manifests and puts its runs: the
/// flags every benchmark that runs manifests shares.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Places {
    /// The shipped manifests folder, for the benchmark's default manifests
    /// (default: $DTX_MANIFESTS, else the repository's or installation's
    /// `manifests/` found from the executable, else `./manifests`).
    #[arg(long = "manifests", value_name = "DIR")]
    pub manifests_dir: Option<PathBuf>,
    /// Folder for the runs and the benchmark's `bench-<name>/` results
    /// (default: the manifests' `run.output_dir`, `runs/` beside the
    /// shipped manifests folder).
    #[arg(long, value_name = "DIR")]
    pub runs: Option<PathBuf>,
}

/// The variable naming the manifests folder.
pub const MANIFESTS_VAR: &str = "DTX_MANIFESTS";

/// The folders to look in, each with where it comes from.
fn candidates(explicit: Option<&Path>) -> Vec<(PathBuf, &'static str)> {
    if let Some(dir) = explicit {
        return vec![(dir.to_path_buf(), "--manifests")];
    }
    if let Some(dir) = std::env::var_os(MANIFESTS_VAR).filter(|v| !v.is_empty()) {
        return vec![(PathBuf::from(dir), MANIFESTS_VAR)];
    }
    let mut dirs = Vec::new();
    if let Some(exe_dir) = dtx::util::exe_dir() {
        if let Some(root) = exe_dir.parent().and_then(Path::parent) {
            dirs.push((
                root.join("manifests"),
                "a build in the repository's target/<profile>/: <exe dir>/../../manifests",
            ));
        }
        if let Some(prefix) = exe_dir.parent() {
            dirs.push((
                prefix.join("share").join("dtx").join("manifests"),
                "an installed layout: <exe dir>/../share/dtx/manifests",
            ));
        }
    }
    dirs.push((Path::new(".").join("manifests"), "the working folder"));
    dirs
}

/// The shipped manifests folder holding every file of `needed` (names
/// within the folder): the first of `explicit` (`--manifests`), the
/// `DTX_MANIFESTS` folder, the executable's and the working folder's.
pub fn find_manifests(explicit: Option<&Path>, needed: &[&str]) -> anyhow::Result<PathBuf> {
    let tried = candidates(explicit);
    let mut lines = Vec::new();
    for (dir, origin) in &tried {
        let missing: Vec<&str> = needed
            .iter()
            .copied()
            .filter(|f| !dir.join(f).is_file())
            .collect();
        if missing.is_empty() {
            return Ok(dir.canonicalize().unwrap_or_else(|_| dir.clone()));
        }
        let why = if dir.is_dir() {
            format!("has no {}", missing.join(", "))
        } else {
            "no such folder".to_owned()
        };
        lines.push(format!("  {} ({origin}): {why}", dir.display()));
    }
    anyhow::bail!(
        "no manifests folder holding {}; looked in:\n{}\nname the shipped `manifests/` folder with --manifests DIR or {MANIFESTS_VAR}=DIR",
        needed.join(", "),
        lines.join("\n")
    )
}

/// The override that sends every run to `runs` (made absolute against the
/// working folder, as a path on the command line is), or none.
pub fn runs_override(runs: Option<&Path>) -> anyhow::Result<Option<String>> {
    let Some(runs) = runs else {
        return Ok(None);
    };
    let dir = std::path::absolute(runs)?;
    Ok(Some(format!(
        "run.output_dir={}",
        toml::Value::String(dir.display().to_string())
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_folder_is_the_only_one_tried() {
        let dir = std::env::temp_dir().join(format!("dtx-shipped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.toml"), "").unwrap();
        assert_eq!(
            find_manifests(Some(&dir), &["a.toml"]).unwrap(),
            dir.canonicalize().unwrap()
        );
        let e = find_manifests(Some(&dir), &["a.toml", "b.toml"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("(--manifests): has no b.toml"), "{e}");
        assert!(e.contains("--manifests DIR or DTX_MANIFESTS=DIR"), "{e}");
        let e = find_manifests(Some(&dir.join("none")), &["a.toml"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such folder"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_repository_manifests_are_found_beside_the_build_folder() {
        // Unit tests run from target/<profile>/deps: the profile's
        // ../../manifests is the repository's when the target folder is the
        // repository's own (and DTX_MANIFESTS names no other).
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let beside = dtx::util::exe_dir()
            .and_then(|d| d.parent()?.parent()?.canonicalize().ok())
            .is_some_and(|root| root == repo.canonicalize().unwrap());
        if !beside || std::env::var_os(MANIFESTS_VAR).is_some() {
            return;
        }
        let found = find_manifests(None, &["rejection.toml"]).unwrap();
        assert_eq!(found, repo.join("manifests").canonicalize().unwrap());
    }

    #[cfg(unix)]
    #[test]
    fn runs_become_an_absolute_output_dir() {
        assert_eq!(runs_override(None).unwrap(), None);
        let set = runs_override(Some(Path::new("/tmp/x y"))).unwrap().unwrap();
        assert_eq!(set, "run.output_dir=\"/tmp/x y\"");
    }
}
