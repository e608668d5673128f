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

/// llama.cpp's logit rows at one more context size (`more_contexts` in the JSON: Phi-3's long
/// rope factors are chosen by the context size).
#[derive(Clone, Debug)]
pub struct ContextRows {
    /// llama.cpp's `n_ctx` (a multiple of 256, so its padding leaves it as it is).
    pub n_ctx: usize,
    /// `[positions.len()][n_vocab]`, the prompt evaluated as one batch.
    pub rows: Vec<Vec<f32>>,
    /// The same rows with the prompt evaluated one token per decode.
    pub decode_rows: Vec<Vec<f32>>,
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
    /// llama.cpp's context size for `rows` and `decode_rows` (`settings.n_ctx`).
    pub n_ctx: usize,
    /// The rows at other context sizes (none unless the context changes the model's maths).
    pub more_contexts: Vec<ContextRows>,
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
        let matrix_in = |v: &Value, key: &str| -> Vec<Vec<f32>> {
            list(field(v, key, f), key, f)
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
        let rows = matrix_in(&v, "logits");
        let decode_rows = matrix_in(&v, "decode_logits");
        let more_contexts = v
            .get("more_contexts")
            .map_or(&[][..], |m| list(m, "more_contexts", f))
            .iter()
            .map(|c| ContextRows {
                n_ctx: uint(field(c, "n_ctx", f), "more_contexts.n_ctx", f) as usize,
                rows: matrix_in(c, "logits"),
                decode_rows: matrix_in(c, "decode_logits"),
            })
            .collect();
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
            n_ctx: uint(g("settings.n_ctx"), "settings.n_ctx", f) as usize,
            more_contexts,
        };
        assert_eq!(r.name, name, "{}: name", f.display());
        for rows in r
            .contexts()
            .into_iter()
            .flat_map(|c| [c.rows, c.decode_rows])
        {
            assert_eq!(
                rows.len(),
                r.positions.len(),
                "{}: one row per position",
                f.display()
            );
        }
        r
    }

    /// Every context's rows: `settings.n_ctx` with `rows` and `decode_rows` first, then
    /// `more_contexts`.
    pub fn contexts(&self) -> Vec<ContextRef<'_>> {
        let first = ContextRef {
            n_ctx: self.n_ctx,
            rows: &self.rows,
            decode_rows: &self.decode_rows,
        };
        std::iter::once(first)
            .chain(self.more_contexts.iter().map(|c| ContextRef {
                n_ctx: c.n_ctx,
                rows: &c.rows,
                decode_rows: &c.decode_rows,
            }))
            .collect()
    }
}

/// One context's rows of an [`ArchReference`], borrowed.
#[derive(Clone, Copy, Debug)]
pub struct ContextRef<'a> {
    pub n_ctx: usize,
    pub rows: &'a [Vec<f32>],
    pub decode_rows: &'a [Vec<f32>],
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
