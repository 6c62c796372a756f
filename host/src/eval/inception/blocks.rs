//! The layers of pytorch-fid's FID Inception-v3, named and shaped as
//! torchvision's `models/inception.py` (0.29.2) with pytorch-fid's
//! (`pytorch_fid/inception.py`, 0.3.0) FID patches: `BasicConv2d` and the
//! blocks `InceptionA` (FIDInceptionA), `InceptionB`, `InceptionC`
//! (FIDInceptionC), `InceptionD`, `InceptionE` (FIDInceptionE_1 / _2).
//! Fields are the checkpoint key segments; [`Loader`] reads
//! `<block>.<branch>.conv.weight` and `<block>.<branch>.bn.*`.

use crate::model::weights::{ReadTensor, TensorTaker, WeightProblem};
use burn::tensor::backend::Backend;
use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData, activation};
use std::collections::BTreeMap;

/// `nn.BatchNorm2d`'s eps in `BasicConv2d` (torchvision: `eps=0.001`).
const BN_EPS: f64 = 0.001;

/// Takes the tensors the blocks ask for out of the checkpoint
/// ([`TensorTaker`]: every missing key, wrong shape and unreadable dtype is
/// noted, and the keys nobody asked for at the end). After a problem the
/// blocks get placeholder tensors, never run: the load fails.
pub(super) struct Loader<'a, B: Backend> {
    taker: TensorTaker,
    device: &'a B::Device,
}

impl<'a, B: Backend> Loader<'a, B> {
    pub(super) fn new(found: BTreeMap<String, ReadTensor>, device: &'a B::Device) -> Self {
        Self {
            taker: TensorTaker::new(found),
            device,
        }
    }

    /// The values of `key`, if it is there with `shape` and a float dtype.
    fn take(&mut self, key: String, shape: Vec<usize>) -> Option<Vec<f32>> {
        self.taker.take(&key, &shape)
    }

    /// `BasicConv2d` `name`: `nn.Conv2d(cin, cout, kernel, stride, padding,
    /// bias=False)` then `BatchNorm2d(cout, eps=0.001)` in eval mode, folded
    /// into one convolution with bias (see [`BasicConv2d`]).
    pub(super) fn conv(
        &mut self,
        name: &str,
        cin: usize,
        cout: usize,
        kernel: [usize; 2],
        stride: usize,
        padding: [usize; 2],
    ) -> BasicConv2d<B> {
        let [kh, kw] = kernel;
        let weight = self.take(format!("{name}.conv.weight"), vec![cout, cin, kh, kw]);
        let [gamma, beta, mean, var] = ["weight", "bias", "running_mean", "running_var"]
            .map(|p| self.take(format!("{name}.bn.{p}"), vec![cout]));
        let options = ConvOptions::new([stride, stride], padding, [1, 1], 1);
        let (Some(mut weight), Some(gamma), Some(beta), Some(mean), Some(var)) =
            (weight, gamma, beta, mean, var)
        else {
            return BasicConv2d {
                weight: Tensor::zeros([1, 1, 1, 1], self.device),
                bias: Tensor::zeros([1], self.device),
                options,
            };
        };
        let fan_in = cin * kh * kw;
        let mut bias = Vec::with_capacity(cout);
        for (o, row) in weight.chunks_exact_mut(fan_in).enumerate() {
            let scale = f64::from(gamma[o]) / (f64::from(var[o]) + BN_EPS).sqrt();
            row.iter_mut()
                .for_each(|w| *w = (f64::from(*w) * scale) as f32);
            bias.push((f64::from(beta[o]) - f64::from(mean[o]) * scale) as f32);
        }
        BasicConv2d {
            weight: Tensor::from_data(TensorData::new(weight, [cout, cin, kh, kw]), self.device),
            bias: Tensor::from_data(TensorData::new(bias, [cout]), self.device),
            options,
        }
    }

