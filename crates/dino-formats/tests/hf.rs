//! Hugging Face checkpoint directories as GGUF: a tiny synthetic Llama checkpoint checks the
//! metadata, tensor names, Q/K permutation, zero-copy views, sharding, the written GGUF, and
//! that hostile inputs (truncated or absurd safetensors, wrong dtypes or shapes, broken or
//! incomplete config.json) give errors naming the file and field, never a panic.

use dino_core::GgmlType;
use dino_formats::gguf::{GgufFile, Value};
use dino_formats::hf::{write_safetensors, Conversion, HfModel, OutType, StDtype, StWrite};
use serde_json::json;
use std::path::Path;

const N_EMBD: usize = 64;
const N_HEAD: usize = 4;
const N_HEAD_KV: usize = 2;
const N_FF: usize = 96;
const N_VOCAB: usize = 40;

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| half::f16::from_f32(*x).to_bits().to_le_bytes())
        .collect()
}

/// Deterministic values; row `r` of a matrix starts at `r * 1000`, so rows are recognisable.
fn values(rows: usize, cols: usize, seed: f32) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| ((i / cols) * 1000 + i % cols) as f32 * 1e-3 + seed)
        .collect()
}

fn config() -> serde_json::Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": N_EMBD, "intermediate_size": N_FF, "num_hidden_layers": 1,
        "num_attention_heads": N_HEAD, "num_key_value_heads": N_HEAD_KV,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "vocab_size": N_VOCAB, "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2,
    })
}

fn tokenizer() -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    for i in 0..N_VOCAB {
        vocab.insert(
            match i {
                0 => "<|endoftext|>".to_string(),
                1 => "<|im_start|>".to_string(),
                2 => "<|im_end|>".to_string(),
                _ => format!("t{i}"),
            },
            json!(i),
        );
    }
    json!({
        "added_tokens": [
            {"id": 0, "content": "<|endoftext|>", "special": true},
            {"id": 1, "content": "<|im_start|>", "special": true},
            {"id": 2, "content": "<|im_end|>", "special": true},
        ],
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}]},
        "post_processor": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": vocab, "merges": [["t", "1"], "t 2"]},
    })
}

/// (HF name, shape, values)
type Weights = Vec<(String, Vec<usize>, Vec<f32>)>;

fn weights() -> Weights {
    let hd = N_EMBD / N_HEAD;
    let l = |s: &str| format!("model.layers.0.{s}");
    vec![
        (
            "model.embed_tokens.weight".into(),
            vec![N_VOCAB, N_EMBD],
            values(N_VOCAB, N_EMBD, 0.1),
        ),
        (
            l("input_layernorm.weight"),
            vec![N_EMBD],
            values(1, N_EMBD, 1.0),
        ),
        (
            l("self_attn.q_proj.weight"),
            vec![N_HEAD * hd, N_EMBD],
            values(N_HEAD * hd, N_EMBD, 0.2),
        ),
        (
            l("self_attn.k_proj.weight"),
            vec![N_HEAD_KV * hd, N_EMBD],
            values(N_HEAD_KV * hd, N_EMBD, 0.3),
        ),
        (
            l("self_attn.v_proj.weight"),
            vec![N_HEAD_KV * hd, N_EMBD],
            values(N_HEAD_KV * hd, N_EMBD, 0.4),
        ),
        (
            l("self_attn.o_proj.weight"),
            vec![N_EMBD, N_EMBD],
            values(N_EMBD, N_EMBD, 0.5),
        ),
        (
            l("post_attention_layernorm.weight"),
            vec![N_EMBD],
            values(1, N_EMBD, 1.5),
        ),
        (
            l("mlp.gate_proj.weight"),
            vec![N_FF, N_EMBD],
            values(N_FF, N_EMBD, 0.6),
        ),
        (
            l("mlp.up_proj.weight"),
            vec![N_FF, N_EMBD],
            values(N_FF, N_EMBD, 0.7),
        ),
        (
            l("mlp.down_proj.weight"),
            vec![N_EMBD, N_FF],
            values(N_EMBD, N_FF, 0.8),
        ),
        (
            "model.norm.weight".into(),
            vec![N_EMBD],
            values(1, N_EMBD, 2.0),
        ),
        (
            "model.layers.0.self_attn.rotary_emb.inv_freq".into(),
            vec![hd / 2],
            values(1, hd / 2, 0.0),
        ),
    ]
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| half::bf16::from_f32(*x).to_bits().to_le_bytes())
        .collect()
}

