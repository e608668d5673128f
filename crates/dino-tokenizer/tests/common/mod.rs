//! Locating the real test data: llama.cpp's vocab files and Hamlet. Missing files fail the test
//! with the command that fetches them.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use dino_formats::gguf::GgufFile;
use dino_tokenizer::Tokenizer;

/// llama.cpp's vocab test files, fetched on first use into the model cache exactly as
/// `dino pull vocab` does (from the `llama-cpp-python==0.3.36` source package).
pub fn vocab_dir() -> PathBuf {
    dino_testutil::model("vocab")
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}\nllama.cpp's vocab test file is missing from the fetched set \
             (`dino pull vocab`).",
            path.display()
        )
    })
}

/// The tokenizer of `ggml-vocab-<name>.gguf`.
pub fn load(name: &str) -> Tokenizer {
    let path = vocab_dir().join(format!("ggml-vocab-{name}.gguf"));
    if !path.exists() {
        read(&path); // panics with the fetch instructions
    }
    let f = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Tokenizer::from_gguf(f.metadata()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// [`load`], once per test binary.
pub fn cached(name: &str) -> &'static Tokenizer {
    static CACHE: OnceLock<Mutex<HashMap<String, &'static Tokenizer>>> = OnceLock::new();
    let mut map = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    map.entry(name.to_string())
        .or_insert_with(|| Box::leak(Box::new(load(name))))
}

/// Shakespeare's Hamlet: `shared/text/hamlet.txt` beside the repository, else
/// `$DINO_MODELS/hamlet.txt` (`get-models hamlet`).
pub fn hamlet() -> String {
    let p = dino_testutil::hamlet();
    let b = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    String::from_utf8_lossy(&b).into_owned()
}
