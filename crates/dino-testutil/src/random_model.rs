//! Random-weight GGUF models of any real shape, for speed work and for tests that need a model
//! file of a given architecture: the llama/qwen2 layouts, and the variations of the families
//! that only exist here as random models (qwen3's Q/K norms and head_dim, phi3's fused QKV and
//! gate/up and "long rope" factors, Mixtral/qwen3moe experts, a sliding window). Weights are
//! streamed row by row into the writer, so a multi-gigabyte model never sits in memory.

use dino_core::{Error, GgmlType, Result};
use dino_formats::gguf::{Array, GgufWriter, Value};
use dino_kernels::quant;
use std::path::Path;

/// Shape of a decoder-only model.
#[derive(Clone, Debug, PartialEq)]
pub struct Shape {
    /// `general.architecture`: `llama`, `qwen2`, `qwen3`, `qwen3moe`, `phi3`, or `granite_swa`
    /// (llama.cpp's twin of `llama` with a sliding window: see [`Shape::n_swa`]).
    pub arch: &'static str,
    pub name: String,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_ff: usize,
    pub n_ctx: usize,
    /// No `output.weight`: the output head reuses the token embedding.
    pub tied: bool,
    /// Q/K/V biases (qwen2).
    pub qkv_bias: bool,
    /// Per-head dimension, written as `attention.key_length`/`value_length`; `None`: no keys,
    /// `n_embd / n_head`.
    pub head_dim: Option<usize>,
    /// Rotary dimensions, written as `rope.dimension_count`; `None`: no key (all of head_dim).
    pub n_rot: Option<usize>,
    /// Per-head RMSNorm weights `attn_q_norm`/`attn_k_norm` `[head_dim]` (qwen3, qwen3moe).
    pub qk_norm: bool,
    /// One fused `attn_qkv` `[n_embd, n_q + 2*n_kv]` instead of `attn_q/k/v` (phi3).
    pub fused_qkv: bool,
    /// Gate and up fused in `ffn_up` `[n_embd, 2*n_ff]`, gate first, and no `ffn_gate` (phi3).
    pub fused_gate_up: bool,
    /// Mixture of experts when > 0: `expert_count`, `ffn_gate_inp` `[n_embd, n_expert]` (F32
    /// whatever the matrix type, as the converter writes it) and
    /// `ffn_{gate,up}_exps` `[n_embd, n_ff_exp, n_expert]`, `ffn_down_exps` `[n_ff_exp, n_embd, n_expert]`.
    pub n_expert: usize,
    /// `expert_used_count`.
    pub n_expert_used: usize,
    /// Expert width, written as `expert_feed_forward_length` (qwen3moe); `None`: experts are
    /// `n_ff` wide and no key is written (Mixtral).
    pub n_ff_exp: Option<usize>,
    /// Sliding window, written as `attention.sliding_window` when > 0. For `granite_swa` every
    /// layer is marked SWA (`attention.sliding_window_pattern`), `logit_scale` is 1 and each
    /// layer gets `attn_sinks` `[n_head]` of -1e30, which add nothing to the softmax: llama.cpp
    /// then runs exactly the `llama` graph with a standard window on every layer.
    pub n_swa: usize,
    /// Phi-3 "long rope" when set: `rope.scaling.original_context_length` (the context trained
    /// before the extension to `n_ctx`), `rope.scaling.attn_factor` as the converter computes it
    /// for `longrope` (`sqrt(1 + ln(n_ctx / n_ctx_orig) / ln(n_ctx_orig))`), and the global
    /// `rope_factors_short.weight` / `rope_factors_long.weight` `[n_rot / 2]` (F32, drawing
    /// nothing from the generator): per-pair frequency divisors rising from 1 to 1.5 and from
    /// 2 to 8, see [`long_rope_factors`].
    pub n_ctx_orig: Option<usize>,
}

