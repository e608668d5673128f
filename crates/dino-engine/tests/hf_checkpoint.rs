//! Hugging Face checkpoint directories end to end, on a directory made from SmolLM2-135M-Instruct
//! Q4_1's own weights (dequantized to F16, Q/K un-permuted, two safetensors shards) and tokenizer
//! (tokenizer.json rebuilt from the GGUF vocab and merges):
//! - Dino runs the directory directly and gives the same logits as the same weights written by
//!   `dino convert` and loaded as GGUF (bound: exactly equal; the tensors are the same bytes);
//! - the tokenizer read from tokenizer.json encodes exactly as the GGUF's;
//! - in-situ `--quant q8_0` stores the bytes of quantizing the dequantized tensor;
//! - a config.json that disagrees with the weights fails with an error naming the tensor.

use dino_core::GgmlType;
use dino_engine::{
    convert, generate, Batch, ConvertOptions, Engine, EngineOptions, GenerateParams, Logits,
    SamplerConfig, Tokenizer,
};
use dino_formats::gguf::GgufFile;
use dino_formats::hf::{Conversion, HfModel, OutType, StDtype};
use dino_kernels::quant;
use dino_testutil::hf_dir::{write_hf_dir_from_gguf, HfDirOptions};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The SmolLM2 checkpoint directory, made once per test binary.
fn smollm2_dir() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("SmolLM2-135M-Instruct-hf");
        write_hf_dir_from_gguf(
            &dino_testutil::model("smollm2"),
            &dir,
            HfDirOptions {
                dtype: StDtype::F16,
                shards: 2,
                pair_merges: true,
            },
        )
        .unwrap();
        (tmp, dir)
    })
    .1
}

