//! [`BatchIter`]: endless batches over a dataset's indices, in an epoch
//! order drawn from a seed, with a position that a checkpoint can save and
//! restore so a resumed run sees exactly the batches it would have seen.

use super::DataError;
use super::dataset::{derive_seed, shuffled};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Rng streams derived from the iterator's seed.
const ORDER_STREAM: u64 = 1;
const FLIP_STREAM: u64 = 2;

/// Where a [`BatchIter`] stands: the next batch starts at `order[index]` of
/// epoch `epoch`. Saved in checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchPosition {
    /// Epochs completed (0 during the first pass).
    pub epoch: u64,
    /// Samples of this epoch already handed out, in `0..len`.
    pub index: usize,
}

/// One batch: sample indices into the dataset and whether to mirror each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Dataset indices, `batch` of them.
    pub indices: Vec<usize>,
    /// Horizontal flip per sample (all false when flipping is off).
    pub flips: Vec<bool>,
}

/// Endless batches of a fixed size over `0..len`.
///
/// Each epoch visits every index once, in an order shuffled by an rng seeded
/// from `(seed, epoch)`; a batch that runs past the end of an epoch is
/// filled from the next, so every batch is full even when the set is smaller
/// than the batch (few-shot targets). With `flip`, each visit of a sample is
/// mirrored left–right with probability ½, drawn from `(seed, epoch)` too, so
/// augmentation is reproduced on resume.
#[derive(Debug, Clone)]
pub struct BatchIter {
    len: usize,
    batch: usize,
    seed: u64,
    flip: bool,
    position: BatchPosition,
    order: Vec<usize>,
    flips: Vec<bool>,
}

impl BatchIter {
    /// Batches of `batch` samples over a dataset of `len` samples.
    /// `source` names the dataset in errors: an empty dataset or a zero
    /// batch size is an error.
    pub fn new(
        source: &str,
        len: usize,
        batch: usize,
        seed: u64,
        flip: bool,
    ) -> Result<BatchIter, DataError> {
        let invalid = |reason: String| DataError::Invalid {
            source_name: source.to_owned(),
            reason,
        };
        if len == 0 {
            return Err(invalid("no samples to draw batches from".into()));
        }
        if batch == 0 {
            return Err(invalid("batch size must be at least 1".into()));
        }
        let mut it = BatchIter {
            len,
            batch,
            seed,
            flip,
            position: BatchPosition { epoch: 0, index: 0 },
            order: Vec::new(),
            flips: Vec::new(),
        };
        it.draw_epoch();
        Ok(it)
    }

    /// For `dataset`: like [`BatchIter::new`], and flipping points (anything
    /// but `[C, H, W]` images) is an error.
    pub fn for_dataset(
        dataset: &super::Dataset,
        batch: usize,
        seed: u64,
        flip: bool,
    ) -> Result<BatchIter, DataError> {
        if flip && !dataset.is_image() {
            return Err(DataError::Invalid {
                source_name: dataset.source.clone(),
                reason: format!(
                    "horizontal flips need [C, H, W] images, samples here have shape {:?}",
                    dataset.sample_shape
                ),
            });
        }
        BatchIter::new(&dataset.source, dataset.len(), batch, seed, flip)
    }

    /// The position the next batch starts from.
    pub fn position(&self) -> BatchPosition {
        self.position
    }

    /// Moves to `position` (from [`BatchIter::position`] of an iterator made
    /// with the same length, batch and seed). An index past the epoch's end
    /// is an error.
    pub fn restore(&mut self, position: BatchPosition) -> Result<(), DataError> {
        if position.index >= self.len {
            return Err(DataError::Invalid {
                source_name: format!("batch iterator over {} samples", self.len),
                reason: format!(
                    "cannot resume at epoch {} index {}: the index must be below {}",
                    position.epoch, position.index, self.len
                ),
            });
        }
        self.position = position;
        self.draw_epoch();
        Ok(())
    }

    /// The next `batch` indices and their flips.
    pub fn next_batch(&mut self) -> Batch {
        let mut indices = Vec::with_capacity(self.batch);
        let mut flips = Vec::with_capacity(self.batch);
        while indices.len() < self.batch {
            let i = self.position.index;
            indices.push(self.order[i]);
            flips.push(self.flips[i]);
            self.position.index += 1;
            if self.position.index == self.len {
                self.position = BatchPosition {
                    epoch: self.position.epoch + 1,
                    index: 0,
                };
                self.draw_epoch();
            }
        }
        Batch { indices, flips }
    }

    fn draw_epoch(&mut self) {
        let epoch = self.position.epoch;
        self.order = shuffled(self.len, derive_seed(self.seed, ORDER_STREAM, epoch));
        let mut rng = StdRng::seed_from_u64(derive_seed(self.seed, FLIP_STREAM, epoch));
        self.flips = (0..self.len)
            .map(|_| self.flip && rng.random_bool(0.5))
            .collect();
    }
}

impl Iterator for BatchIter {
    type Item = Batch;

    /// Never ends: see [`BatchIter::next_batch`].
    fn next(&mut self) -> Option<Batch> {
        Some(self.next_batch())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_round_trip_resumes_exactly() {
        let mut a = BatchIter::new("t", 10, 4, 99, true).unwrap();
        for _ in 0..7 {
            a.next_batch();
        }
        let saved = a.position();
        assert_eq!(
            saved,
            BatchPosition { epoch: 2, index: 8 },
            "28 samples drawn"
        );
        let json = serde_json::to_string(&saved).unwrap();
        let ahead: Vec<Batch> = (0..5).map(|_| a.next_batch()).collect();

        let mut b = BatchIter::new("t", 10, 4, 99, true).unwrap();
        b.restore(serde_json::from_str(&json).unwrap()).unwrap();
        let resumed: Vec<Batch> = (0..5).map(|_| b.next_batch()).collect();
        assert_eq!(ahead, resumed);
    }

    #[test]
    fn each_epoch_visits_every_index_once_in_a_new_order() {
        let mut it = BatchIter::new("t", 6, 3, 1, false).unwrap();
        let e0: Vec<usize> = (0..2).flat_map(|_| it.next_batch().indices).collect();
        let e1: Vec<usize> = (0..2).flat_map(|_| it.next_batch().indices).collect();
        for e in [&e0, &e1] {
            let mut s = e.clone();
            s.sort_unstable();
            assert_eq!(s, [0, 1, 2, 3, 4, 5]);
        }
        assert_ne!(e0, e1);
    }

    #[test]
    fn batches_larger_than_the_set_span_epochs() {
        let mut it = BatchIter::new("t", 3, 8, 0, false).unwrap();
        let b = it.next_batch();
        assert_eq!(b.indices.len(), 8);
        assert!(b.flips.iter().all(|&f| !f));
        assert_eq!(it.position(), BatchPosition { epoch: 2, index: 2 });
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(BatchIter::new("t", 0, 4, 0, false).is_err());
        assert!(BatchIter::new("t", 4, 0, 0, false).is_err());
        let mut it = BatchIter::new("t", 4, 2, 0, false).unwrap();
        assert!(it.restore(BatchPosition { epoch: 0, index: 4 }).is_err());
    }
}
