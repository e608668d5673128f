//! The cost of one batched decode step: `n` sequences of `CTX` cached tokens each take one
//! token in a single forward pass, for n = 1, 2, 4, 8, 16 (or `NS=1,8`), median of `STEPS`
//! steps (default 32) at the same positions, and one sequence taking `n` prompt tokens for
//! comparison. What continuous batching gains per token is `step(1) · n / step(n)`.
//!
//! `cargo run --release -p dino-engine --example step_probe -- MODEL.gguf [CTX] [THREADS]`
use dino_engine::{Engine, EngineOptions};
use dino_models::{Batch, Logits};
use std::time::Instant;

fn median_ms(mut f: impl FnMut(), reps: usize) -> f64 {
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(model) = args.get(1) else {
        eprintln!("usage: step_probe MODEL.gguf [CTX] [THREADS]");
        std::process::exit(2);
    };
    let ctx: usize = args.get(2).map_or(128, |s| s.parse().expect("CTX"));
    let threads: usize = args.get(3).map_or(0, |s| s.parse().expect("THREADS"));
    let steps: usize = std::env::var("STEPS").map_or(32, |s| s.parse().expect("STEPS"));
    let ns: Vec<usize> = std::env::var("NS")
        .unwrap_or_else(|_| "1,2,4,8,16".into())
        .split(',')
        .map(|s| s.parse().expect("NS"))
        .collect();
    let e = Engine::load(
        model,
        &EngineOptions {
            threads,
            warm_up: true,
            ..Default::default()
        },
    )
    .expect("model loads");
    println!("ctx {ctx}: n, step ms (n sequences x 1 token), per token, one sequence x n tokens");
    for n in ns {
        let mut kv = e.new_kv_seqs(ctx + n + 1, n).expect("kv cache");
        let mut logits = Logits::default();
        for s in 0..n {
            let toks: Vec<u32> = (0..ctx as u32)
                .map(|i| 100 + (i * 7 + s as u32) % 1000)
                .collect();
            let b = Batch::from_tokens(&toks, 0, s as u32, false);
            e.forward(&b, &mut kv, &mut logits).expect("prefill");
        }
        let mut step = Batch::default();
        for s in 0..n {
            step.push(200, ctx as u32, s as u32, true);
        }
        let ms = median_ms(
            || e.forward(&step, &mut kv, &mut logits).expect("step"),
            steps,
        );
        // Sequence 0 takes n tokens after its cached ones (its logits for all of them).
        let chunk = Batch::from_tokens(&vec![200; n], ctx, 0, true);
        let one = median_ms(
            || e.forward(&chunk, &mut kv, &mut logits).expect("chunk"),
            steps,
        );
        println!(
            "n {n:>2}  step {ms:>6.2} ms  {:>6.3} ms/token  {:>6.0} tok/s   one sequence {one:>6.2} ms",
            ms / n as f64,
            n as f64 / ms * 1e3
        );
    }
}