    /// Every problem, in key order, the keys left over (those the caller
    /// did not already drop as ignorable) counted as unexpected; empty when
    /// the checkpoint fits.
    pub(super) fn finish(self) -> Vec<WeightProblem> {
        self.taker.finish()
    }
}

/// torchvision's `BasicConv2d`: convolution without bias, batch norm, ReLU.
/// Inference uses the running statistics, so the norm is affine per output
/// channel and folded into the convolution at load time:
/// s = γ / sqrt(σ² + ε), W' = s · W, b' = β − μ · s, and the layer is
/// ReLU(conv(x, W') + b').
///
/// # Shapes
/// - x: `[N, cin, H, W]`; output `[N, cout, H', W']`
#[derive(Debug, Clone)]
pub(super) struct BasicConv2d<B: Backend> {
    /// `[cout, cin, kh, kw]`, the norm's scale folded in.
    weight: Tensor<B, 4>,
    /// `[cout]`, the norm's shift.
    bias: Tensor<B, 1>,
    options: ConvOptions<2>,
}

impl<B: Backend> BasicConv2d<B> {
    pub(super) fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        activation::relu(conv2d(
            x,
            self.weight.clone(),
            Some(self.bias.clone()),
            self.options.clone(),
        ))
    }
}

/// `F.max_pool2d(x, kernel_size=3, stride)`, no padding: the stem's two
/// pools and the pool branches of `InceptionB` and `InceptionD`.
pub(super) fn max_pool_3x3<B: Backend>(x: Tensor<B, 4>, stride: usize) -> Tensor<B, 4> {
    max_pool2d(x, [3, 3], [stride, stride], [0, 0], [1, 1], false)
}

/// The FID blocks' pool branch input: TensorFlow's 3 × 3 average pool,
/// stride 1, padding 1, averaging only the pixels inside the image
/// (`count_include_pad=False`), or, in `Mixed_7c`, the 3 × 3 max pool
/// pytorch-fid found in the TensorFlow graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PoolBranch {
    /// `F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)`.
    Avg,
    /// `F.max_pool2d(x, 3, 1, 1)`.
    Max,
}

impl PoolBranch {
    fn apply<B: Backend>(self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            PoolBranch::Avg => avg_pool2d(x, [3, 3], [1, 1], [1, 1], false, false),
            PoolBranch::Max => max_pool2d(x, [3, 3], [1, 1], [1, 1], [1, 1], false),
        }
    }
}

/// `FIDInceptionA` (`Mixed_5b`, `_5c`, `_5d`): 1×1; 1×1 → 5×5;
/// 1×1 → 3×3 → 3×3; avg pool → 1×1.
///
/// # Shapes
/// - x: `[N, cin, 35, 35]`; output `[N, 224 + pool_features, 35, 35]`
#[derive(Debug, Clone)]
pub(super) struct InceptionA<B: Backend> {
    branch1x1: BasicConv2d<B>,
    branch5x5_1: BasicConv2d<B>,
    branch5x5_2: BasicConv2d<B>,
    branch3x3dbl_1: BasicConv2d<B>,
    branch3x3dbl_2: BasicConv2d<B>,
    branch3x3dbl_3: BasicConv2d<B>,
    branch_pool: BasicConv2d<B>,
}

impl<B: Backend> InceptionA<B> {
    pub(super) fn load(
        l: &mut Loader<'_, B>,
        name: &str,
        cin: usize,
        pool_features: usize,
    ) -> Self {
        let k = |branch: &str| format!("{name}.{branch}");
        Self {
            branch1x1: l.conv(&k("branch1x1"), cin, 64, [1, 1], 1, [0, 0]),
            branch5x5_1: l.conv(&k("branch5x5_1"), cin, 48, [1, 1], 1, [0, 0]),
            branch5x5_2: l.conv(&k("branch5x5_2"), 48, 64, [5, 5], 1, [2, 2]),
            branch3x3dbl_1: l.conv(&k("branch3x3dbl_1"), cin, 64, [1, 1], 1, [0, 0]),
            branch3x3dbl_2: l.conv(&k("branch3x3dbl_2"), 64, 96, [3, 3], 1, [1, 1]),
            branch3x3dbl_3: l.conv(&k("branch3x3dbl_3"), 96, 96, [3, 3], 1, [1, 1]),
            branch_pool: l.conv(&k("branch_pool"), cin, pool_features, [1, 1], 1, [0, 0]),
        }
    }

