//! llama.cpp reference logits for the random-weight models of [`arch_test_models`]: one JSON
//! per model in `data/reference/arch/`, written by `bench/llamacpp/make_arch_reference.py`.
//!
//! [`arch_test_models`]: crate::random_model::arch_test_models

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// `crates/dino-testutil/data/reference/arch`.
pub fn arch_reference_dir() -> PathBuf {
    crate::reference_dir().join("arch")
}

/// One model's reference: what to regenerate, the prompt and llama.cpp's logit rows.
#[derive(Clone, Debug)]
pub struct ArchReference {
    /// Model name in [`crate::random_model::arch_test_models`].
    pub name: String,
    /// `general.architecture` of the file Dino loads.
    pub arch: String,
    pub seed: u64,
    /// ggml type name of the matrices (`f32`).
    pub ty: String,
    /// sha256 (hex) of the GGUF Dino loads.
    pub gguf_sha256: String,
    /// Token ids, evaluated from position 0 as one batch.
    pub prompt: Vec<u32>,
    /// Prompt positions whose full logit rows are stored.
    pub positions: Vec<usize>,
    /// `[positions.len()][n_vocab]` llama.cpp logits, prompt evaluated as one batch.
    pub rows: Vec<Vec<f32>>,
    /// The same rows with the prompt evaluated one token per decode.
    pub decode_rows: Vec<Vec<f32>>,
}

fn field<'a>(v: &'a Value, path: &str, file: &Path) -> &'a Value {
    let mut cur = v;
    for k in path.split('.') {
        cur = cur
            .get(k)
            .unwrap_or_else(|| panic!("{}: no field '{path}'", file.display()));
    }
    cur
}

fn uint(v: &Value, what: &str, file: &Path) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{}: '{what}' is not an unsigned integer", file.display()))
}

fn string(v: &Value, what: &str, file: &Path) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("{}: '{what}' is not a string", file.display()))
        .to_string()
}

fn list<'a>(v: &'a Value, what: &str, file: &Path) -> &'a Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("{}: '{what}' is not a list", file.display()))
}

impl ArchReference {
    /// Read `arch_reference_dir()/<name>.json`; panics naming the file and field at fault.
    pub fn load(name: &str) -> ArchReference {
        let file = arch_reference_dir().join(format!("{name}.json"));
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let f = &file;
        let g = |p: &str| field(&v, p, f);
        let prompt = list(g("prompt"), "prompt", f)
            .iter()
            .map(|x| uint(x, "prompt", f) as u32)
            .collect();
        let positions = list(g("positions"), "positions", f)
            .iter()
            .map(|x| uint(x, "positions", f) as usize)
            .collect();
        let matrix = |key: &str| -> Vec<Vec<f32>> {
            list(g(key), key, f)
                .iter()
                .map(|r| {
                    list(r, key, f)
                        .iter()
                        .map(|x| {
                            x.as_f64().unwrap_or_else(|| {
                                panic!("{}: a value in '{key}' is not a number", f.display())
                            }) as f32
                        })
                        .collect()
                })
                .collect()
        };
        let rows = matrix("logits");
        let decode_rows = matrix("decode_logits");
        let r = ArchReference {
            name: string(g("name"), "name", f),
            arch: string(g("dino_file.arch"), "dino_file.arch", f),
            seed: uint(g("dino_file.seed"), "dino_file.seed", f),
            ty: string(g("dino_file.type"), "dino_file.type", f),
            gguf_sha256: string(g("dino_file.sha256"), "dino_file.sha256", f),
            prompt,
            positions,
            rows,
            decode_rows,
        };
        assert_eq!(r.name, name, "{}: name", f.display());
        for rows in [&r.rows, &r.decode_rows] {
            assert_eq!(
                rows.len(),
                r.positions.len(),
                "{}: one row per position",
                f.display()
            );
        }
        r
    }
}

/// sha256 of a file's bytes, lower-case hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
