//! Fitting a checkpoint to a network: every tensor the network needs is
//! looked up under its checkpoint key, its shape checked, and its values
//! converted to f32 (F16, BF16 and F64 are converted exactly or rounded to
//! nearest); only when every key fits are the tensors registered in the
//! host's [`ParamStore`]. All missing keys, unexpected keys, shape and dtype
//! mismatches are reported together. The checkpoint readers
//! (`safetensors`, `model::torch_file` for `torch.save` archives) hand their
//! tensors over as `StoredTensor`s.

use crate::tensor_abi::ParamStore;
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// One way a checkpoint does not fit the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightProblem {
    /// The config needs `key`, the file lacks it.
    Missing {
        /// Checkpoint key.
        key: String,
        /// Shape the config implies.
        expected: Vec<usize>,
    },
    /// The file holds `key`, which the config does not use.
    Unexpected {
        /// Checkpoint key.
        key: String,
        /// Its shape in the file.
        found: Vec<usize>,
    },
    /// `key` is in both, with different shapes.
    Shape {
        /// Checkpoint key.
        key: String,
        /// Shape the config implies.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// `key` is stored in a dtype dtx does not convert (it reads F32, F16,
    /// BF16 and F64).
    Dtype {
        /// Checkpoint key.
        key: String,
        /// The dtype, as safetensors names it (`I64`).
        dtype: String,
    },
}

impl WeightProblem {
    /// The checkpoint key the problem is about.
    pub fn key(&self) -> &str {
        match self {
            WeightProblem::Missing { key, .. }
            | WeightProblem::Unexpected { key, .. }
            | WeightProblem::Shape { key, .. }
            | WeightProblem::Dtype { key, .. } => key,
        }
    }
}

impl fmt::Display for WeightProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightProblem::Missing { key, expected } => {
                write!(f, "missing key `{key}` (expected shape {expected:?})")
            }
            WeightProblem::Unexpected { key, found } => write!(
                f,
                "unexpected key `{key}` (shape {found:?}); the config has no such parameter"
            ),
            WeightProblem::Shape {
                key,
                expected,
                found,
            } => write!(f, "`{key}`: expected shape {expected:?}, found {found:?}"),
            WeightProblem::Dtype { key, dtype } => write!(
                f,
                "`{key}`: dtype {dtype} is not supported (F32, F16, BF16, F64 are)"
            ),
        }
    }
}

/// Why a checkpoint could not be loaded; each loader wraps it in its own
/// error with the file.
#[derive(Debug)]
pub(crate) enum LoadFailure {
    /// The file is absent, unreadable or not in the expected format.
    Read(String),
    /// The tensors do not fit the config; every problem, in key order.
    Problems(Vec<WeightProblem>),
    /// Registering a parameter in the store failed (a name registered twice).
    Store(String),
}

/// A tensor as a checkpoint stores it.
pub(crate) trait StoredTensor {
    /// Its shape.
    fn shape(&self) -> Vec<usize>;
    /// Its dtype, named as safetensors names them (`F32`, `BF16`, `I64`).
    fn dtype(&self) -> String;
    /// Its values in row-major order as f32, or `None` for a dtype dtx does
    /// not convert.
    fn to_f32(&self) -> Option<Vec<f32>>;
}

/// `(N problem(s)):` and one indented line per problem, as the `Weights`
/// errors of the U-Net, ADM and CLIP loaders print them.
pub(crate) fn problem_list(problems: &[WeightProblem]) -> String {
    let n = problems.len();
    let mut lines: Vec<String> = problems
        .iter()
        .take(MAX_LISTED)
        .map(ToString::to_string)
        .collect();
    if n > MAX_LISTED {
        // a config far from the checkpoint can miss millions of keys
        lines.push(format!(
            "… and {} more (`dtx model inspect` lists the checkpoint's keys)",
            n - MAX_LISTED
        ));
    }
    format!(
        "({n} problem{}):\n  {}",
        if n == 1 { "" } else { "s" },
        lines.join("\n  ")
    )
}

/// The most problems [`problem_list`] lists one by one.
const MAX_LISTED: usize = 50;

/// A checkpoint tensor as read: its shape, and its values as f32 or the
/// dtype it is stored in when dtx does not convert that dtype.
pub(crate) struct ReadTensor {
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, or its unconverted dtype.
    pub values: Result<Vec<f32>, String>,
}