    pub(super) fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b5 = self
            .branch5x5_2
            .forward(self.branch5x5_1.forward(x.clone()));
        let b3 = self.branch3x3dbl_1.forward(x.clone());
        let b3 = self.branch3x3dbl_3.forward(self.branch3x3dbl_2.forward(b3));
        let bp = self.branch_pool.forward(PoolBranch::Avg.apply(x));
        Tensor::cat(vec![b1, b5, b3, bp], 1)
    }
}

/// `InceptionB` (`Mixed_6a`), the grid reduction 35 → 17: 3×3 stride 2;
/// 1×1 → 3×3 → 3×3 stride 2; max pool stride 2.
///
/// # Shapes
/// - x: `[N, cin, 35, 35]`; output `[N, 480 + cin, 17, 17]`
#[derive(Debug, Clone)]
pub(super) struct InceptionB<B: Backend> {
    branch3x3: BasicConv2d<B>,
    branch3x3dbl_1: BasicConv2d<B>,
    branch3x3dbl_2: BasicConv2d<B>,
    branch3x3dbl_3: BasicConv2d<B>,
}

impl<B: Backend> InceptionB<B> {
    pub(super) fn load(l: &mut Loader<'_, B>, name: &str, cin: usize) -> Self {
        let k = |branch: &str| format!("{name}.{branch}");
        Self {
            branch3x3: l.conv(&k("branch3x3"), cin, 384, [3, 3], 2, [0, 0]),
            branch3x3dbl_1: l.conv(&k("branch3x3dbl_1"), cin, 64, [1, 1], 1, [0, 0]),
            branch3x3dbl_2: l.conv(&k("branch3x3dbl_2"), 64, 96, [3, 3], 1, [1, 1]),
            branch3x3dbl_3: l.conv(&k("branch3x3dbl_3"), 96, 96, [3, 3], 2, [0, 0]),
        }
    }

    pub(super) fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let b3 = self.branch3x3.forward(x.clone());
        let bd = self.branch3x3dbl_1.forward(x.clone());
        let bd = self.branch3x3dbl_3.forward(self.branch3x3dbl_2.forward(bd));
        let bp = max_pool_3x3(x, 2);
        Tensor::cat(vec![b3, bd, bp], 1)
    }
}

/// `FIDInceptionC` (`Mixed_6b` … `_6e`), factorised 7×7s with `c7`
/// channels inside: 1×1; 1×1 → 1×7 → 7×1; 1×1 → 7×1 → 1×7 → 7×1 → 1×7;
/// avg pool → 1×1.
///
/// # Shapes
/// - x: `[N, 768, 17, 17]`; output `[N, 768, 17, 17]`
#[derive(Debug, Clone)]
pub(super) struct InceptionC<B: Backend> {
    branch1x1: BasicConv2d<B>,
    branch7x7_1: BasicConv2d<B>,
    branch7x7_2: BasicConv2d<B>,
    branch7x7_3: BasicConv2d<B>,
    branch7x7dbl_1: BasicConv2d<B>,
    branch7x7dbl_2: BasicConv2d<B>,
    branch7x7dbl_3: BasicConv2d<B>,
    branch7x7dbl_4: BasicConv2d<B>,
    branch7x7dbl_5: BasicConv2d<B>,
    branch_pool: BasicConv2d<B>,
}

