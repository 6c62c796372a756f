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

/// Hooks that record every point's values in forward order (`temb`
/// included) and scale the point `replace` names by its factor.
pub(crate) struct Probe<'a> {
    pub seen: &'a mut Vec<(String, Vec<f32>)>,
    pub replace: Option<(&'a str, f32)>,
}

impl Probe<'_> {
    fn visit<const R: usize>(&mut self, point: &str, h: Tensor<B, R>) -> Tensor<B, R> {
        self.seen.push((point.to_owned(), values_of(&h)));
        match self.replace {
            Some((p, scale)) if p == point => h.mul_scalar(scale),
            _ => h,
        }
    }
}

impl<const D: usize> crate::model::Hooks<B, D> for Probe<'_> {
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
