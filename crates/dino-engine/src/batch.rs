//! Continuous batching: one owner thread runs every active sequence in shared forward passes.
//!
//! Requests arrive over a channel ([`BatchEngine::submit`]) and wait in a queue. At every step
//! the loop admits waiting requests into free sequence slots, then builds one batch holding
//! one decode token for every generating sequence and, in the room left (`n_batch`), the next
//! chunk of each prefilling prompt (chunked prefill: a long new prompt does not stall the
//! running streams). One forward pass computes them all, so in decode one pass over the
//! weights serves every sequence. Each sequence samples from its own logits row with its own
//! sampler, streams text through its own detokenizer, holds back text that may be the start of
//! a stop string, and ends on an end-of-generation token, a stop string, `max_tokens` or a full
//! context. A request whose receiver is dropped (the client went away) is cancelled at the
//! next step and its slot freed.
//!
//! The KV cache has one slot of `n_ctx` positions per parallel sequence.

use crate::{Engine, Sampler, SamplerConfig};
use dino_core::{Error, Result};
use dino_models::{Batch, KvCache, Logits};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Sizes of the batched engine.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// Context (positions) per sequence.
    pub n_ctx: usize,
    /// Sequences generated at once (KV-cache slots).
    pub n_seq: usize,
    /// Most tokens in one forward pass (decode tokens plus prompt chunks).
    pub n_batch: usize,
    /// Requests that may wait for a slot; more are refused with [`SubmitError::QueueFull`].
    pub max_queue: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            n_ctx: 4096,
            n_seq: 4,
            n_batch: 512,
            max_queue: 64,
        }
    }
}

/// One generation request, in tokens.
#[derive(Clone, Debug)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Strings that end the generation (not included in the output), matched across token
    /// boundaries.
    pub stop: Vec<String>,
    /// Report each chosen token's log-probability and this many alternatives.
    pub logprobs: Option<usize>,
    /// End at an end-of-generation token.
    pub stop_at_eog: bool,
}

