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
            kv_blocks: None,
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
            kv_blocks: None,
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

/// Tokens up to the first `Token` event: (its id, the receiver to go on with).
fn first_token(rx: &mut tokio::sync::mpsc::UnboundedReceiver<GenEvent>) -> u32 {
    match rx.blocking_recv().expect("an event") {
        GenEvent::Token { id, .. } => id,
        e => panic!("expected a token, got {e:?}"),
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

const SYSTEM: &str = "You are a careful assistant. You answer in one short sentence, you never \
    invent facts, and when you do not know something you say so plainly. The user is a student \
    of geography who asks about capitals, rivers and mountains.";

/// Prompts that start alike reuse the cached keys and values of their common whole blocks,
/// whichever sequence computed them (one still running, or one finished), and still give
/// their solo tokens; a prompt cached whole recomputes only its last token (copying the block
/// it writes into).
#[test]
fn shared_prefixes_are_reused_across_sequences() {
    use dino_engine::batch::KV_BLOCK;
    let e = engine();
    let b = BatchEngine::start(
        e.clone(),
        BatchConfig {
            n_ctx: 512,
            n_seq: 3,
            n_batch: 64,
            max_queue: 8,
            kv_blocks: None,
        },
    )
    .unwrap();
    let ask = |q: &str, n| request(&e, &format!("{SYSTEM}\nQuestion: {q}\nAnswer:"), n);
    let a = ask("What is the capital of France?", 24);
    assert!(a.prompt.len() > 3 * KV_BLOCK);
    let mut rx_a = b.submit(a.clone()).unwrap();
    let a0 = first_token(&mut rx_a);
    assert_eq!(b.stats().prefix_tokens_reused, 0);
    // While A decodes, C shares its system prompt: the whole blocks of the common part come
    // from A's cache.
    let c = ask("Which river flows through Vienna?", 8);
    let common = common_prefix(&a.prompt, &c.prompt);
    let mut rx_c = b.submit(c.clone()).unwrap();
    let (got_c, ..) = collect(&mut rx_c);
    let (rest_a, ..) = collect(&mut rx_a);
    let ids_a: Vec<u32> = std::iter::once(a0).chain(rest_a).collect();
    assert_eq!(ids_a, solo(&e, &a));
    assert_eq!(got_c, solo(&e, &c));
    let mut reused = common / KV_BLOCK * KV_BLOCK;
    assert_eq!(b.stats().prefix_tokens_reused, reused as u64);
    // A chat's next turn after A ended: its prompt, its answer and more. Everything A fed
    // (all but the last generated token) is cached, in whole blocks.
    let mut prompt = a.prompt.clone();
    prompt.extend(&ids_a);
    prompt.extend(e.tokenizer.encode(" And of Italy?", false, false).unwrap());
    let next = GenRequest {
        prompt,
        ..a.clone()
    };
    let mut rx = b.submit(next.clone()).unwrap();
    let (got, ..) = collect(&mut rx);
    assert_eq!(got, solo(&e, &next));
    reused += (a.prompt.len() + ids_a.len() - 1) / KV_BLOCK * KV_BLOCK;
    assert_eq!(b.stats().prefix_tokens_reused, reused as u64);
    // A prompt of whole blocks, all cached (the start of the last one): all but its last token
    // is reused, and the block that token is written into is copied first, so the cached one
    // stays as it was (the same request again gives the same tokens).
    let whole = GenRequest {
        prompt: next.prompt[..3 * KV_BLOCK].to_vec(),
        ..a.clone()
    };
    let want = solo(&e, &whole);
    for _ in 0..2 {
        let mut rx = b.submit(whole.clone()).unwrap();
        assert_eq!(collect(&mut rx).0, want);
        reused += 3 * KV_BLOCK - 1;
    }
    assert_eq!(b.stats().prefix_tokens_reused, reused as u64);
    let s = b.stats();
    assert_eq!((s.running, s.kv_blocks_used), (0, 0));
    assert!(s.kv_blocks_cached > 0);
}

/// With too few KV blocks for every sequence at once, sequences are preempted and resumed,
/// and each still gives its solo tokens; a prompt larger than the whole cache is refused.
#[test]
fn a_small_kv_budget_preempts_and_resumes() {
    let e = engine();
    let b = BatchEngine::start(
        e.clone(),
        BatchConfig {
            n_ctx: 256,
            n_seq: 4,
            n_batch: 32,
            max_queue: 8,
            // 96 positions for four sequences of up to ~55.
            kv_blocks: Some(6),
        },
    )
    .unwrap();
    let reqs: Vec<GenRequest> = PROMPTS[..4].iter().map(|p| request(&e, p, 40)).collect();
    let want: Vec<Vec<u32>> = reqs.iter().map(|r| solo(&e, r)).collect();
    let mut rxs: Vec<_> = reqs.iter().map(|r| b.submit(r.clone()).unwrap()).collect();
    for (i, rx) in rxs.iter_mut().enumerate() {
        let (ids, _, finish, n) = collect(rx);
        assert_eq!(ids, want[i], "prompt {:?}", PROMPTS[i]);
        assert_eq!((finish, n), (FinishReason::Length, 40));
    }
    let s = b.stats();
    assert!(s.preemptions > 0, "{s:?}");
    assert_eq!((s.running, s.kv_blocks_used, s.kv_blocks_total), (0, 0, 6));
    assert_eq!(
        b.submit(GenRequest {
            prompt: vec![1; 100],
            ..reqs[0].clone()
        })
        .unwrap_err(),
        SubmitError::PromptTooLong {
            n_prompt: 100,
            n_ctx: 96
        }
    );
}
