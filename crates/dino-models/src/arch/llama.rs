//! `llama`: Llama 2/3, SmolLM2, TinyLlama, Mistral, Mixtral. Pre-norm decoder, RMSNorm,
//! adjacent-pair RoPE (optionally with Llama 3 frequency factors), GQA, SwiGLU, optional tied
//! embeddings, optional Q/K/V biases.
//!
//! - Mixtral is `llama` with `llama.expert_count > 0`: every layer's feed-forward is a
//!   mixture of experts (`ffn_gate_inp`, `ffn_{gate,up,down}_exps`).
//! - Mistral's sliding window is read from `llama.attention.sliding_window` (every layer,
//!   same RoPE). llama.cpp's `llama` graph has no window and ignores the key, so converters
//!   (ours included) do not write it unless asked; a file that has it runs windowed here.

use crate::blocks::decoder::{Decoder, DecoderOptions, Experts, SlidingWindow};
use crate::{HParams, LoadOptions, Model};
use dino_core::Result;
use dino_formats::gguf::{GgufFile, Metadata};
use dino_kernels::ops::RopeStyle;
use std::sync::Arc;

const ARCH: &str = "llama";

pub fn load(file: Arc<GgufFile>, opts: &LoadOptions) -> Result<Box<dyn Model>> {
    let md = file.metadata();
    let hp = HParams::from_gguf(md, ARCH)?;
    let swa = match md.opt_u32(&Metadata::arch_key(ARCH, "attention.sliding_window"))? {
        Some(n) if n > 0 => Some(SlidingWindow {
            n_swa: n as usize,
            layers: vec![true; hp.n_layer],
            rope_freq_base: hp.rope_freq_base,
            rope_freq_scale: hp.rope_freq_scale,
        }),
        _ => None,
    };
    let experts = experts(md, ARCH, hp.n_ff)?;
    let dec = Decoder::load(
        file,
        hp,
        &DecoderOptions {
            swa,
            experts,
            ..DecoderOptions::new(ARCH, RopeStyle::Normal)
        },
        opts,
    )?;
    Ok(Box::new(dec))
}

/// The experts of a mixture-of-experts file (`{arch}.expert_count > 0`): their count, how many
/// each token uses, and their width (`expert_feed_forward_length`, else `default_ff`).
pub(crate) fn experts(md: &Metadata, arch: &str, default_ff: usize) -> Result<Option<Experts>> {
    let key = |s: &str| Metadata::arch_key(arch, s);
    let n_expert = md.opt_u32(&key("expert_count"))?.unwrap_or(0) as usize;
    if n_expert == 0 {
        return Ok(None);
    }
    let n_used = md.get_u32(&key("expert_used_count"))? as usize;
    let n_ff = md
        .opt_u32(&key("expert_feed_forward_length"))?
        .map_or(default_ff, |v| v as usize);
    Ok(Some(Experts {
        n_expert,
        n_used,
        n_ff,
    }))
}
