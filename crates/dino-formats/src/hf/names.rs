//! Hugging Face tensor names → GGUF tensor names (llama.cpp's `gguf-py` tensor map for the
//! families Dino converts), with the per-tensor changes the converter makes.

use super::config::Arch;

/// How a checkpoint tensor becomes (part of) a GGUF tensor.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Target {
    pub gguf: String,
    pub part: Part,
    /// Llama's Q/K row permutation (HF rotary halves → GGUF adjacent pairs) over this many
    /// heads: `attn_q` uses `n_head`, `attn_k` `n_head_kv`.
    pub permute: Option<PermuteHeads>,
    /// Gemma stores `w - 1` in its norms; GGUF stores `w`.
    pub add_one: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PermuteHeads {
    Q,
    K,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// The whole GGUF tensor.
    Whole,
    /// Expert `e` of a GGUF tensor stacked over experts (`[n_in, n_out, n_expert]`).
    Expert(usize),
    /// transformers ≥ 5 fused experts `[n_expert, 2*n_ff, n_embd]`: the first (0, gate) or
    /// second (1, up) half of every expert's rows.
    FusedHalf(usize),
}

/// What to do with checkpoint tensor `name`: `Ok(Some(target))`, `Ok(None)` to skip it (rotary
/// caches, vision towers), `Err(())` when the name is unknown.
pub(crate) fn map_name(arch: Arch, name: &str) -> Result<Option<Target>, ()> {
    if name.ends_with("rotary_emb.inv_freq")
        || name.contains("vision_tower")
        || name.contains("vision_model")
        || name.contains("multi_modal_projector")
    {
        return Ok(None);
    }
    // Gemma 3 multimodal layouts: `language_model.model.*` and `model.language_model.*`.
    let owned;
    let name = if let Some(rest) = name.strip_prefix("model.language_model.") {
        owned = format!("model.{rest}");
        owned.as_str()
    } else if let Some(rest) = name.strip_prefix("language_model.") {
        rest
    } else {
        name
    };
    let gemma = arch == Arch::Gemma3;
    let whole = |gguf: String| Target {
        add_one: gemma && gguf.ends_with("norm.weight"),
        gguf,
        part: Part::Whole,
        permute: None,
    };
    match name {
        "model.embed_tokens.weight" => return Ok(Some(whole("token_embd.weight".into()))),
        "lm_head.weight" => return Ok(Some(whole("output.weight".into()))),
        "model.norm.weight" => return Ok(Some(whole("output_norm.weight".into()))),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.").ok_or(())?;
    let (il, rest) = rest.split_once('.').ok_or(())?;
    let il: usize = il.parse().map_err(|_| ())?;
    let blk = |s: &str| format!("blk.{il}.{s}");
    let (stem, suffix) = match rest.rsplit_once('.') {
        Some((s, x @ ("weight" | "bias"))) => (s, x),
        _ => return Err(()),
    };
    let gguf_stem = match stem {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.qkv_proj" => "attn_qkv",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "post_attention_layernorm" if gemma => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "mlp.gate_up_proj" => "ffn_up",
        "mlp.gate" | "block_sparse_moe.gate" => "ffn_gate_inp",
        "mlp.experts.gate_up_proj" | "mlp.experts.down_proj" => {
            // transformers ≥ 5 stores these without a `.weight` suffix; handled below.
            return Err(());
        }
        _ => return expert(il, stem, suffix),
    };
    let mut t = whole(blk(&format!("{gguf_stem}.{suffix}")));
    if arch == Arch::Llama {
        t.permute = match gguf_stem {
            "attn_q" => Some(PermuteHeads::Q),
            "attn_k" => Some(PermuteHeads::K),
            _ => None,
        };
    }
    Ok(Some(t))
}

/// Per-expert and fused-expert names: `mlp.experts.{e}.{gate,up,down}_proj` (Qwen-MoE),
/// `block_sparse_moe.experts.{e}.w{1,2,3}` (Mixtral).
fn expert(il: usize, stem: &str, suffix: &str) -> Result<Option<Target>, ()> {
    if suffix != "weight" {
        return Err(());
    }
    let (e, which) = if let Some(r) = stem.strip_prefix("mlp.experts.") {
        let (e, w) = r.split_once('.').ok_or(())?;
        let w = match w {
            "gate_proj" => "ffn_gate_exps",
            "up_proj" => "ffn_up_exps",
            "down_proj" => "ffn_down_exps",
            _ => return Err(()),
        };
        (e, w)
    } else if let Some(r) = stem.strip_prefix("block_sparse_moe.experts.") {
        let (e, w) = r.split_once('.').ok_or(())?;
        let w = match w {
            "w1" => "ffn_gate_exps",
            "w3" => "ffn_up_exps",
            "w2" => "ffn_down_exps",
            _ => return Err(()),
        };
        (e, w)
    } else {
        return Err(());
    };
    let e: usize = e.parse().map_err(|_| ())?;
    Ok(Some(Target {
        gguf: format!("blk.{il}.{which}.weight"),
        part: Part::Expert(e),
        permute: None,
        add_one: false,
    }))
}

/// transformers ≥ 5 fused expert tensors (no `.weight` suffix):
/// `model.layers.{il}.mlp.experts.gate_up_proj` → gate and up halves,
/// `model.layers.{il}.mlp.experts.down_proj` → `ffn_down_exps`.
pub(crate) fn map_fused_experts(name: &str) -> Option<Vec<Target>> {
    let rest = name.strip_prefix("model.layers.")?;
    let (il, stem) = rest.split_once('.')?;
    let il: usize = il.parse().ok()?;
    let t = |w: &str, part| Target {
        gguf: format!("blk.{il}.{w}.weight"),
        part,
        permute: None,
        add_one: false,
    };
    match stem {
        "mlp.experts.gate_up_proj" => Some(vec![
            t("ffn_gate_exps", Part::FusedHalf(0)),
            t("ffn_up_exps", Part::FusedHalf(1)),
        ]),
        "mlp.experts.down_proj" => Some(vec![t("ffn_down_exps", Part::Whole)]),
        _ => None,
    }
}

/// Whether llama.cpp would quantize this GGUF tensor (`tensor_allows_quantization`): matrices
/// named `*.weight`, but never norms, the MoE router or RoPE factor tables.
pub(crate) fn quantizable(name: &str, n_dims: usize) -> bool {
    n_dims >= 2
        && name.ends_with(".weight")
        && !name.ends_with("_norm.weight")
        && !name.contains("ffn_gate_inp")
        && !name.starts_with("rope_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let t = map_name(Arch::Llama, "model.layers.3.self_attn.q_proj.weight")
            .unwrap()
            .unwrap();
        assert_eq!(t.gguf, "blk.3.attn_q.weight");
        assert_eq!(t.permute, Some(PermuteHeads::Q));
        let t = map_name(Arch::Qwen2, "model.layers.0.self_attn.k_proj.bias")
            .unwrap()
            .unwrap();
        assert_eq!((t.gguf.as_str(), t.permute), ("blk.0.attn_k.bias", None));
        let t = map_name(
            Arch::Gemma3,
            "model.language_model.layers.1.post_attention_layernorm.weight",
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.gguf, "blk.1.post_attention_norm.weight");
        assert!(t.add_one);
        let t = map_name(
            Arch::Llama,
            "model.layers.2.block_sparse_moe.experts.7.w2.weight",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (t.gguf.as_str(), t.part),
            ("blk.2.ffn_down_exps.weight", Part::Expert(7))
        );
        assert!(
            map_name(Arch::Llama, "model.layers.0.self_attn.rotary_emb.inv_freq")
                .unwrap()
                .is_none()
        );
        assert!(map_name(Arch::Llama, "model.layers.0.mystery.weight").is_err());
        assert!(map_name(Arch::Llama, "something.else").is_err());
        assert!(quantizable("blk.0.attn_q.weight", 2));
        assert!(!quantizable("blk.0.attn_norm.weight", 1));
        assert!(!quantizable("blk.0.ffn_gate_inp.weight", 2));
    }
}
