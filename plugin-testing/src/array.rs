//! [`Array`] and [`Labels`]: tensors as a test writes them.

use crate::B;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{Int, Tensor, TensorData, TensorMetadata};
use dtx::tensor_abi::Labels as HostLabels;

/// A tensor as a test writes it: a shape and its values in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// The shape.
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub values: Vec<f32>,
}

impl Array {
    /// An array of `shape` holding `values`.
    ///
    /// # Panics
    /// When `values` does not have `shape`'s length.
    pub fn new(shape: &[usize], values: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "{} values for shape {shape:?}",
            values.len()
        );
        Array {
            shape: shape.to_vec(),
            values,
        }
    }

    /// Zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Array::new(shape, vec![0.0; shape.iter().product()])
    }

    /// Values uniform on (−1, 1) from `seed` (a fixed generator: the same
    /// array on every machine and version).
    pub fn random(shape: &[usize], seed: u64) -> Self {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let values = (0..shape.iter().product::<usize>())
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Array::new(shape, values)
    }

    /// The largest absolute difference from `other` (same shape).
    ///
    /// # Panics
    /// When the shapes differ.
    pub fn max_abs_diff(&self, other: &Array) -> f32 {
        assert_eq!(self.shape, other.shape);
        self.values
            .iter()
            .zip(&other.values)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    pub(crate) fn to_prim(&self) -> FloatTensor<B> {
        B::float_from_data(
            TensorData::new(self.values.clone(), self.shape.clone()),
            &Default::default(),
        )
    }

    pub(crate) fn of_prim(p: FloatTensor<B>) -> Self {
        let shape = p.shape().to_vec();
        let values = burn::tensor::read_sync(B::float_into_data(p))
            .expect("a CPU tensor reads")
            .convert::<f32>()
            .to_vec()
            .expect("f32 values");
        Array { shape, values }
    }
}

/// Integer labels as a test writes them: class ids `[B]`, or masks
/// `[B, H, W]` (one class per pixel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    /// `[B]` or `[B, H, W]`.
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub values: Vec<i64>,
}

impl Labels {
    /// One class id per example.
    pub fn classes(ids: &[i64]) -> Self {
        Labels {
            shape: vec![ids.len()],
            values: ids.to_vec(),
        }
    }

    /// Masks `[B, H, W]`.
    ///
    /// # Panics
    /// When `values` does not have `shape`'s length.
    pub fn masks(shape: [usize; 3], values: Vec<i64>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "mask values");
        Labels {
            shape: shape.to_vec(),
            values,
        }
    }

    pub(crate) fn to_host(&self) -> Result<HostLabels<B>, String> {
        let data = TensorData::new(self.values.clone(), self.shape.clone());
        let dev = Default::default();
        match self.shape.len() {
            1 => Ok(HostLabels::Classes(Tensor::<B, 1, Int>::from_data(
                data, &dev,
            ))),
            3 => Ok(HostLabels::Masks(Tensor::<B, 3, Int>::from_data(
                data, &dev,
            ))),
            r => Err(format!(
                "labels of rank {r}: classes are [B], masks [B, H, W]"
            )),
        }
    }
}

/// A fixed normal stream (xorshift and Box–Muller): the same draws on every
/// machine and version, for test data that must not change under a test.
#[derive(Debug, Clone)]
pub struct Normal(pub u64);

impl Normal {
    /// Uniform on (0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal.
    pub fn sample(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}