fn load(path: &Path, quant: Option<GgmlType>) -> Engine {
    Engine::load(
        path,
        &EngineOptions {
            threads: 2,
            no_repack: true,
            quant,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const PROMPTS: [&str; 3] = [
    "The capital of France is",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    if n < 2:\n        return n",
];

/// All logits of a prompt, `[n_tokens, n_vocab]`.
fn all_logits(e: &Engine, prompt: &str) -> Vec<f32> {
    let toks = e.tokenizer.encode(prompt, true, true).unwrap();
    let mut kv = e.new_kv(256).unwrap();
    let mut out = Logits::default();
    e.forward(&Batch::from_tokens(&toks, 0, 0, true), &mut kv, &mut out)
        .unwrap();
    out.data
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn greedy(e: &Engine, prompt: &str, n: usize) -> Vec<u32> {
    let toks = e.tokenizer.encode(prompt, true, true).unwrap();
    let mut kv = e.new_kv(256).unwrap();
    let params = GenerateParams {
        max_tokens: n,
        sampler: SamplerConfig::greedy(),
        n_batch: 512,
        stop_at_eog: false,
    };
    generate(e, &mut kv, &toks, &params, |_, _| ControlFlow::Continue(()))
        .unwrap()
        .tokens
}

#[test]
fn hf_dir_runs_like_its_converted_gguf() {
    let dir = smollm2_dir();
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("converted.gguf");
    convert(
        dir,
        &gguf,
        &ConvertOptions {
            out: OutType::Auto,
            threads: 2,
            progress: false,
        },
    )
    .unwrap();
    let from_dir = load(dir, None);
    let from_gguf = load(&gguf, None);
    assert_eq!(from_dir.model.info().arch, "llama");
    for p in PROMPTS {
        let (a, b) = (all_logits(&from_dir, p), all_logits(&from_gguf, p));
        let d = max_diff(&a, &b);
        eprintln!("{p:?}: max |logit diff| HF dir vs converted GGUF = {d}");
        assert_eq!(d, 0.0, "{p:?}");
    }
    // Same tokens as the original Q4_1 file's continuation would need the same arithmetic;
    // the F16 copy only has to agree with itself across the two loading paths.
    assert_eq!(
        greedy(&from_dir, PROMPTS[0], 16),
        greedy(&from_gguf, PROMPTS[0], 16)
    );
    // The converted file's tensors are the directory's, byte for byte.
    let f = GgufFile::open(&gguf).unwrap();
    let types: Vec<GgmlType> = f.tensors().iter().map(|t| t.ty).collect();
    assert!(types
        .iter()
        .all(|t| matches!(t, GgmlType::F16 | GgmlType::F32)));
    for t in f.tensors() {
        let (u, data) = from_dir.file.tensor(&t.name).unwrap();
        assert_eq!((&u.dims, u.ty), (&t.dims, t.ty), "{}", t.name);
        assert_eq!(data, f.tensor_data(t), "{}", t.name);
    }
}

#[test]
fn tokenizer_json_encodes_like_the_gguf() {
    let orig = GgufFile::open(dino_testutil::model("smollm2")).unwrap();
    let hf = HfModel::open(smollm2_dir())
        .unwrap()
        .into_gguf(Conversion::default())
        .unwrap();
    for key in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.chat_template",
    ] {
        assert_eq!(hf.metadata().get(key), orig.metadata().get(key), "{key}");
    }
    let a = Tokenizer::from_gguf(orig.metadata()).unwrap();
    let b = Tokenizer::from_gguf(hf.metadata()).unwrap();
    let texts = [
        "Hello world",
        " leading space and  double  spaces",
        "Numbers 1234567 and 3.14159, dates 2024-11-24",
        "Ünïcödé — 日本語のテキスト 🙂 emoji",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n",
        "code:\n\tfn main() { println!(\"{}\", 42); }\n\n\n",
        "",
    ];
    for t in texts {
        for (add, special) in [(true, true), (false, false), (true, false)] {
            assert_eq!(
                a.encode(t, add, special).unwrap(),
                b.encode(t, add, special).unwrap(),
                "{t:?} add_special={add} parse_special={special}"
            );
        }
    }
}

#[test]
fn in_situ_q8_0_is_quantizing_the_dequantized_tensor() {
    let dir = smollm2_dir();
    let keep = HfModel::open(dir)
        .unwrap()
        .into_gguf(Conversion::default())
        .unwrap();
    for ty in [GgmlType::Q8_0, GgmlType::Q4_K] {
        let q = HfModel::open(dir)
            .unwrap()
            .into_gguf(Conversion {
                out: OutType::Type(ty),
                encoder: Some(quant::quantize_row),
                threads: 2,
                progress: None,
            })
            .unwrap();
        let mut n_quantized = 0;
        for t in q.tensors() {
            let (k, kdata) = keep.tensor(&t.name).unwrap();
            if t.dims.len() == 1 {
                assert_eq!(
                    (t.ty, kdata),
                    (GgmlType::F32, q.tensor_data(t)),
                    "{}",
                    t.name
                );
                continue;
            }
            // 576 is not a multiple of 256: Q4_K falls back to Q5_0 as llama.cpp does.
            let want_ty = if ty == GgmlType::Q4_K && t.ne0() % 256 != 0 {
                GgmlType::Q5_0
            } else {
                ty
            };
            assert_eq!(t.ty, want_ty, "{}", t.name);
            let mut f = vec![0f32; k.n_elements() as usize];
            quant::dequantize_row(k.ty, kdata, &mut f).unwrap();
            let mut want = vec![0u8; t.size as usize];
            quant::quantize_row(want_ty, &f, &mut want).unwrap();
            assert!(want == q.tensor_data(t), "{}: bytes differ", t.name);
            n_quantized += 1;
        }
        assert_eq!(n_quantized, 1 + 30 * 7, "{ty}");
    }
    // And it runs: q8_0 logits stay near the F16 ones.
    let f16 = load(dir, None);
    let q8 = load(dir, Some(GgmlType::Q8_0));
    assert_eq!(
        q8.file.tensor_info("blk.0.ffn_up.weight").unwrap().ty,
        GgmlType::Q8_0
    );
    let n_vocab = f16.model.info().hparams.n_vocab;
    let (a, b) = (all_logits(&f16, PROMPTS[0]), all_logits(&q8, PROMPTS[0]));
    let (a, b) = (&a[a.len() - n_vocab..], &b[b.len() - n_vocab..]);
    let argmax = |v: &[f32]| (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap();
    let d = max_diff(a, b);
    eprintln!("q8_0 in situ vs F16, last position: max |logit diff| {d}");
    assert_eq!(argmax(a), argmax(b));
    assert!(d < 1.5, "{d}");
}

#[test]
fn config_that_disagrees_with_the_weights_is_an_error() {
    let dir = smollm2_dir();
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        std::os::unix::fs::symlink(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    let cfg_path = tmp.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    std::fs::remove_file(&cfg_path).unwrap();
    cfg["intermediate_size"] = serde_json::json!(1535);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = Engine::load(tmp.path(), &EngineOptions::default())
        .err()
        .expect("a shape mismatch must fail")
        .to_string();
    assert!(e.contains("blk.0.ffn_") && e.contains("1536"), "{e}");
    // --quant on a GGUF file is refused with the reason.
    let e = Engine::load(
        dino_testutil::model("smollm2"),
        &EngineOptions {
            quant: Some(GgmlType::Q8_0),
            ..Default::default()
        },
    )
    .err()
    .expect("--quant on a GGUF")
    .to_string();
    assert!(e.contains("Hugging Face"), "{e}");
}

/// Every family's mapping, on the random-weight models whose llama.cpp logits are committed
/// (`dino-models/tests/arch_reference.rs`): GGUF → Hugging Face directory (F32, 2 shards;
/// experts split per expert, Q/K un-permuted for llama/Mixtral, phi3's fused tensors kept
/// fused; a SentencePiece vocab as a byte-fallback tokenizer.json) → Dino. The `{arch}.*` keys,
/// tokens and token types come back equal, every tensor comes back byte for byte, and the
/// logits equal the GGUF's exactly (so the llama.cpp agreement checked there carries over).
#[test]
fn random_arch_models_round_trip() {
    use dino_testutil::random_model::{arch_test_models, write_random_model};
    let tmp = tempfile::tempdir().unwrap();
    for (name, shape, seed) in arch_test_models() {
        if name.starts_with("mistral-swa") {
            continue; // a Dino-only key the converter does not write (llama.cpp has no window)
        }
        let gguf = tmp.path().join(format!("{name}.gguf"));
        write_random_model(&gguf, &shape, GgmlType::F32, seed).unwrap();
        let hf = tmp.path().join(format!("{name}-hf"));
        write_hf_dir_from_gguf(
            &gguf,
            &hf,
            HfDirOptions {
                dtype: StDtype::F32,
                shards: 2,
                pair_merges: false,
            },
        )
        .unwrap();
        let orig = GgufFile::open(&gguf).unwrap();
        let conv = HfModel::open(&hf)
            .unwrap()
            .into_gguf(Conversion::default())
            .unwrap();
        let prefix = format!("{}.", shape.arch);
        for (k, v) in orig.metadata().iter() {
            if k.starts_with(&prefix)
                || k == "tokenizer.ggml.tokens"
                || k == "tokenizer.ggml.token_type"
            {
                assert_eq!(conv.metadata().get(k), Some(v), "{name}: {k}");
            }
        }
        assert_eq!(conv.tensors().len(), orig.tensors().len(), "{name}");
        for t in orig.tensors() {
            let (c, data) = conv
                .tensor(&t.name)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((&c.dims, c.ty), (&t.dims, t.ty), "{name}: {}", t.name);
            assert!(data == orig.tensor_data(t), "{name}: {} differs", t.name);
        }
        let (a, b) = (load(&gguf, None), load(&hf, None));
        let toks: Vec<u32> = (0..48u32).map(|i| 3 + (i * 37) % 500).collect();
        let run = |e: &Engine| {
            let mut kv = e.new_kv(64).unwrap();
            let mut out = Logits::default();
            e.forward(&Batch::from_tokens(&toks, 0, 0, true), &mut kv, &mut out)
                .unwrap();
            out.data
        };
        let d = max_diff(&run(&a), &run(&b));
        eprintln!("{name}: HF dir vs GGUF max |logit diff| {d}");
        assert_eq!(d, 0.0, "{name}");
    }
}
