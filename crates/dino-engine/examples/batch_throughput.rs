//! Aggregate decode throughput of the batched engine with 1, 2, 4, 8, 16 concurrent requests
//! (in process, no HTTP): each request decodes `N` tokens greedily after a short prompt.
//!
//! `cargo run --release -p dino-engine --example batch_throughput -- MODEL.gguf [N] [THREADS]`
use dino_engine::batch::{BatchConfig, BatchEngine, GenEvent, GenRequest};
use dino_engine::{Engine, EngineOptions, SamplerConfig};
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(model) = args.get(1) else {
        eprintln!("usage: batch_throughput MODEL.gguf [N_TOKENS] [THREADS]");
        std::process::exit(2);
    };
    let n: usize = args.get(2).map_or(64, |s| s.parse().expect("N_TOKENS"));
    let threads: usize = args.get(3).map_or(0, |s| s.parse().expect("THREADS"));
    let e = Arc::new(
        Engine::load(
            model,
            &EngineOptions {
                threads,
                warm_up: true,
                ..Default::default()
            },
        )
        .expect("model loads"),
    );
    let prompt = e.tokenizer.encode("Once upon a time", true, false).unwrap();
    println!("clients  tokens  seconds  aggregate tok/s  per-client tok/s");
    for clients in [1usize, 2, 4, 8, 16] {
        let b = BatchEngine::start(
            e.clone(),
            BatchConfig {
                n_ctx: prompt.len() + n + 8,
                n_seq: clients,
                n_batch: 512,
                max_queue: 64,
                kv_blocks: None,
            },
        )
        .unwrap();
        let t0 = Instant::now();
        let mut rxs: Vec<_> = (0..clients)
            .map(|i| {
                b.submit(GenRequest {
                    prompt: prompt.clone(),
                    max_tokens: n,
                    sampler: SamplerConfig {
                        seed: i as u64,
                        ..SamplerConfig::default()
                    },
                    stop: vec![],
                    logprobs: None,
                    stop_at_eog: false,
                })
                .unwrap()
            })
            .collect();
        let mut total = 0;
        for rx in &mut rxs {
            while let Some(ev) = rx.blocking_recv() {
                match ev {
                    GenEvent::Token { .. } => total += 1,
                    GenEvent::Done { .. } => break,
                    GenEvent::Error(e) => panic!("{e}"),
                }
            }
        }
        let s = t0.elapsed().as_secs_f64();
        println!(
            "{clients:>7}  {total:>6}  {s:>7.2}  {:>15.1}  {:>16.1}",
            total as f64 / s,
            total as f64 / s / clients as f64
        );
    }
}