fn write_weights(dir: &Path, shards: usize, dtype: StDtype) {
    let w = weights();
    let data: Vec<Vec<u8>> = w
        .iter()
        .map(|(_, _, v)| match dtype {
            StDtype::BF16 => bf16_bytes(v),
            _ => f16_bytes(v),
        })
        .collect();
    let per = w.len().div_ceil(shards);
    let mut map = serde_json::Map::new();
    for (s, idx) in (0..w.len()).collect::<Vec<_>>().chunks(per).enumerate() {
        let fname = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{shards:05}.safetensors", s + 1)
        };
        let writes: Vec<StWrite> = idx
            .iter()
            .map(|&i| StWrite {
                name: &w[i].0,
                dtype,
                shape: w[i].1.clone(),
                data: &data[i],
            })
            .collect();
        write_safetensors(&dir.join(&fname), &writes).unwrap();
        for &i in idx {
            map.insert(w[i].0.clone(), json!(fname));
        }
    }
    if shards > 1 {
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            json!({"weight_map": map}).to_string(),
        )
        .unwrap();
    }
}

fn tiny_dir(shards: usize) -> tempfile::TempDir {
    tiny_dir_with(shards, StDtype::F16)
}

fn tiny_dir_with(shards: usize, dtype: StDtype) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), config().to_string()).unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer().to_string()).unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        json!({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": "{{ x }}"})
            .to_string(),
    )
    .unwrap();
    write_weights(dir.path(), shards, dtype);
    dir
}

fn row_f32(f: &GgufFile, name: &str, row: usize) -> Vec<f32> {
    let (info, data) = f.tensor(name).unwrap();
    let n = info.ne0() as usize;
    match info.ty {
        GgmlType::F16 => data[row * n * 2..(row + 1) * n * 2]
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        GgmlType::F32 => data[row * n * 4..(row + 1) * n * 4]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        t => panic!("{t}"),
    }
}

