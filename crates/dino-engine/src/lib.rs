//! The engine: loads a model and its tokenizer, owns the KV cache, runs generation with a
//! sampler chain, computes perplexity, and reports timings and memory.
//!
//! Dino as a library: load a model with [`Engine::load`] (a GGUF file or a Hugging Face
//! directory), stream a generation through a callback with [`generate`], render a chat with
//! `dino_tokenizer::chat::ChatTemplate::for_model`, and serve many requests from one
//! continuously batched engine with [`batch::BatchEngine`]. `examples/library.rs` does all four
//! (`cargo run --release -p dino-engine --example library -- MODEL.gguf`).
//!
//! ```no_run
//! use dino_engine::{generate, Engine, EngineOptions, GenerateParams};
//! use std::ops::ControlFlow;
//!
//! # fn main() -> dino_core::Result<()> {
//! let engine = Engine::load("SmolLM2-135M-Instruct.Q4_1.gguf", &EngineOptions::default())?;
//! let prompt = engine.tokenizer.encode("Once upon a time", true, false)?;
//! let mut kv = engine.new_kv(512)?;
//! generate(&engine, &mut kv, &prompt, &GenerateParams::default(), |_id, text| {
//!     print!("{text}");
//!     ControlFlow::Continue(())
//! })?;
//! # Ok(())
//! # }
//! ```
//!
//! ```no_run
//! use dino_engine::batch::{BatchConfig, BatchEngine, GenEvent, GenRequest};
//! use dino_engine::{Engine, EngineOptions, SamplerConfig};
//! use std::sync::Arc;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Arc::new(Engine::load("model.gguf", &EngineOptions::default())?);
//! let batch = BatchEngine::start(engine.clone(), BatchConfig::default())?;
//! let mut rx = batch.submit(GenRequest {
//!     prompt: engine.tokenizer.encode("Hello", true, false)?,
//!     max_tokens: 16,
//!     sampler: SamplerConfig::greedy(),
//!     stop: vec![],
//!     logprobs: None,
//!     stop_at_eog: true,
//! })?;
//! while let Some(ev) = rx.blocking_recv() {
//!     match ev {
//!         GenEvent::Token { text, .. } => print!("{text}"),
//!         GenEvent::Done { .. } | GenEvent::Error(_) => break,
//!     }
//! }
//! # Ok(())
//! # }
//! ```

pub mod batch;
pub mod bench;
pub mod blocks;
pub mod energy;
pub mod imatrix;
pub mod metrics;
pub mod mixed;
mod perplexity;
pub mod prune;
pub mod quantize;
pub mod sampler;
pub mod sparsity;

pub use dino_models::{Batch, KvCache, KvType, KvTypes, Logits, Model, ModelInfo};
pub use dino_tokenizer::Tokenizer;
pub use perplexity::{kl_divergence, perplexity, KlResult, PerplexityOptions, PerplexityResult};
pub use sampler::{Sampler, SamplerConfig};

use dino_core::{Error, GgmlType, Result};
use dino_formats::gguf::GgufFile;
use dino_formats::hf::{Conversion, HfModel, OutType};
use dino_kernels::pool::ThreadPool;
use dino_models::LoadOptions;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How to load a model.
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    /// Threads for generation, one token at a time (0 = all cores).
    pub threads: usize,
    /// Threads for prompt batches (0 = same as `threads`).
    pub threads_batch: usize,
    /// Read all weights ahead (`madvise(WILLNEED)`) and touch every page at load, then run
    /// one tiny forward pass, so the first request is not slow.
    pub warm_up: bool,
    /// Lock the weights in RAM (`mlock`); an error if the OS refuses.
    pub mlock: bool,
    /// Keep weights in the file's layout (no load-time repacking into the kernels' faster
    /// interleaved layouts, which sum in another order than llama.cpp).
    pub no_repack: bool,
    /// Quantize the weight matrices of a Hugging Face checkpoint to this type while loading
    /// (norms, biases and the MoE router stay F32). `None`: keep the checkpoint's F32/F16/BF16.
    pub quant: Option<GgmlType>,
    /// Show the progress of load-time conversion on stderr (a bar on a terminal, else a line
    /// every 10 %).
    pub progress: bool,
    /// Element types of the KV caches [`Engine::new_kv`] makes (`--cache-type-k/-v`; default
    /// f16). Quantized types need a head size that is a multiple of 32: checked at load.
    pub kv_types: KvTypes,
    /// Activation sparsity (`--sparsity` with a thresholds file); `None`: dense.
    pub sparsity: Option<dino_models::Sparsity>,
}

