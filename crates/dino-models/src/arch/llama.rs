//! `llama`: Llama 2/3, SmolLM2, TinyLlama, Mistral (without sliding window). Pre-norm decoder,
//! RMSNorm, adjacent-pair RoPE (optionally with Llama 3 frequency factors), GQA, SwiGLU,
//! optional tied embeddings, optional Q/K/V biases.

use crate::blocks::decoder::{Decoder, DecoderOptions};
use crate::{HParams, LoadOptions, Model};
use dino_core::Result;
use dino_formats::gguf::GgufFile;
use dino_kernels::ops::RopeStyle;
use std::sync::Arc;

pub fn load(file: Arc<GgufFile>, opts: &LoadOptions) -> Result<Box<dyn Model>> {
    let hp = HParams::from_gguf(file.metadata(), "llama")?;
    let dec = Decoder::load(
        file,
        hp,
        &DecoderOptions::new("llama", RopeStyle::Normal),
        opts,
    )?;
    Ok(Box::new(dec))
}
