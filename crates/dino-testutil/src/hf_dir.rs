//! Hugging Face checkpoint directories made from a real GGUF's weights and tokenizer, for the
//! tests of `dino-formats::hf`, the engine's HF loading and `dino convert`.
//!
//! The weights are dequantized and stored as F16/BF16/F32 safetensors under their Hugging Face
//! names, Q/K rows un-permuted (for `llama`) so that the loader's permutation restores them;
//! `config.json` is written from the `{arch}.*` keys, `tokenizer.json` from the GGUF vocab and
//! merges, `tokenizer_config.json` from its special ids, flags and chat template.

use dino_core::{Error, GgmlType, Result};
use dino_formats::gguf::{GgufFile, Metadata};
use dino_formats::hf::{write_safetensors, StDtype, StWrite};
use dino_kernels::quant;
use serde_json::{json, Map, Value as Json};
use std::path::Path;

/// What to write.
#[derive(Clone, Copy, Debug)]
pub struct HfDirOptions {
    pub dtype: StDtype,
    /// Number of safetensors shards (more than one adds `model.safetensors.index.json`).
    pub shards: usize,
    /// Merges as `["a", "b"]` pairs (transformers ≥ 4.45) instead of `"a b"` strings.
    pub pair_merges: bool,
}

impl Default for HfDirOptions {
    fn default() -> Self {
        HfDirOptions {
            dtype: StDtype::F16,
            shards: 1,
            pair_merges: false,
        }
    }
}

/// GGUF tensor name → Hugging Face name, for `arch` (`llama` with or without experts, `qwen2`,
/// `qwen3`, `qwen3moe`, `phi3`, `gemma3`). Expert tensors (`*_exps`) are named per expert by
/// [`hf_expert_name`].
pub fn hf_name(arch: &str, gguf: &str) -> Option<String> {
    Some(match gguf {
        "token_embd.weight" => "model.embed_tokens.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        "output_norm.weight" => "model.norm.weight".into(),
        _ => {
            let rest = gguf.strip_prefix("blk.")?;
            let (il, tail) = rest.split_once('.')?;
            let (stem, suffix) = tail.rsplit_once('.')?;
            let hf = match stem {
                "attn_norm" => "input_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_qkv" => "self_attn.qkv_proj",
                "attn_q_norm" => "self_attn.q_norm",
                "attn_k_norm" => "self_attn.k_norm",
                "attn_output" => "self_attn.o_proj",
                "ffn_norm" if arch == "gemma3" => "pre_feedforward_layernorm",
                "post_attention_norm" => "post_attention_layernorm",
                "post_ffw_norm" => "post_feedforward_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" if arch == "phi3" => "mlp.gate_up_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                "ffn_gate_inp" if arch == "llama" => "block_sparse_moe.gate",
                "ffn_gate_inp" => "mlp.gate",
                _ => return None,
            };
            format!("model.layers.{il}.{hf}.{suffix}")
        }
    })
}

/// Hugging Face name of expert `e` of a stacked GGUF expert tensor: Mixtral's
/// `block_sparse_moe.experts.{e}.w{1,3,2}` for `llama`, else `mlp.experts.{e}.{gate,up,down}_proj`.
pub fn hf_expert_name(arch: &str, gguf: &str, e: usize) -> Option<String> {
    let rest = gguf.strip_prefix("blk.")?;
    let (il, tail) = rest.split_once('.')?;
    let which = tail.strip_suffix("_exps.weight")?;
    let hf = match (arch, which) {
        ("llama", "ffn_gate") => format!("block_sparse_moe.experts.{e}.w1"),
        ("llama", "ffn_up") => format!("block_sparse_moe.experts.{e}.w3"),
        ("llama", "ffn_down") => format!("block_sparse_moe.experts.{e}.w2"),
        (_, "ffn_gate") => format!("mlp.experts.{e}.gate_proj"),
        (_, "ffn_up") => format!("mlp.experts.{e}.up_proj"),
        (_, "ffn_down") => format!("mlp.experts.{e}.down_proj"),
        _ => return None,
    };
    Some(format!("model.layers.{il}.{hf}.weight"))
}

