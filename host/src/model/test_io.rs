//! Test helpers shared by the model parity tests (U-Nets, CLIP): reading a fixture's
//! `io.safetensors` and comparing activations.

use crate::tensor_abi::CpuBackend as B;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData};
use std::collections::HashMap;
use std::path::Path;

/// A fixture's tensors by name: `(shape, values)`.
pub(crate) type Io = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// `(shape, values)` of every tensor in `dir/io.safetensors` (ints as f32).
pub(crate) fn io(dir: &Path) -> Io {
    read_io(&dir.join("io.safetensors"))
}

/// `(shape, values)` of every tensor in the safetensors `file` (F32, and
/// I64 as f32).
pub(crate) fn read_io(file: &Path) -> Io {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            let d = v.data();
            let vals = match v.dtype() {
                safetensors::Dtype::F32 => d
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                safetensors::Dtype::I64 => d
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32)
                    .collect(),
                other => panic!("{k}: unexpected dtype {other:?}"),
            };
            (k, (v.shape().to_vec(), vals))
        })
        .collect()
}

/// The values of a primitive.
pub(crate) fn values(p: &FloatTensor<B>) -> Vec<f32> {
    use burn::tensor::ops::FloatTensorOps;
    burn::tensor::read_sync(B::float_into_data(p.clone()))
        .unwrap()
        .to_vec::<f32>()
        .unwrap()
}

/// Largest absolute difference.
pub(crate) fn max_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A rank-`D` tensor holding `values` of `shape`.
pub(crate) fn tensor_of<const D: usize>(shape: &[usize], values: &[f32]) -> Tensor<B, D> {
    let dims: [usize; D] = shape.try_into().expect("the fixture's rank");
    Tensor::from_data(TensorData::new(values.to_vec(), dims), &Default::default())
}

/// The values of a tensor, as f32.
pub(crate) fn values_of<const D: usize>(t: &Tensor<B, D>) -> Vec<f32> {
    t.clone()
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap()
}

/// Hooks that record every point a forward calls, branch points included,
/// with the activation's shape past the batch (`[C, H, W]`, `[C]`) and
/// values, and scale the points `scale`'s pattern selects (a glob under the
/// manifests' rule: `*.branch`, `mid.res.0.branch`) by its factor.
pub(crate) struct Trace {
    pub seen: Vec<(String, Vec<usize>, Vec<f32>)>,
    pub scale: Option<(String, f32)>,
}

impl Trace {
    /// A trace scaling the points `pattern` selects by `factor`, or none.
    pub(crate) fn new(scale: Option<(&str, f32)>) -> Self {
        Trace {
            seen: Vec::new(),
            scale: scale.map(|(p, f)| (p.to_owned(), f)),
        }
    }

    fn visit<const R: usize>(&mut self, point: &str, h: Tensor<B, R>) -> Tensor<B, R> {
        let h = match &self.scale {
            Some((p, f)) if dtx_plugin_api::points::matches(p, point) => h.mul_scalar(*f),
            _ => h,
        };
        self.seen
            .push((point.to_owned(), h.dims()[1..].to_vec(), values_of(&h)));
        h
    }

    /// What was recorded at `temb` and every block output, in forward
    /// order, without the `….branch` points (the points the reference
    /// fixtures hold).
    pub(crate) fn block_outputs(&self) -> Vec<(String, Vec<f32>)> {
        self.seen
            .iter()
            .filter(|(n, ..)| !n.ends_with(dtx_plugin_api::points::BRANCH_SUFFIX))
            .map(|(n, _, v)| (n.clone(), v.clone()))
            .collect()
    }

    /// The values recorded at `point`.
    pub(crate) fn at(&self, point: &str) -> &[f32] {
        let found = self.seen.iter().find(|(n, ..)| n == point);
        &found.unwrap_or_else(|| panic!("no point {point}")).2
    }
}

impl<const D: usize> crate::model::Hooks<B, D> for Trace {
    type Error = std::convert::Infallible;

