//! `dtx eval --features A B`: FD and KID between two feature matrices the
//! user computed elsewhere (clean-fid, pytorch-fid, their own extractor),
//! read from safetensors files and computed in f64.

use crate::eval::metrics::{Features, frechet_distance, kid, kid_full};
use anyhow::{anyhow, bail};
use safetensors::tensor::Dtype;
use serde_json::json;
use std::io::Write;
use std::path::Path;

/// One feature matrix as read: where it came from and its values.
struct Matrix {
    /// `file` or `file:key`, as given.
    spec: String,
    /// The tensor's key in the file.
    key: String,
    /// Its dtype.
    dtype: String,
    features: Features,
}

/// Reads `spec`: `file.safetensors` (its only 2-D tensor) or
/// `file.safetensors:key`; F32 or F64 rows, checked finite.
fn read_matrix(spec: &str) -> anyhow::Result<Matrix> {
    let (file, key) = match spec.rsplit_once(':') {
        Some((f, k)) if !Path::new(spec).exists() && !k.contains(['/', '\\']) => {
            (f, Some(k.to_owned()))
        }
        _ => (spec, None),
    };
    let bytes = crate::util::fs::read(file.as_ref())
        .map_err(|e| anyhow!("--features: cannot read `{file}`: {e}"))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow!("--features: `{file}` is not a safetensors file: {e}"))?;
    let listing = |st: &safetensors::SafeTensors<'_>| {
        let mut t: Vec<String> = st
            .tensors()
            .iter()
            .map(|(n, v)| format!("`{n}` {:?} {:?}", v.dtype(), v.shape()))
            .collect();
        t.sort();
        t.join(", ")
    };
    let key = match key {
        Some(k) => k,
        None => {
            let mut two_d: Vec<String> = st
                .tensors()
                .into_iter()
                .filter(|(_, v)| v.shape().len() == 2)
                .map(|(n, _)| n)
                .collect();
            two_d.sort();
            match two_d.as_slice() {
                [one] => one.clone(),
                [] => bail!(
                    "--features: `{file}` holds no 2-D tensor (rows × features); it holds: {}",
                    listing(&st)
                ),
                many => bail!(
                    "--features: `{file}` holds {} 2-D tensors ({}): name one as `{file}:KEY`",
                    many.len(),
                    many.iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    let v = st.tensor(&key).map_err(|_| {
        anyhow!(
            "--features: `{file}` has no tensor `{key}`; it holds: {}",
            listing(&st)
        )
    })?;
    let [rows, dim] = v.shape() else {
        bail!(
            "--features: `{file}:{key}` has shape {:?}; expected rows × features (2-D)",
            v.shape()
        );
    };
    let (rows, dim) = (*rows, *dim);
    let d = v.data();
    let data: Vec<f64> = match v.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes(b.try_into().expect("4 bytes"))))
            .collect(),
        Dtype::F64 => d
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect(),
        other => bail!("--features: `{file}:{key}` has dtype {other:?}; expected F32 or F64"),
    };
    if rows < 2 {
        bail!(
            "--features: `{file}:{key}` has {rows} row(s); FD and KID need at least 2 feature vectors"
        );
    }
    if dim == 0 {
        bail!("--features: `{file}:{key}` has rows of 0 features");
    }
    if let Some(i) = data.iter().position(|x| !x.is_finite()) {
        bail!(
            "--features: `{file}:{key}` holds {} at row {}, column {}",
            data[i],
            i / dim,
            i % dim
        );
    }
    Ok(Matrix {
        spec: spec.to_owned(),
        key,
        dtype: format!("{:?}", v.dtype()),
        features: Features::new(data, dim),
    })
}

/// The KID subset settings of `dtx eval`.
pub struct SubsetSettings {
    /// Number of subsets.
    pub subsets: usize,
    /// Largest subset.
    pub subset_size: usize,
    /// Seed of the draws.
    pub seed: u64,
}

/// Runs `dtx eval --features A B`.
pub fn run(
    specs: &[String],
    kid_settings: &SubsetSettings,
    as_json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let [a, b] = specs else {
        bail!("--features takes two feature files, A and B");
    };
    let (a, b) = (read_matrix(a)?, read_matrix(b)?);
    let (fa, fb) = (&a.features, &b.features);
    if fa.dim() != fb.dim() {
        bail!(
            "--features: `{}` has {} features per row but `{}` has {}; both must come from the \
             same extractor",
            a.spec,
            fa.dim(),
            b.spec,
            fb.dim()
        );
    }
    let fd = frechet_distance(fa, fb)?;
    let full = kid_full(fa, fb)?;
    let sub = kid(
        fa,
        fb,
        kid_settings.subsets,
        kid_settings.subset_size,
        kid_settings.seed,
    )?;
    if as_json {
        let side = |m: &Matrix| {
            json!({"spec": m.spec, "key": m.key, "dtype": m.dtype,
                   "rows": m.features.len(), "dim": m.features.dim()})
        };
        let v = json!({
            "a": side(&a),
            "b": side(&b),
            "fd": fd,
            "kid": full,
            "kid_subsets": {
                "mean": sub.mean, "std": sub.std, "subsets": sub.subsets,
                "subset_size": sub.subset_size, "seed": kid_settings.seed,
            },
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    for (name, m) in [("A", &a), ("B", &b)] {
        writeln!(
            out,
            "{name}: `{}` (`{}`, {} × {}, {})",
            m.spec,
            m.key,
            m.features.len(),
            m.features.dim(),
            m.dtype
        )?;
    }
    writeln!(out, "  FD   {fd:.6}")?;
    writeln!(out, "  KID  {full:.8}  (unbiased, every row)")?;
    writeln!(
        out,
        "  KID  {:.8} ± {:.8}  ({} subsets of {}, seed {})",
        sub.mean, sub.std, sub.subsets, sub.subset_size, kid_settings.seed
    )?;
    Ok(())
}
