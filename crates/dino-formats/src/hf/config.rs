//! `config.json` → `{arch}.*` GGUF keys, as llama.cpp's `convert_hf_to_gguf.py` writes them
//! (`TextModel.set_gguf_parameters` plus each family's overrides).

use crate::gguf::Value;
use dino_core::{Error, Result};
use serde_json::{Map, Value as Json};
use std::path::Path;

/// The GGUF architectures a Hugging Face checkpoint can become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// `LlamaForCausalLM`, `MistralForCausalLM`, `MixtralForCausalLM`.
    Llama,
    Qwen2,
    Qwen3,
    Qwen3Moe,
    Gemma3,
    Phi3,
}

/// `architectures[0]` of config.json → GGUF architecture.
const HF_ARCHS: &[(&str, Arch)] = &[
    ("LlamaForCausalLM", Arch::Llama),
    ("MistralForCausalLM", Arch::Llama),
    ("MixtralForCausalLM", Arch::Llama),
    ("Qwen2ForCausalLM", Arch::Qwen2),
    ("Qwen3ForCausalLM", Arch::Qwen3),
    ("Qwen3MoeForCausalLM", Arch::Qwen3Moe),
    ("Gemma3ForCausalLM", Arch::Gemma3),
    ("Gemma3ForConditionalGeneration", Arch::Gemma3),
    ("Phi3ForCausalLM", Arch::Phi3),
];

impl Arch {
    /// `general.architecture`.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Qwen3Moe => "qwen3moe",
            Arch::Gemma3 => "gemma3",
            Arch::Phi3 => "phi3",
        }
    }

    /// The Hugging Face class names Dino converts.
    pub fn supported_hf_names() -> Vec<&'static str> {
        HF_ARCHS.iter().map(|(n, _)| *n).collect()
    }
}

/// config.json with `text_config` merged into the root (multimodal checkpoints), and typed
/// accessors whose errors name the file and field.
pub(crate) struct HfConfig {
    pub path: String,
    pub root: Map<String, Json>,
    pub arch: Arch,
    /// `architectures[0]`.
    pub hf_arch: String,
}

impl HfConfig {
    pub fn load(dir: &Path) -> Result<HfConfig> {
        let p = dir.join("config.json");
        let path = p.display().to_string();
        let json = super::read_json(&p)?;
        let Json::Object(mut root) = json else {
            return Err(Error::format(&path, "expected a JSON object"));
        };
        if let Some(Json::Object(text)) = root.get("text_config").cloned() {
            for (k, v) in text {
                root.insert(k, v);
            }
        }
        let hf_arch = match root.get("architectures") {
            Some(Json::Array(a)) if !a.is_empty() => a[0]
                .as_str()
                .ok_or_else(|| Error::format(&path, "field 'architectures' must hold strings"))?
                .to_string(),
            Some(_) => {
                return Err(Error::format(
                    &path,
                    "field 'architectures' must be a non-empty array of strings",
                ))
            }
            None => return Err(Error::format(&path, "missing field 'architectures'")),
        };
        let arch = HF_ARCHS
            .iter()
            .find(|(n, _)| *n == hf_arch)
            .map(|(_, a)| *a)
            .ok_or_else(|| {
                Error::Unsupported(format!(
                    "{path}: architecture '{hf_arch}' is not supported (supported: {})",
                    Arch::supported_hf_names().join(", ")
                ))
            })?;
        Ok(HfConfig {
            path,
            root,
            arch,
            hf_arch,
        })
    }

    fn bad(&self, key: &str, want: &str, v: &Json) -> Error {
        Error::format(
            &self.path,
            format!("field '{key}': expected {want}, found {v}"),
        )
    }

