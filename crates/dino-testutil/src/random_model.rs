//! Random-weight GGUF models of any real shape (Llama/Qwen2 layouts), for speed work and for
//! tests that need a model file of a given architecture. Weights are streamed row by row into
//! the writer, so a multi-gigabyte model never sits in memory.

use dino_core::{Error, GgmlType, Result};
use dino_formats::gguf::{Array, GgufWriter, Value};
use dino_kernels::quant;
use std::path::Path;

/// Shape of a decoder-only model.
#[derive(Clone, Debug, PartialEq)]
pub struct Shape {
    /// `llama` or `qwen2`.
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
        }
    }
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

/// Write a random-weight model of `shape` with matrices of type `ty` (norms stay F32) to `path`.
pub fn write_random_model(path: &Path, shape: &Shape, ty: GgmlType, seed: u64) -> Result<()> {
    let s = shape;
    let hd = s.n_embd / s.n_head;
    let (q, kv) = (s.n_head * hd, s.n_head_kv * hd);
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
    let (tokens, scores, types) = synthetic_vocab(s.n_vocab)?;
    w.set("tokenizer.ggml.model", Value::String("llama".into()))?;
    w.set("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)))?;
    w.set("tokenizer.ggml.scores", Value::Array(Array::F32(scores)))?;
    w.set("tokenizer.ggml.token_type", Value::Array(Array::I32(types)))?;
    w.set("tokenizer.ggml.bos_token_id", Value::U32(1))?;
    w.set("tokenizer.ggml.eos_token_id", Value::U32(2))?;
    w.set("tokenizer.ggml.unknown_token_id", Value::U32(0))?;

    // (name, [n_in, n_out], is_matrix)
    let mut specs: Vec<(String, Vec<usize>, bool)> =
        vec![("token_embd.weight".into(), vec![s.n_embd, s.n_vocab], true)];
    for il in 0..s.n_layer {
        let n = |x: &str| format!("blk.{il}.{x}");
        specs.push((n("attn_norm.weight"), vec![s.n_embd], false));
        specs.push((n("attn_q.weight"), vec![s.n_embd, q], true));
        specs.push((n("attn_k.weight"), vec![s.n_embd, kv], true));
        specs.push((n("attn_v.weight"), vec![s.n_embd, kv], true));
        if s.qkv_bias {
            specs.push((n("attn_q.bias"), vec![q], false));
            specs.push((n("attn_k.bias"), vec![kv], false));
            specs.push((n("attn_v.bias"), vec![kv], false));
        }
        specs.push((n("attn_output.weight"), vec![q, s.n_embd], true));
        specs.push((n("ffn_norm.weight"), vec![s.n_embd], false));
        specs.push((n("ffn_gate.weight"), vec![s.n_embd, s.n_ff], true));
        specs.push((n("ffn_up.weight"), vec![s.n_embd, s.n_ff], true));
        specs.push((n("ffn_down.weight"), vec![s.n_ff, s.n_embd], true));
    }
    specs.push(("output_norm.weight".into(), vec![s.n_embd], false));
    if !s.tied {
        specs.push(("output.weight".into(), vec![s.n_embd, s.n_vocab], true));
    }
    for (name, dims, is_matrix) in &specs {
        let t = if *is_matrix { ty } else { GgmlType::F32 };
        let d: Vec<u64> = dims.iter().map(|&x| x as u64).collect();
        w.add_tensor(name.clone(), &d, t)?;
    }
    let mut g = Gen(seed | 1);
    w.write_to_path(path, |i, spec, out| {
        let (name, dims, _) = &specs[i];
        let n_in = dims[0];
        let n_rows: usize = dims.iter().skip(1).product();
        let is_norm = name.contains("norm");
        let is_bias = name.ends_with(".bias");
        // Scale so activations stay O(1) through the layers.
        let amp = 1.0 / (n_in as f32).sqrt() * 1.7;
        let mut row = vec![0f32; n_in];
        let mut bytes = vec![0u8; spec.ty.row_size(n_in as u64).unwrap_or(0) as usize];
        for _ in 0..n_rows {
            for x in row.iter_mut() {
                *x = if is_norm {
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
