//! Parity with pytorch-fid's FID Inception-v3 and PIL's bicubic resize, and
//! the weight loader's errors.
//!
//! Reference: `tests/fixtures/inception/io.safetensors`, `broken.pth` and
//! `broken_legacy.pth`, written by `tests/fixtures/inception/make_fixtures.py`
//! (torch 2.15, torchvision 0.29.2, pytorch-fid 0.3.0, Pillow 13.0.0; f32 on
//! CPU).
//! Real FID weights cannot be committed, so both sides build the same
//! formula weights ([`formula_weights`]; the fixture holds each tensor's sum
//! to show they agree bit for bit) and pytorch-fid's own `InceptionV3` loads
//! them.
//!
//! Tolerances: the resize, 1e-4 absolute on 0–255 values (PIL and dtx both
//! sum in f64 and store f32, so only the last f32 bit may differ); the
//! features, 1e-4 of the largest |feature| (94 convolutions summed in
//! another order than PyTorch's, batch norms folded into them).

use super::*;
use burn::backend::Flex as B;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// What [`InceptionV3::from_named`] takes: `(key, shape, values)`.
type Named = Vec<(String, Vec<usize>, Vec<f32>)>;

const RESIZE_TOLERANCE: f32 = 1e-4;
const FEATURE_TOLERANCE: f32 = 1e-4;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/inception")
}

/// The fixture's tensors by name, `(shape, values)` (f32, f64 and u8 as
/// f64), and its metadata.
struct Io {
    tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
    metadata: HashMap<String, String>,
}

impl Io {
    fn read() -> Io {
        let bytes = std::fs::read(fixture_dir().join("io.safetensors")).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(k, v)| {
                let d = v.data();
                let vals = match v.dtype() {
                    safetensors::Dtype::F32 => d
                        .chunks_exact(4)
                        .map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap())))
                        .collect(),
                    safetensors::Dtype::F64 => d
                        .chunks_exact(8)
                        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                        .collect(),
                    safetensors::Dtype::U8 => d.iter().map(|&b| f64::from(b)).collect(),
                    other => panic!("{k}: unexpected dtype {other:?}"),
                };
                (k, (v.shape().to_vec(), vals))
            })
            .collect();
        let metadata = meta.metadata().clone().unwrap_or_default();
        Io { tensors, metadata }
    }

    fn shape(&self, name: &str) -> &[usize] {
        &self.tensors[name].0
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        self.tensors[name].1.iter().map(|&v| v as f32).collect()
    }
}

fn max_abs_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Every parameter the network needs with its shape, in key order: the
/// `Missing` problems of an empty checkpoint.
fn parameter_shapes() -> Vec<(String, Vec<usize>)> {
    let Err(InceptionError::Weights { file, problems }) =
        InceptionV3::<B>::from_named(Vec::new(), &Default::default())
    else {
        panic!("an empty checkpoint must be refused");
    };
    assert_eq!(file, None);
    problems
        .into_iter()
        .map(|p| match p {
            WeightProblem::Missing { key, expected } => (key, expected),
            other => panic!("only missing keys expected, got {other}"),
        })
        .collect()
}

/// The formula weights of `make_fixtures.py` (`formula`): for parameter k
/// in key order, element i, s = sin(0.37 i + 1.3 k + 0.1 + 0.001 i²) in f64;
/// conv weights s · sqrt(5 / fan_in), BN weight 1 + 0.1 s, bias and running
/// mean 0.1 s, running var 1 + 0.5 s²; cast to f32. Built once per test run.
fn formula_weights() -> Named {
    static WEIGHTS: OnceLock<Named> = OnceLock::new();
    WEIGHTS
        .get_or_init(|| {
            parameter_shapes()
                .into_iter()
                .enumerate()
                .map(|(k, (key, shape))| {
                    let fan_in: usize = shape[1..].iter().product();
                    let n: usize = shape.iter().product();
                    let k = k as f64;
                    let values = (0..n)
                        .map(|i| {
                            let i = i as f64;
                            let s = (0.37 * i + 1.3 * k + 0.1 + 0.001 * (i * i)).sin();
                            let v = if key.ends_with("conv.weight") {
                                s * (5.0 / fan_in as f64).sqrt()
                            } else if key.ends_with("bn.weight") {
                                1.0 + 0.1 * s
                            } else if key.ends_with("bn.running_var") {
                                1.0 + 0.5 * (s * s)
                            } else {
                                0.1 * s // bn.bias, bn.running_mean
                            };
                            v as f32
                        })
                        .collect();
                    (key, shape, values)
                })
                .collect()
        })
        .clone()
}

