//! How the shipped `dtx` extractor is made: the network of
//! [`dtx_net`](super::dtx_net) trained from scratch on fresh procedural
//! shapes (every kind, colour and texture; sizes 0.2–1.0 of the side; half
//! the batches rendered at 16 pixels and upsampled, so 16 × 16 samples look
//! familiar; light Gaussian pixel noise on half the images, so slightly
//! noisy samples do too). Loss: cross-entropy of the kind, colour and
//! texture heads plus the squared error of the centre and radius (÷ side,
//! × 4). Every batch is new images, so there is no epoch and no overfitting
//! to a fixed set.

use super::dtx_net::{DtxNet, FEATURE_DIM, HEADS, NORM, layout};
use crate::data::shapes::{ShapeSpec, ShapesConfig};
use crate::tensor_abi::ParamStore;
use crate::train::optim::{AdamConfig, Optimizer, Rule};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

/// Training settings.
#[derive(Debug, Clone, Copy)]
pub struct TrainSettings {
    /// Optimizer steps. Default 3,000.
    pub steps: u64,
    /// Images per step (all fresh). Default 64.
    pub batch: usize,
    /// Peak AdamW learning rate (cosine decay to 5 %). Default 2e-3.
    pub lr: f32,
    /// Seed of the initial weights, the noise and the shapes. Default 0.
    pub seed: u64,
}

impl Default for TrainSettings {
    fn default() -> Self {
        TrainSettings {
            steps: 3000,
            batch: 64,
            lr: 2e-3,
            seed: 0,
        }
    }
}

/// A batch of shapes: images `[n, 3, res, res]`, per head the class index,
/// and the regression targets.
pub(crate) struct Batch {
    pub images: Vec<f32>,
    pub res: usize,
    pub classes: [Vec<usize>; 3],
    pub regress: Vec<f32>,
}

/// `n` fresh shapes at `res` pixels: indices `first..first + n` of the
/// training family, seeded by `seed`; pixel noise when `noisy`.
pub(crate) fn batch(seed: u64, first: usize, n: usize, res: usize, rng: &mut StdRng) -> Batch {
    let mut cfg = ShapesConfig::preset("all");
    cfg.resolution = res;
    cfg.size = [0.2, 1.0];
    let mut out = Batch {
        images: Vec::with_capacity(n * 3 * res * res),
        res,
        classes: Default::default(),
        regress: Vec::with_capacity(3 * n),
    };
    for i in 0..n {
        let spec: ShapeSpec = cfg.spec(seed, first + i);
        let mut img = cfg.render(&spec);
        if rng.random_bool(0.5) {
            let sigma = rng.random_range(0.0..0.1f32);
            for v in &mut img {
                let e: f32 = StandardNormal.sample(rng);
                *v += sigma * e;
            }
        }
        out.images.extend(img);
        out.classes[0].push(spec.kind);
        out.classes[1].push(spec.colour);
        out.classes[2].push(spec.texture);
        let r = res as f32;
        out.regress.extend([
            spec.centre[0] as f32 / r,
            spec.centre[1] as f32 / r,
            spec.radius as f32 / r,
        ]);
    }
    out
}

fn one_hot<B: Backend>(classes: &[usize], k: usize, device: &B::Device) -> Tensor<B, 2> {
    let mut v = vec![0f32; classes.len() * k];
    for (i, &c) in classes.iter().enumerate() {
        v[i * k + c] = 1.0;
    }
    Tensor::from_data(TensorData::new(v, [classes.len(), k]), device)
}

/// The training loss of one batch and its parts (per head, then regression).
pub(crate) fn loss<B: Backend>(
    net: &DtxNet<B>,
    b: &Batch,
    device: &B::Device,
) -> (Tensor<B, 1>, Vec<f32>) {
    let n = b.classes[0].len();
    let x = Tensor::<B, 4>::from_data(
        TensorData::new(b.images.clone(), [n, 3, b.res, b.res]),
        device,
    );
    let out = net.forward(DtxNet::prepare(x));
    let mut total = Tensor::<B, 1>::zeros([1], device);
    let mut parts = Vec::new();
    for (h, (_, k)) in HEADS.iter().enumerate() {
        let ce = (log_softmax(out.logits[h].clone(), 1) * one_hot::<B>(&b.classes[h], *k, device))
            .sum()
            .neg()
            / n as f32;
        parts.push(ce.clone().into_scalar().elem_f32());
        total = total + ce;
    }
    let target = Tensor::<B, 2>::from_data(TensorData::new(b.regress.clone(), [n, 3]), device);
    let mse = (out.regress - target).mul_scalar(4.0).powi_scalar(2).mean();
    parts.push(mse.clone().into_scalar().elem_f32());
    (total + mse, parts)
}

trait ElemF32 {
    fn elem_f32(self) -> f32;
}
impl<E: burn::tensor::Element> ElemF32 for E {
    fn elem_f32(self) -> f32 {
        burn::tensor::ElementConversion::elem(self)
    }
}