/// The tensors of a checkpoint whose key `ignored` does not drop, read as
/// [`ReadTensor`]s.
pub(crate) fn read_tensors<T: StoredTensor>(
    tensors: impl IntoIterator<Item = (String, T)>,
    ignored: impl Fn(&str) -> bool,
) -> BTreeMap<String, ReadTensor> {
    tensors
        .into_iter()
        .filter(|(key, _)| !ignored(key))
        .map(|(key, t)| {
            let values = t.to_f32().ok_or_else(|| t.dtype());
            let shape = t.shape();
            (key, ReadTensor { shape, values })
        })
        .collect()
}

/// Takes a checkpoint's tensors out by key (for [`register_fitting`], and
/// for the networks built outside the parameter store: the CLIP encoder,
/// the FID Inception), noting every
/// missing key, wrong shape and unreadable dtype instead of stopping at the
/// first; [`TensorTaker::finish`] adds the keys nobody asked for.
pub(crate) struct TensorTaker {
    found: BTreeMap<String, ReadTensor>,
    problems: Vec<WeightProblem>,
}

impl TensorTaker {
    /// Over the tensors `found`.
    pub(crate) fn new(found: BTreeMap<String, ReadTensor>) -> Self {
        Self {
            found,
            problems: Vec::new(),
        }
    }

    /// The values of `key`, if it is there with `shape` and a float dtype;
    /// else `None`, with the problem noted.
    pub(crate) fn take(&mut self, key: &str, shape: &[usize]) -> Option<Vec<f32>> {
        let problem = match self.found.remove(key) {
            None => WeightProblem::Missing {
                key: key.to_owned(),
                expected: shape.to_vec(),
            },
            Some(t) if t.shape != shape => WeightProblem::Shape {
                key: key.to_owned(),
                expected: shape.to_vec(),
                found: t.shape,
            },
            Some(ReadTensor {
                values: Err(dtype), ..
            }) => WeightProblem::Dtype {
                key: key.to_owned(),
                dtype,
            },
            Some(ReadTensor { values: Ok(v), .. }) => return Some(v),
        };
        self.problems.push(problem);
        None
    }

    /// Every problem in key order, the keys left over counted as
    /// unexpected; empty when the checkpoint fits.
    pub(crate) fn finish(self) -> Vec<WeightProblem> {
        let TensorTaker {
            found,
            mut problems,
        } = self;
        problems.extend(found.into_iter().map(|(key, t)| WeightProblem::Unexpected {
            key,
            found: t.shape,
        }));
        problems.sort_by(|a, b| a.key().cmp(b.key()));
        problems
    }
}

/// IEEE half to single precision (exact: every f16 is an f32).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // subnormal: frac · 2^-24, renormalised
            let (mut e, mut f) = (127 - 15 + 1, frac);
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((f & 0x3ff) << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// bfloat16 to single precision (exact: a bf16 is the top half of an f32).
pub(crate) fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// Little-endian `bytes` of the float dtype `dtype` (`F32`, `F16`, `BF16`,
/// `F64`) as f32; `None` for another dtype.
pub(crate) fn le_bytes_to_f32(dtype: &str, d: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        "F32" => d
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        "F16" => d
            .chunks_exact(2)
            .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        "BF16" => d
            .chunks_exact(2)
            .map(|b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        "F64" => d
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        _ => return None,
    })
}

impl StoredTensor for TensorView<'_> {
    fn shape(&self) -> Vec<usize> {
        TensorView::shape(self).to_vec()
    }

    fn dtype(&self) -> String {
        format!("{:?}", TensorView::dtype(self))
    }

    fn to_f32(&self) -> Option<Vec<f32>> {
        match TensorView::dtype(self) {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64 => {
                le_bytes_to_f32(&StoredTensor::dtype(self), self.data())
            }
            _ => None,
        }
    }
}

/// Checks `found` (checkpoint key → tensor) against `expected` (every
/// parameter the network needs, with its PyTorch shape) and, when every key
/// fits, registers each as a base parameter of `store` in `expected` order,
/// `trainable(key)` deciding which train. Nothing is registered otherwise.
pub(crate) fn register_fitting<B: AutodiffBackend, T: StoredTensor>(
    expected: &[(String, Vec<usize>)],
    found: BTreeMap<String, T>,
    store: &mut ParamStore<B>,
    device: &B::Device,
    trainable: &dyn Fn(&str) -> bool,
) -> Result<(), LoadFailure> {
    let mut taker = TensorTaker::new(read_tensors(found, |_| false));
    let values: Vec<_> = expected
        .iter()
        .filter_map(|(key, shape)| taker.take(key, shape).map(|v| (key, shape, v)))
        .collect();
    let problems = taker.finish();
    if !problems.is_empty() {
        return Err(LoadFailure::Problems(problems));
    }
    for (key, shape, v) in values {
        let prim = B::float_from_data(TensorData::new(v, shape.clone()), device);
        store
            .register_base(key, prim, trainable(key))
            .map_err(|e| LoadFailure::Store(format!("{e:?}")))?;
    }
    Ok(())
}

