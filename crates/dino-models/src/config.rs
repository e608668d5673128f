//! Hyper-parameters common to decoder-only transformers, read from `{arch}.*` GGUF keys.

use dino_core::{Error, Result};
use dino_formats::gguf::Metadata;

/// The glossary of dimension names used across the models.
#[derive(Clone, Debug, PartialEq)]
pub struct HParams {
    pub n_vocab: usize,
    /// Trained context length.
    pub n_ctx_train: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub rms_eps: f32,
    pub rope_freq_base: f32,
    /// Rotated dimensions per head.
    pub rope_dims: usize,
    /// 1 / linear scaling factor (1 when unscaled).
    pub rope_freq_scale: f32,
}

impl HParams {
    /// Read the standard keys of architecture `arch`, validating every dimension.
    pub fn from_gguf(md: &Metadata, arch: &str) -> Result<HParams> {
        let key = |s: &str| Metadata::arch_key(arch, s);
        let get = |s: &str| -> Result<usize> { Ok(md.get_u32(&key(s))? as usize) };
        let n_embd = get("embedding_length")?;
        let n_layer = get("block_count")?;
        let n_head = get("attention.head_count")?;
        let n_head_kv = md
            .opt_u32(&key("attention.head_count_kv"))?
            .map_or(n_head, |v| v as usize);
        // Mixture-of-experts files may give only the experts' width.
        let moe = md.opt_u32(&key("expert_count"))?.unwrap_or(0) > 0;
        let n_ff = match md.opt_u32(&key("feed_forward_length"))? {
            Some(v) => v as usize,
            None if moe => 0,
            None => get("feed_forward_length")?,
        };
        let n_ctx_train = get("context_length")?;
        let bad = |k: &str, msg: String| Error::format(format!("metadata key '{}'", key(k)), msg);
        if n_head == 0 || n_embd == 0 || n_layer == 0 || (n_ff == 0 && !moe) || n_ctx_train == 0 {
            return Err(Error::format(
                format!("{arch} hyper-parameters"),
                "embedding_length, block_count, head_count, feed_forward_length and context_length must be non-zero",
            ));
        }
        if n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(bad(
                "attention.head_count_kv",
                format!("{n_head_kv} does not divide head_count {n_head}"),
            ));
        }
        let head_dim = match md.opt_u32(&key("attention.key_length"))? {
            Some(v) => v as usize,
            None => {
                if n_embd % n_head != 0 {
                    return Err(bad(
                        "attention.head_count",
                        format!("{n_head} does not divide embedding_length {n_embd}"),
                    ));
                }
                n_embd / n_head
            }
        };
        if let Some(vl) = md.opt_u32(&key("attention.value_length"))? {
            if vl as usize != head_dim {
                return Err(bad(
                    "attention.value_length",
                    format!("{vl} differs from key_length {head_dim}; not supported"),
                ));
            }
        }
        if head_dim == 0 || head_dim % 2 != 0 || head_dim > 512 {
            return Err(bad(
                "attention.key_length",
                format!("head dimension {head_dim} must be even and at most 512"),
            ));
        }
        let rope_dims = md
            .opt_u32(&key("rope.dimension_count"))?
            .map_or(head_dim, |v| v as usize);
        if rope_dims > head_dim || rope_dims % 2 != 0 {
            return Err(bad(
                "rope.dimension_count",
                format!("{rope_dims} must be even and at most the head dimension {head_dim}"),
            ));
        }
        let rms_eps = md
            .opt_f32(&key("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-5);
        let rope_freq_base = md.opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0);
        let scaling = md.opt_str(&key("rope.scaling.type"))?.unwrap_or("none");
        let rope_freq_scale = match scaling {
            "none" | "llama3" | "" => 1.0,
            "linear" => {
                let f = md
                    .opt_f32(&key("rope.scaling.factor"))?
                    .or(md.opt_f32(&key("rope.scale_linear"))?)
                    .unwrap_or(1.0);
                if f.is_nan() || f <= 0.0 {
                    return Err(bad("rope.scaling.factor", format!("{f} must be positive")));
                }
                1.0 / f
            }
            other => {
                return Err(Error::Unsupported(format!(
                    "rope scaling type '{other}' is not supported yet (supported: none, linear, llama3)"
                )))
            }
        };
        let n_vocab = match md.opt_u32(&key("vocab_size"))? {
            Some(v) => v as usize,
            None => md.get_str_array("tokenizer.ggml.tokens")?.len(),
        };
        Ok(HParams {
            n_vocab,
            n_ctx_train,
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            rms_eps,
            rope_freq_base,
            rope_dims,
            rope_freq_scale,
        })
    }

    /// `n_head_kv * head_dim`.
    pub fn n_kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// `n_head * head_dim`.
    pub fn n_q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
}