/// Resizes fixture channel `name`_in to 299 × 299 and compares the rows and
/// columns the fixture kept; returns the largest error.
fn upsampling_error(io: &Io, name: &str) -> f32 {
    let input = io.f32s(&format!("{name}_in"));
    let [h, w] = io.shape(&format!("{name}_in")) else {
        panic!("{name}_in is not 2-d")
    };
    let out = pil_bicubic_resize(&input, *h, *w, INPUT_SIZE, INPUT_SIZE);
    let sample: Vec<usize> = io.f32s("sample").iter().map(|&v| v as usize).collect();
    let rows: Vec<f32> = sample
        .iter()
        .flat_map(|&r| out[r * INPUT_SIZE..(r + 1) * INPUT_SIZE].to_vec())
        .collect();
    let cols: Vec<f32> = (0..INPUT_SIZE)
        .flat_map(|r| {
            sample
                .iter()
                .map(|&c| out[r * INPUT_SIZE + c])
                .collect::<Vec<_>>()
        })
        .collect();
    let err_rows = max_abs_err(&rows, &io.f32s(&format!("{name}_rows")));
    let err_cols = max_abs_err(&cols, &io.f32s(&format!("{name}_cols")));
    err_rows.max(err_cols)
}

#[test]
fn bicubic_upsampling_matches_pil() {
    let io = Io::read();
    for name in ["up_gray", "up_rect"] {
        let err = upsampling_error(&io, name);
        eprintln!("{name}: max abs error {err:e}");
        assert!(err <= RESIZE_TOLERANCE, "{name}: max abs error {err}");
    }
}

#[test]
fn bicubic_downsampling_matches_pil() {
    let io = Io::read();
    let [h, w] = io.shape("down_in") else {
        panic!("down_in is not 2-d")
    };
    let [oh, ow] = io.shape("down_out") else {
        panic!("down_out is not 2-d")
    };
    let out = pil_bicubic_resize(&io.f32s("down_in"), *h, *w, *oh, *ow);
    let err = max_abs_err(&out, &io.f32s("down_out"));
    eprintln!("down: max abs error {err:e}");
    assert!(err <= RESIZE_TOLERANCE, "max abs error {err}");
}

#[test]
fn bicubic_resize_to_the_same_size_is_the_identity() {
    let input: Vec<f32> = (0..35).map(|i| (i * 37 % 11) as f32).collect();
    assert_eq!(pil_bicubic_resize(&input, 5, 7, 5, 7), input);
    // one axis kept: the other still resamples a constant exactly
    let flat = vec![3.5f32; 4 * 6];
    assert_eq!(pil_bicubic_resize(&flat, 4, 6, 9, 6), vec![3.5f32; 9 * 6]);
}

#[test]
fn formula_weights_are_the_fixtures() {
    let io = Io::read();
    let listed: Vec<String> = io.metadata["weight_keys"]
        .lines()
        .map(str::to_owned)
        .collect();
    let ours: Vec<String> = parameter_shapes()
        .iter()
        .map(|(k, s)| format!("{k} {s:?}"))
        .collect();
    assert_eq!(
        ours, listed,
        "the network's keys and shapes are pytorch-fid's"
    );
    let sums = &io.tensors["weight_sums"].1;
    for ((key, _, values), want) in formula_weights().iter().zip(sums) {
        let got = values.iter().fold(0.0f64, |acc, &v| acc + f64::from(v));
        assert_eq!(
            got, *want,
            "{key}: the formula weights differ from Python's"
        );
    }
}

