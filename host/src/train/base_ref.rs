//! The frozen base a checkpoint refers to instead of holding it: the
//! weights file the run's source was loaded from, by path and SHA-256. A
//! run whose source is a file (a diffusers folder's weights, an ADM
//! checkpoint) writes only what trains — plugin parameters, base tensors
//! that train, moments, averages — plus this reference; restoring reads the
//! frozen base tensors from the source again and refuses a file whose
//! digest changed (docs/runs.md, "Checkpoints").

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A weights file by path and content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BaseRef {
    /// The source as the run loaded it (a diffusers folder or a checkpoint
    /// file; absolute).
    pub source: String,
    /// Its weights file (absolute), whose digest this is.
    pub path: String,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

/// The weights file a source at `path` is read from: the file itself, or a
/// diffusers folder's `diffusion_pytorch_model.safetensors`; `None` when
/// there is no such single file.
pub fn weights_file(path: &Path) -> Option<PathBuf> {
    let file = if path.is_dir() {
        path.join(crate::model::diffusers::WEIGHTS_FILE)
    } else {
        path.to_path_buf()
    };
    file.is_file().then_some(file)
}

impl BaseRef {
    /// The reference to the weights of the source at `path` (digest read
    /// from the file now); `None` when the source has no single weights
    /// file.
    pub fn of(path: &Path) -> std::io::Result<Option<Self>> {
        let Some(file) = weights_file(path) else {
            return Ok(None);
        };
        let file = std::path::absolute(&file)?;
        Ok(Some(BaseRef {
            source: std::path::absolute(path)?.display().to_string(),
            sha256: sha256_of(&file)?,
            path: file.display().to_string(),
        }))
    }
}

/// SHA-256 of a file, read in a stream (a base can be gigabytes).
pub fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut f = std::fs::File::open(path)?;
    std::io::copy(&mut f, &mut hasher)?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_sha256_and_a_folder_means_its_weights_file() {
        let dir = std::env::temp_dir().join(format!("dtx-base-ref-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(BaseRef::of(&dir).unwrap(), None);
        std::fs::write(dir.join(crate::model::diffusers::WEIGHTS_FILE), b"abc").unwrap();
        let r = BaseRef::of(&dir).unwrap().unwrap();
        // FIPS 180-2's example: SHA-256("abc")
        assert_eq!(
            r.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(r.path.ends_with(crate::model::diffusers::WEIGHTS_FILE));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