#[test]
fn tiny_llama_as_gguf() {
    for shards in [1, 3] {
        let dir = tiny_dir(shards);
        let m = HfModel::open(dir.path()).unwrap();
        let md = m.metadata();
        assert_eq!(md.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(md.get_u32("llama.embedding_length").unwrap(), N_EMBD as u32);
        assert_eq!(md.get_u32("llama.attention.head_count_kv").unwrap(), 2);
        assert_eq!(md.get_u32("llama.rope.dimension_count").unwrap(), 16);
        assert_eq!(md.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
        assert_eq!(md.get_str("tokenizer.ggml.pre").unwrap(), "smollm");
        assert_eq!(md.get_u32("tokenizer.ggml.bos_token_id").unwrap(), 1);
        assert_eq!(md.get_u32("tokenizer.ggml.eos_token_id").unwrap(), 2);
        assert_eq!(
            md.opt_bool("tokenizer.ggml.add_bos_token").unwrap(),
            Some(false)
        );
        assert_eq!(
            md.get_str_array("tokenizer.ggml.merges").unwrap(),
            &["t 1".to_string(), "t 2".to_string()]
        );
        assert_eq!(md.get_str("tokenizer.chat_template").unwrap(), "{{ x }}");
        let types = md
            .opt_i32_array("tokenizer.ggml.token_type")
            .unwrap()
            .unwrap();
        assert_eq!(&types[..4], &[3, 3, 3, 1]);

        let f = m.into_gguf(Conversion::default()).unwrap();
        let names: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names[0], "token_embd.weight");
        assert!(!names.iter().any(|n| n.contains("inv_freq")), "{names:?}");
        assert_eq!(names.len(), 11);
        let (q, _) = f.tensor("blk.0.attn_q.weight").unwrap();
        assert_eq!((q.dims.clone(), q.ty), (vec![64, 64], GgmlType::F16));
        // Q/K: GGUF row h*hd + 2j + s is HF row h*hd + s*hd/2 + j (hd = 16).
        let w = weights();
        let hf_row = |name: &str, r: usize| -> Vec<f32> {
            let (_, shape, v) = w.iter().find(|(n, _, _)| n.ends_with(name)).unwrap();
            v[r * shape[1]..(r + 1) * shape[1]]
                .iter()
                .map(|x| half::f16::from_f32(*x).to_f32())
                .collect()
        };
        for (r, hf) in [(0, 0), (1, 8), (2, 1), (17, 24), (31, 31)] {
            assert_eq!(
                row_f32(&f, "blk.0.attn_k.weight", r),
                hf_row("k_proj.weight", hf)
            );
            assert_eq!(
                row_f32(&f, "blk.0.attn_q.weight", r),
                hf_row("q_proj.weight", hf)
            );
        }
        assert_eq!(
            row_f32(&f, "blk.0.attn_v.weight", 5),
            hf_row("v_proj.weight", 5)
        );
        // Norms are F32.
        let (n, _) = f.tensor("output_norm.weight").unwrap();
        assert_eq!(n.ty, GgmlType::F32);
        // Zero copy: V comes straight from the map, so its pages can be released.
        let (v, _) = f.tensor("blk.0.attn_v.weight").unwrap();
        f.release_range(v.offset, v.size).unwrap();
        assert_eq!(
            row_f32(&f, "blk.0.attn_v.weight", 5),
            hf_row("v_proj.weight", 5)
        );
        // Converted tensors (Q, permuted) live in anonymous memory: released, their pages go
        // back to the OS and read as zeros, which is why only data never read again (a
        // repacked weight's source) may be released.
        let (q, _) = f.tensor("blk.0.attn_q.weight").unwrap();
        assert_eq!(q.size, 64 * 64 * 2);
        f.release_range(q.offset, q.size).unwrap();
        let (_, bytes) = f.tensor("blk.0.attn_q.weight").unwrap();
        assert!(bytes.iter().all(|&b| b == 0));
    }
}

#[test]
fn written_gguf_equals_assembled() {
    let dir = tiny_dir(2);
    let out = dir.path().join("out.gguf");
    let m = HfModel::open(dir.path()).unwrap();
    m.write_gguf(
        &out,
        Conversion {
            out: OutType::Auto,
            ..Default::default()
        },
    )
    .unwrap();
    let a = m.into_gguf(Conversion::default()).unwrap();
    let b = GgufFile::open(&out).unwrap();
    assert_eq!(b.metadata().get("general.file_type"), Some(&Value::U32(1)));
    assert_eq!(a.tensors().len(), b.tensors().len());
    for (ta, tb) in a.tensors().iter().zip(b.tensors()) {
        assert_eq!((&ta.name, &ta.dims, ta.ty), (&tb.name, &tb.dims, tb.ty));
        assert_eq!(a.tensor_data(ta), b.tensor_data(tb), "{}", ta.name);
    }
    for (k, v) in a.metadata().iter() {
        assert_eq!(b.metadata().get(k), Some(v), "{k}");
    }
}

/// The error of opening `dir`, checked to contain every piece of `want`.
fn open_err(dir: &Path, want: &[&str]) {
    let r = std::panic::catch_unwind(|| HfModel::open(dir).map(|_| ()));
    let e = match r {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(())) => panic!("opened; expected an error with {want:?}"),
        Err(_) => panic!("panicked; expected an error with {want:?}"),
    };
    for w in want {
        assert!(e.contains(w), "error {e:?} lacks {w:?}");
    }
}

