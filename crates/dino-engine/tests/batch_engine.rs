//! The batched engine on SmolLM2-135M-Instruct: requests served together give the tokens they
//! give alone, cancellation frees a slot, the queue bound and the context bound are errors.

use dino_engine::batch::{
    BatchConfig, BatchEngine, FinishReason, GenEvent, GenRequest, SubmitError,
};
use dino_engine::{generate, Engine, EngineOptions, GenerateParams, SamplerConfig};
use std::ops::ControlFlow;
use std::sync::Arc;

fn engine() -> Arc<Engine> {
    Arc::new(
        Engine::load(
            dino_testutil::model("smollm2"),
            &EngineOptions {
                threads: 2,
                // The file's layouts: each row's float order does not depend on the batch.
                no_repack: true,
                ..Default::default()
            },
        )
        .expect("model loads"),
    )
}

fn request(e: &Engine, prompt: &str, max_tokens: usize) -> GenRequest {
    GenRequest {
        prompt: e.tokenizer.encode(prompt, true, false).unwrap(),
        max_tokens,
        sampler: SamplerConfig::greedy(),
        stop: Vec::new(),
        logprobs: None,
        stop_at_eog: false,
    }
}

/// Alone, through `generate`: the reference.
fn solo(e: &Engine, req: &GenRequest) -> Vec<u32> {
    let mut kv = e.new_kv(512).unwrap();
    let params = GenerateParams {
        max_tokens: req.max_tokens,
        sampler: req.sampler.clone(),
        n_batch: 512,
        stop_at_eog: false,
    };
    generate(e, &mut kv, &req.prompt, &params, |_, _| {
        ControlFlow::Continue(())
    })
    .unwrap()
    .tokens
}

/// Every event until `Done`: (tokens, text, finish, completion_tokens).
fn collect(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<GenEvent>,
) -> (Vec<u32>, String, FinishReason, usize) {
    let (mut ids, mut text) = (Vec::new(), String::new());
    loop {
        match rx.blocking_recv().expect("events end with Done") {
            GenEvent::Token { id, text: t, .. } => {
                ids.push(id);
                text.push_str(&t);
            }
            GenEvent::Done {
                finish,
                completion_tokens,
                ..
            } => return (ids, text, finish, completion_tokens),
            GenEvent::Error(e) => panic!("generation failed: {e}"),
        }
    }
}

const PROMPTS: [&str; 5] = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
    "1, 2, 3, 4,",
    "The quick brown fox",
];

#[test]
fn concurrent_requests_give_their_solo_tokens() {
    let e = engine();
    let reqs: Vec<GenRequest> = PROMPTS.iter().map(|p| request(&e, p, 24)).collect();
    let want: Vec<Vec<u32>> = reqs.iter().map(|r| solo(&e, r)).collect();
    // 3 slots for 5 requests: two wait, and join while the others decode; a small n_batch
    // makes prompts arrive in chunks beside running decodes.
    let b = BatchEngine::start(
        e.clone(),
        BatchConfig {
            n_ctx: 256,
            n_seq: 3,
            n_batch: 8,
            max_queue: 8,
        },
    )
    .unwrap();
    let mut rxs: Vec<_> = reqs.iter().map(|r| b.submit(r.clone()).unwrap()).collect();
    for (i, rx) in rxs.iter_mut().enumerate() {
        let (ids, text, finish, n) = collect(rx);
        assert_eq!(ids, want[i], "prompt {:?}", PROMPTS[i]);
        assert_eq!(finish, FinishReason::Length);
        assert_eq!(n, 24);
        assert_eq!(text, e.tokenizer.decode(&want[i]), "streamed text");
    }
    assert_eq!(b.stats().running, 0);
    assert_eq!(b.stats().queue_depth, 0);
}

