//! Write the random-weight models of `random_model::arch_test_models` (F32) to a directory,
//! with a `manifest.json` naming each file's architecture, seed, shape and sha256, for
//! `bench/llamacpp/make_arch_reference.py`.
//!
//! ```text
//! cargo run -p dino-testutil --example write_arch_models -- OUT_DIR [--only NAME --seed N]
//! ```
//! `--only NAME --seed N` writes that one model with another seed (for a seed search).

use dino_core::GgmlType;
use dino_testutil::arch_reference::sha256_file;
use dino_testutil::random_model::{arch_test_models, write_random_model};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, only, seed_override) = match args.as_slice() {
        [d] => (PathBuf::from(d), None, None),
        [d, o, name, s, n] if o == "--only" && s == "--seed" => match n.parse::<u64>() {
            Ok(n) => (PathBuf::from(d), Some(name.clone()), Some(n)),
            Err(_) => (PathBuf::new(), None, None),
        },
        _ => (PathBuf::new(), None, None),
    };
    if dir.as_os_str().is_empty() {
        eprintln!("usage: write_arch_models OUT_DIR [--only NAME --seed N]");
        return ExitCode::from(2);
    }
    let run = || -> Result<(), String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let ty = GgmlType::F32;
        let mut models = serde_json::Map::new();
        for (name, s, seed) in arch_test_models() {
            if only.as_deref().is_some_and(|o| o != name) {
                continue;
            }
            let seed = seed_override.unwrap_or(seed);
            let file = format!("{name}.gguf");
            let path = dir.join(&file);
            write_random_model(&path, &s, ty, seed).map_err(|e| format!("{name}: {e}"))?;
            let sha = sha256_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            println!(
                "{file}: {} seed {seed}, {bytes} bytes, sha256 {sha}",
                s.arch
            );
            let mut shape = json!({
                "n_vocab": s.n_vocab,
                "n_embd": s.n_embd,
                "n_layer": s.n_layer,
                "n_head": s.n_head,
                "n_head_kv": s.n_head_kv,
                "head_dim": s.head_dim(),
                "n_rot": s.n_rot.unwrap_or(s.head_dim()),
                "n_ff": s.n_ff,
                "n_ctx": s.n_ctx,
                "tied": s.tied,
                "qkv_bias": s.qkv_bias,
                "qk_norm": s.qk_norm,
                "fused_qkv": s.fused_qkv,
                "fused_gate_up": s.fused_gate_up,
                "n_expert": s.n_expert,
                "n_expert_used": s.n_expert_used,
                "n_ff_exp": if s.n_expert > 0 { s.n_ff_exp() } else { 0 },
                "n_swa": s.n_swa,
            });
            if let (Some(orig), Some(f)) = (s.n_ctx_orig, s.rope_attn_factor()) {
                // Only on long-rope models, so the other manifests' shapes stay as they were.
                shape["n_ctx_orig"] = json!(orig);
                shape["rope_attn_factor"] = json!(f);
            }
            models.insert(
                name.to_string(),
                json!({
                    "file": file,
                    "arch": s.arch,
                    "seed": seed,
                    "type": ty.name(),
                    "sha256": sha,
                    "bytes": bytes,
                    "shape": shape,
                }),
            );
        }
        let manifest = dir.join("manifest.json");
        let text = serde_json::to_string_pretty(&json!({ "models": models })).unwrap();
        std::fs::write(&manifest, text + "\n").map_err(|e| format!("{}: {e}", manifest.display()))
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
