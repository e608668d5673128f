//! Writes the fixtures `bench/convert/check_convert.py` compares with llama.cpp into OUT_DIR:
//! for SmolLM2-135M and Gemma-3-270M, a checkpoint directory made from the GGUF, its
//! `dino convert` output (F16), Dino's prompt ids, last-step logits and greedy 32 tokens on the
//! prompts (`--no-repack`); and an F16 directory of Qwen2.5-Coder-0.5B (for the RSS check).
//!
//! `cargo run --release -p dino-engine --example hf_fixtures -- OUT_DIR`

use dino_core::GgmlType;
use dino_engine::{
    convert, generate, Batch, ConvertOptions, Engine, EngineOptions, GenerateParams, Logits,
    SamplerConfig,
};
use dino_formats::hf::OutType;
use dino_testutil::hf_dir::{write_hf_dir_from_gguf, HfDirOptions};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

const PROMPTS: [&str; 3] = [
    "The capital of France is",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    if n < 2:\n        return n",
];

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

/// All logits of a prompt, `[n_tokens, n_vocab]`.
fn all_logits(e: &Engine, prompt: &str) -> Vec<f32> {
    let toks = e.tokenizer.encode(prompt, true, true).unwrap();
    let mut kv = e.new_kv(256).unwrap();
    let mut out = Logits::default();
    e.forward(&Batch::from_tokens(&toks, 0, 0, true), &mut kv, &mut out)
        .unwrap();
    out.data
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

fn main() {
    let Some(out) = std::env::args().nth(1) else {
        eprintln!("usage: hf_fixtures OUT_DIR");
        std::process::exit(2);
    };
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out).unwrap();
    for name in ["smollm2", "gemma3"] {
        let hf = out.join(format!("{name}-hf"));
        write_hf_dir_from_gguf(&dino_testutil::model(name), &hf, HfDirOptions::default()).unwrap();
        let gguf = out.join(format!("{name}-converted-f16.gguf"));
        let opts = ConvertOptions {
            out: OutType::Auto,
            threads: 2,
            progress: false,
        };
        convert(&hf, &gguf, &opts).unwrap();
        let e = load(&gguf, None);
        let mut results = Vec::new();
        for p in PROMPTS {
            let ids = e.tokenizer.encode(p, true, true).unwrap();
            let logits = all_logits(&e, p);
            let n_vocab = e.model.info().hparams.n_vocab;
            let last = &logits[logits.len() - n_vocab..];
            results.push(serde_json::json!({
                "prompt": p, "prompt_ids": ids, "generated_ids": greedy(&e, p, 32), "last_logits": last,
            }));
        }
        std::fs::write(
            out.join(format!("dino_results_{name}.json")),
            serde_json::json!({ "gguf": gguf, "results": results }).to_string(),
        )
        .unwrap();
    }
    write_hf_dir_from_gguf(
        &dino_testutil::model("qwen05"),
        &out.join("qwen05-hf"),
        HfDirOptions {
            shards: 3,
            ..Default::default()
        },
    )
    .unwrap();
}
