//! The Inception-v3 feature extractor FID is computed with: pytorch-fid's
//! `FIDInceptionV3` up to its 2048-d pool3 output, fed as clean-fid's
//! "clean" mode feeds it.
//!
//! FID: Heusel, Ramsauer, Unterthiner, Nessler and Hochreiter, "GANs Trained
//! by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
//! NeurIPS 2017, arXiv:1706.08500. Network: Szegedy et al., "Rethinking the
//! Inception Architecture for Computer Vision", CVPR 2016, arXiv:1512.00567,
//! as TensorFlow's 2015-12-05 graph that FID was defined with, ported to
//! PyTorch by pytorch-fid (`pytorch_fid/inception.py`, 0.3.0): torchvision's
//! `inception_v3` with the FID blocks (`blocks`). Input: clean-fid (Parmar,
//! Zhang and Zhu, arXiv:2104.11222), `resize`.
//!
//! - `blocks`: the layers and the weight loader that checks every key;
//! - `resize`: PIL's bicubic resize and the preprocessing;
//! - `load`: reading `.pth` / `.safetensors` files, [`InceptionError`].
//!
//! Parity with pytorch-fid and PIL is tested in `tests.rs` against
//! `tests/fixtures/inception/`.

mod blocks;
mod load;
mod resize;
#[cfg(test)]
mod tests;

pub use crate::util::resize::pil_bicubic_resize;
pub use load::InceptionError;
pub use resize::INPUT_SIZE;

use crate::model::weights::{ReadTensor, WeightProblem};
use blocks::{
    BasicConv2d, InceptionA, InceptionB, InceptionC, InceptionD, InceptionE, Loader, PoolBranch,
    max_pool_3x3,
};
use burn::tensor::backend::Backend;
use burn::tensor::module::adaptive_avg_pool2d;
use burn::tensor::{Tensor, TensorData};
use std::collections::BTreeMap;

/// Width of the pool3 features.
pub const FEATURE_DIM: usize = 2048;

/// Images per forward pass in [`InceptionV3::features`]: bounds memory (the
/// stem's activations are ~30 MB an image at 299 × 299) while keeping the
/// convolutions' matrices large.
const CHUNK: usize = 8;

/// pytorch-fid's FID Inception-v3, inference only, up to the 2048-d pool3
/// features. Fields are torchvision's module names (snake-cased).
#[derive(Debug, Clone)]
pub struct InceptionV3<B: Backend> {
    conv2d_1a_3x3: BasicConv2d<B>,
    conv2d_2a_3x3: BasicConv2d<B>,
    conv2d_2b_3x3: BasicConv2d<B>,
    conv2d_3b_1x1: BasicConv2d<B>,
    conv2d_4a_3x3: BasicConv2d<B>,
    mixed_5b: InceptionA<B>,
    mixed_5c: InceptionA<B>,
    mixed_5d: InceptionA<B>,
    mixed_6a: InceptionB<B>,
    mixed_6b: InceptionC<B>,
    mixed_6c: InceptionC<B>,
    mixed_6d: InceptionC<B>,
    mixed_6e: InceptionC<B>,
    mixed_7a: InceptionD<B>,
    mixed_7b: InceptionE<B>,
    mixed_7c: InceptionE<B>,
}

impl<B: Backend> InceptionV3<B> {
    /// The network from named f32 tensors `(key, shape, values)`, as
    /// [`InceptionV3::load`] reads them from a file: every key the network
    /// needs must be present with its exact shape, and no other key but
    /// `fc.*` and `*.num_batches_tracked` (ignored). Batch norms are folded
    /// into their convolutions here. Errors list every problem.
    pub fn from_named(
        tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
        device: &B::Device,
    ) -> Result<Self, InceptionError> {
        let mut stored = BTreeMap::new();
        for (key, shape, values) in tensors {
            if load::ignored(&key) {
                continue;
            }
            if values.len() != shape.iter().product::<usize>() {
                let len = values.len();
                return Err(InceptionError::Length { key, shape, len });
            }
            let values = Ok(values);
            stored.insert(key, ReadTensor { shape, values });
        }
        Self::from_stored(stored, device).map_err(|problems| InceptionError::Weights {
            file: None,
            problems,
        })
    }