/// A loaded model with its tokenizer and thread pool.
pub struct Engine {
    pub model: Box<dyn Model>,
    pub tokenizer: Tokenizer,
    pub file: Arc<GgufFile>,
    pub pool: Arc<ThreadPool>,
    /// Threads for single-token (generation) passes.
    pub threads: usize,
    /// Threads for prompt batches.
    pub threads_batch: usize,
    pub load_time: Duration,
    /// Element types of the KV caches this engine makes (`EngineOptions::kv_types`).
    pub kv_types: KvTypes,
}

/// How a context size was chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct CtxChoice {
    pub n_ctx: usize,
    /// Set when the trained context was reduced to fit free memory: (trained, reason).
    pub capped_from: Option<usize>,
}

impl Engine {
    /// Load a GGUF file, or a Hugging Face checkpoint directory (config.json, tokenizer.json,
    /// safetensors), quantized at load if `opts.quant` says so.
    pub fn load(path: impl AsRef<Path>, opts: &EngineOptions) -> Result<Engine> {
        let t0 = Instant::now();
        let file = Arc::new(open_model_file(path.as_ref(), opts)?);
        let tokenizer = Tokenizer::from_gguf(file.metadata())?;
        if opts.mlock {
            file.lock_in_memory()?;
        }
        if opts.warm_up {
            file.advise_willneed()?;
        }
        let threads = if opts.threads == 0 {
            dino_kernels::pool::default_threads()
        } else {
            opts.threads
        };
        let threads_batch = if opts.threads_batch == 0 {
            threads
        } else {
            opts.threads_batch
        };
        let pool = Arc::new(ThreadPool::new(threads.max(threads_batch)));
        let model = dino_models::load(
            file.clone(),
            &LoadOptions {
                no_repack: opts.no_repack,
                sparsity: opts.sparsity.clone().map(Arc::new),
                ..LoadOptions::new(pool.clone())
            },
        )?;
        if tokenizer.n_vocab() > model.info().hparams.n_vocab {
            return Err(Error::format(
                path.as_ref().display(),
                format!(
                    "tokenizer has {} tokens but the model's vocabulary is {}",
                    tokenizer.n_vocab(),
                    model.info().hparams.n_vocab
                ),
            ));
        }
        // A KV cache type the model's head size cannot take is refused now, not at the first
        // request.
        opts.kv_types
            .row_bytes(model.kv_shape())
            .map_err(|e| Error::invalid(format!("{}: {e}", path.as_ref().display())))?;
        if opts.warm_up {
            model.warm_up();
        }
        let engine = Engine {
            model,
            tokenizer,
            file,
            pool,
            threads,
            threads_batch,
            load_time: Duration::ZERO,
            kv_types: opts.kv_types,
        };
        if opts.warm_up {
            // One token through every layer: starts the pool's threads, sizes the scratch
            // buffers and brings the kernels' code into cache.
            let mut kv = engine.new_kv(4)?;
            let tok = engine.tokenizer.bos().unwrap_or(0);
            let batch = Batch::from_tokens(&[tok], 0, 0, true);
            engine.forward(&batch, &mut kv, &mut Logits::default())?;
        }
        Ok(Engine {
            load_time: t0.elapsed(),
            ..engine
        })
    }

    /// Run one forward pass with the thread count for its size: `threads` for a single token,
    /// `threads_batch` for more.
    pub fn forward(&self, batch: &Batch, kv: &mut KvCache, out: &mut Logits) -> Result<()> {
        self.pool.set_active(if batch.len() > 1 {
            self.threads_batch
        } else {
            self.threads
        });
        self.model.forward(batch, kv, out)
    }

    /// [`Engine::forward`], handing every layer's matrix inputs to `obs` (see
    /// [`dino_models::Observer`]).
    pub fn forward_observed(
        &self,
        batch: &Batch,
        kv: &mut KvCache,
        out: &mut Logits,
        obs: &mut dino_models::Observer,
    ) -> Result<()> {
        self.pool.set_active(if batch.len() > 1 {
            self.threads_batch
        } else {
            self.threads
        });
        self.model.forward_observed(batch, kv, out, obs)
    }

    /// The context size to use: `requested`, or the trained context capped so the KV cache
    /// takes at most half of the memory available now.
    pub fn choose_ctx(&self, requested: Option<usize>) -> Result<CtxChoice> {
        let trained = self.model.info().hparams.n_ctx_train;
        if let Some(n) = requested {
            if n == 0 {
                return Err(Error::invalid("--ctx-size must be at least 1"));
            }
            return Ok(CtxChoice {
                n_ctx: n,
                capped_from: None,
            });
        }
        let per_pos = (KvCache::block_bytes(self.model.kv_shape(), self.kv_types)?
            / dino_models::KV_BLOCK as u64)
            .max(1);
        let budget = metrics::available_memory_bytes().map(|a| a / 2);
        match budget {
            Some(b) if per_pos * trained as u64 > b => {
                let n = ((b / per_pos) as usize / 256 * 256).max(256).min(trained);
                Ok(CtxChoice {
                    n_ctx: n,
                    capped_from: Some(trained),
                })
            }
            _ => Ok(CtxChoice {
                n_ctx: trained,
                capped_from: None,
            }),
        }
    }