/// The inverse of the loader's Q/K permutation: GGUF row `h*hd + 2j + s` goes back to HF row
/// `h*hd + s*hd/2 + j`. `data` holds `n_rows` rows of `row` elements.
fn unpermute(data: &[f32], n_rows: usize, row: usize, n_head: usize) -> Vec<f32> {
    let hd = n_rows / n_head;
    let mut out = vec![0f32; data.len()];
    for r in 0..n_rows {
        let (h, i) = (r / hd, r % hd);
        let hf = h * hd + (i % 2) * (hd / 2) + i / 2;
        out[hf * row..(hf + 1) * row].copy_from_slice(&data[r * row..(r + 1) * row]);
    }
    out
}

fn encode(dtype: StDtype, f: &[f32]) -> Vec<u8> {
    let (ty, size) = match dtype {
        StDtype::F32 => (GgmlType::F32, 4),
        StDtype::F16 => (GgmlType::F16, 2),
        StDtype::BF16 => (GgmlType::BF16, 2),
    };
    let mut out = vec![0u8; f.len() * size];
    quant::quantize_row(ty, f, &mut out).expect("float conversion");
    out
}

fn write_json(path: &Path, v: &Json) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("JSON");
    std::fs::write(path, text).map_err(|e| Error::io(path.display(), e))
}

/// Only the tokenizer files of `gguf`'s model (a SentencePiece vocabulary, `tokenizer.ggml.model
/// = "llama"`) and a config.json naming `hf_arch` with the GGUF's vocabulary size: enough for
/// `dino_formats::hf::tokenizer_metadata`.
pub fn write_spm_tokenizer_dir(gguf: &Path, out: &Path, hf_arch: &str) -> Result<()> {
    let file = GgufFile::open(gguf)?;
    let md = file.metadata();
    if md.get_str("tokenizer.ggml.model")? != "llama" {
        return Err(Error::Unsupported(
            "hf_dir: not a SentencePiece vocabulary".into(),
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out.display(), e))?;
    let n = md.get_str_array("tokenizer.ggml.tokens")?.len();
    write_json(
        &out.join("config.json"),
        &json!({"architectures": [hf_arch], "vocab_size": n}),
    )?;
    write_spm_tokenizer(md, out)
}

/// A SentencePiece vocabulary as a byte-fallback BPE tokenizer.json (Llama 2's layout): the
/// pieces in id order, a merge `prefix + last char` for every piece whose two parts exist (in id
/// order, the order SentencePiece's scores give), control and unknown tokens added as special.
fn write_spm_tokenizer(md: &Metadata, out: &Path) -> Result<()> {
    let tokens = md.get_str_array("tokenizer.ggml.tokens")?;
    let types = md
        .opt_i32_array("tokenizer.ggml.token_type")?
        .unwrap_or(&[]);
    let scores = md.opt_f32_array("tokenizer.ggml.scores")?;
    let score = |i: usize| scores.map_or(-(i as f32), |s| s[i]);
    let normal = |i: usize| types.get(i).is_none_or(|&t| t == 1);
    let mut vocab = Map::new();
    let mut added = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = Default::default();
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t.clone(), json!(i));
        index.insert(t, i);
        let ty = types.get(i).copied();
        if matches!(ty, Some(2..=4)) {
            added.push(
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": ty != Some(4)}),
            );
        }
    }
    // As transformers' SentencePieceExtractor: every split of a piece into two pieces is a
    // merge, merges ordered by the merged piece's score (best first), so BPE merges what
    // SentencePiece would.
    let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if !normal(i) {
            continue;
        }
        for (k, _) in t.char_indices().skip(1) {
            let (a, b) = t.split_at(k);
            if let (Some(&l), Some(&r)) = (index.get(a), index.get(b)) {
                if normal(l) && normal(r) {
                    merges.push((score(i), i, l, r));
                }
            }
        }
    }
    merges.sort_by(|x, y| {
        y.0.total_cmp(&x.0)
            .then((x.1, x.2, x.3).cmp(&(y.1, y.2, y.3)))
    });
    let merges: Vec<Json> = merges
        .iter()
        .map(|&(_, _, l, r)| json!([tokens[l], tokens[r]]))
        .collect();
    let unk = md
        .opt_u32("tokenizer.ggml.unknown_token_id")?
        .and_then(|i| tokens.get(i as usize));
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let normalizer = if md.opt_bool("tokenizer.ggml.add_space_prefix")? == Some(false) {
        replace // Gemma: no dummy prefix
    } else {
        json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u{2581}"}, replace]})
    };
    let tj = json!({
        "version": "1.0",
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "fuse_unk": true,
            "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges},
    });
    write_json(&out.join("tokenizer.json"), &tj)?;
    let token = |k: &str| {
        md.opt_u32(&format!("tokenizer.ggml.{k}"))
            .ok()
            .flatten()
            .and_then(|i| tokens.get(i as usize))
            .cloned()
    };
    let mut tc =
        json!({"add_bos_token": md.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(true)});
    for (k, idk) in [
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
    ] {
        if let Some(t) = token(idk) {
            tc[k] = json!(t);
        }
    }
    write_json(&out.join("tokenizer_config.json"), &tc)
}

