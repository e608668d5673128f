//! `qwen3` and `qwen3moe`: Qwen3 and Qwen3-MoE. Qwen2's decoder without Q/K/V biases, with a
//! per-head RMSNorm of Q and K before NEOX RoPE; the head dimension (`attention.key_length`)
//! need not be `n_embd / n_head`. Qwen3-MoE replaces every feed-forward by a mixture of
//! experts (`expert_feed_forward_length` wide; without it, `feed_forward_length /
//! expert_used_count`, as llama.cpp); the routing always renormalises the chosen experts'
//! probabilities, as llama.cpp does whatever `norm_topk_prob` said.

use crate::blocks::decoder::{Decoder, DecoderOptions};
use crate::{HParams, LoadOptions, Model};
use dino_core::{Error, Result};
use dino_formats::gguf::{GgufFile, Metadata};
use dino_kernels::ops::RopeStyle;
use std::sync::Arc;

pub fn load(file: Arc<GgufFile>, opts: &LoadOptions) -> Result<Box<dyn Model>> {
    load_arch(file, opts, "qwen3")
}

pub fn load_moe(file: Arc<GgufFile>, opts: &LoadOptions) -> Result<Box<dyn Model>> {
    load_arch(file, opts, "qwen3moe")
}

fn load_arch(
    file: Arc<GgufFile>,
    opts: &LoadOptions,
    arch: &'static str,
) -> Result<Box<dyn Model>> {
    let md = file.metadata();
    let hp = HParams::from_gguf(md, arch)?;
    let experts = if arch == "qwen3moe" {
        let n_used = md.opt_u32(&Metadata::arch_key(arch, "expert_used_count"))?;
        let default_ff = match n_used {
            Some(k) if k > 0 => hp.n_ff / k as usize,
            _ => 0,
        };
        let x = super::llama::experts(md, arch, default_ff)?;
        if x.is_none() {
            return Err(Error::format(
                Metadata::arch_key(arch, "expert_count"),
                "a qwen3moe model needs experts",
            ));
        }
        x
    } else {
        None
    };
    let dec = Decoder::load(
        file,
        hp,
        &DecoderOptions {
            qk_norm: true,
            experts,
            ..DecoderOptions::new(arch, RopeStyle::Neox)
        },
        opts,
    )?;
    Ok(Box::new(dec))
}