/// A token's log-probability under the model (log-softmax of the raw logits) and the most
/// likely alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub logprob: f32,
    /// `(token, logprob)`, most likely first.
    pub top: Vec<(u32, f32)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens`, or the context is full.
    Length,
}

/// What a request's receiver gets, in order: tokens, then `Done` (or `Error`).
#[derive(Clone, Debug, PartialEq)]
pub enum GenEvent {
    Token {
        id: u32,
        /// Text completed by this token and not held back (may be empty).
        text: String,
        logprob: Option<TokenLogprob>,
    },
    Done {
        finish: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Error(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmitError {
    QueueFull,
    PromptTooLong {
        n_prompt: usize,
        n_ctx: usize,
    },
    Invalid(String),
    /// The engine thread has stopped.
    Stopped,
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::QueueFull => write!(f, "the request queue is full"),
            SubmitError::PromptTooLong { n_prompt, n_ctx } => write!(
                f,
                "the prompt has {n_prompt} tokens but the context holds {n_ctx}"
            ),
            SubmitError::Invalid(m) => write!(f, "{m}"),
            SubmitError::Stopped => write!(f, "the engine has stopped"),
        }
    }
}

/// Counters the server reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    pub queue_depth: usize,
    pub running: usize,
    pub n_seq: usize,
    /// Prompt tokens whose KV was reused from an earlier sequence of the same slot instead of
    /// being computed (since start).
    pub prefix_tokens_reused: u64,
    /// KV-cache blocks of [`KV_BLOCK`] positions holding tokens (running sequences and the
    /// prefixes kept for reuse), and all there are.
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
}

/// Positions per KV-cache block in [`BatchStats`].
pub const KV_BLOCK: usize = 16;

struct Pending {
    req: GenRequest,
    tx: UnboundedSender<GenEvent>,
}

struct Shared {
    queued: AtomicUsize,
    running: AtomicUsize,
    reused: std::sync::atomic::AtomicU64,
    blocks_used: AtomicUsize,
    stop: AtomicBool,
}

/// Handle to the batching thread; cloning shares it. Dropping the last handle stops the thread
/// once its sequences are done.
pub struct BatchEngine {
    tx: mpsc::Sender<Pending>,
    shared: Arc<Shared>,
    cfg: BatchConfig,
    n_vocab: usize,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BatchEngine {
    /// Start the loop on its own thread, with a KV cache of `n_seq` slots of `n_ctx`.
    pub fn start(engine: Arc<Engine>, cfg: BatchConfig) -> Result<BatchEngine> {
        if cfg.n_seq == 0 || cfg.n_ctx < 2 || cfg.n_batch == 0 {
            return Err(Error::invalid(
                "batched engine: n_seq, n_batch must be positive and n_ctx at least 2",
            ));
        }
        let kv = engine.new_kv_seqs(cfg.n_ctx, cfg.n_seq)?;
        let n_vocab = engine.model.info().hparams.n_vocab;
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            reused: std::sync::atomic::AtomicU64::new(0),
            blocks_used: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let (c, s) = (cfg.clone(), shared.clone());
        let thread = std::thread::Builder::new()
            .name("dino-batch".into())
            .spawn(move || run(&engine, kv, &c, rx, &s))
            .map_err(|e| Error::io("spawn the batch thread", e))?;
        Ok(BatchEngine {
            tx,
            shared,
            cfg,
            n_vocab,
            thread: Some(thread),
        })
    }

    pub fn config(&self) -> &BatchConfig {
        &self.cfg
    }

    /// Queue a request. Events arrive on the returned receiver; dropping it cancels the
    /// request.
    pub fn submit(
        &self,
        req: GenRequest,
    ) -> std::result::Result<UnboundedReceiver<GenEvent>, SubmitError> {
        if req.prompt.is_empty() {
            return Err(SubmitError::Invalid(
                "the prompt is empty (no tokens)".into(),
            ));
        }
        if req.prompt.len() >= self.cfg.n_ctx {
            return Err(SubmitError::PromptTooLong {
                n_prompt: req.prompt.len(),
                n_ctx: self.cfg.n_ctx,
            });
        }
        // A bad id would fail the whole shared forward pass: refuse it here.
        if let Some(&t) = req.prompt.iter().find(|&&t| t as usize >= self.n_vocab) {
            return Err(SubmitError::Invalid(format!(
                "token id {t} is out of range (vocabulary has {})",
                self.n_vocab
            )));
        }
        Sampler::new(req.sampler.clone()).map_err(|e| SubmitError::Invalid(e.to_string()))?;
        // Count first, so two racing submits cannot both take the last place.
        if self.shared.queued.fetch_add(1, Ordering::SeqCst) >= self.cfg.max_queue {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull);
        }
        let (tx, rx) = unbounded_channel();
        if self.tx.send(Pending { req, tx }).is_err() {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::Stopped);
        }
        Ok(rx)
    }

    pub fn stats(&self) -> BatchStats {
        BatchStats {
            queue_depth: self.shared.queued.load(Ordering::SeqCst),
            running: self.shared.running.load(Ordering::SeqCst),
            n_seq: self.cfg.n_seq,
            prefix_tokens_reused: self.shared.reused.load(Ordering::SeqCst),
            kv_blocks_used: self.shared.blocks_used.load(Ordering::SeqCst),
            kv_blocks_total: self.cfg.n_seq * self.cfg.n_ctx.div_ceil(KV_BLOCK),
        }
    }
}

impl Drop for BatchEngine {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Closing the channel wakes the loop if it is idle.
        let (dead, _) = mpsc::channel();
        self.tx = dead;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A sequence in a KV slot.
struct Seq<'a> {
    req: GenRequest,
    tx: UnboundedSender<GenEvent>,
    sampler: Sampler,
    /// Prompt and generated tokens.
    history: Vec<u32>,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    /// The token to feed next (the last sampled one), once the prompt is in.
    next: Option<u32>,
    generated: usize,
    decoder: dino_tokenizer::StreamDecoder<'a>,
    stops: StopMatcher,
}

impl Seq<'_> {
    /// The tokens whose keys and values are in the slot: the history but the last sampled
    /// token (not fed yet), or the prompt's prefilled part.
    fn in_cache(&self) -> &[u32] {
        if self.next.is_some() || self.generated > 0 {
            &self.history[..self.history.len() - 1]
        } else {
            &self.req.prompt[..self.prefilled]
        }
    }
}

fn run(
    engine: &Engine,
    mut kv: KvCache,
    cfg: &BatchConfig,
    rx: mpsc::Receiver<Pending>,
    shared: &Shared,
) {
    let tok = &engine.tokenizer;
    let mut waiting: VecDeque<Pending> = VecDeque::new();
    let mut slots: Vec<Option<Seq>> = (0..cfg.n_seq).map(|_| None).collect();
    // Per slot, the tokens whose KV it holds from its last sequence: a new prompt that starts
    // with them reuses them (a shared system prompt, a chat's history).
    let mut cached: Vec<Vec<u32>> = vec![Vec::new(); cfg.n_seq];
    let mut batch = Batch::default();
    let mut logits = Logits::default();
    // (slot, index in the batch) of the tokens whose logits are sampled this step.
    let mut wants: Vec<(usize, usize)> = Vec::new();
    loop {
        let idle = waiting.is_empty() && slots.iter().all(Option::is_none);
        if idle {
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            match rx.recv() {
                Ok(p) => waiting.push_back(p),
                Err(_) => return,
            }
        }
        while let Ok(p) = rx.try_recv() {
            waiting.push_back(p);
        }
        // Cancelled requests: waiting ones are dropped, running ones free their slot.
        waiting.retain(|p| {
            let keep = !p.tx.is_closed();
            if !keep {
                shared.queued.fetch_sub(1, Ordering::SeqCst);
            }
            keep
        });
        for (s, c) in slots.iter_mut().zip(cached.iter_mut()) {
            if let Some(q) = s.as_ref().filter(|q| q.tx.is_closed()) {
                *c = q.in_cache().to_vec();
                *s = None;
            }
        }
        // Admit, each request into the free slot holding the longest prefix of its prompt.
        while slots.iter().any(Option::is_none) {
            let Some(p) = waiting.pop_front() else { break };
            shared.queued.fetch_sub(1, Ordering::SeqCst);
            // At least the prompt's last token is computed: its logits are needed.
            let common = |c: &[u32]| {
                c.iter()
                    .zip(&p.req.prompt)
                    .take_while(|(a, b)| a == b)
                    .count()
                    .min(p.req.prompt.len() - 1)
            };
            let (slot, reuse) = (0..cfg.n_seq)
                .filter(|&i| slots[i].is_none())
                .map(|i| (i, common(&cached[i])))
                .max_by_key(|&(i, n)| (n, std::cmp::Reverse(i)))
                .expect("a free slot");
            cached[slot].truncate(reuse);
            // The old tail's memory goes back to the OS; the new sequence commits pages as it
            // writes them.
            kv.release_seq(slot, reuse);
            shared.reused.fetch_add(reuse as u64, Ordering::SeqCst);
            let s = &mut slots[slot];
            let sampler = match Sampler::new(p.req.sampler.clone()) {
                Ok(x) => x,
                Err(e) => {
                    let _ = p.tx.send(GenEvent::Error(e.to_string()));
                    continue;
                }
            };
            *s = Some(Seq {
                history: p.req.prompt.clone(),
                stops: StopMatcher::new(p.req.stop.clone()),
                req: p.req,
                tx: p.tx,
                sampler,
                prefilled: reuse,
                next: None,
                generated: 0,
                decoder: tok.stream_decoder(),
            });
        }
        shared.running.store(
            slots.iter().filter(|s| s.is_some()).count(),
            Ordering::SeqCst,
        );
        // Build the step: decode tokens first, then prompt chunks in the room left.
        batch.clear();
        wants.clear();
        for (i, s) in slots.iter().enumerate() {
            if let Some(q) = s {
                if let Some(t) = q.next {
                    let pos = q.history.len() - 1;
                    wants.push((i, batch.len()));
                    batch.push(t, pos as u32, i as u32, true);
                }
            }
        }
        for (i, s) in slots.iter_mut().enumerate() {
            let Some(q) = s else { continue };
            let room = cfg.n_batch.saturating_sub(batch.len());
            if q.next.is_some() || room == 0 {
                continue;
            }
            let n = (q.req.prompt.len() - q.prefilled).min(room);
            for j in 0..n {
                let pos = q.prefilled + j;
                let last = pos + 1 == q.req.prompt.len();
                if last {
                    wants.push((i, batch.len()));
                }
                batch.push(q.req.prompt[pos], pos as u32, i as u32, last);
            }
            q.prefilled += n;
        }
        if batch.is_empty() {
            continue;
        }
        if let Err(e) = engine.forward(&batch, &mut kv, &mut logits) {
            // A failed pass fails every sequence in it (their caches are now unknown).
            for &i in &batch.seq {
                let i = i as usize;
                cached[i].clear();
                if let Some(q) = slots[i].take() {
                    let _ = q.tx.send(GenEvent::Error(e.to_string()));
                }
            }
            continue;
        }
        // Logits rows come in batch order, one per token that asked.
        for (row, &(i, _)) in wants.iter().enumerate() {
            let Some(q) = slots[i].as_mut() else { continue };
            let l = logits.row(row);
            let id = q.sampler.sample(l, &q.history);
            let logprob = q.req.logprobs.map(|k| token_logprob(l, id, k));
            q.history.push(id);
            q.generated += 1;
            let eog = q.req.stop_at_eog && tok.is_eog(id);
            let piece = if eog {
                String::new()
            } else {
                q.decoder.push(id)
            };
            let (text, hit) = q.stops.push(&piece);
            let finish = if hit || eog {
                Some(FinishReason::Stop)
            } else if q.generated >= q.req.max_tokens || q.history.len() >= cfg.n_ctx {
                Some(FinishReason::Length)
            } else {
                None
            };
            let mut text = text;
            if finish == Some(FinishReason::Length) {
                text.push_str(&q.decoder.flush());
                text.push_str(&q.stops.flush());
            }
            let _ = q.tx.send(GenEvent::Token { id, text, logprob });
            if let Some(finish) = finish {
                let done = GenEvent::Done {
                    finish,
                    prompt_tokens: q.req.prompt.len(),
                    completion_tokens: q.generated,
                };
                let tx = q.tx.clone();
                cached[i] = q.in_cache().to_vec();
                // The slot is free (and counted so) before the client hears it is done.
                slots[i] = None;
                shared.running.store(
                    slots.iter().filter(|s| s.is_some()).count(),
                    Ordering::SeqCst,
                );
                let _ = tx.send(done);
            } else {
                q.next = Some(id);
            }
        }
        shared.running.store(
            slots.iter().filter(|s| s.is_some()).count(),
            Ordering::SeqCst,
        );
        let held: usize = slots
            .iter()
            .zip(&cached)
            .map(|(s, c)| {
                s.as_ref()
                    .map_or(c.len(), |q| q.in_cache().len())
                    .div_ceil(KV_BLOCK)
            })
            .sum();
        shared.blocks_used.store(held, Ordering::SeqCst);
    }
}

/// Log-softmax of `logits` at `id`, and the `k` most likely tokens with theirs.
fn token_logprob(logits: &[f32], id: u32, k: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&v| ((v - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    let lp = |v: f32| (v as f64 - lse) as f32;
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k > 0 {
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let k = k.min(idx.len());
        idx.select_nth_unstable_by(k - 1, |&a, &b| {
            logits[b as usize].total_cmp(&logits[a as usize])
        });
        idx.truncate(k);
        idx.sort_by(|&a, &b| {
            logits[b as usize]
                .total_cmp(&logits[a as usize])
                .then(a.cmp(&b))
        });
        top = idx.iter().map(|&t| (t, lp(logits[t as usize]))).collect();
    }
    TokenLogprob {
        logprob: lp(logits[id as usize]),
        top,
    }
}

/// Finds stop strings in streamed text: text that could be the start of a stop string is held
/// back until it cannot, so a stop string split over several tokens is still cut out whole.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    done: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
            done: false,
        }
    }

    /// Add `piece`; returns the text that can be emitted and whether a stop string was found
    /// (the text then ends just before it, and everything after is dropped).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.done {
            return (String::new(), true);
        }
        self.held.push_str(piece);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first {
            let out = self.held[..at].to_string();
            self.held.clear();
            self.done = true;
            return (out, true);
        }
        // Keep the longest tail that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > keep && self.held.ends_with(&s[..i]) {
                    keep = i;
                }
            }
        }
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, false)
    }

    /// The held text, at the end of the generation.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_pieces(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (t, hit) = m.push(p);
            out.push_str(&t);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_strings_are_found_across_pieces_and_cut() {
        assert_eq!(
            run_pieces(&["\n\n"], &["Hello", "\n", "\nWorld"]),
            ("Hello".into(), true)
        );
        assert_eq!(
            run_pieces(&["END"], &["a E", "N", "D b"]),
            ("a ".into(), true)
        );
        // A false start is released once it cannot be a stop string any more.
        assert_eq!(
            run_pieces(&["END"], &["EN", "x", "E"]),
            ("ENxE".into(), false)
        );
        // The earliest of several.
        assert_eq!(run_pieces(&["cd", "b"], &["abcd"]), ("a".into(), true));
        // Multi-byte characters are never split.
        assert_eq!(
            run_pieces(&["é!"], &["caf", "é", "?"]),
            ("café?".into(), false)
        );
        assert_eq!(run_pieces(&[], &["x", "y"]), ("xy".into(), false));
        assert_eq!(run_pieces(&[""], &["x"]), ("x".into(), false));
    }

    #[test]
    fn logprobs_are_a_log_softmax() {
        let l = [1.0f32, 3.0, 2.0, 3.0];
        let lp = token_logprob(&l, 2, 2);
        let z: f64 = l.iter().map(|&v| (v as f64).exp()).sum();
        assert!((lp.logprob as f64 - (2.0 - z.ln())).abs() < 1e-6);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 3]);
        assert!(token_logprob(&l, 0, 0).top.is_empty());
        let big = token_logprob(&l, 0, 10);
        assert_eq!(big.top.len(), 4);
    }
}