impl Shape {
    /// TinyLlama-1.1B: 2048 embd, 22 layers, 32 heads / 4 kv, 5632 ff, 32000 vocab.
    pub fn tinyllama_1_1b() -> Shape {
        Shape {
            arch: "llama",
            name: "random TinyLlama-1.1B shape".into(),
            n_vocab: 32000,
            n_embd: 2048,
            n_layer: 22,
            n_head: 32,
            n_head_kv: 4,
            n_ff: 5632,
            n_ctx: 2048,
            tied: false,
            qkv_bias: false,
            ..Shape::plain()
        }
    }

    /// Qwen3-30B-A3B's layer shape with `n_layer` layers (48 in the real model): 2048 embd,
    /// 32 heads / 4 kv of 128, 128 experts of width 768 with 8 used, 151936 vocab. 16 layers
    /// make 10.6 B weights of which 1.2 B are read per token: a mixture-of-experts benchmark
    /// that fits in RAM at 4 bits.
    pub fn qwen3moe_30b_a3b(n_layer: usize) -> Shape {
        Shape {
            arch: "qwen3moe",
            name: format!("random Qwen3-30B-A3B shape, {n_layer} layers"),
            n_vocab: 151936,
            n_embd: 2048,
            n_layer,
            n_head: 32,
            n_head_kv: 4,
            n_ff: 6144,
            n_ctx: 4096,
            head_dim: Some(128),
            qk_norm: true,
            n_expert: 128,
            n_expert_used: 8,
            n_ff_exp: Some(768),
            ..Shape::plain()
        }
    }

    /// A small model for fast tests (a few MB).
    pub fn tiny(arch: &'static str) -> Shape {
        Shape {
            arch,
            name: format!("random tiny {arch}"),
            n_vocab: 512,
            n_embd: 128,
            n_layer: 2,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 256,
            n_ctx: 256,
            tied: arch == "qwen2",
            qkv_bias: arch == "qwen2",
            ..Shape::plain()
        }
    }

    /// Nothing beyond the llama layout: the defaults of the optional features.
    fn plain() -> Shape {
        Shape {
            arch: "llama",
            name: String::new(),
            n_vocab: 0,
            n_embd: 0,
            n_layer: 0,
            n_head: 0,
            n_head_kv: 0,
            n_ff: 0,
            n_ctx: 0,
            tied: false,
            qkv_bias: false,
            head_dim: None,
            n_rot: None,
            qk_norm: false,
            fused_qkv: false,
            fused_gate_up: false,
            n_expert: 0,
            n_expert_used: 0,
            n_ff_exp: None,
            n_swa: 0,
            n_ctx_orig: None,
        }
    }

    /// The reference-test model `name` (see [`arch_test_models`]): `Shape::tiny("llama")` with
    /// that family's architecture and features, or `None` for an unknown name.
    pub fn arch_test(name: &str) -> Option<Shape> {
        let tiny = Shape::tiny("llama");
        let s = match name {
            // The control: a plain llama, which Dino has always run.
            "llama" => tiny,
            // head_dim 48 != n_embd/n_head = 32; Q/K norms; tied, as the small Qwen3s are.
            "qwen3" => Shape {
                arch: "qwen3",
                head_dim: Some(48),
                qk_norm: true,
                tied: true,
                ..tiny
            },
            // Fused QKV and gate/up; partial rotary: 32 of head_dim 48.
            "phi3" => Shape {
                arch: "phi3",
                n_embd: 192,
                n_ff: 320,
                fused_qkv: true,
                fused_gate_up: true,
                n_rot: Some(32),
                ..tiny
            },
            // phi3 with long-rope factors: context 4096 extended from 512 (attn_factor
            // sqrt(4/3)); llama.cpp picks the long factors when its context exceeds 512.
            "phi3-longrope" => Shape {
                n_ctx: 4096,
                n_ctx_orig: Some(512),
                ..Shape::arch_test("phi3")?
            },
            // `llama` with experts: 8 experts of width n_ff, 2 used.
            "mixtral" => Shape {
                n_ff: 128,
                n_expert: 8,
                n_expert_used: 2,
                ..tiny
            },
            // qwen3 attention (head_dim 48) and 8 experts of width 96, 4 used; the dense
            // feed_forward_length is written but unused.
            "qwen3moe" => Shape {
                arch: "qwen3moe",
                head_dim: Some(48),
                qk_norm: true,
                n_ff: 384,
                n_expert: 8,
                n_expert_used: 4,
                n_ff_exp: Some(96),
                ..tiny
            },
            // Mistral: `llama` plus `llama.attention.sliding_window` (Dino only).
            "mistral-swa" => Shape { n_swa: 16, ..tiny },
            // The same weights as llama.cpp's `granite_swa`, which honours the window.
            "mistral-swa.twin" => Shape {
                arch: "granite_swa",
                n_swa: 16,
                ..tiny
            },
            // The twin with a window as long as the prompt: must equal `llama` without one.
            "mistral-swa.twin-w64" => Shape {
                arch: "granite_swa",
                n_swa: 64,
                ..tiny
            },
            _ => return None,
        };
        Some(Shape {
            // llama.cpp keys vocab quirks off `general.name`: a name containing "phi3" or
            // "phi-3" needs an `<|endoftext|>` token, which the synthetic vocab lacks.
            name: format!("random arch test {}", name.replace("phi3", "phi 3")),
            ..s
        })
    }