#[test]
fn stop_strings_cancellation_and_bounds() {
    let e = engine();
    let b = BatchEngine::start(
        e.clone(),
        BatchConfig {
            n_ctx: 64,
            n_seq: 1,
            n_batch: 64,
            max_queue: 2,
        },
    )
    .unwrap();
    // A stop string taken from the solo continuation ends the text just before it.
    let req = request(&e, PROMPTS[3], 16);
    let full = e.tokenizer.decode(&solo(&e, &req));
    let cut = full.len() / 2;
    let stop = full[cut..].chars().take(3).collect::<String>();
    let want = &full[..full.find(&stop).unwrap()];
    let mut rx = b
        .submit(GenRequest {
            stop: vec![stop.clone()],
            ..req.clone()
        })
        .unwrap();
    let (_, text, finish, _) = collect(&mut rx);
    assert_eq!(
        (text.as_str(), finish),
        (want, FinishReason::Stop),
        "stop {stop:?}"
    );

    // A dropped receiver cancels: the one slot is free again for the next request.
    let long = request(&e, PROMPTS[2], 40);
    drop(b.submit(long).unwrap());
    let mut rx = b.submit(req.clone()).unwrap();
    let (ids, _, _, _) = collect(&mut rx);
    assert_eq!(ids, solo(&e, &req));

    // Bounds.
    let too_long = GenRequest {
        prompt: vec![1; 64],
        ..req.clone()
    };
    assert_eq!(
        b.submit(too_long).unwrap_err(),
        SubmitError::PromptTooLong {
            n_prompt: 64,
            n_ctx: 64
        }
    );
    let empty = GenRequest {
        prompt: vec![],
        ..req.clone()
    };
    assert!(matches!(b.submit(empty), Err(SubmitError::Invalid(_))));
    let bad_id = GenRequest {
        prompt: vec![1, u32::MAX],
        ..req.clone()
    };
    assert!(matches!(b.submit(bad_id), Err(SubmitError::Invalid(m)) if m.contains("out of range")));
    // The context ends a generation that would overflow it.
    let mut rx = b
        .submit(GenRequest {
            max_tokens: 1000,
            ..req.clone()
        })
        .unwrap();
    let (_, _, finish, n) = collect(&mut rx);
    assert_eq!(finish, FinishReason::Length);
    assert_eq!(n + req.prompt.len(), 64);
    // The queue holds 2: with the slot busy on a long request, the fourth submit is refused.
    let mut held = vec![b
        .submit(GenRequest {
            max_tokens: 40,
            ..req.clone()
        })
        .unwrap()];
    let mut refused = false;
    for _ in 0..3 {
        match b.submit(req.clone()) {
            Ok(rx) => held.push(rx),
            Err(SubmitError::QueueFull) => refused = true,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused, "a full queue refuses");
}

/// A prompt that extends an earlier one in the same slot (a chat's next turn) reuses the
/// cached keys and values of the shared prefix, and still gives its solo tokens.
#[test]
fn a_shared_prefix_is_reused_not_recomputed() {
    let e = engine();
    let b = BatchEngine::start(
        e.clone(),
        BatchConfig {
            n_ctx: 256,
            n_seq: 2,
            n_batch: 64,
            max_queue: 4,
        },
    )
    .unwrap();
    let first = request(&e, "The capital of France is", 8);
    let mut rx = b.submit(first.clone()).unwrap();
    let (ids, ..) = collect(&mut rx);
    assert_eq!(b.stats().prefix_tokens_reused, 0);
    // The next turn: the first prompt, its answer, and more text.
    let mut prompt = first.prompt.clone();
    prompt.extend(&ids);
    prompt.extend(e.tokenizer.encode(" And of Italy?", false, false).unwrap());
    let second = GenRequest {
        prompt,
        ..first.clone()
    };
    let mut rx = b.submit(second.clone()).unwrap();
    let (got, ..) = collect(&mut rx);
    // Everything but the last generated token (never fed) was in the cache.
    let reused = first.prompt.len() + ids.len() - 1;
    assert_eq!(b.stats().prefix_tokens_reused, reused as u64);
    assert_eq!(got, solo(&e, &second));
    // The same prompt again: all but its last token.
    let mut rx = b.submit(second.clone()).unwrap();
    let (again, ..) = collect(&mut rx);
    assert_eq!(again, got);
    assert_eq!(
        b.stats().prefix_tokens_reused,
        (reused + second.prompt.len() - 1) as u64
    );
}
