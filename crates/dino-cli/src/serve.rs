//! `dino serve`: the OpenAI-compatible server (`dino-server`) over the batched engine
//! (`dino_engine::batch`). This file is the adapter between the two: it renders chats with the
//! model's template, tokenizes, maps OpenAI's sampling fields to the sampler chain, and
//! forwards the engine's events to the server's, cancelling the engine's sequence as soon as
//! the client goes away.

use crate::{load_engine, ModelArgs};
use anyhow::{Context, Result};
use clap::Args;
use dino_engine::batch::{self, BatchConfig, BatchEngine};
use dino_engine::{Engine, SamplerConfig};
use dino_server::backend::{
    Backend, BackendMetrics, ChatMessage, FinishReason, GenEvent, GenRequest, SubmitError,
    TokenLogprob,
};
use dino_server::{Server, ServerConfig};
use dino_tokenizer::chat::{self, ChatTemplate};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

#[derive(Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on. The default keeps the server on this machine; to expose it, give
    /// an address (0.0.0.0 for all) and an --api-key.
    #[arg(long = "host", default_value = "127.0.0.1")]
    host: IpAddr,
    #[arg(long = "port", default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every route but /health (also from
    /// $DINO_API_KEY).
    #[arg(long = "api-key")]
    api_key: Option<String>,
    /// Sequences generated at once; each has its own --ctx-size of KV cache (default context
    /// per sequence: the model's trained context, at most 4096).
    #[arg(long = "parallel", visible_alias = "np", default_value_t = 4)]
    parallel: usize,
    /// Memory for the KV cache, shared by all sequences in blocks of 16 positions (e.g. 512M,
    /// 2G; default: --parallel × --ctx-size positions). With less, sequences that outgrow it
    /// are preempted and resumed later; cached prompt prefixes are kept in what is left.
    #[arg(long = "kv-memory", value_parser = parse_size)]
    kv_memory: Option<u64>,
    /// Most tokens in one forward pass (decode tokens of every sequence plus prompt chunks).
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    batch_size: usize,
    /// Requests that may wait for a free sequence; more get 503 with Retry-After.
    #[arg(long = "max-queue", default_value_t = 64)]
    max_queue: usize,
    /// Allow cross-origin requests from these origins (comma-separated, or *). Off by default.
    #[arg(long = "cors", value_delimiter = ',')]
    cors: Vec<String>,
    /// Largest request body, in bytes.
    #[arg(long = "max-body", default_value_t = 4 << 20)]
    max_body: usize,
    /// Seconds a request may take before it ends with an error.
    #[arg(long = "timeout", default_value_t = 600)]
    timeout: u64,
}

/// The engine as the server sees it.
pub(crate) struct EngineBackend {
    engine: Arc<Engine>,
    batch: BatchEngine,
    template: ChatTemplate,
    model_id: String,
}

impl EngineBackend {
    pub(crate) fn new(engine: Arc<Engine>, cfg: BatchConfig, model_id: String) -> Result<Self> {
        let template = ChatTemplate::for_model(engine.file.metadata())
            .context("reading the model's chat template")?;
        let batch = BatchEngine::start(engine.clone(), cfg)?;
        Ok(EngineBackend {
            engine,
            batch,
            template,
            model_id,
        })
    }
}

impl Backend for EngineBackend {
    fn model_id(&self) -> String {
        self.model_id.clone()
    }

    fn n_ctx(&self) -> usize {
        self.batch.config().n_ctx
    }

    fn tokenize(&self, text: &str) -> std::result::Result<Vec<u32>, String> {
        // Special tokens written in the text (a rendered chat's `<|im_start|>`) are parsed.
        self.engine
            .tokenizer
            .encode(text, true, true)
            .map_err(|e| e.to_string())
    }

    fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> std::result::Result<String, String> {
        let msgs: Vec<chat::ChatMessage> = messages
            .iter()
            .map(|m| chat::ChatMessage::new(m.role.clone(), m.content.clone()))
            .collect();
        let text = self
            .template
            .render(&msgs, add_generation_prompt)
            .map_err(|e| e.to_string())?;
        // The tokenizer adds BOS itself when the model wants one: drop a template's own.
        let bos = self.template.bos_token();
        Ok(match text.strip_prefix(bos) {
            Some(rest) if !bos.is_empty() && self.engine.tokenizer.add_bos() => rest.to_string(),
            _ => text,
        })
    }