    /// Per-head dimension.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.n_embd / self.n_head)
    }

    /// Rotated dimensions per head.
    pub fn n_rot(&self) -> usize {
        self.n_rot.unwrap_or(self.head_dim())
    }

    /// `rope.scaling.attn_factor` of a long-rope shape, as llama.cpp's converter computes it
    /// for `longrope` (in f64, stored as f32); `None` without long rope.
    pub fn rope_attn_factor(&self) -> Option<f32> {
        let orig = self.n_ctx_orig? as f64;
        let scale = self.n_ctx as f64 / orig;
        Some(if scale > 1.0 {
            (1.0 + scale.ln() / orig.ln()).sqrt() as f32
        } else {
            1.0
        })
    }

    /// Width of each expert's FFN.
    pub fn n_ff_exp(&self) -> usize {
        self.n_ff_exp.unwrap_or(self.n_ff)
    }
}

/// The random models whose llama.cpp logits are committed under
/// `data/reference/arch/<name>.json`, with their seeds. `mistral-swa.twin*` are the llama.cpp
/// side of `mistral-swa` (same weights, see [`Shape::n_swa`]) and have no file of their own.
/// The MoE seeds were chosen (`make_arch_reference.py --search-seed`, best of 300) so that the
/// router logits of the k-th and (k+1)-th expert never come closer than 0.02 on the reference
/// prompt: a near tie would let a 1e-5 difference in the router input change the experts used.
pub fn arch_test_models() -> Vec<(&'static str, Shape, u64)> {
    [
        ("llama", 101),
        ("qwen3", 102),
        ("phi3", 103),
        ("phi3-longrope", 103),
        ("mixtral", 399),
        ("qwen3moe", 217),
        ("mistral-swa", 106),
        ("mistral-swa.twin", 106),
        ("mistral-swa.twin-w64", 106),
    ]
    .into_iter()
    .map(|(name, seed)| (name, Shape::arch_test(name).expect("known name"), seed))
    .collect()
}

/// The `[n_pairs]` (short, long) RoPE factors of a long-rope shape: monotone like a real
/// checkpoint's, `1 + 0.5 x²` and `2 + 6 x²` for `x = i / (n_pairs - 1)`.
pub fn long_rope_factors(n_pairs: usize) -> (Vec<f32>, Vec<f32>) {
    let x = |i: usize| i as f32 / (n_pairs.max(2) - 1) as f32;
    (
        (0..n_pairs).map(|i| 1.0 + 0.5 * x(i) * x(i)).collect(),
        (0..n_pairs).map(|i| 2.0 + 6.0 * x(i) * x(i)).collect(),
    )
}

