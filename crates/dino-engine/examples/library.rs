//! Dino as a library: what a program that adds `dino-engine` to its `Cargo.toml` does.
//!
//! 1. load a model (a GGUF file, a Hugging Face directory, or a catalog name fetched once into
//!    the cache, as `dino pull` does);
//! 2. stream one generation through a callback;
//! 3. render a chat with the model's own template and answer it;
//! 4. submit several requests to one batched engine and read their token streams.
//!
//! `cargo run --release -p dino-engine --example library -- [MODEL] [MAX_TOKENS]`
//! (default: the default model, SmolLM2-135M-Instruct, 32 tokens).
use dino_engine::batch::{BatchConfig, BatchEngine, GenEvent, GenRequest};
use dino_engine::{generate, Engine, EngineOptions, GenerateParams, SamplerConfig};
use dino_tokenizer::chat::{ChatMessage, ChatTemplate};
use std::io::Write;
use std::ops::ControlFlow;
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let max_tokens: usize = args.get(2).map_or(Ok(32), |s| s.parse())?;

    // 1. Load: a path, or a catalog name (`smollm2`, `qwen05`, ...) pulled into the cache.
    let path = dino_hub::resolve_model(args.get(1).map(String::as_str), &Default::default())?;
    let engine = Arc::new(Engine::load(
        &path,
        &EngineOptions {
            warm_up: true,
            ..Default::default()
        },
    )?);
    let info = engine.model.info();
    println!(
        "loaded {} ({}, {} layers)",
        path.display(),
        info.arch,
        info.hparams.n_layer
    );

    // 2. One generation, streamed: the callback gets each token's id and text as they come,
    //    and may stop the generation early with ControlFlow::Break.
    let prompt = engine
        .tokenizer
        .encode("The three primary colours are", true, false)?;
    let mut kv = engine.new_kv(prompt.len() + max_tokens)?;
    let params = GenerateParams {
        max_tokens,
        sampler: SamplerConfig::greedy(),
        ..Default::default()
    };
    print!("\n[stream] The three primary colours are");
    let stats = generate(&engine, &mut kv, &prompt, &params, |_id, text| {
        print!("{text}");
        let _ = std::io::stdout().flush();
        ControlFlow::Continue(())
    })?;
    println!(
        "\n[stream] {} tokens, {:.1} tokens/s, first token after {:.1} ms",
        stats.generated_tokens,
        stats.gen_tps(),
        stats.time_to_first_token.as_secs_f64() * 1e3
    );

    // 3. A chat, rendered with the template the model file carries.
    let template = ChatTemplate::for_model(engine.file.metadata())?;
    let text = template.render(
        &[
            ChatMessage::new("system", "You answer in one short sentence."),
            ChatMessage::new("user", "What is the capital of France?"),
        ],
        true,
    )?;
    let chat_prompt = engine.tokenizer.encode(&text, false, true)?;
    let mut kv = engine.new_kv(chat_prompt.len() + max_tokens)?;
    let mut answer = String::new();
    generate(&engine, &mut kv, &chat_prompt, &params, |_, t| {
        answer.push_str(t);
        ControlFlow::Continue(())
    })?;
    println!("\n[chat] {}", answer.trim());

    // 4. Many requests, one batched engine: each submit returns a receiver of events; the
    //    requests share forward passes.
    let batch = BatchEngine::start(
        engine.clone(),
        BatchConfig {
            n_ctx: 256,
            n_seq: 4,
            ..Default::default()
        },
    )?;
    let questions = [
        "Rain is",
        "The moon is",
        "Bread is made from",
        "A cat likes",
    ];
    let mut streams = Vec::new();
    for q in questions {
        let req = GenRequest {
            prompt: engine.tokenizer.encode(q, true, false)?,
            max_tokens,
            sampler: SamplerConfig::greedy(),
            stop: vec!["\n".into()],
            logprobs: None,
            stop_at_eog: true,
        };
        streams.push((q, batch.submit(req)?));
    }
    for (q, rx) in &mut streams {
        let mut out = String::new();
        while let Some(ev) = rx.blocking_recv() {
            match ev {
                GenEvent::Token { text, .. } => out.push_str(&text),
                GenEvent::Done {
                    finish,
                    completion_tokens,
                    ..
                } => {
                    println!("[batch] {q}{out}  ({completion_tokens} tokens, {finish:?})");
                    break;
                }
                GenEvent::Error(e) => return Err(e.into()),
            }
        }
    }
    let s = batch.stats();
    println!(
        "[batch] {} requests served; KV blocks: {} used, {} cached, {} in all",
        questions.len(),
        s.kv_blocks_used,
        s.kv_blocks_cached,
        s.kv_blocks_total
    );
    Ok(())
}