#[test]
fn hostile_safetensors() {
    let dir = tiny_dir(1);
    let st = dir.path().join("model.safetensors");
    let full = std::fs::read(&st).unwrap();
    // Truncated anywhere: in the length, the header, the data.
    for cut in [0, 5, 8, 20, full.len() / 2, full.len() - 1] {
        std::fs::write(&st, &full[..cut]).unwrap();
        open_err(dir.path(), &["model.safetensors"]);
    }
    // Absurd header lengths.
    for n in [u64::MAX, 1 << 40, full.len() as u64] {
        let mut b = full.clone();
        b[..8].copy_from_slice(&n.to_le_bytes());
        std::fs::write(&st, &b).unwrap();
        open_err(dir.path(), &["model.safetensors", "header"]);
    }
    // A header that is not JSON.
    let mut b = full.clone();
    b[8] = b'#';
    std::fs::write(&st, &b).unwrap();
    open_err(dir.path(), &["model.safetensors", "JSON"]);
    std::fs::write(&st, &full).unwrap();
    HfModel::open(dir.path()).unwrap();
}

#[test]
fn hostile_tensors() {
    let dir = tiny_dir(1);
    let st = dir.path().join("model.safetensors");
    let good = weights();
    let write = |f: &dyn Fn(&mut Weights), dtype: StDtype| {
        let mut w = good.clone();
        f(&mut w);
        let data: Vec<Vec<u8>> = w
            .iter()
            .map(|(_, _, v)| match dtype {
                StDtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                _ => f16_bytes(v),
            })
            .collect();
        let writes: Vec<StWrite> = w
            .iter()
            .zip(&data)
            .map(|((n, s, _), d)| StWrite {
                name: n,
                dtype,
                shape: s.clone(),
                data: d,
            })
            .collect();
        write_safetensors(&st, &writes).unwrap();
    };
    // A dtype the loader does not take: rewrite the header's dtype of one tensor to I32
    // (same width as the F32 data, so the file stays consistent).
    write(&|_| {}, StDtype::F32);
    let mut b = std::fs::read(&st).unwrap();
    let hl = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(b[8..8 + hl].to_vec()).unwrap();
    let at = header.find("model.norm.weight").unwrap();
    let fixed = header[..at].to_string() + &header[at..].replacen("\"F32\"", "\"I32\"", 1);
    b[8..8 + hl].copy_from_slice(fixed.as_bytes());
    std::fs::write(&st, &b).unwrap();
    open_err(dir.path(), &["model.norm.weight", "I32", "not supported"]);
    // Q rows that do not split into heads of pairs.
    write(
        &|w| {
            let q = w
                .iter_mut()
                .find(|t| t.0.ends_with("q_proj.weight"))
                .unwrap();
            q.1 = vec![62, N_EMBD];
            q.2.truncate(62 * N_EMBD);
        },
        StDtype::F16,
    );
    open_err(dir.path(), &["q_proj.weight", "heads"]);
    // Embeddings with fewer rows than tokens.
    write(
        &|w| {
            let e = &mut w[0];
            e.1 = vec![N_VOCAB - 1, N_EMBD];
            e.2.truncate((N_VOCAB - 1) * N_EMBD);
        },
        StDtype::F16,
    );
    open_err(dir.path(), &["embed_tokens", "rows", "tokens"]);
    // An unknown tensor name.
    write(
        &|w| {
            w.push((
                "model.layers.0.mystery.weight".into(),
                vec![4],
                vec![0.0; 4],
            ))
        },
        StDtype::F16,
    );
    open_err(dir.path(), &["mystery", "no GGUF name"]);
    // Missing embeddings.
    write(&|w| w.remove(0).0.clear(), StDtype::F16);
    open_err(dir.path(), &["token_embd.weight"]);
}