    /// Builds the network from the tensors left after dropping ignored
    /// keys, or returns every problem in key order.
    fn from_stored(
        found: BTreeMap<String, ReadTensor>,
        device: &B::Device,
    ) -> Result<Self, Vec<WeightProblem>> {
        let mut loader = Loader::new(found, device);
        let l = &mut loader;
        let net = Self {
            conv2d_1a_3x3: l.conv("Conv2d_1a_3x3", 3, 32, [3, 3], 2, [0, 0]),
            conv2d_2a_3x3: l.conv("Conv2d_2a_3x3", 32, 32, [3, 3], 1, [0, 0]),
            conv2d_2b_3x3: l.conv("Conv2d_2b_3x3", 32, 64, [3, 3], 1, [1, 1]),
            conv2d_3b_1x1: l.conv("Conv2d_3b_1x1", 64, 80, [1, 1], 1, [0, 0]),
            conv2d_4a_3x3: l.conv("Conv2d_4a_3x3", 80, 192, [3, 3], 1, [0, 0]),
            mixed_5b: InceptionA::load(l, "Mixed_5b", 192, 32),
            mixed_5c: InceptionA::load(l, "Mixed_5c", 256, 64),
            mixed_5d: InceptionA::load(l, "Mixed_5d", 288, 64),
            mixed_6a: InceptionB::load(l, "Mixed_6a", 288),
            mixed_6b: InceptionC::load(l, "Mixed_6b", 768, 128),
            mixed_6c: InceptionC::load(l, "Mixed_6c", 768, 160),
            mixed_6d: InceptionC::load(l, "Mixed_6d", 768, 160),
            mixed_6e: InceptionC::load(l, "Mixed_6e", 768, 192),
            mixed_7a: InceptionD::load(l, "Mixed_7a", 768),
            mixed_7b: InceptionE::load(l, "Mixed_7b", 1280, PoolBranch::Avg),
            mixed_7c: InceptionE::load(l, "Mixed_7c", 2048, PoolBranch::Max),
        };
        let problems = loader.finish();
        if problems.is_empty() {
            Ok(net)
        } else {
            Err(problems)
        }
    }

    /// The 2048-d pool3 features of `images`, `[N, C, H, W]` in dtx's
    /// [-1, 1] with C = 3, or C = 1 (repeated to RGB). Each image is
    /// preprocessed as clean-fid's "clean" mode does (8-bit quantisation,
    /// PIL bicubic to 299 × 299; see [`pil_bicubic_resize`]) on the host,
    /// then the network runs in batches of up to 8 on `images`' device.
    ///
    /// # Shapes
    /// - images: `[N, C, H, W]`, C ∈ {1, 3}, any H, W ≥ 1
    /// - output: `[N, 2048]`
    ///
    /// # Panics
    /// When C is neither 1 nor 3, or an image is empty (H or W is 0).
    pub fn features(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let [n, c, h, w] = images.dims();
        assert!(
            c == 1 || c == 3,
            "the FID Inception takes RGB or grey images, not {c} channels"
        );
        let device = images.device();
        if n == 0 {
            return Tensor::zeros([0, FEATURE_DIM], &device);
        }
        let values = images
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("a float tensor converts to f32");
        let per_image = c * h * w;
        let side = INPUT_SIZE;
        let chunks: Vec<Tensor<B, 2>> = values
            .chunks(CHUNK * per_image)
            .map(|chunk| {
                let m = chunk.len() / per_image;
                let input: Vec<f32> = chunk
                    .chunks_exact(per_image)
                    .flat_map(|img| resize::clean_fid_input(img, c, h, w))
                    .collect();
                let x = Tensor::from_data(TensorData::new(input, [m, 3, side, side]), &device);
                self.forward(x)
            })
            .collect();
        Tensor::cat(chunks, 0)
    }

    /// The network on preprocessed input (pytorch-fid's blocks 0–3).
    ///
    /// # Shapes
    /// - x: `[N, 3, 299, 299]` in [-1, 1]; output `[N, 2048]`
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let n = x.dims()[0];
        // Block 0: N × 3 × 299 × 299 → N × 64 × 73 × 73
        let x = self.conv2d_1a_3x3.forward(x); // N × 32 × 149 × 149
        let x = self.conv2d_2a_3x3.forward(x); // N × 32 × 147 × 147
        let x = self.conv2d_2b_3x3.forward(x); // N × 64 × 147 × 147
        let x = max_pool_3x3(x, 2);
        // Block 1: → N × 192 × 35 × 35
        let x = self.conv2d_3b_1x1.forward(x); // N × 80 × 73 × 73
        let x = self.conv2d_4a_3x3.forward(x); // N × 192 × 71 × 71
        let x = max_pool_3x3(x, 2);
        // Block 2: → N × 768 × 17 × 17
        let x = self.mixed_5b.forward(x); // N × 256 × 35 × 35
        let x = self.mixed_5c.forward(x); // N × 288 × 35 × 35
        let x = self.mixed_5d.forward(x); // N × 288 × 35 × 35
        let x = self.mixed_6a.forward(x); // N × 768 × 17 × 17
        let x = self.mixed_6b.forward(x);
        let x = self.mixed_6c.forward(x);
        let x = self.mixed_6d.forward(x);
        let x = self.mixed_6e.forward(x);
        // Block 3: → N × 2048
        let x = self.mixed_7a.forward(x); // N × 1280 × 8 × 8
        let x = self.mixed_7b.forward(x); // N × 2048 × 8 × 8
        let x = self.mixed_7c.forward(x); // N × 2048 × 8 × 8
        adaptive_avg_pool2d(x, [1, 1]).reshape([n, FEATURE_DIM])
    }
}
