//! PLACEHOLDER (not committed): replaced by the clip branch.
#![allow(missing_docs, unused)]
use super::ModelError;
use burn::tensor::{Tensor, backend::Backend};
use std::path::Path;
#[derive(Debug, Clone, Copy)]
pub enum ClipTokens {
    Pooled,
    Patches,
}
pub struct Clip<B: Backend> {
    d: B::Device,
}
impl<B: Backend> Clip<B> {
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, ModelError> {
        Ok(Clip { d: device.clone() })
    }
    pub fn embed_dim(&self) -> usize {
        0
    }
    pub fn image_tokens(&self, tokens: ClipTokens) -> usize {
        0
    }
    pub fn encode_image(
        &self,
        images: Tensor<B, 4>,
        tokens: ClipTokens,
    ) -> Result<Tensor<B, 3>, ModelError> {
        unimplemented!()
    }
    pub fn encode_text(&self, prompts: &[&str]) -> Result<Tensor<B, 3>, ModelError> {
        unimplemented!()
    }
}