impl<B: Backend> InceptionC<B> {
    pub(super) fn load(l: &mut Loader<'_, B>, name: &str, cin: usize, c7: usize) -> Self {
        let k = |branch: &str| format!("{name}.{branch}");
        let (row, col) = (([1, 7], [0, 3]), ([7, 1], [3, 0]));
        Self {
            branch1x1: l.conv(&k("branch1x1"), cin, 192, [1, 1], 1, [0, 0]),
            branch7x7_1: l.conv(&k("branch7x7_1"), cin, c7, [1, 1], 1, [0, 0]),
            branch7x7_2: l.conv(&k("branch7x7_2"), c7, c7, row.0, 1, row.1),
            branch7x7_3: l.conv(&k("branch7x7_3"), c7, 192, col.0, 1, col.1),
            branch7x7dbl_1: l.conv(&k("branch7x7dbl_1"), cin, c7, [1, 1], 1, [0, 0]),
            branch7x7dbl_2: l.conv(&k("branch7x7dbl_2"), c7, c7, col.0, 1, col.1),
            branch7x7dbl_3: l.conv(&k("branch7x7dbl_3"), c7, c7, row.0, 1, row.1),
            branch7x7dbl_4: l.conv(&k("branch7x7dbl_4"), c7, c7, col.0, 1, col.1),
            branch7x7dbl_5: l.conv(&k("branch7x7dbl_5"), c7, 192, row.0, 1, row.1),
            branch_pool: l.conv(&k("branch_pool"), cin, 192, [1, 1], 1, [0, 0]),
        }
    }

    pub(super) fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b7 = self.branch7x7_1.forward(x.clone());
        let b7 = self.branch7x7_3.forward(self.branch7x7_2.forward(b7));
        let bd = self.branch7x7dbl_1.forward(x.clone());
        let bd = self.branch7x7dbl_3.forward(self.branch7x7dbl_2.forward(bd));
        let bd = self.branch7x7dbl_5.forward(self.branch7x7dbl_4.forward(bd));
        let bp = self.branch_pool.forward(PoolBranch::Avg.apply(x));
        Tensor::cat(vec![b1, b7, bd, bp], 1)
    }
}

/// `InceptionD` (`Mixed_7a`), the grid reduction 17 → 8: 1×1 → 3×3
/// stride 2; 1×1 → 1×7 → 7×1 → 3×3 stride 2; max pool stride 2.
///
/// # Shapes
/// - x: `[N, 768, 17, 17]`; output `[N, 1280, 8, 8]`
#[derive(Debug, Clone)]
pub(super) struct InceptionD<B: Backend> {
    branch3x3_1: BasicConv2d<B>,
    branch3x3_2: BasicConv2d<B>,
    branch7x7x3_1: BasicConv2d<B>,
    branch7x7x3_2: BasicConv2d<B>,
    branch7x7x3_3: BasicConv2d<B>,
    branch7x7x3_4: BasicConv2d<B>,
}

impl<B: Backend> InceptionD<B> {
    pub(super) fn load(l: &mut Loader<'_, B>, name: &str, cin: usize) -> Self {
        let k = |branch: &str| format!("{name}.{branch}");
        Self {
            branch3x3_1: l.conv(&k("branch3x3_1"), cin, 192, [1, 1], 1, [0, 0]),
            branch3x3_2: l.conv(&k("branch3x3_2"), 192, 320, [3, 3], 2, [0, 0]),
            branch7x7x3_1: l.conv(&k("branch7x7x3_1"), cin, 192, [1, 1], 1, [0, 0]),
            branch7x7x3_2: l.conv(&k("branch7x7x3_2"), 192, 192, [1, 7], 1, [0, 3]),
            branch7x7x3_3: l.conv(&k("branch7x7x3_3"), 192, 192, [7, 1], 1, [3, 0]),
            branch7x7x3_4: l.conv(&k("branch7x7x3_4"), 192, 192, [3, 3], 2, [0, 0]),
        }
    }