    /// A non-negative integer field, if present and not null.
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.root.get(key) {
            None | Some(Json::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.bad(key, "a non-negative integer", v)),
        }
    }

    pub fn req_u64(&self, key: &str) -> Result<u64> {
        self.opt_u64(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn missing(&self, key: &str) -> Error {
        Error::format(&self.path, format!("missing field '{key}'"))
    }

    /// A u32 GGUF value from an integer field.
    fn u32_of(&self, key: &str, v: u64) -> Result<Value> {
        u32::try_from(v)
            .map(Value::U32)
            .map_err(|_| Error::format(&self.path, format!("field '{key}': {v} is too large")))
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        opt_f64_in(&self.root, key).map_err(|v| self.bad(key, "a number", &v))
    }

    /// `rope_parameters` (transformers ≥ 5) or `rope_scaling`, with `rope_theta`,
    /// `partial_rotary_factor` and `original_max_position_embeddings` mirrored into it, as the
    /// converter's `TextModel.__init__` does. Per-layer-type tables (`full_attention`) are
    /// reduced to the full-attention entry.
    pub fn rope_params(&self) -> Map<String, Json> {
        let raw = self
            .root
            .get("rope_parameters")
            .or_else(|| self.root.get("rope_scaling"))
            .and_then(|v| v.as_object())
            .cloned()
            .unwrap_or_default();
        let mut p = match raw.get("full_attention") {
            Some(Json::Object(full)) => full.clone(),
            _ => raw,
        };
        if !p.contains_key("rope_type") {
            if let Some(t) = p.get("type").cloned() {
                p.insert("rope_type".into(), t);
            }
        }
        for key in ["rope_theta", "original_max_position_embeddings"] {
            if !p.contains_key(key) {
                if let Some(v) = self.root.get(key) {
                    p.insert(key.into(), v.clone());
                }
            }
        }
        p
    }
}

/// `Err(value)` when the field is present but not a number.
fn opt_f64_in(m: &Map<String, Json>, key: &str) -> std::result::Result<Option<f64>, Json> {
    match m.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| v.clone()),
    }
}

