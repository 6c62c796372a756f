//! Paths of a loaded manifest as a run folder keeps them: absolute, and
//! folded lexically, so the copy in `runs/<name>/manifest.toml` works from
//! anywhere (`dtx sample`, `--resume`, a `kind = "dtx"` source).

use super::LoadedManifest;
use std::path::{Path, PathBuf};

impl LoadedManifest {
    /// The resolved manifest with every file path made absolute (source,
    /// target folder, plugin library files, output folder, evaluation
    /// reference folder and Inception weights, the CLIP folder and the
    /// condition images), so the copy a
    /// run folder keeps works from there (`dtx sample`, `--resume`).
    pub fn to_portable_toml_string(&self) -> String {
        let abs = |p: &Path| {
            let joined = self.resolve_path(p);
            std::path::absolute(&joined).unwrap_or(joined)
        };
        let mut m = self.manifest.clone();
        m.run.output_dir = abs(&m.run.output_dir);
        if let Some(s) = m.source.as_mut() {
            s.path = s.path.as_deref().map(abs);
        }
        if let Some(t) = m.target.as_mut()
            && t.builtin().is_none()
        {
            t.dataset = abs(Path::new(&t.dataset)).display().to_string();
        }
        if let Some(c) = m.condition.as_mut() {
            c.path = c.path.as_deref().map(abs);
        }
        if let Some(s) = m.sample.as_mut()
            && let Some(c) = s.condition.as_mut()
            && c != "target"
            && c != "held_out"
        {
            *c = abs(Path::new(c.as_str())).display().to_string();
        }
        if let Some(e) = m.eval.as_mut() {
            e.inception_weights = e.inception_weights.as_deref().map(abs);
            if let Some(super::Reference::Folder(f)) = e.reference.as_mut() {
                *f = abs(f);
            }
        }
        for p in &mut m.plugins {
            if p.library_is_path() {
                p.library = abs(Path::new(&p.library)).display().to_string();
            }
        }
        toml::to_string(&m).expect("a Manifest always serialises to TOML")
    }
}

/// `path` without `.` components and with each `name/..` pair removed,
/// by text alone (no file system access; a leading `..` stays).
pub(super) fn lexically_normal(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component<'_>> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.is_empty() {
        PathBuf::from(".")
    } else {
        out.iter().collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn output_paths_are_folded_lexically() {
        use super::lexically_normal as n;
        use std::path::Path;
        assert_eq!(n(Path::new("manifests/../runs")), Path::new("runs"));
        assert_eq!(n(Path::new("./a/./b/../c")), Path::new("a/c"));
        assert_eq!(n(Path::new("../runs")), Path::new("../runs"));
        assert_eq!(n(Path::new("/x/y/../../z")), Path::new("/z"));
        assert_eq!(n(Path::new("a/..")), Path::new("."));
    }
}
