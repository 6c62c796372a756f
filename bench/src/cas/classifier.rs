//! The classifier of the classification accuracy score: a small CNN trained
//! from scratch, with the same architecture, steps and seed for every arm,
//! on one arm's labelled images; its accuracy on real test images is the
//! arm's CAS (Ravuri & Vinyals, "Classification Accuracy Score for
//! Conditional Generative Models", 2019, <https://arxiv.org/abs/1905.10887>).
//!
//! Network: two 3 × 3 conv stages (16 and 32 channels, ReLU, 2 × 2 average
//! pooling each), a 64-unit ReLU layer and a linear layer to the class
//! logits. Loss: cross-entropy. Optimizer: Adam (no weight decay) on
//! minibatches drawn with replacement, each image mirrored left–right with
//! probability ½ (the transfer runs train with `flip = true`, so mirrored
//! images are in the target distribution).

use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::module::{avg_pool2d, conv2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};
use dtx::data::Dataset;
use dtx::tensor_abi::ParamStore;
use dtx::train::optim::{AdamConfig, Optimizer, Rule};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use std::collections::HashMap;

/// Channels of the two conv stages.
const CHANNELS: [usize; 2] = [16, 32];
/// Width of the hidden dense layer.
const HIDDEN: usize = 64;

/// Training settings, shared by every arm.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ClassifierSettings {
    /// Adam steps. Default 400.
    pub steps: u64,
    /// Images per step, drawn with replacement. Default 32.
    pub batch: usize,
    /// Adam learning rate (constant). Default 1e-3.
    pub lr: f32,
    /// Seed of the initial weights, the minibatches and the flips. Default 0.
    pub seed: u64,
}

impl Default for ClassifierSettings {
    fn default() -> Self {
        ClassifierSettings {
            steps: 400,
            batch: 32,
            lr: 1e-3,
            seed: 0,
        }
    }
}

/// Every weight, name and shape, for `[3, h, w]` images and `k` classes.
fn layout(c: usize, h: usize, w: usize, k: usize) -> Vec<(String, Vec<usize>)> {
    vec![
        ("conv0.weight".into(), vec![CHANNELS[0], c, 3, 3]),
        ("conv0.bias".into(), vec![CHANNELS[0]]),
        ("conv1.weight".into(), vec![CHANNELS[1], CHANNELS[0], 3, 3]),
        ("conv1.bias".into(), vec![CHANNELS[1]]),
        (
            "fc0.weight".into(),
            vec![HIDDEN, CHANNELS[1] * (h / 4) * (w / 4)],
        ),
        ("fc0.bias".into(), vec![HIDDEN]),
        ("fc1.weight".into(), vec![k, HIDDEN]),
        ("fc1.bias".into(), vec![k]),
    ]
}

/// The network's weights as tensors of `B`.
struct Net<B: AutodiffBackend> {
    w: HashMap<String, Tensor<B, 1>>,
    shapes: HashMap<String, Vec<usize>>,
}

impl<B: AutodiffBackend> Net<B> {
    fn of(store: &ParamStore<B>, shapes: &HashMap<String, Vec<usize>>) -> Self {
        let w = store.named_tensors();
        Net {
            w,
            shapes: shapes.clone(),
        }
    }

    fn get<const D: usize>(&self, name: &str) -> Tensor<B, D> {
        let shape: [usize; D] = self.shapes[name]
            .clone()
            .try_into()
            .expect("layout ranks are fixed");
        self.w[name].clone().reshape(shape)
    }

    fn conv(&self, name: &str, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let y = conv2d(
            x,
            self.get(&format!("{name}.weight")),
            Some(self.w[&format!("{name}.bias")].clone()),
            ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        );
        avg_pool2d(relu(y), [2, 2], [2, 2], [0, 0], true, false)
    }

    fn linear(&self, name: &str, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let w: Tensor<B, 2> = self.get(&format!("{name}.weight"));
        x.matmul(w.transpose()) + self.w[&format!("{name}.bias")].clone().unsqueeze()
    }

