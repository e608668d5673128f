//! Architecture registry: `general.architecture` → loader. Adding a family is one line here.

use crate::{arch, Model, Sparsity};
use dino_core::{Error, Result};
use dino_formats::gguf::GgufFile;
use dino_kernels::pool::ThreadPool;
use std::sync::Arc;

/// What a loader needs besides the file.
#[derive(Clone)]
pub struct LoadOptions {
    pub pool: Arc<ThreadPool>,
    /// Keep weights in the file's layout even where the kernel level has a faster repacked
    /// one (repacking changes float summation order; see `dino_kernels::matmul::repack`).
    pub no_repack: bool,
    /// Activation sparsity: the inputs of the layer matrices below their thresholds are zeroed
    /// (`None`: dense).
    pub sparsity: Option<Arc<Sparsity>>,
}

impl LoadOptions {
    pub fn new(pool: Arc<ThreadPool>) -> Self {
        LoadOptions {
            pool,
            no_repack: false,
            sparsity: None,
        }
    }
}

type Loader = fn(Arc<GgufFile>, &LoadOptions) -> Result<Box<dyn Model>>;

const REGISTRY: &[(&str, Loader)] = &[
    ("gemma3", arch::gemma3::load),
    ("llama", arch::llama::load),
    ("phi3", arch::phi3::load),
    ("qwen2", arch::qwen2::load),
    ("qwen3", arch::qwen3::load),
    ("qwen3moe", arch::qwen3::load_moe),
];

/// Names of the architectures Dino can run.
pub fn supported_architectures() -> Vec<&'static str> {
    REGISTRY.iter().map(|(n, _)| *n).collect()
}

/// Build the model a GGUF file describes.
pub fn load(file: Arc<GgufFile>, opts: &LoadOptions) -> Result<Box<dyn Model>> {
    let arch = file.metadata().architecture()?.to_string();
    match REGISTRY.iter().find(|(n, _)| *n == arch) {
        Some((_, loader)) => loader(file, opts),
        None => Err(Error::Unsupported(format!(
            "{}: architecture '{arch}' is not supported (supported: {})",
            file.path().display(),
            supported_architectures().join(", ")
        ))),
    }
}
