//! `gemma3`: Gemma 3. Llama-shaped, with per-head Q/K RMSNorm before NEOX RoPE, RMSNorm of the
//! attention and FFN outputs before each residual add, GeGLU (tanh GELU), embeddings scaled by
//! `sqrt(n_embd)`, Q pre-scaled instead of the scores, and sliding-window attention on five
//! layers of every six (those with their own RoPE base, unscaled). The converter stores the
//! norms' `1 +` already, so they are plain RMSNorm weights. As llama.cpp's `gemma3` graph.
//! Loaded without repacking for now (see `load`).

use crate::blocks::decoder::{Decoder, DecoderOptions, SlidingWindow};
use crate::{HParams, LoadOptions, Model};
use dino_core::{Error, Result};
use dino_formats::gguf::{Array, GgufFile, Metadata};
use dino_kernels::matmul::Epilogue;
use dino_kernels::ops::RopeStyle;
use std::sync::Arc;

const ARCH: &str = "gemma3";

pub fn load(file: Arc<GgufFile>, opts: &LoadOptions) -> Result<Box<dyn Model>> {
    let md = file.metadata();
    let hp = HParams::from_gguf(md, ARCH)?;
    let key = |s: &str| Metadata::arch_key(ARCH, s);
    let swa = match md.opt_u32(&key("attention.sliding_window"))? {
        Some(n) if n > 0 => Some(SlidingWindow {
            n_swa: n as usize,
            layers: swa_layers(md, hp.n_layer)?,
            rope_freq_base: md.opt_f32(&key("rope.freq_base_swa"))?.unwrap_or(10000.0),
            rope_freq_scale: 1.0,
        }),
        _ => None,
    };
    // llama.cpp ignores `query_pre_attn_scalar`: 1/sqrt(n_embd/n_head) for the 62-layer 27B,
    // else 1/sqrt(head_dim).
    let q_scale = if hp.n_layer == 62 {
        1.0 / ((hp.n_embd / hp.n_head) as f32).sqrt()
    } else {
        1.0 / (hp.head_dim as f32).sqrt()
    };
    let softcap = md
        .opt_f32(&key("final_logit_softcapping"))?
        .filter(|&c| c > 0.0);
    // The repacked kernels quantize activations per 32 elements with f32 scales; ggml uses f16
    // scales (Q8_0) or one scale per 256 (Q8_K). Products move by ~1e-4 relative (layer 0's K
    // already differs by 1e-4 of its range), which Gemma-3's residual stream (values to ~3000)
    // amplifies to logits up to 3 apart from llama.cpp's (0.1-0.5 on the Llama and Qwen
    // models). The quality is the same (perplexity 40.56 repacked, 40.83 plain, llama.cpp
    // 40.70), but the tokens are not llama.cpp's: Gemma keeps the file's layouts and
    // llama.cpp's exact arithmetic.
    let opts = &LoadOptions {
        no_repack: true,
        ..opts.clone()
    };
    let dec = Decoder::load(
        file.clone(),
        hp.clone(),
        &DecoderOptions {
            qk_norm: true,
            post_norms: true,
            embed_scale: Some((hp.n_embd as f32).sqrt()),
            ffn: Epilogue::GeGlu,
            q_scale: Some(q_scale),
            swa,
            final_softcap: softcap,
            ..DecoderOptions::new(ARCH, RopeStyle::Neox)
        },
        opts,
    )?;
    Ok(Box::new(dec))
}

/// Which layers are windowed: `attention.sliding_window_pattern` as a per-layer bool array, or
/// as a period `n` (default 6) in which every layer but the last of each `n` is windowed.
fn swa_layers(md: &Metadata, n_layer: usize) -> Result<Vec<bool>> {
    let k = Metadata::arch_key(ARCH, "attention.sliding_window_pattern");
    if let Some(arr) = md.get(&k).and_then(|v| v.as_array()) {
        let flags: Option<Vec<bool>> = match arr {
            Array::Bool(v) => Some(v.clone()),
            Array::U32(v) => Some(v.iter().map(|&x| x != 0).collect()),
            Array::I32(v) => Some(v.iter().map(|&x| x != 0).collect()),
            Array::U8(v) => Some(v.iter().map(|&x| x != 0).collect()),
            _ => None,
        };
        let flags = flags
            .ok_or_else(|| Error::format(&k, "expected a u32 or an array of per-layer bools"))?;
        if flags.len() != n_layer {
            return Err(Error::format(
                &k,
                format!("{} flags for {n_layer} layers", flags.len()),
            ));
        }
        return Ok(flags);
    }
    let n = md.opt_u32(&k)?.unwrap_or(6) as usize;
    Ok((0..n_layer).map(|il| n == 0 || il % n < n - 1).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dino_formats::gguf::Value;

    fn md(pattern: Option<Value>) -> Metadata {
        let mut m = Metadata::default();
        if let Some(v) = pattern {
            m.insert(
                Metadata::arch_key(ARCH, "attention.sliding_window_pattern"),
                v,
            );
        }
        m
    }

    /// Every sixth layer is global by default; a period or a per-layer array overrides it.
    #[test]
    fn sliding_window_layers_follow_llama_cpp() {
        let l = swa_layers(&md(None), 8).unwrap();
        assert_eq!(l, [true, true, true, true, true, false, true, true]);
        let l = swa_layers(&md(Some(Value::U32(2))), 4).unwrap();
        assert_eq!(l, [true, false, true, false]);
        let l = swa_layers(&md(Some(Value::U32(0))), 3).unwrap();
        assert_eq!(l, [true, true, true]);
        let flags = Value::Array(Array::Bool(vec![false, true, true]));
        assert_eq!(
            swa_layers(&md(Some(flags)), 3).unwrap(),
            [false, true, true]
        );
        let short = Value::Array(Array::Bool(vec![true]));
        assert!(swa_layers(&md(Some(short)), 3).is_err());
    }
}