#[test]
fn features_match_pytorch_fid() {
    let io = Io::read();
    let device = Default::default();
    let net = InceptionV3::<B>::from_named(formula_weights(), &device).unwrap();
    let mut worst = 0.0f32;
    for batch in ["rgb", "gray"] {
        let images = format!("images_{batch}");
        let [n, c, h, w] = io.shape(&images) else {
            panic!("{images} is not 4-d")
        };
        let x =
            Tensor::<B, 4>::from_data(TensorData::new(io.f32s(&images), [*n, *c, *h, *w]), &device);
        let got = net.features(x);
        assert_eq!(got.dims(), [*n, FEATURE_DIM]);
        let got = got.into_data().into_vec::<f32>().unwrap();
        let want = io.f32s(&format!("features_{batch}"));
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let rel = max_abs_err(&got, &want) / scale;
        eprintln!("{batch}: max |feature| {scale}, max error / max |feature| {rel:e}");
        worst = worst.max(rel);
    }
    assert!(worst <= FEATURE_TOLERANCE, "relative error {worst}");
}

#[test]
fn an_empty_checkpoint_lists_every_parameter() {
    let shapes = parameter_shapes();
    // 94 BasicConv2d, each a conv weight and four batch-norm tensors
    assert_eq!(shapes.len(), 94 * 5);
    let find = |k: &str| shapes.iter().find(|(key, _)| key == k).unwrap().1.clone();
    assert_eq!(find("Conv2d_1a_3x3.conv.weight"), [32, 3, 3, 3]);
    assert_eq!(
        find("Mixed_6e.branch7x7dbl_5.conv.weight"),
        [192, 192, 1, 7]
    );
    assert_eq!(find("Mixed_7c.branch_pool.bn.running_var"), [192]);
}

#[test]
fn from_named_checks_shapes_and_unknown_keys_but_ignores_the_classifier() {
    let mut tensors = formula_weights();
    let i = tensors
        .iter()
        .position(|(k, ..)| k == "Mixed_6a.branch3x3.conv.weight")
        .unwrap();
    tensors[i].1 = vec![384, 288, 9, 1];
    tensors.retain(|(k, ..)| k != "Mixed_7b.branch1x1.bn.bias");
    tensors.push(("AuxLogits.fc.bias".into(), vec![2], vec![0.0; 2]));
    tensors.push(("fc.weight".into(), vec![3, 2], vec![0.0; 6]));
    tensors.push((
        "Conv2d_1a_3x3.bn.num_batches_tracked".into(),
        vec![],
        vec![0.0],
    ));
    let err = InceptionV3::<B>::from_named(tensors, &Default::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the weights are not pytorch-fid's FID Inception-v3 (3 problems):\n  \
         unexpected key `AuxLogits.fc.bias` (shape [2]); the config has no such parameter\n  \
         `Mixed_6a.branch3x3.conv.weight`: expected shape [384, 288, 3, 3], found [384, 288, 9, 1]\n  \
         missing key `Mixed_7b.branch1x1.bn.bias` (expected shape [320])"
    );
}

#[test]
fn from_named_refuses_values_that_do_not_fill_the_shape() {
    let tensors = vec![("Conv2d_1a_3x3.bn.bias".to_owned(), vec![32], vec![0.0; 31])];
    let err = InceptionV3::<B>::from_named(tensors, &Default::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Inception weight `Conv2d_1a_3x3.bn.bias`: shape [32] holds 32 values, 31 given"
    );
}

#[test]
fn load_names_the_file_and_the_keys_of_a_broken_pth() {
    let file = fixture_dir().join("broken.pth");
    let err = InceptionV3::<B>::load(&file, &Default::default()).unwrap_err();
    let InceptionError::Weights {
        file: Some(named),
        problems,
    } = &err
    else {
        panic!("expected a weights error, got {err}");
    };
    assert_eq!(named, &file);
    // every needed key but the one good tensor and the misshapen one
    let missing = problems
        .iter()
        .filter(|p| matches!(p, WeightProblem::Missing { .. }))
        .count();
    assert_eq!(missing, 94 * 5 - 2);
    assert!(problems.contains(&WeightProblem::Shape {
        key: "Conv2d_1a_3x3.bn.weight".into(),
        expected: vec![32],
        found: vec![31],
    }));
    assert!(problems.contains(&WeightProblem::Unexpected {
        key: "Mixed_8a.conv.weight".into(),
        found: vec![1],
    }));
    assert!(problems.contains(&WeightProblem::Missing {
        key: "Mixed_7c.branch_pool.bn.running_var".into(),
        expected: vec![192],
    }));
    for quiet in [
        "Conv2d_1a_3x3.conv.weight",
        "fc.bias",
        "num_batches_tracked",
    ] {
        assert!(
            problems.iter().all(|p| !p.key().contains(quiet)),
            "{quiet} is not a problem"
        );
    }
    let message = err.to_string();
    assert!(message.starts_with(&format!("{}: the weights are not", file.display())));
    assert!(
        message
            .contains("missing key `Mixed_7c.branch_pool.bn.running_var` (expected shape [192])")
    );
}