/// Fraction of each head's classes right on `n` fresh shapes at `res`
/// pixels (seed `seed`, no training index), for the training log and tests.
pub fn accuracy<B: Backend>(
    net: &DtxNet<B>,
    seed: u64,
    n: usize,
    res: usize,
    device: &B::Device,
) -> [f32; 3] {
    let mut rng = StdRng::seed_from_u64(seed);
    let b = batch(seed, 0, n, res, &mut rng);
    let x = Tensor::<B, 4>::from_data(TensorData::new(b.images, [n, 3, res, res]), device);
    let out = net.forward(DtxNet::prepare(x));
    let mut acc = [0f32; 3];
    for ((a, logits), classes) in acc.iter_mut().zip(&out.logits).zip(&b.classes) {
        let pred = logits.clone().argmax(1).into_data();
        let right = pred
            .iter::<i64>()
            .zip(classes)
            .filter(|(p, c)| *p as usize == **c)
            .count();
        *a = right as f32 / n as f32;
    }
    acc
}

/// The feature standardisation of a trained network: per dimension, the
/// mean and standard deviation of its bottleneck over `n` fresh shapes of
/// every kind (seed `seed`, half at 16 and half at 32 pixels, drawn as
/// training draws them), as [`NORM`]'s tensors.
pub fn normalisation<B: Backend>(
    net: &DtxNet<B>,
    seed: u64,
    n: usize,
    device: &B::Device,
) -> Vec<(String, Vec<f32>)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut all: Vec<f32> = Vec::new();
    for (part, res) in [(0usize, 16usize), (1, 32)] {
        let b = batch(seed, part * n, n / 2, res, &mut rng);
        for chunk in b.images.chunks(64 * 3 * res * res) {
            let m = chunk.len() / (3 * res * res);
            let x = Tensor::<B, 4>::from_data(
                TensorData::new(chunk.to_vec(), [m, 3, res, res]),
                device,
            );
            let f = net.forward(DtxNet::prepare(x)).features;
            all.extend(f.into_data().to_vec::<f32>().expect("f32"));
        }
    }
    let d = FEATURE_DIM;
    let rows = all.len() / d;
    let mut mean = vec![0f64; d];
    let mut var = vec![0f64; d];
    for r in all.chunks(d) {
        for (j, v) in r.iter().enumerate() {
            mean[j] += *v as f64 / rows as f64;
        }
    }
    for r in all.chunks(d) {
        for (j, v) in r.iter().enumerate() {
            var[j] += (*v as f64 - mean[j]).powi(2) / (rows - 1) as f64;
        }
    }
    vec![
        (NORM[0].to_owned(), mean.iter().map(|&m| m as f32).collect()),
        (
            NORM[1].to_owned(),
            var.iter().map(|&v| (v.sqrt().max(1e-6)) as f32).collect(),
        ),
    ]
}

/// Trains the extractor from scratch; returns its weights in [`layout`]
/// order. `log` receives a line every 100 steps.
pub fn train<B: AutodiffBackend>(
    s: TrainSettings,
    device: &B::Device,
    log: &mut dyn FnMut(String),
) -> Vec<(String, Vec<f32>)> {
    let mut rng = StdRng::seed_from_u64(s.seed);
    let mut store = ParamStore::<B>::default();
    for (name, shape) in layout() {
        let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
        let len: usize = shape.iter().product();
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
                .collect::<Vec<f32>>()
        };
        let t = Tensor::<B, 1>::from_data(TensorData::new(values, [len]), device).require_grad();
        store
            .register_base(&name, t.into_primitive().tensor(), true)
            .expect("layout names are unique");
    }
    let mut optimizer = Optimizer::new();
    for step in 0..s.steps {
        let res = if step % 2 == 0 { 32 } else { 16 };
        let b = batch(s.seed, step as usize * s.batch, s.batch, res, &mut rng);
        let net = net_of(&store);
        let (total, parts) = loss(&net, &b, device);
        let grads = total.backward();
        // cosine decay to 5 % of the rate
        let frac = step as f32 / s.steps as f32;
        let lr = s.lr * (0.05 + 0.95 * 0.5 * (1.0 + (std::f32::consts::PI * frac).cos()));
        let adam = AdamConfig {
            rule: Rule::AdamW,
            lr,
            weight_decay: 1e-4,
            ..Default::default()
        };
        optimizer.step_all(&adam, &mut store, &grads);
        if (step + 1) % 100 == 0 || step + 1 == s.steps {
            log(format!(
                "step {}: kind {:.3} colour {:.3} texture {:.3} position/size {:.4}",
                step + 1,
                parts[0],
                parts[1],
                parts[2],
                parts[3]
            ));
        }
    }
    store
        .entries()
        .iter()
        .map(|e| {
            let t = Tensor::<B::InnerBackend, 1>::from_primitive(TensorPrimitive::Float(B::inner(
                e.value.clone(),
            )));
            (e.name.clone(), t.into_data().to_vec::<f32>().expect("f32"))
        })
        .collect()
}

fn net_of<B: AutodiffBackend>(store: &ParamStore<B>) -> DtxNet<B> {
    let shapes = layout().into_iter().collect();
    let w = store.named_tensors();
    DtxNet {
        w,
        shapes,
        norm: None,
    }
}