/// Deterministic uniform generator (xorshift64*).
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        ((v >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// A SentencePiece-style vocabulary: `<unk>`, `<s>`, `</s>`, 256 byte tokens, then pieces.
fn synthetic_vocab(n_vocab: usize) -> Result<(Vec<String>, Vec<f32>, Vec<i32>)> {
    if n_vocab < 259 + 26 {
        return Err(Error::invalid("random model: n_vocab must be at least 285"));
    }
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    let letters: Vec<char> = ('a'..='z').collect();
    let mut i = 0usize;
    while tokens.len() < n_vocab {
        // ▁a, ▁b, ..., a, b, ..., ▁aa, ▁ab, ...
        let mut s = String::new();
        let mut k = i / 2;
        loop {
            s.insert(0, letters[k % 26]);
            k /= 26;
            if k == 0 {
                break;
            }
            k -= 1;
        }
        if i.is_multiple_of(2) {
            s.insert(0, '▁');
        }
        tokens.push(s);
        types.push(1);
        i += 1;
    }
    let scores = (0..n_vocab).map(|i| -(i as f32)).collect();
    Ok((tokens, scores, types))
}

/// What a tensor holds, which decides its type and values.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// A weight matrix (or stack of them): type `ty`, uniform of amplitude 1.7/sqrt(n_in).
    Matrix,
    /// A matrix kept F32 whatever `ty` is (the MoE router), same values as `Matrix`.
    MatrixF32,
    /// F32, `1 + 0.1 u` for a norm, `0.1 u` for a bias.
    Vector,
    /// F32, every element this value; draws nothing from the generator.
    Const(f32),
    /// F32, [`long_rope_factors`] (long if true); draws nothing from the generator.
    RopeFactors(bool),
}

/// Write a random-weight model of `shape` with matrices of type `ty` (norms, biases and the
/// MoE router stay F32) to `path`. The same shape and seed give the same bytes; the optional
/// features of [`Shape`] add keys and tensors without changing the others' values.
pub fn write_random_model(path: &Path, shape: &Shape, ty: GgmlType, seed: u64) -> Result<()> {
    let s = shape;
    let hd = s.head_dim();
    let (q, kv) = (s.n_head * hd, s.n_head_kv * hd);
    let n_ff_exp = s.n_ff_exp();
    let mut w = GgufWriter::new();
    let a = |k: &str| format!("{}.{k}", s.arch);
    w.set("general.architecture", Value::String(s.arch.into()))?;
    w.set("general.name", Value::String(s.name.clone()))?;
    w.set(a("context_length"), Value::U32(s.n_ctx as u32))?;
    w.set(a("embedding_length"), Value::U32(s.n_embd as u32))?;
    w.set(a("block_count"), Value::U32(s.n_layer as u32))?;
    w.set(a("feed_forward_length"), Value::U32(s.n_ff as u32))?;
    w.set(a("attention.head_count"), Value::U32(s.n_head as u32))?;
    w.set(a("attention.head_count_kv"), Value::U32(s.n_head_kv as u32))?;
    w.set(a("attention.layer_norm_rms_epsilon"), Value::F32(1e-5))?;
    w.set(a("rope.freq_base"), Value::F32(10000.0))?;
    if let Some(hd) = s.head_dim {
        w.set(a("attention.key_length"), Value::U32(hd as u32))?;
        w.set(a("attention.value_length"), Value::U32(hd as u32))?;
    }
    if let Some(n_rot) = s.n_rot {
        w.set(a("rope.dimension_count"), Value::U32(n_rot as u32))?;
    }
    if s.n_expert > 0 {
        w.set(a("expert_count"), Value::U32(s.n_expert as u32))?;
        w.set(a("expert_used_count"), Value::U32(s.n_expert_used as u32))?;
    }
    if let Some(n) = s.n_ff_exp {
        w.set(a("expert_feed_forward_length"), Value::U32(n as u32))?;
    }
    if s.n_swa > 0 {
        w.set(a("attention.sliding_window"), Value::U32(s.n_swa as u32))?;
    }
    if let (Some(orig), Some(f)) = (s.n_ctx_orig, s.rope_attn_factor()) {
        w.set(
            a("rope.scaling.original_context_length"),
            Value::U32(orig as u32),
        )?;
        w.set(a("rope.scaling.attn_factor"), Value::F32(f))?;
    }
    let granite_swa = s.arch == "granite_swa";
    if granite_swa {
        w.set(a("logit_scale"), Value::F32(1.0))?;
        w.set(
            a("attention.sliding_window_pattern"),
            Value::Array(Array::Bool(vec![s.n_swa > 0; s.n_layer])),
        )?;
    }
    let (tokens, scores, types) = synthetic_vocab(s.n_vocab)?;
    w.set("tokenizer.ggml.model", Value::String("llama".into()))?;
    w.set("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)))?;
    w.set("tokenizer.ggml.scores", Value::Array(Array::F32(scores)))?;
    w.set("tokenizer.ggml.token_type", Value::Array(Array::I32(types)))?;
    w.set("tokenizer.ggml.bos_token_id", Value::U32(1))?;
    w.set("tokenizer.ggml.eos_token_id", Value::U32(2))?;
    w.set("tokenizer.ggml.unknown_token_id", Value::U32(0))?;

    // (name, dims [n_in, n_out, ...], kind)
    let mut specs: Vec<(String, Vec<usize>, Kind)> = vec![(
        "token_embd.weight".into(),
        vec![s.n_embd, s.n_vocab],
        Kind::Matrix,
    )];
    for il in 0..s.n_layer {
        let n = |x: &str| format!("blk.{il}.{x}");
        specs.push((n("attn_norm.weight"), vec![s.n_embd], Kind::Vector));
        if s.fused_qkv {
            specs.push((
                n("attn_qkv.weight"),
                vec![s.n_embd, q + 2 * kv],
                Kind::Matrix,
            ));
        } else {
            specs.push((n("attn_q.weight"), vec![s.n_embd, q], Kind::Matrix));
            specs.push((n("attn_k.weight"), vec![s.n_embd, kv], Kind::Matrix));
            specs.push((n("attn_v.weight"), vec![s.n_embd, kv], Kind::Matrix));
        }
        if s.qkv_bias {
            specs.push((n("attn_q.bias"), vec![q], Kind::Vector));
            specs.push((n("attn_k.bias"), vec![kv], Kind::Vector));
            specs.push((n("attn_v.bias"), vec![kv], Kind::Vector));
        }
        if s.qk_norm {
            specs.push((n("attn_q_norm.weight"), vec![hd], Kind::Vector));
            specs.push((n("attn_k_norm.weight"), vec![hd], Kind::Vector));
        }
        if granite_swa {
            specs.push((n("attn_sinks.weight"), vec![s.n_head], Kind::Const(-1e30)));
        }
        specs.push((n("attn_output.weight"), vec![q, s.n_embd], Kind::Matrix));
        specs.push((n("ffn_norm.weight"), vec![s.n_embd], Kind::Vector));
        if s.n_expert > 0 {
            let e = s.n_expert;
            specs.push((n("ffn_gate_inp.weight"), vec![s.n_embd, e], Kind::MatrixF32));
            specs.push((
                n("ffn_gate_exps.weight"),
                vec![s.n_embd, n_ff_exp, e],
                Kind::Matrix,
            ));
            specs.push((
                n("ffn_up_exps.weight"),
                vec![s.n_embd, n_ff_exp, e],
                Kind::Matrix,
            ));
            specs.push((
                n("ffn_down_exps.weight"),
                vec![n_ff_exp, s.n_embd, e],
                Kind::Matrix,
            ));
        } else if s.fused_gate_up {
            specs.push((n("ffn_up.weight"), vec![s.n_embd, 2 * s.n_ff], Kind::Matrix));
            specs.push((n("ffn_down.weight"), vec![s.n_ff, s.n_embd], Kind::Matrix));
        } else {
            specs.push((n("ffn_gate.weight"), vec![s.n_embd, s.n_ff], Kind::Matrix));
            specs.push((n("ffn_up.weight"), vec![s.n_embd, s.n_ff], Kind::Matrix));
            specs.push((n("ffn_down.weight"), vec![s.n_ff, s.n_embd], Kind::Matrix));
        }
    }
    specs.push(("output_norm.weight".into(), vec![s.n_embd], Kind::Vector));
    if !s.tied {
        specs.push((
            "output.weight".into(),
            vec![s.n_embd, s.n_vocab],
            Kind::Matrix,
        ));
    }
    if s.n_ctx_orig.is_some() {
        // Global, as the converter writes them (llama.cpp shares them across layers).
        for (name, long) in [
            ("rope_factors_long.weight", true),
            ("rope_factors_short.weight", false),
        ] {
            specs.push((name.into(), vec![s.n_rot() / 2], Kind::RopeFactors(long)));
        }
    }
    for (name, dims, kind) in &specs {
        let t = if *kind == Kind::Matrix {
            ty
        } else {
            GgmlType::F32
        };
        let d: Vec<u64> = dims.iter().map(|&x| x as u64).collect();
        w.add_tensor(name.clone(), &d, t)?;
    }
    let mut g = Gen(seed | 1);
    w.write_to_path(path, |i, spec, out| {
        let (name, dims, kind) = &specs[i];
        let n_in = dims[0];
        let n_rows: usize = dims.iter().skip(1).product();
        let is_norm = name.contains("norm");
        let is_bias = name.ends_with(".bias");
        // Scale so activations stay O(1) through the layers.
        let amp = 1.0 / (n_in as f32).sqrt() * 1.7;
        let mut row = vec![0f32; n_in];
        let mut bytes = vec![0u8; spec.ty.row_size(n_in as u64).unwrap_or(0) as usize];
        if let Kind::RopeFactors(long) = kind {
            let (short_f, long_f) = long_rope_factors(n_in);
            let f = if *long { long_f } else { short_f };
            quant::quantize_row(spec.ty, &f, &mut bytes)?;
            return out
                .write_all(&bytes)
                .map_err(|e| Error::io(path.display(), e));
        }
        for _ in 0..n_rows {
            for x in row.iter_mut() {
                *x = if let Kind::Const(c) = kind {
                    *c
                } else if is_norm {
                    1.0 + 0.1 * g.next()
                } else if is_bias {
                    0.1 * g.next()
                } else {
                    amp * g.next()
                };
            }
            quant::quantize_row(spec.ty, &row, &mut bytes)?;
            out.write_all(&bytes)
                .map_err(|e| Error::io(path.display(), e))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dino_formats::gguf::GgufFile;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("dino-testutil-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    /// Every reference model writes in F32 and in block-quantized types, with the tensors its
    /// architecture needs, and the same seed gives the same bytes.
    #[test]
    fn arch_test_models_write_and_reopen() {
        for (name, s, seed) in arch_test_models() {
            for ty in [GgmlType::F32, GgmlType::Q8_0, GgmlType::Q4_0] {
                let p = tmp(&format!("{name}-{ty}.gguf"));
                write_random_model(&p, &s, ty, seed).unwrap();
                let f = GgufFile::open(&p).unwrap();
                let has = |t: &str| f.tensor_info(t).is_some();
                assert_eq!(has("blk.1.attn_qkv.weight"), s.fused_qkv, "{name}");
                assert_eq!(has("blk.1.attn_q.weight"), !s.fused_qkv, "{name}");
                assert_eq!(has("blk.1.attn_q_norm.weight"), s.qk_norm, "{name}");
                assert_eq!(
                    has("blk.1.ffn_gate.weight"),
                    s.n_expert == 0 && !s.fused_gate_up
                );
                assert_eq!(has("output.weight"), !s.tied, "{name}");
                assert_eq!(has("blk.0.attn_sinks.weight"), s.arch == "granite_swa");
                for t in ["rope_factors_short.weight", "rope_factors_long.weight"] {
                    assert_eq!(has(t), s.n_ctx_orig.is_some(), "{name}: {t}");
                }
                if s.n_expert > 0 {
                    let router = f.tensor_info("blk.0.ffn_gate_inp.weight").unwrap();
                    assert_eq!(router.ty, GgmlType::F32, "{name}: the router stays F32");
                    let down = f.tensor_info("blk.0.ffn_down_exps.weight").unwrap();
                    let dims = [s.n_ff_exp(), s.n_embd, s.n_expert].map(|x| x as u64);
                    assert_eq!(down.dims, dims, "{name}");
                }
                let q = f
                    .tensor_info(if s.fused_qkv {
                        "blk.0.attn_qkv.weight"
                    } else {
                        "blk.0.attn_q.weight"
                    })
                    .unwrap();
                let kv = if s.fused_qkv {
                    2 * s.n_head_kv * s.head_dim()
                } else {
                    0
                };
                assert_eq!(q.dims[1] as usize, s.n_head * s.head_dim() + kv, "{name}");
                let again = tmp(&format!("{name}-{ty}-again.gguf"));
                write_random_model(&again, &s, ty, seed).unwrap();
                assert!(
                    std::fs::read(&p).unwrap() == std::fs::read(&again).unwrap(),
                    "{name} {ty}: not deterministic"
                );
            }
        }
    }

    /// Write test models `a` and `b` (F32, their own seeds) and check that every tensor of `a`
    /// is in `b` with the same shape, type and bytes.
    fn same_weights(a: &str, b: &str) -> (GgufFile, GgufFile) {
        let models = arch_test_models();
        let get = |n: &str| models.iter().find(|m| m.0 == n).unwrap().clone();
        let ((_, sa, seed_a), (_, sb, seed_b)) = (get(a), get(b));
        let (pa, pb) = (tmp(&format!("{a}.gguf")), tmp(&format!("{b}.gguf")));
        write_random_model(&pa, &sa, GgmlType::F32, seed_a).unwrap();
        write_random_model(&pb, &sb, GgmlType::F32, seed_b).unwrap();
        let (fa, fb) = (GgufFile::open(&pa).unwrap(), GgufFile::open(&pb).unwrap());
        for ta in fa.tensors() {
            let (tb, bytes) = fb.tensor(&ta.name).unwrap();
            assert_eq!((&ta.dims, ta.ty), (&tb.dims, tb.ty), "{}", ta.name);
            assert!(
                fa.tensor_data(ta) == bytes,
                "{}: different weights",
                ta.name
            );
        }
        (fa, fb)
    }

    /// `phi3-longrope` holds `phi3`'s weights plus the two global factor tensors (F32,
    /// `[n_rot/2]`, monotone, long above short) and the long-rope keys.
    #[test]
    fn long_rope_model_is_phi3_plus_factors() {
        let (fa, fb) = same_weights("phi3", "phi3-longrope");
        assert_eq!(fb.tensors().len(), fa.tensors().len() + 2);
        let read = |n: &str| -> Vec<f32> {
            let (t, bytes) = fb.tensor(n).unwrap();
            assert_eq!((t.ty, &t.dims[..]), (GgmlType::F32, &[16u64][..]), "{n}");
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let (short, long) = (
            read("rope_factors_short.weight"),
            read("rope_factors_long.weight"),
        );
        assert_eq!(
            (short[0], short[15], long[0], long[15]),
            (1.0, 1.5, 2.0, 8.0)
        );
        assert!(short.windows(2).all(|w| w[0] < w[1]) && long.windows(2).all(|w| w[0] < w[1]));
        let md = fb.metadata();
        let key = "phi3.rope.scaling.original_context_length";
        assert_eq!(md.opt_u32(key).unwrap(), Some(512));
        let f = md
            .opt_f32("phi3.rope.scaling.attn_factor")
            .unwrap()
            .unwrap();
        assert!((f - (4.0f32 / 3.0).sqrt()).abs() < 1e-6, "attn_factor {f}");
        assert_eq!(md.opt_u32("phi3.context_length").unwrap(), Some(4096));
    }

    /// The llama.cpp twin of `mistral-swa` holds the same weights, tensor for tensor.
    #[test]
    fn sliding_window_twin_has_the_same_weights() {
        let (fa, fb) = same_weights("mistral-swa", "mistral-swa.twin");
        let n_layer = Shape::arch_test("mistral-swa").unwrap().n_layer;
        assert_eq!(
            fb.tensors().len(),
            fa.tensors().len() + n_layer,
            "one sink per layer"
        );
    }
}