/// `broken_legacy.pth` is `broken.pth` in torch's legacy format, the format
/// pytorch-fid's 2019 release file may be in: read, it has the same problems.
#[test]
fn load_reads_a_legacy_pth_like_the_zip_one() {
    let problems =
        |name: &str| match InceptionV3::<B>::load(&fixture_dir().join(name), &Default::default()) {
            Err(InceptionError::Weights { problems, .. }) => problems,
            Err(err) => panic!("{name}: expected a weights error, got {err}"),
            Ok(_) => panic!("{name} loaded"),
        };
    let legacy = problems("broken_legacy.pth");
    assert_eq!(legacy, problems("broken.pth"));
    assert!(legacy.contains(&WeightProblem::Shape {
        key: "Conv2d_1a_3x3.bn.weight".into(),
        expected: vec![32],
        found: vec![31],
    }));
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dtx-inception-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn load_reads_safetensors_and_names_shape_and_dtype_problems() {
    use safetensors::{Dtype, tensor::TensorView};
    let dir = temp_dir("safetensors");
    let file = dir.join("weights.safetensors");
    let f16_ones = [0x00u8, 0x3c].repeat(32); // 32 × f16 1.0
    let ints = [0u8; 4 * 32];
    let wrong = [0u8; 4 * 2 * 3];
    let tensors = vec![
        (
            "Conv2d_1a_3x3.bn.weight",
            TensorView::new(Dtype::F16, vec![32], &f16_ones).unwrap(),
        ),
        (
            "Conv2d_1a_3x3.bn.bias",
            TensorView::new(Dtype::I32, vec![32], &ints).unwrap(),
        ),
        (
            "Conv2d_1a_3x3.conv.weight",
            TensorView::new(Dtype::F32, vec![2, 3], &wrong).unwrap(),
        ),
    ];
    std::fs::write(&file, safetensors::serialize(tensors, None).unwrap()).unwrap();
    let Err(InceptionError::Weights {
        file: named,
        problems,
    }) = InceptionV3::<B>::load(&file, &Default::default())
    else {
        panic!("expected a weights error");
    };
    assert_eq!(named.as_deref(), Some(file.as_path()));
    assert_eq!(
        problems.len(),
        94 * 5 - 1,
        "all but the F16 tensor are problems"
    );
    assert!(problems.contains(&WeightProblem::Dtype {
        key: "Conv2d_1a_3x3.bn.bias".into(),
        dtype: "I32".into(),
    }));
    assert!(problems.contains(&WeightProblem::Shape {
        key: "Conv2d_1a_3x3.conv.weight".into(),
        expected: vec![32, 3, 3, 3],
        found: vec![2, 3],
    }));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn load_refuses_a_file_that_is_no_checkpoint() {
    let dir = temp_dir("not-weights");
    let file = dir.join("notes.txt");
    std::fs::write(&file, "not a checkpoint").unwrap();
    let err = InceptionV3::<B>::load(&file, &Default::default()).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, InceptionError::Read { .. }), "{message}");
    assert!(
        message.starts_with(&format!(
            "{}: cannot read the Inception weights: neither a torch.save checkpoint nor a safetensors file",
            file.display()
        )),
        "{message}"
    );
    let absent = dir.join("absent.pth");
    let err = InceptionV3::<B>::load(&absent, &Default::default()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot read", absent.display()))
    );
    std::fs::remove_dir_all(dir).unwrap();
}
