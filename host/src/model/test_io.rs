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

/// A rank-1 or rank-4 primitive holding `values`.
pub(crate) fn prim(shape: &[usize], values: &[f32]) -> FloatTensor<B> {
    let t: Tensor<B, 1> = Tensor::from_data(
        TensorData::new(values.to_vec(), [values.len()]),
        &Default::default(),
    );
    match shape.len() {
        1 => t.into_primitive().tensor(),
        4 => t
            .reshape([shape[0], shape[1], shape[2], shape[3]])
            .into_primitive()
            .tensor(),
        n => panic!("rank {n}"),
    }
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