/// Keys and values for `general.*` and `{arch}.*`, in the converter's order.
pub(crate) fn metadata(cfg: &HfConfig, name: &str) -> Result<Vec<(String, Value)>> {
    let arch = cfg.arch;
    let a = arch.gguf_name();
    let mut out: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        ("general.type".into(), Value::String("model".into())),
        ("general.name".into(), Value::String(name.into())),
    ];
    let mut put = |k: &str, v: Value| out.push((format!("{a}.{k}"), v));
    let f32v = |x: f64| Value::F32(x as f32);

    let n_embd = cfg.req_u64("hidden_size")?;
    let n_layer = cfg.req_u64("num_hidden_layers")?;
    let n_head = match arch {
        Arch::Gemma3 => cfg.opt_u64("num_attention_heads")?.unwrap_or(8),
        _ => cfg.req_u64("num_attention_heads")?,
    };
    let n_head_kv = match arch {
        Arch::Gemma3 => Some(cfg.opt_u64("num_key_value_heads")?.unwrap_or(4)),
        _ => cfg.opt_u64("num_key_value_heads")?,
    };
    if n_embd == 0 || n_layer == 0 || n_head == 0 {
        return Err(Error::format(
            &cfg.path,
            "hidden_size, num_hidden_layers and num_attention_heads must be non-zero",
        ));
    }
    let n_ctx = match arch {
        Arch::Gemma3 => Some(cfg.opt_u64("max_position_embeddings")?.unwrap_or(131072)),
        _ => cfg.opt_u64("max_position_embeddings")?,
    };
    let head_dim = match arch {
        Arch::Gemma3 => Some(cfg.opt_u64("head_dim")?.unwrap_or(256)),
        _ => cfg.opt_u64("head_dim")?,
    };
    let rms_eps = match arch {
        Arch::Gemma3 => Some(cfg.opt_f64("rms_norm_eps")?.unwrap_or(1e-6)),
        _ => cfg.opt_f64("rms_norm_eps")?,
    };

    put("block_count", cfg.u32_of("num_hidden_layers", n_layer)?);
    if let Some(n) = n_ctx {
        put("context_length", cfg.u32_of("max_position_embeddings", n)?);
    }
    put("embedding_length", cfg.u32_of("hidden_size", n_embd)?);
    if let Some(n) = cfg.opt_u64("intermediate_size")? {
        put("feed_forward_length", cfg.u32_of("intermediate_size", n)?);
    } else if arch != Arch::Qwen3Moe {
        return Err(cfg.missing("intermediate_size"));
    }
    put(
        "attention.head_count",
        cfg.u32_of("num_attention_heads", n_head)?,
    );
    if let Some(n) = n_head_kv {
        put(
            "attention.head_count_kv",
            cfg.u32_of("num_key_value_heads", n)?,
        );
    }

    // RoPE: scaling type, base and the sliding-window base.
    let rope = cfg.rope_params();
    let rope_type = rope.get("rope_type").and_then(|v| v.as_str()).unwrap_or("");
    let factor = opt_f64_in(&rope, "factor").unwrap_or(None);
    match (rope_type, factor) {
        ("linear", Some(f)) => {
            put("rope.scaling.type", Value::String("linear".into()));
            put("rope.scaling.factor", f32v(f));
        }
        ("yarn", Some(f)) => {
            put("rope.scaling.type", Value::String("yarn".into()));
            put("rope.scaling.factor", f32v(f));
            let orig = rope
                .get("original_max_position_embeddings")
                .and_then(|v| v.as_u64())
                .ok_or_else(|| cfg.missing("rope_scaling.original_max_position_embeddings"))?;
            put(
                "rope.scaling.original_context_length",
                cfg.u32_of("original_max_position_embeddings", orig)?,
            );
        }
        ("su" | "longrope", _) if arch != Arch::Phi3 => {
            put("rope.scaling.type", Value::String("longrope".into()));
        }
        _ => {}
    }
    let rope_theta = opt_f64_in(&rope, "rope_theta")
        .map_err(|v| cfg.bad("rope_theta", "a number", &v))?
        .or(if arch == Arch::Gemma3 {
            Some(1e6)
        } else {
            None
        });
    if let Some(t) = rope_theta {
        put("rope.freq_base", f32v(t));
    }
    let local_theta = ["rope_local_base_freq", "local_rope_theta", "swa_rope_theta"]
        .iter()
        .find_map(|k| cfg.opt_f64(k).transpose())
        .transpose()?;
    if let Some(t) = local_theta {
        put("rope.freq_base_swa", f32v(t));
    }
    if let Some(e) = rms_eps {
        put("attention.layer_norm_rms_epsilon", f32v(e));
    }
    let n_expert = match cfg.opt_u64("num_local_experts")? {
        Some(n) => Some(n),
        None => cfg.opt_u64("num_experts")?,
    };
    if let Some(n) = n_expert {
        put("expert_count", cfg.u32_of("num_experts", n)?);
    }
    if let Some(n) = cfg.opt_u64("num_experts_per_tok")? {
        put("expert_used_count", cfg.u32_of("num_experts_per_tok", n)?);
    }
    if let Some(hd) = head_dim {
        put("attention.key_length", cfg.u32_of("head_dim", hd)?);
        put("attention.value_length", cfg.u32_of("head_dim", hd)?);
    }

    match arch {
        Arch::Llama => {
            let n_vocab = cfg.req_u64("vocab_size")?;
            put("vocab_size", cfg.u32_of("vocab_size", n_vocab)?);
            let rope_dim = head_dim.unwrap_or(n_embd / n_head);
            put("rope.dimension_count", cfg.u32_of("head_dim", rope_dim)?);
        }
        Arch::Qwen2 | Arch::Qwen3 => {}
        Arch::Qwen3Moe => {
            if let Some(n) = cfg.opt_u64("moe_intermediate_size")? {
                put(
                    "expert_feed_forward_length",
                    cfg.u32_of("moe_intermediate_size", n)?,
                );
            }
        }
        Arch::Gemma3 => {
            if let Some(c) = cfg.opt_f64("final_logit_softcapping")? {
                if c != 0.0 {
                    put("final_logit_softcapping", f32v(c));
                }
            }
            if cfg
                .opt_f64("attn_logit_softcapping")?
                .is_some_and(|c| c != 0.0)
            {
                return Err(Error::Unsupported(format!(
                    "{}: attn_logit_softcapping is not supported (llama.cpp's gemma3 has none)",
                    cfg.path
                )));
            }
            if let Some(w) = cfg.opt_u64("sliding_window")? {
                if cfg.opt_u64("sliding_window_pattern")? != Some(1) {
                    put("attention.sliding_window", cfg.u32_of("sliding_window", w)?);
                }
            }
        }
        Arch::Phi3 => {
            let orig = cfg
                .opt_u64("original_max_position_embeddings")?
                .or(n_ctx)
                .ok_or_else(|| cfg.missing("max_position_embeddings"))?;
            put(
                "rope.scaling.original_context_length",
                cfg.u32_of("original_max_position_embeddings", orig)?,
            );
            let partial = cfg.opt_f64("partial_rotary_factor")?.unwrap_or(1.0);
            let rope_dims = ((partial * n_embd as f64) as u64) / n_head;
            put(
                "rope.dimension_count",
                cfg.u32_of("hidden_size", rope_dims)?,
            );
            put(
                "attention.sliding_window",
                cfg.u32_of(
                    "sliding_window",
                    cfg.opt_u64("sliding_window")?.unwrap_or(0),
                )?,
            );
            if rope.contains_key("long_factor") {
                let max_pos = n_ctx.unwrap_or(orig) as f64;
                let scale = max_pos / orig as f64;
                let attn_factor = if scale <= 1.0 {
                    1.0
                } else if rope_type == "yarn" {
                    0.1 * scale.ln() + 1.0
                } else {
                    (1.0 + scale.ln() / (orig as f64).ln()).sqrt()
                };
                put("rope.scaling.attn_factor", f32v(attn_factor));
            }
        }
    }
    Ok(out)
}