    pub(super) fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let b3 = self
            .branch3x3_2
            .forward(self.branch3x3_1.forward(x.clone()));
        let b7 = self.branch7x7x3_1.forward(x.clone());
        let b7 = self.branch7x7x3_3.forward(self.branch7x7x3_2.forward(b7));
        let b7 = self.branch7x7x3_4.forward(b7);
        let bp = max_pool_3x3(x, 2);
        Tensor::cat(vec![b3, b7, bp], 1)
    }
}

/// `FIDInceptionE_1` (`Mixed_7b`, avg pool branch) and `FIDInceptionE_2`
/// (`Mixed_7c`, max pool branch): 1×1; 1×1 → (1×3 ‖ 3×1);
/// 1×1 → 3×3 → (1×3 ‖ 3×1); pool → 1×1.
///
/// # Shapes
/// - x: `[N, cin, 8, 8]`; output `[N, 2048, 8, 8]`
#[derive(Debug, Clone)]
pub(super) struct InceptionE<B: Backend> {
    branch1x1: BasicConv2d<B>,
    branch3x3_1: BasicConv2d<B>,
    branch3x3_2a: BasicConv2d<B>,
    branch3x3_2b: BasicConv2d<B>,
    branch3x3dbl_1: BasicConv2d<B>,
    branch3x3dbl_2: BasicConv2d<B>,
    branch3x3dbl_3a: BasicConv2d<B>,
    branch3x3dbl_3b: BasicConv2d<B>,
    branch_pool: BasicConv2d<B>,
    pool: PoolBranch,
}

impl<B: Backend> InceptionE<B> {
    pub(super) fn load(l: &mut Loader<'_, B>, name: &str, cin: usize, pool: PoolBranch) -> Self {
        let k = |branch: &str| format!("{name}.{branch}");
        let (row, col) = (([1, 3], [0, 1]), ([3, 1], [1, 0]));
        Self {
            branch1x1: l.conv(&k("branch1x1"), cin, 320, [1, 1], 1, [0, 0]),
            branch3x3_1: l.conv(&k("branch3x3_1"), cin, 384, [1, 1], 1, [0, 0]),
            branch3x3_2a: l.conv(&k("branch3x3_2a"), 384, 384, row.0, 1, row.1),
            branch3x3_2b: l.conv(&k("branch3x3_2b"), 384, 384, col.0, 1, col.1),
            branch3x3dbl_1: l.conv(&k("branch3x3dbl_1"), cin, 448, [1, 1], 1, [0, 0]),
            branch3x3dbl_2: l.conv(&k("branch3x3dbl_2"), 448, 384, [3, 3], 1, [1, 1]),
            branch3x3dbl_3a: l.conv(&k("branch3x3dbl_3a"), 384, 384, row.0, 1, row.1),
            branch3x3dbl_3b: l.conv(&k("branch3x3dbl_3b"), 384, 384, col.0, 1, col.1),
            branch_pool: l.conv(&k("branch_pool"), cin, 192, [1, 1], 1, [0, 0]),
            pool,
        }
    }

    pub(super) fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b3 = self.branch3x3_1.forward(x.clone());
        let b3 = Tensor::cat(
            vec![
                self.branch3x3_2a.forward(b3.clone()),
                self.branch3x3_2b.forward(b3),
            ],
            1,
        );
        let bd = self.branch3x3dbl_1.forward(x.clone());
        let bd = self.branch3x3dbl_2.forward(bd);
        let bd = Tensor::cat(
            vec![
                self.branch3x3dbl_3a.forward(bd.clone()),
                self.branch3x3dbl_3b.forward(bd),
            ],
            1,
        );
        let bp = self.branch_pool.forward(self.pool.apply(x));
        Tensor::cat(vec![b1, b3, bd, bp], 1)
    }
}
