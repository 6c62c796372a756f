//! [`Dataset`]: samples stored flat in host memory, independent of any burn
//! backend, with the few-shot `limit`, the train / held-out `split`, and the
//! conversion of a batch of rows to backend tensors.

use super::DataError;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// A set of equally shaped samples with optional class labels.
///
/// Samples are row-major and contiguous: sample `i` is
/// `samples[i * n .. (i + 1) * n]` where `n` is the product of
/// `sample_shape`. Images are `[C, H, W]` with values in [-1, 1]; 2-D points
/// are `[2]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Every sample, one after another.
    pub samples: Vec<f32>,
    /// Shape of one sample: `[2]` for points, `[C, H, W]` for images.
    pub sample_shape: Vec<usize>,
    /// One class index per sample, in `0..class_names.len()`, when the set
    /// has labels.
    pub labels: Option<Vec<i64>>,
    /// Class names by index (empty without labels).
    pub class_names: Vec<String>,
    /// Per-pixel class masks, `[H, W]` per image, flat, when the set has
    /// them (`builtin:shapes`: 0 background, 1 shape; a folder set with
    /// `target.masks`).
    pub masks: Option<Vec<i64>>,
    /// Where the samples came from, for messages: a folder path or
    /// `builtin:NAME`.
    pub source: String,
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        match self.sample_size() {
            0 => 0,
            n => self.samples.len() / n,
        }
    }

    /// Whether the set has no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of values in one sample (product of `sample_shape`).
    pub fn sample_size(&self) -> usize {
        self.sample_shape.iter().product()
    }

    /// Whether samples are `[C, H, W]` images.
    pub fn is_image(&self) -> bool {
        self.sample_shape.len() == 3
    }

    /// Pixels of one mask (`H × W` of an image set, 0 otherwise).
    pub fn mask_size(&self) -> usize {
        match self.sample_shape.as_slice() {
            [_, h, w] => h * w,
            _ => 0,
        }
    }

    /// The masks of the samples at `indices` as a `[batch, H, W]` i64
    /// tensor, when the set has masks.
    pub fn mask_tensor<B: Backend>(
        &self,
        indices: &[usize],
        device: &B::Device,
    ) -> Option<Tensor<B, 3, Int>> {
        let m = self.masks.as_ref()?;
        let per = self.mask_size();
        let v: Vec<i64> = indices
            .iter()
            .flat_map(|&i| m[i * per..(i + 1) * per].iter().copied())
            .collect();
        let shape = [indices.len(), self.sample_shape[1], self.sample_shape[2]];
        Some(Tensor::from_data(TensorData::new(v, shape), device))
    }

    /// The values of sample `i`. Panics when `i >= len()`.
    pub fn sample(&self, i: usize) -> &[f32] {
        let n = self.sample_size();
        &self.samples[i * n..(i + 1) * n]
    }

    /// The samples at `indices`, in that order (repeats allowed), keeping
    /// labels, class names and source. Panics on an index `>= len()`, like
    /// slice indexing: indices come from code, not users.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let (samples, labels) = self.gather(indices, None);
        let per = self.mask_size();
        let masks = self.masks.as_ref().map(|m| {
            indices
                .iter()
                .flat_map(|&i| m[i * per..(i + 1) * per].iter().copied())
                .collect()
        });
        Dataset {
            samples,
            sample_shape: self.sample_shape.clone(),
            labels,
            class_names: self.class_names.clone(),
            masks,
            source: self.source.clone(),
        }
    }

    /// A few-shot subset of `n` samples, chosen by a shuffle seeded with
    /// `seed` and kept in their original order. The same `(n, seed)` always
    /// picks the same samples, and a smaller `n` picks a subset of a larger
    /// one's. Errors when the set has fewer than `n` samples.
    pub fn limit(&self, n: usize, seed: u64) -> Result<Dataset, DataError> {
        if n > self.len() {
            return Err(DataError::TooFewSamples {
                source_name: self.source.clone(),
                have: self.len(),
                want: n,
            });
        }
        let mut chosen = shuffled(self.len(), seed);
        chosen.truncate(n);
        chosen.sort_unstable();
        Ok(self.subset(&chosen))
    }

    /// The same samples without their labels (an unconditional run).
    pub fn without_labels(mut self) -> Dataset {
        self.labels = None;
        self
    }

    /// Splits into `(rest, held_out)` with exactly `n` samples held out,
    /// chosen by a shuffle seeded with `seed`; both keep their original
    /// order. Errors when fewer than `n + 1` samples are there.
    pub fn hold_out(&self, n: usize, seed: u64) -> Result<(Dataset, Dataset), DataError> {
        if n >= self.len() {
            return Err(DataError::TooFewSamples {
                source_name: self.source.clone(),
                have: self.len(),
                want: n + 1,
            });
        }
        let order = shuffled(self.len(), seed);
        let (mut held, mut rest) = (order[..n].to_vec(), order[n..].to_vec());
        held.sort_unstable();
        rest.sort_unstable();
        Ok((self.subset(&rest), self.subset(&held)))
    }

    /// Splits into `(train, held_out)`: `round(len × held_out_fraction)`
    /// samples chosen by a shuffle seeded with `seed` are held out; both
    /// parts keep their original order. `held_out_fraction` must lie in
    /// [0, 1).
    pub fn split(
        &self,
        held_out_fraction: f64,
        seed: u64,
    ) -> Result<(Dataset, Dataset), DataError> {
        if !(0.0..1.0).contains(&held_out_fraction) {
            return Err(DataError::Invalid {
                source_name: self.source.clone(),
                reason: format!("held-out fraction {held_out_fraction} is outside [0, 1)"),
            });
        }
        let order = shuffled(self.len(), seed);
        let k = (self.len() as f64 * held_out_fraction).round() as usize;
        let (mut held, mut train) = (order[..k].to_vec(), order[k..].to_vec());
        held.sort_unstable();
        train.sort_unstable();
        Ok((self.subset(&train), self.subset(&held)))
    }

    /// The values and labels of the samples at `indices`, flat. With
    /// `flips`, sample `k` is mirrored left–right when `flips[k]` (images
    /// only; `flips` must be as long as `indices`).
    pub fn gather(
        &self,
        indices: &[usize],
        flips: Option<&[bool]>,
    ) -> (Vec<f32>, Option<Vec<i64>>) {
        let n = self.sample_size();
        let mut values = Vec::with_capacity(indices.len() * n);
        for (k, &i) in indices.iter().enumerate() {
            let sample = self.sample(i);
            if flips.is_some_and(|f| f[k]) && self.is_image() {
                let w = self.sample_shape[2];
                for row in sample.chunks_exact(w) {
                    values.extend(row.iter().rev());
                }
            } else {
                values.extend_from_slice(sample);
            }
        }
        let labels = self
            .labels
            .as_ref()
            .map(|l| indices.iter().map(|&i| l[i]).collect());
        (values, labels)
    }

    /// The samples at `indices` as a `[batch, ..sample_shape]` f32 tensor
    /// on `device`, with their labels as a `[batch]` i64 tensor when the set
    /// has labels. `D` is the rank of a batch: one more than
    /// `sample_shape`'s (a caller's bug otherwise: it panics).
    pub fn to_tensor<B: Backend, const D: usize>(
        &self,
        indices: &[usize],
        device: &B::Device,
    ) -> (Tensor<B, D>, Option<Tensor<B, 1, Int>>) {
        self.to_tensor_flipped::<B, D>(indices, None, device)
    }

    /// [`Dataset::to_tensor`] with per-sample horizontal flips (a
    /// [`super::Batch`]'s `flips`).
    pub fn to_tensor_flipped<B: Backend, const D: usize>(
        &self,
        indices: &[usize],
        flips: Option<&[bool]>,
        device: &B::Device,
    ) -> (Tensor<B, D>, Option<Tensor<B, 1, Int>>) {
        assert_eq!(
            D,
            self.sample_shape.len() + 1,
            "a batch of this set has rank {}",
            self.sample_shape.len() + 1
        );
        let (values, labels) = self.gather(indices, flips);
        let mut shape = vec![indices.len()];
        shape.extend_from_slice(&self.sample_shape);
        let x = Tensor::from_data(TensorData::new(values, shape), device);
        let y = labels.map(|l| {
            let n = l.len();
            Tensor::from_data(TensorData::new(l, [n]), device)
        });
        (x, y)
    }
}