/// Loads the safetensors file `file` into `store` as [`register_fitting`]
/// does, reading each checkpoint key `k` as `rename(k)`.
pub(crate) fn load_safetensors_file<B: AutodiffBackend>(
    file: &Path,
    rename: &dyn Fn(&str) -> String,
    expected: &[(String, Vec<usize>)],
    store: &mut ParamStore<B>,
    device: &B::Device,
    trainable: &dyn Fn(&str) -> bool,
) -> Result<(), LoadFailure> {
    let bytes = crate::util::fs::read(file).map_err(|e| LoadFailure::Read(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| LoadFailure::Read(format!("not a safetensors file: {e}")))?;
    let found: BTreeMap<String, TensorView<'_>> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (rename(&k), v))
        .collect();
    register_fitting(expected, found, store, device, trainable)
}

/// The dtypes a checkpoint tensor may have (converted to f32 on load).
const FLOAT_DTYPES: &[&str] = &["F32", "F16", "BF16", "F64"];

/// Checks a safetensors header (key → shape, dtype; keys already renamed as
/// the loader renames them) against `expected`, without reading any tensor
/// data: the problems [`register_fitting`] would report, in key order.
pub(crate) fn header_problems(
    expected: &[(String, Vec<usize>)],
    mut found: BTreeMap<String, (Vec<usize>, String)>,
) -> Vec<WeightProblem> {
    let mut problems = Vec::new();
    for (key, shape) in expected {
        match found.remove(key) {
            None => problems.push(WeightProblem::Missing {
                key: key.clone(),
                expected: shape.clone(),
            }),
            Some((s, _)) if &s != shape => problems.push(WeightProblem::Shape {
                key: key.clone(),
                expected: shape.clone(),
                found: s,
            }),
            Some((_, dtype)) if !FLOAT_DTYPES.contains(&dtype.as_str()) => {
                problems.push(WeightProblem::Dtype {
                    key: key.clone(),
                    dtype,
                });
            }
            Some(_) => {}
        }
    }
    problems.extend(
        found
            .into_iter()
            .map(|(key, (s, _))| WeightProblem::Unexpected { key, found: s }),
    );
    problems.sort_by(|a, b| a.key().cmp(b.key()));
    problems
}

/// [`header_problems`] for the safetensors file `file`, its keys read as
/// `rename(k)`; `Err` when the header cannot be read.
pub(crate) fn check_safetensors_header(
    file: &Path,
    rename: &dyn Fn(&str) -> String,
    expected: &[(String, Vec<usize>)],
) -> Result<Vec<WeightProblem>, String> {
    let header = super::read_safetensors_header(file).map_err(|e| e.to_string())?;
    let found = header
        .into_iter()
        .map(|t| (rename(&t.name), (t.shape, t.dtype)))
        .collect();
    Ok(header_problems(expected, found))
}

#[cfg(test)]
mod tests {
    use super::{WeightProblem, bf16_to_f32, f16_to_f32, problem_list};

    /// A config far from its checkpoint misses millions of keys; the message
    /// lists the first 50 and counts the rest (found by fuzzing: 448 MB of
    /// stderr for `num_res_blocks = 100000`).
    #[test]
    fn long_problem_lists_are_cut() {
        let problems: Vec<WeightProblem> = (0..1000)
            .map(|i| WeightProblem::Missing {
                key: format!("k{i}"),
                expected: vec![1],
            })
            .collect();
        let text = problem_list(&problems);
        assert!(text.starts_with("(1000 problems):"), "{text}");
        assert!(text.contains("k49") && !text.contains("k50 "), "{text}");
        assert!(
            text.ends_with("… and 950 more (`dtx model inspect` lists the checkpoint's keys)"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 52);
    }

    #[test]
    fn f16_conversion_covers_normal_subnormal_and_special_values() {
        // Bit patterns from IEEE 754 binary16 tables.
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x0200), 2f32.powi(-15));
        assert_eq!(f16_to_f32(0x8000), -0.0);
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn bf16_is_the_top_half_of_an_f32() {
        // 0x3f80 = 1.0, 0xc040 = -3.0, 0x3e80 = 0.25 (bfloat16 tables).
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc040), -3.0);
        assert_eq!(bf16_to_f32(0x3e80), 0.25);
    }
}