    fn temb(&mut self, temb: Tensor<B, 2>) -> Result<Tensor<B, 2>, Self::Error> {
        Ok(self.visit("temb", temb))
    }

    fn block(
        &mut self,
        point: &str,
        h: Tensor<B, D>,
        _temb: &Tensor<B, 2>,
    ) -> Result<Tensor<B, D>, Self::Error> {
        Ok(self.visit(point, h))
    }
}

/// Checks a network's branch points through `run` (its forward with the
/// given hooks, returning the output), `plain` being its output without
/// hooks:
/// - the forward calls the description's points, in its order, at its
///   shapes, and hooks that change nothing leave the output bit-identical;
/// - doubling any one branch changes the output;
/// - with every branch zeroed each residual block (and attention) is its
///   shortcut: the block outputs from the last one before `mid.res.0`
///   through the middle block are equal (identity shortcuts there).
pub(crate) fn check_branch_points(
    d: &crate::model::ModelDescription,
    run: impl Fn(&mut Trace) -> Vec<f32>,
    plain: &[f32],
) {
    let mut trace = Trace::new(None);
    assert_eq!(run(&mut trace), plain, "hooks that change nothing");
    let got: Vec<(&str, usize, usize, usize)> = trace
        .seen
        .iter()
        .map(|(n, s, _)| {
            (
                n.as_str(),
                s[0],
                s.get(1).copied().unwrap_or(0),
                s.get(2).copied().unwrap_or(0),
            )
        })
        .collect();
    let want: Vec<(&str, usize, usize, usize)> = d
        .points
        .iter()
        .map(|p| (p.name.as_str(), p.channels, p.height, p.width))
        .collect();
    assert_eq!(got, want);
    let branches: Vec<&str> = want
        .iter()
        .map(|w| w.0)
        .filter(|n| n.ends_with(".branch"))
        .collect();
    assert!(branches.iter().any(|n| n.contains(".res.")));
    for b in &branches {
        let doubled = run(&mut Trace::new(Some((b, 2.0))));
        assert!(
            max_err(&doubled, plain) > 0.0,
            "doubling {b} changed nothing"
        );
    }
    let mut zeroed = Trace::new(Some(("*.branch", 0.0)));
    run(&mut zeroed);
    let outputs: Vec<&str> = want
        .iter()
        .map(|w| w.0)
        .filter(|n| *n != "temb" && !n.ends_with(".branch"))
        .collect();
    let mid = outputs.iter().position(|n| *n == "mid.res.0").unwrap();
    let through: Vec<&str> = outputs[mid - 1..]
        .iter()
        .copied()
        .take_while(|n| n.starts_with("mid.") || !n.starts_with("up."))
        .collect();
    assert!(through.len() >= 2, "{through:?}");
    for pair in through.windows(2) {
        assert_eq!(zeroed.at(pair[0]), zeroed.at(pair[1]), "{pair:?}");
    }
}

/// A [`crate::model::Recorder`] asked for `branch` (a branch point of `d`)
/// and `block` (a block output) through `run` records both, the branch at
/// the description's shape; asked for `block` alone it records no branch.
pub(crate) fn check_recorded_branch<const D: usize>(
    d: &crate::model::ModelDescription,
    branch: &str,
    block: &str,
    run: impl Fn(&mut crate::model::Recorder<B, D>),
) {
    let mut rec = crate::model::Recorder::new(&[branch.to_owned(), block.to_owned()]);
    run(&mut rec);
    let p = d.point(branch).unwrap();
    let want: Vec<usize> = [p.channels, p.height, p.width]
        .into_iter()
        .take(D - 1)
        .collect();
    assert_eq!(rec.blocks[branch].dims()[1..], want[..], "{branch}");
    assert!(rec.blocks.contains_key(block));
    let mut rec = crate::model::Recorder::new(&[block.to_owned()]);
    run(&mut rec);
    assert_eq!(rec.blocks.keys().collect::<Vec<_>>(), [block]);
}