/// `0..n` shuffled by an rng seeded with `seed`.
pub(crate) fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    order
}

/// A seed for stream `stream`, item `index` derived from `seed`
/// (SplitMix64 finalizer over the three), so that per-epoch and per-sample
/// rngs are independent of each other and of the order they are made in.
pub(crate) fn derive_seed(seed: u64, stream: u64, index: u64) -> u64 {
    let mut z = seed
        ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(n: usize) -> Dataset {
        Dataset {
            samples: (0..2 * n).map(|v| v as f32).collect(),
            sample_shape: vec![2],
            labels: Some((0..n as i64).map(|i| i % 3).collect()),
            class_names: vec!["a".into(), "b".into(), "c".into()],
            masks: None,
            source: "test points".into(),
        }
    }

    #[test]
    fn limit_is_deterministic_nested_and_ordered() {
        let d = points(50);
        let a = d.limit(10, 7).unwrap();
        assert_eq!(a, d.limit(10, 7).unwrap());
        assert_ne!(a, d.limit(10, 8).unwrap());
        assert_eq!(a.len(), 10);
        let firsts: Vec<f32> = (0..a.len()).map(|i| a.sample(i)[0]).collect();
        assert!(
            firsts.windows(2).all(|w| w[0] < w[1]),
            "original order kept"
        );
        let small = d.limit(4, 7).unwrap();
        for i in 0..small.len() {
            assert!(
                firsts.contains(&small.sample(i)[0]),
                "limit 4 within limit 10"
            );
        }
        // Labels follow their samples: sample value 2i has label i % 3.
        for i in 0..a.len() {
            let orig = a.sample(i)[0] as i64 / 2;
            assert_eq!(a.labels.as_ref().unwrap()[i], orig % 3);
        }
    }

    #[test]
    fn limit_larger_than_the_set_names_set_and_numbers() {
        let err = points(5).limit(8, 0).unwrap_err().to_string();
        assert_eq!(
            err,
            "test points: has 5 samples, fewer than the 8 asked for by `limit`"
        );
    }

    #[test]
    fn split_is_deterministic_and_partitions() {
        let d = points(40);
        let (train, held) = d.split(0.25, 3).unwrap();
        assert_eq!((train.len(), held.len()), (30, 10));
        assert_eq!(d.split(0.25, 3).unwrap(), (train.clone(), held.clone()));
        let mut all: Vec<f32> = (0..30).map(|i| train.sample(i)[0]).collect();
        all.extend((0..10).map(|i| held.sample(i)[0]));
        all.sort_by(f32::total_cmp);
        assert_eq!(all, (0..40).map(|i| (2 * i) as f32).collect::<Vec<_>>());
        assert!(d.split(1.0, 3).is_err());
    }

    #[test]
    fn gather_flips_image_rows() {
        let d = Dataset {
            samples: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            sample_shape: vec![1, 2, 3],
            labels: None,
            class_names: vec![],
            masks: None,
            source: "img".into(),
        };
        let (v, _) = d.gather(&[0, 0], Some(&[true, false]));
        assert_eq!(
            v,
            [3.0, 2.0, 1.0, 6.0, 5.0, 4.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
    }

    #[test]
    fn to_tensor_has_batch_shape_and_labels() {
        type B = burn::backend::Flex;
        let d = points(6);
        let device = Default::default();
        let (x, y) = d.to_tensor::<B, 2>(&[4, 1], &device);
        assert_eq!(x.dims(), [2, 2]);
        assert_eq!(x.into_data().to_vec::<f32>().unwrap(), [8.0, 9.0, 2.0, 3.0]);
        let y = y.unwrap();
        assert_eq!(
            y.into_data().convert::<i64>().to_vec::<i64>().unwrap(),
            [1, 1]
        );
    }
}