    /// Class logits `[N, K]` of images `[N, C, H, W]`.
    fn logits(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let h = self.conv("conv1", self.conv("conv0", x));
        let n = h.dims()[0];
        let flat: Tensor<B, 2> = h.reshape([n as i32, -1]);
        self.linear("fc1", relu(self.linear("fc0", flat)))
    }
}

/// Image `i` of `set`, mirrored left–right when `flip`.
fn image(set: &Dataset, i: usize, flip: bool, out: &mut Vec<f32>) {
    let s = set.sample(i);
    if !flip {
        out.extend_from_slice(s);
        return;
    }
    let w = set.sample_shape[2];
    for row in s.chunks(w) {
        out.extend(row.iter().rev());
    }
}

/// Why the classifier cannot be trained or scored on the sets given.
#[derive(Debug, thiserror::Error)]
pub enum ClassifierError {
    /// The samples are not images `[C, H, W]`.
    #[error("images [C, H, W] needed, got {shape:?}")]
    NotImages {
        /// The training set's sample shape.
        shape: Vec<usize>,
    },
    /// Train and test images differ in shape, or a side is not a multiple
    /// of 4.
    #[error(
        "train images {train:?} and test images {test:?} must match, with sides multiples of 4"
    )]
    ShapeMismatch {
        /// The training images' shape.
        train: Vec<usize>,
        /// The test images' shape.
        test: Vec<usize>,
    },
    /// A set has no labels.
    #[error("`{set}` has no labels")]
    NoLabels {
        /// Where the set came from (`Dataset::source`).
        set: String,
    },
    /// The train or the test set is empty.
    #[error("the train and test sets need at least one image each")]
    Empty,
    /// A label outside `0..classes`.
    #[error("label {label} is not one of the {classes} classes")]
    BadLabel {
        /// The label.
        label: i64,
        /// The number of classes.
        classes: usize,
    },
    /// The parameter store refused a weight.
    #[error("{source}")]
    Register {
        /// The weight's name (`conv0.weight`).
        name: String,
        /// What the store said.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn labels_of(set: &Dataset) -> Result<&[i64], ClassifierError> {
    set.labels
        .as_deref()
        .ok_or_else(|| ClassifierError::NoLabels {
            set: set.source.clone(),
        })
}