/// The `[n_rot/2]` RoPE factor tensors a config asks for: Llama 3's `rope_freqs.weight`, or
/// Phi-3's `rope_factors_long/short.weight`.
pub(crate) fn rope_factor_tensors(cfg: &HfConfig) -> Result<Vec<(String, Vec<f32>)>> {
    let rope = cfg.rope_params();
    let rope_type = rope
        .get("rope_type")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let n_embd = cfg.req_u64("hidden_size")? as f64;
    let n_head = cfg.req_u64("num_attention_heads")? as f64;
    let num = |k: &str, d: f64| -> Result<f64> {
        opt_f64_in(&rope, k)
            .map_err(|v| cfg.bad(&format!("rope_scaling.{k}"), "a number", &v))
            .map(|x| x.unwrap_or(d))
    };
    let mut out = Vec::new();
    if cfg.arch == Arch::Llama && rope_type == "llama3" {
        let base = num("rope_theta", 10000.0)?;
        let dim = cfg
            .opt_u64("head_dim")?
            .map_or(n_embd / n_head, |d| d as f64) as usize;
        let factor = num("factor", 8.0)?;
        let low = num("low_freq_factor", 1.0)?;
        let high = num("high_freq_factor", 4.0)?;
        let old_ctx = num("original_max_position_embeddings", 8192.0)?;
        let (low_wl, high_wl) = (old_ctx / low, old_ctx / high);
        let f: Vec<f32> = (0..dim / 2)
            .map(|i| {
                // As the converter computes it: torch float32 frequencies, Python float maths.
                let freq = 1.0f32 / (base as f32).powf((2 * i) as f32 / dim as f32);
                let wl = 2.0 * std::f64::consts::PI / freq as f64;
                let ff = if wl < high_wl {
                    1.0
                } else if wl > low_wl {
                    factor
                } else {
                    let s = (old_ctx / wl - low) / (high - low);
                    1.0 / ((1.0 - s) / factor + s)
                };
                ff as f32
            })
            .collect();
        out.push(("rope_freqs.weight".to_string(), f));
    }
    if cfg.arch == Arch::Phi3 {
        if let (Some(Json::Array(long)), Some(Json::Array(short))) =
            (rope.get("long_factor"), rope.get("short_factor"))
        {
            let partial = cfg.opt_f64("partial_rotary_factor")?.unwrap_or(1.0);
            let rope_dims = ((partial * n_embd) as usize) / n_head as usize;
            for (name, v) in [
                ("rope_factors_long.weight", long),
                ("rope_factors_short.weight", short),
            ] {
                let f: Vec<f32> = v
                    .iter()
                    .map(|x| x.as_f64().map(|x| x as f32))
                    .collect::<Option<_>>()
                    .ok_or_else(|| cfg.bad("rope_scaling factors", "numbers", &Json::Null))?;
                if f.len() != rope_dims / 2 {
                    return Err(Error::format(
                        &cfg.path,
                        format!(
                            "rope_scaling: {} factors, expected {} (rotary dims / 2)",
                            f.len(),
                            rope_dims / 2
                        ),
                    ));
                }
                out.push((name.to_string(), f));
            }
        }
    }
    Ok(out)
}
