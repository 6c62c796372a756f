//! Evaluating generated samples: the FID Inception-v3 feature extractor.

pub mod inception;
