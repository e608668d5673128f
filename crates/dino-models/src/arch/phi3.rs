//! `phi3`: Phi-3 and Phi-4-mini. Llama-shaped with Q, K and V in one `attn_qkv` tensor and
//! gate and up in one `ffn_up` tensor (gate first), NEOX RoPE (possibly on part of each head),
//! Q scaled by `1/sqrt(head_dim)` before attention. "Long rope" checkpoints carry two sets of
//! frequency factors: llama.cpp picks by the context size (not the position), and so do we.
//! The file's sliding window (2047 on Phi-3-mini-4k) is ignored, as llama.cpp ignores it.

use crate::blocks::decoder::{Decoder, DecoderOptions, LongRope};
use crate::blocks::weights::TensorLoader;
use crate::{HParams, LoadOptions, Model};
use dino_core::Result;
use dino_formats::gguf::{GgufFile, Metadata};
use dino_kernels::ops::RopeStyle;
use std::sync::Arc;

const ARCH: &str = "phi3";

pub fn load(file: Arc<GgufFile>, opts: &LoadOptions) -> Result<Box<dyn Model>> {
    let md = file.metadata();
    let hp = HParams::from_gguf(md, ARCH)?;
    let t = TensorLoader::new(file.clone());
    let half = hp.rope_dims / 2;
    let long_rope = match (
        t.opt_vector("rope_factors_short.weight", half)?,
        t.opt_vector("rope_factors_long.weight", half)?,
    ) {
        (Some(short), Some(long)) => Some(LongRope {
            n_ctx_orig: md
                .opt_u32(&Metadata::arch_key(
                    ARCH,
                    "rope.scaling.original_context_length",
                ))?
                .map_or(hp.n_ctx_train, |v| v as usize),
            short,
            long,
        }),
        _ => None,
    };
    let dec = Decoder::load(
        file.clone(),
        hp.clone(),
        &DecoderOptions {
            fused_qkv: true,
            fused_gate_up: true,
            q_scale: Some(1.0 / (hp.head_dim as f32).sqrt()),
            long_rope,
            attn_factor: md
                .opt_f32(&Metadata::arch_key(ARCH, "rope.scaling.attn_factor"))?
                .unwrap_or(1.0),
            ..DecoderOptions::new(ARCH, RopeStyle::Neox)
        },
        opts,
    )?;
    Ok(Box::new(dec))
}