    fn submit(
        &self,
        req: GenRequest,
    ) -> std::result::Result<UnboundedReceiver<GenEvent>, SubmitError> {
        let sampler = SamplerConfig {
            temperature: req.temperature,
            top_k: 0,
            top_p: req.top_p,
            min_p: 0.0,
            repeat_penalty: 1.0,
            frequency_penalty: req.frequency_penalty,
            presence_penalty: req.presence_penalty,
            penalty_last_n: 64,
            seed: req.seed.unwrap_or_else(random_seed),
        };
        let mut rx = self
            .batch
            .submit(batch::GenRequest {
                prompt: req.prompt,
                max_tokens: req.max_tokens,
                sampler,
                stop: req.stop,
                logprobs: req.logprobs,
                stop_at_eog: true,
            })
            .map_err(|e| match e {
                batch::SubmitError::QueueFull => SubmitError::QueueFull { retry_after_s: 1 },
                batch::SubmitError::PromptTooLong { n_prompt, n_ctx } => {
                    SubmitError::PromptTooLong { n_prompt, n_ctx }
                }
                other => SubmitError::Invalid(other.to_string()),
            })?;
        let (tx, out) = unbounded_channel();
        let texts = TokenTexts(self.engine.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    // The client went away: dropping `rx` cancels the engine's sequence.
                    _ = tx.closed() => return,
                    ev = rx.recv() => {
                        let Some(ev) = ev else {
                            let _ = tx.send(GenEvent::Error("the engine stopped".into()));
                            return;
                        };
                        let (ev, last) = texts.map(ev);
                        if tx.send(ev).is_err() || last {
                            return;
                        }
                    }
                }
            }
        });
        Ok(out)
    }

    fn ready(&self) -> bool {
        // Loaded and warmed up before the server starts listening.
        true
    }

    fn metrics(&self) -> BackendMetrics {
        let s = self.batch.stats();
        BackendMetrics {
            queue_depth: s.queue_depth,
            running: s.running,
            kv_blocks_used: s.kv_blocks_used,
            kv_blocks_cached: s.kv_blocks_cached,
            kv_blocks_total: s.kv_blocks_total,
            kv_block_bytes: self.engine.kv_block_bytes(),
            prefix_tokens_reused: s.prefix_tokens_reused,
            preemptions: s.preemptions,
        }
    }
}

/// Token ids to text for logprobs.
struct TokenTexts(Arc<Engine>);

impl TokenTexts {
    fn text(&self, id: u32) -> String {
        self.0.tokenizer.decode(&[id])
    }

    /// The server's event for an engine event, and whether it is the last.
    fn map(&self, ev: batch::GenEvent) -> (GenEvent, bool) {
        match ev {
            batch::GenEvent::Token { id, text, logprob } => (
                GenEvent::Token {
                    id,
                    text,
                    logprob: logprob.map(|lp| TokenLogprob {
                        token: self.text(id),
                        logprob: lp.logprob,
                        top: lp.top.iter().map(|&(t, l)| (self.text(t), l)).collect(),
                    }),
                },
                false,
            ),
            batch::GenEvent::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            } => (
                GenEvent::Done {
                    finish_reason: match finish {
                        batch::FinishReason::Stop => FinishReason::Stop,
                        batch::FinishReason::Length => FinishReason::Length,
                    },
                    prompt_tokens,
                    completion_tokens,
                },
                true,
            ),
            batch::GenEvent::Error(e) => (GenEvent::Error(e), true),
        }
    }
}

/// A byte size: a number with an optional K, M, G or T suffix (powers of 1024; `KiB`, `MB`
/// and the like are read the same way).
pub(crate) fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let x: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512M, 2G, 1073741824)"))?;
    let shift = match unit
        .trim()
        .to_ascii_lowercase()
        .trim_end_matches(['b', 'i'])
    {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use K, M, G or T)")),
    };
    let bytes = x * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 / 2.0 {
        return Err(format!("{s:?} is not a usable size"));
    }
    Ok(bytes as u64)
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

pub(crate) fn cmd_serve(a: ServeArgs) -> Result<()> {
    let engine = Arc::new(load_engine(&a.model)?);
    let trained = engine.model.info().hparams.n_ctx_train;
    let n_ctx = a.model.ctx_size.unwrap_or(trained.min(4096));
    let model_id = a
        .model
        .model
        .clone()
        .map(|m| {
            std::path::Path::new(&m)
                .file_stem()
                .map_or(m.clone(), |s| s.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "SmolLM2-135M-Instruct.Q4_1".into());
    let block_bytes = engine.kv_block_bytes();
    let kv_blocks = a.kv_memory.map(|m| (m / block_bytes) as usize);
    if let Some(b) = kv_blocks.filter(|&b| b < 2) {
        anyhow::bail!(
            "--kv-memory {} holds {b} KV blocks of {block_bytes} bytes; this model needs at least 2",
            a.kv_memory.unwrap_or(0)
        );
    }
    let batch_cfg = BatchConfig {
        n_ctx,
        n_seq: a.parallel.max(1),
        n_batch: a.batch_size.max(1),
        max_queue: a.max_queue,
        kv_blocks,
    };
    let n_blocks = batch_cfg.n_blocks();
    let backend = Arc::new(EngineBackend::new(
        engine.clone(),
        batch_cfg,
        model_id.clone(),
    )?);
    let config = ServerConfig {
        host: a.host,
        port: a.port,
        api_key: a
            .api_key
            .or_else(|| std::env::var("DINO_API_KEY").ok())
            .filter(|k| !k.is_empty()),
        cors_origins: a.cors,
        max_body: a.max_body,
        request_timeout: Some(Duration::from_secs(a.timeout)),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((config.host, config.port))
            .await
            .with_context(|| format!("binding {}:{}", config.host, config.port))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "serving {model_id} on http://{addr}/v1 ({} sequences of up to {n_ctx} tokens, \
             KV cache {:.0} MiB ({}) in {} blocks of {}; {})",
            a.parallel,
            (n_blocks as u64 * block_bytes) as f64 / (1 << 20) as f64,
            engine.kv_types,
            n_blocks,
            batch::KV_BLOCK,
            if config.api_key.is_some() {
                "API key required"
            } else {
                "no API key"
            }
        );
        let server = Server::new(backend, config);
        server
            .serve_with_shutdown(listener, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("serving")
    })
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_units_and_bad_ones_are_named() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1.5GB"), Ok(3 << 29));
        assert_eq!(parse_size(" 64k "), Ok(64 << 10));
        for bad in ["", "M", "12Q", "-5M", "0", "1e400", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