/// Trains the classifier on `train` (labelled images `[3, H, W]` in
/// [−1, 1], H and W multiples of 4, classes `0..k`) and returns its accuracy
/// on `test` (same shape and classes), a fraction in [0, 1].
pub fn train_and_score<B: AutodiffBackend>(
    train: &Dataset,
    test: &Dataset,
    k: usize,
    s: ClassifierSettings,
    device: &B::Device,
) -> Result<f64, ClassifierError> {
    let shape = train.sample_shape.clone();
    let [c, h, w] = shape[..] else {
        return Err(ClassifierError::NotImages { shape });
    };
    if h % 4 != 0 || w % 4 != 0 || test.sample_shape != shape {
        return Err(ClassifierError::ShapeMismatch {
            train: shape,
            test: test.sample_shape.clone(),
        });
    }
    let (y_train, y_test) = (labels_of(train)?, labels_of(test)?);
    if train.is_empty() || test.is_empty() {
        return Err(ClassifierError::Empty);
    }
    if let Some(&label) = y_train
        .iter()
        .chain(y_test)
        .find(|&&y| y < 0 || y as usize >= k)
    {
        return Err(ClassifierError::BadLabel { label, classes: k });
    }

    let mut rng = StdRng::seed_from_u64(s.seed);
    let mut store = ParamStore::<B>::default();
    let mut shapes = HashMap::new();
    for (name, dims) in layout(c, h, w, k) {
        let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
        let len: usize = dims.iter().product();
        let values: Vec<f32> = if name.ends_with(".bias") {
            vec![0.0; len]
        } else {
            // He-normal for ReLU layers.
            let std = (2.0 / fan_in as f32).sqrt();
            (0..len)
                .map(|_| {
                    let e: f32 = StandardNormal.sample(&mut rng);
                    std * e
                })
                .collect()
        };
        let t = Tensor::<B, 1>::from_data(TensorData::new(values, [len]), device).require_grad();
        store
            .register_base(&name, t.into_primitive().tensor(), true)
            .map_err(|e| ClassifierError::Register {
                name: name.clone(),
                source: e.into(),
            })?;
        shapes.insert(name, dims);
    }
    let adam = AdamConfig {
        rule: Rule::Adam,
        lr: s.lr,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut optimizer = Optimizer::new();
    let n = train.len();
    for _ in 0..s.steps {
        let mut x = Vec::with_capacity(s.batch * c * h * w);
        let mut onehot = vec![0f32; s.batch * k];
        for b in 0..s.batch {
            let i = rng.random_range(0..n);
            image(train, i, rng.random_bool(0.5), &mut x);
            onehot[b * k + y_train[i] as usize] = 1.0;
        }
        let x = Tensor::<B, 4>::from_data(TensorData::new(x, [s.batch, c, h, w]), device);
        let y = Tensor::<B, 2>::from_data(TensorData::new(onehot, [s.batch, k]), device);
        let net = Net::of(&store, &shapes);
        let loss = (log_softmax(net.logits(x), 1) * y).sum().neg() / s.batch as f32;
        let grads = loss.backward();
        optimizer.step_all(&adam, &mut store, &grads);
    }

    let net = Net::of(&store, &shapes);
    let mut right = 0usize;
    let all: Vec<usize> = (0..test.len()).collect();
    for chunk in all.chunks(256) {
        let mut x = Vec::with_capacity(chunk.len() * c * h * w);
        for &i in chunk {
            image(test, i, false, &mut x);
        }
        let x = Tensor::<B, 4>::from_data(TensorData::new(x, [chunk.len(), c, h, w]), device);
        let pred = net.logits(x).argmax(1).into_data();
        right += pred
            .iter::<i64>()
            .zip(chunk)
            .filter(|(p, i)| *p == y_test[**i])
            .count();
    }
    Ok(right as f64 / test.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dtx::tensor_abi::CpuBackend;

    /// `n` noisy 16 × 16 images: class 0 has a bright top half, class 1 a
    /// bright bottom half (alternating classes), Gaussian noise of sd 0.3.
    /// Left–right mirroring keeps the class.
    fn halves(n: usize, seed: u64) -> Dataset {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut samples = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let class = (i % 2) as i64;
            for _ch in 0..3 {
                for y in 0..16 {
                    for _x in 0..16 {
                        let bright = (y < 8) == (class == 0);
                        let e: f32 = StandardNormal.sample(&mut rng);
                        samples.push(if bright { 0.5 } else { -0.5 } + 0.3 * e);
                    }
                }
            }
            labels.push(class);
        }
        Dataset {
            samples,
            sample_shape: vec![3, 16, 16],
            labels: Some(labels),
            class_names: vec!["top".into(), "bottom".into()],
            masks: None,
            source: "halves".into(),
        }
    }

    #[test]
    fn separable_images_are_classified_almost_perfectly() {
        let (train, test) = (halves(64, 1), halves(400, 2));
        let s = ClassifierSettings {
            steps: 60,
            ..Default::default()
        };
        let acc = train_and_score::<CpuBackend>(&train, &test, 2, s, &Default::default()).unwrap();
        assert!(acc >= 0.97, "accuracy {acc} on separable images");
    }

    /// Labels that carry no information about the images: accuracy near
    /// chance, so the test above is not passed by a constant.
    #[test]
    fn shuffled_labels_give_about_chance() {
        let mut train = halves(64, 3);
        let test = halves(400, 4);
        let mut rng = StdRng::seed_from_u64(5);
        train.labels = Some((0..64).map(|_| rng.random_range(0..2)).collect());
        let s = ClassifierSettings {
            steps: 60,
            ..Default::default()
        };
        let acc = train_and_score::<CpuBackend>(&train, &test, 2, s, &Default::default()).unwrap();
        assert!(
            (0.2..=0.8).contains(&acc),
            "accuracy {acc} from random labels"
        );
    }

    #[test]
    fn labels_out_of_range_are_refused() {
        let set = halves(4, 0);
        let e =
            train_and_score::<CpuBackend>(&set, &set, 1, Default::default(), &Default::default())
                .unwrap_err()
                .to_string();
        assert!(e.contains("label 1 is not one of the 1 classes"), "{e}");
    }
}
