//! `qwen2`: Qwen2 / Qwen2.5. Llama-shaped, with Q/K/V biases and NEOX-style (half-split) RoPE.

use crate::blocks::decoder::{Decoder, DecoderOptions};
use crate::{HParams, LoadOptions, Model};
use dino_core::Result;
use dino_formats::gguf::GgufFile;
use dino_kernels::ops::RopeStyle;
use std::sync::Arc;

pub fn load(file: Arc<GgufFile>, opts: &LoadOptions) -> Result<Box<dyn Model>> {
    let hp = HParams::from_gguf(file.metadata(), "qwen2")?;
    let dec = Decoder::load(
        file,
        hp,
        &DecoderOptions {
            qkv_bias_required: true,
            ..DecoderOptions::new("qwen2", RopeStyle::Neox)
        },
        opts,
    )?;
    Ok(Box::new(dec))
}