/// Write a Hugging Face checkpoint directory at `out` (created if needed) holding `gguf`'s model.
/// Supports `llama` (Mixtral when it has experts), `qwen2`, `qwen3`, `qwen3moe` and `phi3` files
/// with a `gpt2` (byte-level BPE) or `llama` (SentencePiece) tokenizer; the latter becomes a
/// byte-fallback BPE tokenizer.json, as Llama 2's.
pub fn write_hf_dir_from_gguf(gguf: &Path, out: &Path, opts: HfDirOptions) -> Result<()> {
    let file = GgufFile::open(gguf)?;
    let md = file.metadata();
    let arch = md.architecture()?.to_string();
    let n_expert = md.opt_u32(&format!("{arch}.expert_count"))?.unwrap_or(0) as usize;
    let hf_arch = match arch.as_str() {
        "llama" if n_expert > 0 => "MixtralForCausalLM",
        "llama" => "LlamaForCausalLM",
        "qwen2" => "Qwen2ForCausalLM",
        "qwen3" => "Qwen3ForCausalLM",
        "qwen3moe" => "Qwen3MoeForCausalLM",
        "phi3" => "Phi3ForCausalLM",
        "gemma3" => "Gemma3ForCausalLM",
        a => return Err(Error::Unsupported(format!("hf_dir: architecture {a}"))),
    };
    std::fs::create_dir_all(out).map_err(|e| Error::io(out.display(), e))?;
    let key = |s: &str| Metadata::arch_key(&arch, s);
    let n_head = md.get_u32(&key("attention.head_count"))? as usize;
    let n_head_kv = md
        .opt_u32(&key("attention.head_count_kv"))?
        .map_or(n_head, |v| v as usize);
    let tokens = md.get_str_array("tokenizer.ggml.tokens")?;

    // Weights.
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    // Phi-3's long-rope factor tables live in config.json's rope_scaling.
    let mut rope_factors: Vec<(String, Vec<f32>)> = Vec::new();
    for t in file.tensors() {
        let mut f = vec![0f32; t.n_elements() as usize];
        quant::dequantize_row(t.ty, file.tensor_data(t), &mut f)?;
        if t.name.starts_with("rope_factors_") {
            rope_factors.push((t.name.clone(), f));
            continue;
        }
        if t.dims.len() == 3 {
            // Stacked experts [n_in, n_out, n_expert]: one [n_out, n_in] tensor per expert.
            let (n_in, n_out) = (t.dims[0] as usize, t.dims[1] as usize);
            for (e, x) in f.chunks_exact(n_in * n_out).enumerate() {
                let name = hf_expert_name(&arch, &t.name, e)
                    .ok_or_else(|| Error::Unsupported(format!("hf_dir: tensor {}", t.name)))?;
                tensors.push((name, vec![n_out, n_in], encode(opts.dtype, x)));
            }
            continue;
        }
        let name = hf_name(&arch, &t.name)
            .ok_or_else(|| Error::Unsupported(format!("hf_dir: tensor {}", t.name)))?;
        if arch == "gemma3" && t.name.ends_with("norm.weight") {
            // Gemma checkpoints store w - 1 (the converter adds the 1 back).
            f.iter_mut().for_each(|x| *x -= 1.0);
        }
        let row = t.ne0() as usize;
        let n_rows = t.n_rows() as usize;
        if arch == "llama"
            && (t.name.ends_with("attn_q.weight") || t.name.ends_with("attn_k.weight"))
        {
            let h = if t.name.ends_with("attn_q.weight") {
                n_head
            } else {
                n_head_kv
            };
            f = unpermute(&f, n_rows, row, h);
        }
        let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
        // Norms in F32 as checkpoints often keep them; matrices in the requested type.
        let dtype = if t.dims.len() == 1 {
            StDtype::F32
        } else {
            opts.dtype
        };
        tensors.push((name, shape, encode(dtype, &f)));
    }
    let n_shards = opts.shards.max(1).min(tensors.len());
    let per = tensors.len().div_ceil(n_shards);
    let mut weight_map = Map::new();
    for (i, chunk) in tensors.chunks(per).enumerate() {
        let fname = if n_shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, n_shards)
        };
        let writes: Vec<StWrite> = chunk
            .iter()
            .map(|(name, shape, data)| StWrite {
                name,
                dtype: if shape.len() == 1 {
                    StDtype::F32
                } else {
                    opts.dtype
                },
                shape: shape.clone(),
                data,
            })
            .collect();
        write_safetensors(&out.join(&fname), &writes)?;
        for (name, _, _) in chunk {
            weight_map.insert(name.clone(), Json::String(fname.clone()));
        }
    }
    if n_shards > 1 {
        write_json(
            &out.join("model.safetensors.index.json"),
            &json!({"metadata": {}, "weight_map": weight_map}),
        )?;
    }

    // config.json.
    let tied = file.tensor_info("output.weight").is_none();
    let id = |k: &str| md.opt_u32(&format!("tokenizer.ggml.{k}")).ok().flatten();
    let mut cfg = json!({
        "architectures": [hf_arch],
        "model_type": arch,
        "hidden_size": md.get_u32(&key("embedding_length"))?,
        "intermediate_size": md.get_u32(&key("feed_forward_length"))?,
        "num_hidden_layers": md.get_u32(&key("block_count"))?,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_head_kv,
        "max_position_embeddings": md.get_u32(&key("context_length"))?,
        "rms_norm_eps": md.get_f32(&key("attention.layer_norm_rms_epsilon"))? as f64,
        "rope_theta": md.opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0) as f64,
        "vocab_size": tokens.len(),
        "tie_word_embeddings": tied,
        "torch_dtype": match opts.dtype { StDtype::F32 => "float32", StDtype::F16 => "float16", StDtype::BF16 => "bfloat16" },
    });
    if let Some(b) = id("bos_token_id") {
        cfg["bos_token_id"] = json!(b);
    }
    if let Some(e) = id("eos_token_id") {
        cfg["eos_token_id"] = json!(e);
    }
    if let Some(hd) = md.opt_u32(&key("attention.key_length"))? {
        cfg["head_dim"] = json!(hd);
    }
    if n_expert > 0 {
        let used = md.get_u32(&key("expert_used_count"))?;
        cfg[if arch == "llama" {
            "num_local_experts"
        } else {
            "num_experts"
        }] = json!(n_expert);
        cfg["num_experts_per_tok"] = json!(used);
    }
    if let Some(n) = md.opt_u32(&key("expert_feed_forward_length"))? {
        cfg["moe_intermediate_size"] = json!(n);
    }
    if arch == "gemma3" {
        if let Some(w) = md.opt_u32(&key("attention.sliding_window"))? {
            cfg["sliding_window"] = json!(w);
        }
        cfg["rope_local_base_freq"] =
            json!(md.opt_f32(&key("rope.freq_base_swa"))?.unwrap_or(10000.0) as f64);
        if let Some(c) = md.opt_f32(&key("final_logit_softcapping"))? {
            cfg["final_logit_softcapping"] = json!(c as f64);
        }
    }
    if arch == "phi3" {
        let n_embd = md.get_u32(&key("embedding_length"))? as f64;
        let hd = md
            .opt_u32(&key("attention.key_length"))?
            .map_or(n_embd / n_head as f64, |v| v as f64);
        let n_rot = md
            .opt_u32(&key("rope.dimension_count"))?
            .map_or(hd, |v| v as f64);
        cfg["partial_rotary_factor"] = json!(n_rot * n_head as f64 / n_embd);
        cfg["original_max_position_embeddings"] =
            match md.opt_u32(&key("rope.scaling.original_context_length"))? {
                Some(n) => json!(n),
                None => cfg["max_position_embeddings"].clone(),
            };
        let factor = |n: &str| rope_factors.iter().find(|(k, _)| k == n).map(|(_, f)| f);
        if let (Some(long), Some(short)) = (
            factor("rope_factors_long.weight"),
            factor("rope_factors_short.weight"),
        ) {
            cfg["rope_scaling"] =
                json!({"type": "longrope", "long_factor": long, "short_factor": short});
        }
    }
    write_json(&out.join("config.json"), &cfg)?;
    if md.get_str("tokenizer.ggml.model")? == "llama" {
        return write_spm_tokenizer(md, out);
    }

    // tokenizer.json.
    if md.get_str("tokenizer.ggml.model")? != "gpt2" {
        return Err(Error::Unsupported("hf_dir: only gpt2 tokenizers".into()));
    }
    let types = md
        .opt_i32_array("tokenizer.ggml.token_type")?
        .unwrap_or(&[]);
    let merges = md.opt_str_array("tokenizer.ggml.merges")?.unwrap_or(&[]);
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        match types.get(i).copied().unwrap_or(1) {
            5 => continue, // [PAD{i}]: the converter makes them again from vocab_size
            3 | 4 => added.push(json!({
                "id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": types[i] == 3,
            })),
            _ => {}
        }
        vocab.insert(t.clone(), json!(i));
    }
    let merges: Vec<Json> = merges
        .iter()
        .map(|m| {
            if opts.pair_merges {
                let (a, b) = m.split_once(' ').expect("merge has a space");
                json!([a, b])
            } else {
                json!(m)
            }
        })
        .collect();
    let pre = md.opt_str("tokenizer.ggml.pre")?.unwrap_or("gpt-2");
    let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
    let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
    let pre_tokenizer = match pre {
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [split(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
            byte_level(false)]}),
        "llama-bpe" => json!({"type": "Sequence", "pretokenizers": [split(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
            byte_level(false)]}),
        "gpt-2" => byte_level(true),
        p => return Err(Error::Unsupported(format!("hf_dir: pre-tokenizer {p}"))),
    };
    let add_bos = md
        .opt_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(false);
    let token = |k: &str| id(k).and_then(|i| tokens.get(i as usize)).cloned();
    let post_processor = match (add_bos, token("bos_token_id")) {
        (true, Some(bos)) => json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [], "special_tokens": {}}),
        _ => byte_level(true),
    };
    let tj = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": pre == "llama-bpe", "vocab": vocab, "merges": merges,
        },
    });
    write_json(&out.join("tokenizer.json"), &tj)?;

    // tokenizer_config.json.
    let mut tc = json!({"add_prefix_space": false, "model_max_length": 1000000});
    for (k, idk) in [
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ] {
        if let Some(t) = token(idk) {
            tc[k] = json!(t);
        }
    }
    if let Some(t) = md.opt_str("tokenizer.chat_template")? {
        tc["chat_template"] = json!(t);
    }
    write_json(&out.join("tokenizer_config.json"), &tc)
}