    /// A fresh single-sequence KV cache of `n_ctx` positions, of the engine's KV types.
    pub fn new_kv(&self, n_ctx: usize) -> Result<KvCache> {
        self.new_kv_seqs(n_ctx, 1)
    }

    /// A fresh KV cache of `n_seq` sequences of `n_ctx` positions each, of the engine's KV
    /// types.
    pub fn new_kv_seqs(&self, n_ctx: usize, n_seq: usize) -> Result<KvCache> {
        KvCache::with_types(self.model.kv_shape(), self.kv_types, n_ctx, n_seq)
    }

    /// A fresh KV cache of `n_seq` sequences of `n_ctx` positions each, of element types
    /// `types` (whatever the engine's own).
    pub fn new_kv_typed(&self, n_ctx: usize, n_seq: usize, types: KvTypes) -> Result<KvCache> {
        KvCache::with_types(self.model.kv_shape(), types, n_ctx, n_seq)
    }

    /// A paged KV cache of the engine's KV types: `n_blocks` blocks for `n_seq` sequences of up
    /// to `n_ctx` positions, every table empty (the batched engine's pool).
    pub fn new_kv_paged(&self, n_ctx: usize, n_seq: usize, n_blocks: usize) -> Result<KvCache> {
        KvCache::paged_with_types(self.model.kv_shape(), self.kv_types, n_ctx, n_seq, n_blocks)
    }

    /// Bytes of one KV block (every layer's keys and values for [`dino_models::KV_BLOCK`]
    /// positions) of the engine's KV types.
    pub fn kv_block_bytes(&self) -> u64 {
        KvCache::block_bytes(self.model.kv_shape(), self.kv_types)
            .expect("the KV types were checked at load")
    }
}

/// Open `path` as a GGUF file, or assemble a Hugging Face checkpoint directory as one.
fn open_model_file(path: &Path, opts: &EngineOptions) -> Result<GgufFile> {
    if path.is_dir() {
        let mut progress = stderr_progress("converting");
        let hf = HfModel::open(path)?;
        return hf.into_gguf(Conversion {
            out: opts.quant.map_or(OutType::Keep, OutType::Type),
            encoder: Some(dino_kernels::quant::quantize_row),
            threads: opts.threads,
            progress: if opts.progress {
                Some(&mut progress)
            } else {
                None
            },
        });
    }
    if let Some(q) = opts.quant {
        return Err(Error::invalid(format!(
            "{}: quantizing at load ({q}) applies to Hugging Face checkpoint directories; \
             quantize a GGUF file ahead of time instead",
            path.display()
        )));
    }
    GgufFile::open(path)
}

/// What to write with [`convert`].
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// Matrix type: `Auto` keeps BF16 checkpoints BF16 and makes F16/F32 ones F16.
    pub out: OutType,
    /// Threads for quantizing (0 = all cores).
    pub threads: usize,
    /// Progress on stderr.
    pub progress: bool,
}

/// Convert the Hugging Face checkpoint directory `src` to the GGUF file `dst` (tensors streamed
/// one at a time, written through `dst.part`). Returns the bytes of tensor data written.
pub fn convert(src: &Path, dst: &Path, opts: &ConvertOptions) -> Result<u64> {
    let hf = HfModel::open(src)?;
    let mut progress = stderr_progress("writing");
    hf.write_gguf(
        dst,
        Conversion {
            out: opts.out,
            encoder: Some(dino_kernels::quant::quantize_row),
            threads: opts.threads,
            progress: if opts.progress {
                Some(&mut progress)
            } else {
                None
            },
        },
    )
}

/// A progress reporter for (done, total) bytes on stderr: a redrawn bar on a terminal, else a
/// line at every 10 %.
pub fn stderr_progress(label: &str) -> impl FnMut(u64, u64) + '_ {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stderr().is_terminal();
    let mut last = None;
    move |done, total| {
        let pct = (done * 100).checked_div(total).unwrap_or(100).min(100);
        let mut err = std::io::stderr().lock();
        if tty {
            let filled = (pct / 4) as usize;
            let _ = write!(
                err,
                "\r{label} [{}{}] {pct:>3}% ({} / {})",
                "#".repeat(filled),
                " ".repeat(25 - filled),
                metrics::fmt_bytes(done),
                metrics::fmt_bytes(total)
            );
            if done >= total {
                let _ = writeln!(err);
            }
        } else {
            let step = pct / 10;
            if last != Some(step) {
                last = Some(step);
                let _ = writeln!(err, "{label}: {pct}%");
            }
        }
        let _ = err.flush();
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Tokens per prompt-processing batch.
    pub n_batch: usize,
    /// Stop at an end-of-generation token.
    pub stop_at_eog: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 128,
            sampler: SamplerConfig::default(),
            n_batch: 512,
            stop_at_eog: true,
        }
    }
}