#[test]
fn hostile_config_and_files() {
    let dir = tiny_dir(1);
    let cfg_path = dir.path().join("config.json");
    let mut cfg = config();
    cfg.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    open_err(dir.path(), &["config.json", "missing field 'hidden_size'"]);
    let mut cfg = config();
    cfg["num_attention_heads"] = json!("four");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    open_err(
        dir.path(),
        &["config.json", "num_attention_heads", "integer"],
    );
    let mut cfg = config();
    cfg["architectures"] = json!(["GPTNeoXForCausalLM"]);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    open_err(
        dir.path(),
        &["GPTNeoXForCausalLM", "not supported", "LlamaForCausalLM"],
    );
    std::fs::write(&cfg_path, "{\"architectures\": [").unwrap();
    open_err(dir.path(), &["config.json", "invalid JSON"]);
    std::fs::write(&cfg_path, config().to_string()).unwrap();
    // Tokenizer problems.
    let tj = dir.path().join("tokenizer.json");
    let mut t = tokenizer();
    t["pre_tokenizer"] = json!({"type": "Whitespace"});
    std::fs::write(&tj, t.to_string()).unwrap();
    open_err(dir.path(), &["tokenizer.json", "pre_tokenizer"]);
    let mut t = tokenizer();
    t["model"]["type"] = json!("Unigram");
    std::fs::write(&tj, t.to_string()).unwrap();
    open_err(dir.path(), &["tokenizer.json", "Unigram"]);
    std::fs::remove_file(&tj).unwrap();
    open_err(dir.path(), &["missing tokenizer.json"]);
    std::fs::write(&tj, tokenizer().to_string()).unwrap();
    // A shard index naming a file that is not there, or a tensor not in its shard.
    let idx = dir.path().join("model.safetensors.index.json");
    std::fs::write(
        &idx,
        json!({"weight_map": {"model.norm.weight": "gone.safetensors"}}).to_string(),
    )
    .unwrap();
    open_err(dir.path(), &["gone.safetensors"]);
    std::fs::write(
        &idx,
        json!({"weight_map": {"model.nothing": "model.safetensors"}}).to_string(),
    )
    .unwrap();
    open_err(dir.path(), &["model.nothing", "not in model.safetensors"]);
    std::fs::remove_file(&idx).unwrap();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    open_err(dir.path(), &["no model.safetensors"]);
}

#[test]
fn bf16_checkpoints_keep_or_convert() {
    let dir = tiny_dir_with(1, StDtype::BF16);
    let bf16 = |x: f32| half::bf16::from_f32(x).to_f32();
    let (_, shape, v) = &weights()[5]; // o_proj
    let want_row3: Vec<f32> = v[3 * shape[1]..4 * shape[1]]
        .iter()
        .map(|&x| bf16(x))
        .collect();
    for (out, ty) in [
        (OutType::Keep, GgmlType::BF16),
        (OutType::Auto, GgmlType::BF16),
        (OutType::Type(GgmlType::F16), GgmlType::F16),
        (OutType::Type(GgmlType::F32), GgmlType::F32),
    ] {
        let f = HfModel::open(dir.path())
            .unwrap()
            .into_gguf(Conversion {
                out,
                ..Default::default()
            })
            .unwrap();
        let (info, data) = f.tensor("blk.0.attn_output.weight").unwrap();
        assert_eq!(info.ty, ty, "{out:?}");
        let n = info.ne0() as usize;
        let row: Vec<f32> = match ty {
            GgmlType::BF16 => data[3 * n * 2..4 * n * 2]
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect(),
            _ => row_f32(&f, "blk.0.attn_output.weight", 3),
        };
        let want: Vec<f32> = match ty {
            GgmlType::F16 => want_row3
                .iter()
                .map(|&x| half::f16::from_f32(x).to_f32())
                .collect(),
            _ => want_row3.clone(),
        };
        assert_eq!(row, want, "{out:?}");
        assert_eq!(
            f.tensor_info("output_norm.weight").unwrap().ty,
            GgmlType::F32
        );
    }
    // Quantizing needs an encoder (dino-kernels' quantizers): a clear error without one.
    let e = HfModel::open(dir.path())
        .unwrap()
        .into_gguf(Conversion {
            out: OutType::Type(GgmlType::Q8_0),
            ..Default::default()
        })
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("encoder"), "{e}");
}