/// Timings and counts of one generation.
#[derive(Clone, Debug, Default)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    pub prompt_time: Duration,
    /// From the start of prompt processing to the first generated token.
    pub time_to_first_token: Duration,
    pub generated_tokens: usize,
    /// Time spent producing tokens after the first.
    pub gen_time: Duration,
    pub tokens: Vec<u32>,
    pub stopped_at_eog: bool,
}

impl GenerateStats {
    pub fn prompt_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_time.as_secs_f64().max(1e-9)
    }
    /// Generation speed over the tokens after the first (the first costs the prompt).
    pub fn gen_tps(&self) -> f64 {
        if self.generated_tokens <= 1 {
            return 0.0;
        }
        (self.generated_tokens - 1) as f64 / self.gen_time.as_secs_f64().max(1e-9)
    }
}

/// Generate from prompt tokens with one sequence of `kv`. `on_token(id, text)` receives each
/// token and the newly completed text (never half a UTF-8 character); return `Break` to stop.
pub fn generate(
    engine: &Engine,
    kv: &mut KvCache,
    prompt: &[u32],
    params: &GenerateParams,
    on_token: impl FnMut(u32, &str) -> ControlFlow<()>,
) -> Result<GenerateStats> {
    generate_cached(engine, kv, prompt, 0, params, on_token)
}

/// As [`generate`], when sequence 0 of `kv` already holds `prompt[..n_cached]` at positions
/// `0..n_cached` (a chat's earlier turns): only the rest of the prompt is evaluated (always at
/// least its last token, for the logits). The penalties still see the whole prompt.
pub fn generate_cached(
    engine: &Engine,
    kv: &mut KvCache,
    prompt: &[u32],
    n_cached: usize,
    params: &GenerateParams,
    mut on_token: impl FnMut(u32, &str) -> ControlFlow<()>,
) -> Result<GenerateStats> {
    if prompt.is_empty() {
        return Err(Error::invalid("the prompt is empty (no tokens)"));
    }
    let n_ctx = kv.n_ctx();
    if prompt.len() >= n_ctx {
        return Err(Error::invalid(format!(
            "the prompt has {} tokens but the context holds {n_ctx}; raise --ctx-size or shorten the prompt",
            prompt.len()
        )));
    }
    let mut sampler = Sampler::new(params.sampler.clone())?;
    let mut stats = GenerateStats {
        prompt_tokens: prompt.len(),
        ..Default::default()
    };
    let mut history: Vec<u32> = prompt.to_vec();
    let mut logits = Logits::default();
    let t0 = Instant::now();
    let n_batch = params.n_batch.max(1);
    let start = n_cached.min(prompt.len() - 1);
    for (i, chunk) in prompt[start..].chunks(n_batch).enumerate() {
        let batch = Batch::from_tokens(chunk, start + i * n_batch, 0, false);
        engine.forward(&batch, kv, &mut logits)?;
    }
    stats.prompt_time = t0.elapsed();
    let mut decoder = engine.tokenizer.stream_decoder();
    let mut pos = prompt.len();
    let t_gen = Instant::now();
    let mut batch = Batch::default();
    while stats.generated_tokens < params.max_tokens {
        let tok = sampler.sample(logits.last(), &history);
        if stats.generated_tokens == 0 {
            stats.time_to_first_token = t0.elapsed();
        }
        stats.generated_tokens += 1;
        stats.tokens.push(tok);
        history.push(tok);
        if params.stop_at_eog && engine.tokenizer.is_eog(tok) {
            stats.stopped_at_eog = true;
            break;
        }
        let text = decoder.push(tok);
        if on_token(tok, &text).is_break() {
            break;
        }
        if stats.generated_tokens == params.max_tokens || pos + 1 > n_ctx - 1 {
            break;
        }
        batch.clear();
        batch.push(tok, pos as u32, 0, true);
        engine.forward(&batch, kv, &mut logits)?;
        pos += 1;
    }
    let rest = decoder.flush();
    if !rest.is_empty() {
        let _ = on_token(u32::MAX, &rest);
    }
    stats.gen_time = t_gen.elapsed().saturating_sub(Duration::ZERO);
    Ok(stats)
}
