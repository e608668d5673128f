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
//! The KV cache is paged: blocks of [`KV_BLOCK`] positions from one pool (`kv_blocks` of them,
//! by default enough for `n_seq` sequences of `n_ctx`), handed out as sequences grow
//! ([`crate::blocks::BlockPool`]). Full blocks are indexed by content, so a request whose prompt
//! starts like an earlier one (a system prompt, a chat's history) points at those blocks
//! instead of computing them, whichever sequence computed them. A sequence that must write into
//! a shared block copies it first. When a running sequence needs a block and none is left, the
//! sequence admitted last is preempted: its blocks go back, and it waits at the head of the
//! queue to be recomputed (mostly from the index) and continued.

use crate::blocks::{block_key, chain_hash, BlockPool};
use crate::{Engine, Sampler, SamplerConfig};
use dino_core::{Error, Result};
pub use dino_models::KV_BLOCK;
use dino_models::{Batch, KvCache, Logits};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    /// KV-cache blocks of [`KV_BLOCK`] positions in all; `None`: `n_seq` × `n_ctx` positions.
    pub kv_blocks: Option<usize>,
}

impl BatchConfig {
    /// The KV-cache blocks this configuration gives the pool.
    pub fn n_blocks(&self) -> usize {
        self.kv_blocks
            .unwrap_or(self.n_seq * self.n_ctx.div_ceil(KV_BLOCK))
    }

    /// Most positions one sequence can hold: the context, or all the blocks if fewer.
    pub fn max_positions(&self) -> usize {
        self.n_ctx.min(self.n_blocks() * KV_BLOCK)
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            n_ctx: 4096,
            n_seq: 4,
            n_batch: 512,
            max_queue: 64,
            kv_blocks: None,
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

impl std::error::Error for SubmitError {}

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
    /// Prompt tokens whose KV was found in the prefix index instead of being computed (since
    /// start).
    pub prefix_tokens_reused: u64,
    /// KV-cache blocks of [`KV_BLOCK`] positions held by sequences, kept only for reuse (the
    /// prefix index's idle blocks, given back when needed), and all there are.
    pub kv_blocks_used: usize,
    pub kv_blocks_cached: usize,
    pub kv_blocks_total: usize,
    /// Sequences preempted for want of KV blocks (since start).
    pub preemptions: u64,
}

struct Pending {
    req: GenRequest,
    tx: UnboundedSender<GenEvent>,
}

struct Shared {
    queued: AtomicUsize,
    running: AtomicUsize,
    reused: AtomicU64,
    blocks_used: AtomicUsize,
    blocks_cached: AtomicUsize,
    preemptions: AtomicU64,
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
    /// Start the loop on its own thread, with a paged KV cache of `cfg.n_blocks()` blocks.
    pub fn start(engine: Arc<Engine>, cfg: BatchConfig) -> Result<BatchEngine> {
        if cfg.n_seq == 0 || cfg.n_ctx < 2 || cfg.n_batch == 0 {
            return Err(Error::invalid(
                "batched engine: n_seq, n_batch must be positive and n_ctx at least 2",
            ));
        }
        if cfg.n_blocks() < 2 {
            return Err(Error::invalid(format!(
                "batched engine: the KV cache needs at least 2 blocks of {KV_BLOCK} positions"
            )));
        }
        let mut kv = engine.new_kv_paged(cfg.n_ctx, cfg.n_seq, cfg.n_blocks())?;
        // The pool's memory is committed now: the engine's footprint is what it is at start
        // and does not creep up as blocks are first used under load.
        kv.commit();
        let n_vocab = engine.model.info().hparams.n_vocab;
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            reused: AtomicU64::new(0),
            blocks_used: AtomicUsize::new(0),
            blocks_cached: AtomicUsize::new(0),
            preemptions: AtomicU64::new(0),
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
        if req.prompt.len() >= self.cfg.max_positions() {
            return Err(SubmitError::PromptTooLong {
                n_prompt: req.prompt.len(),
                n_ctx: self.cfg.max_positions(),
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
            kv_blocks_cached: self.shared.blocks_cached.load(Ordering::SeqCst),
            kv_blocks_total: self.cfg.n_blocks(),
            preemptions: self.shared.preemptions.load(Ordering::SeqCst),
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
    /// Tokens of [`Seq::target`] in the cache.
    prefilled: usize,
    /// The token to feed next (the last sampled one), once the prompt is in.
    next: Option<u32>,
    generated: usize,
    decoder: dino_tokenizer::StreamDecoder<'a>,
    stops: StopMatcher,
    /// Leading blocks of the table already in the prefix index, and the hash of their tokens.
    n_indexed: usize,
    hash: u64,
    /// Admission order (the last admitted is preempted first).
    admitted: u64,
}

impl Seq<'_> {
    /// The tokens that must be in the cache before the next decode step: the prompt, or once
    /// generating, the history but the last sampled token (fed by that step).
    fn target(&self) -> &[u32] {
        if self.next.is_some() {
            &self.history[..self.history.len() - 1]
        } else {
            &self.req.prompt
        }
    }

    /// The tokens whose keys and values are in the cache, in position order.
    fn in_cache(&self) -> &[u32] {
        &self.target()[..self.prefilled]
    }

    fn decoding(&self) -> bool {
        self.next.is_some() && self.prefilled == self.target().len()
    }
}

/// A request waiting for a slot: new, or preempted (its state kept, its cache to recompute).
enum Waiting<'a> {
    New(Pending),
    Resumed(Box<Seq<'a>>),
}

impl Waiting<'_> {
    fn closed(&self) -> bool {
        match self {
            Waiting::New(p) => p.tx.is_closed(),
            Waiting::Resumed(q) => q.tx.is_closed(),
        }
    }
}

/// The loop's KV state: the cache and its block pool, kept in step.
struct Blocks {
    kv: KvCache,
    pool: BlockPool,
}

impl Blocks {
    /// Give back every block of `slot`'s table.
    fn free_seq(&mut self, slot: usize) {
        for &b in self.kv.table(slot) {
            self.pool.release(b);
        }
        self.kv.truncate_table(slot, 0);
    }

    /// Make position `pos` of `slot` writable: a new block at the table's end, or a private
    /// copy of a shared one. `false` when no block is left.
    fn ensure(&mut self, slot: usize, pos: usize) -> bool {
        let i = pos / KV_BLOCK;
        let len = self.kv.table(slot).len();
        debug_assert!(i <= len, "positions are written in order");
        if i == len {
            let Some(b) = self.pool.alloc() else {
                return false;
            };
            self.kv
                .push_block(slot, b)
                .expect("the pool's blocks are the cache's and positions stay under n_ctx");
        } else {
            let old = self.kv.table(slot)[i];
            if self.pool.holders(old) > 1 {
                let Some(b) = self.pool.alloc() else {
                    return false;
                };
                self.kv.copy_block(old, b);
                self.kv.set_block(slot, i, b).expect("a block of the pool");
                self.pool.release(old);
            }
        }
        true
    }

    /// Make positions `pos..pos + n` of `slot` writable, as far as blocks last: how many are.
    fn ensure_range(&mut self, slot: usize, pos: usize, n: usize) -> usize {
        let mut p = pos;
        while p < pos + n {
            if !self.ensure(slot, p) {
                break;
            }
            p = ((p / KV_BLOCK) + 1) * KV_BLOCK;
        }
        p.min(pos + n) - pos
    }

    /// Index the full blocks of `q` (in `slot`) not indexed yet.
    fn index_full(&mut self, slot: usize, q: &mut Seq) {
        let full = q.prefilled / KV_BLOCK;
        while q.n_indexed < full {
            let j = q.n_indexed;
            let toks = &q.in_cache()[j * KV_BLOCK..(j + 1) * KV_BLOCK];
            self.pool
                .insert(block_key(q.hash, toks), self.kv.table(slot)[j]);
            q.hash = chain_hash(q.hash, toks);
            q.n_indexed += 1;
        }
    }
}

fn run(
    engine: &Engine,
    kv: KvCache,
    cfg: &BatchConfig,
    rx: mpsc::Receiver<Pending>,
    shared: &Shared,
) {
    let tok = &engine.tokenizer;
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    let mut slots: Vec<Option<Seq>> = (0..cfg.n_seq).map(|_| None).collect();
    let mut st = Blocks {
        pool: BlockPool::new(kv.n_blocks()),
        kv,
    };
    let max_pos = cfg.max_positions();
    let mut batch = Batch::default();
    let mut logits = Logits::default();
    let mut admitted = 0u64;
    // (slot, index in the batch) of the tokens whose logits are sampled this step.
    let mut wants: Vec<(usize, usize)> = Vec::new();
    // Slots with tokens in this step, and how many.
    let mut fed: Vec<(usize, usize)> = Vec::new();
    // The plain-greedy choice of every logits row, when some sequence samples that way.
    let mut greedy: Vec<u32> = Vec::new();
    loop {
        let idle = waiting.is_empty() && slots.iter().all(Option::is_none);
        if idle {
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            match rx.recv() {
                Ok(p) => waiting.push_back(Waiting::New(p)),
                Err(_) => return,
            }
        }
        while let Ok(p) = rx.try_recv() {
            waiting.push_back(Waiting::New(p));
        }
        // Cancelled requests: waiting ones are dropped, running ones free their blocks.
        waiting.retain(|w| {
            let closed = w.closed();
            if closed && matches!(w, Waiting::New(_)) {
                shared.queued.fetch_sub(1, Ordering::SeqCst);
            }
            !closed
        });
        for (i, s) in slots.iter_mut().enumerate() {
            if s.as_ref().is_some_and(|q| q.tx.is_closed()) {
                *s = None;
                st.free_seq(i);
            }
        }
        // Admit in order while a slot is free and the blocks for the prompt can be had.
        while let Some(slot) = slots.iter().position(Option::is_none) {
            let Some(front) = waiting.front() else { break };
            let (tokens, needs_logits) = match front {
                Waiting::New(p) => (&p.req.prompt[..], true),
                Waiting::Resumed(q) => (q.target(), q.next.is_none()),
            };
            // The longest run of indexed blocks the prompt starts with.
            let mut hits = Vec::new();
            let mut hash = 0u64;
            for blk in tokens.chunks_exact(KV_BLOCK) {
                let Some(b) = st.pool.lookup(&block_key(hash, blk)) else {
                    break;
                };
                hits.push(b);
                hash = chain_hash(hash, blk);
            }
            // The last prompt token is computed when its logits are needed.
            let reuse = (hits.len() * KV_BLOCK).min(tokens.len() - usize::from(needs_logits));
            let copy = usize::from(reuse < hits.len() * KV_BLOCK);
            let need = tokens.len().div_ceil(KV_BLOCK) - hits.len() + copy;
            for &b in &hits {
                st.pool.retain(b);
            }
            if st.pool.available() < need {
                for &b in &hits {
                    st.pool.release(b);
                }
                break;
            }
            for &b in &hits {
                st.kv
                    .push_block(slot, b)
                    .expect("pool blocks fit the table");
            }
            let mut q = match waiting.pop_front().expect("the front") {
                Waiting::New(p) => {
                    shared.queued.fetch_sub(1, Ordering::SeqCst);
                    let sampler = match Sampler::new(p.req.sampler.clone()) {
                        Ok(x) => x,
                        Err(e) => {
                            let _ = p.tx.send(GenEvent::Error(e.to_string()));
                            st.free_seq(slot);
                            continue;
                        }
                    };
                    Box::new(Seq {
                        history: p.req.prompt.clone(),
                        stops: StopMatcher::new(p.req.stop.clone()),
                        req: p.req,
                        tx: p.tx,
                        sampler,
                        prefilled: 0,
                        next: None,
                        generated: 0,
                        decoder: tok.stream_decoder(),
                        n_indexed: 0,
                        hash: 0,
                        admitted: 0,
                    })
                }
                Waiting::Resumed(q) => q,
            };
            shared.reused.fetch_add(reuse as u64, Ordering::SeqCst);
            q.prefilled = reuse;
            q.n_indexed = hits.len().min(reuse / KV_BLOCK);
            q.hash = if q.n_indexed == hits.len() {
                hash
            } else {
                q.in_cache().chunks_exact(KV_BLOCK).fold(0, chain_hash)
            };
            admitted += 1;
            q.admitted = admitted;
            slots[slot] = Some(*q);
        }
        publish(&slots, &st, shared);
        // Build the step: decode tokens first, then prompt chunks in the room left.
        batch.clear();
        wants.clear();
        fed.clear();
        // Every decoding sequence's next position gets its block first. Out of blocks, the
        // sequence admitted last is preempted until this one has its block (or is the one
        // preempted); before any token is in the batch, so no preempted sequence is in it.
        for i in 0..cfg.n_seq {
            if !slots[i].as_ref().is_some_and(Seq::decoding) {
                continue;
            }
            let pos = slots[i].as_ref().map_or(0, |q| q.prefilled);
            while !st.ensure(i, pos) {
                let victim = newest(&slots).expect("sequence i runs");
                if victim == i && slots.iter().flatten().count() == 1 {
                    // Alone and out of blocks: the cache is full for this sequence.
                    let q = slots[i].take().expect("running");
                    st.free_seq(i);
                    publish(&slots, &st, shared);
                    finish(q, FinishReason::Length);
                    break;
                }
                preempt(&mut slots, &mut st, victim, &mut waiting, shared);
                if victim == i {
                    break;
                }
            }
        }
        for (i, s) in slots.iter().enumerate() {
            let Some(q) = s.as_ref().filter(|q| q.decoding()) else {
                continue;
            };
            wants.push((i, batch.len()));
            fed.push((i, 1));
            batch.push(
                q.next.expect("decoding"),
                q.prefilled as u32,
                i as u32,
                true,
            );
        }
        for (i, s) in slots.iter().enumerate() {
            let room = cfg.n_batch.saturating_sub(batch.len());
            let Some(q) = s.as_ref() else { continue };
            if q.decoding() || room == 0 {
                continue;
            }
            let target = q.target();
            let want = (target.len() - q.prefilled).min(room);
            let n = st.ensure_range(i, q.prefilled, want);
            for j in 0..n {
                let pos = q.prefilled + j;
                let last = pos + 1 == target.len() && q.next.is_none();
                if last {
                    wants.push((i, batch.len()));
                }
                batch.push(target[pos], pos as u32, i as u32, last);
            }
            if n > 0 {
                fed.push((i, n));
            }
        }
        if batch.is_empty() {
            // Sequences but no tokens: prompts waiting for blocks that running sequences hold.
            // Preempt the newest so the others can go on.
            if slots.iter().flatten().count() > 1 {
                let v = newest(&slots).expect("running");
                preempt(&mut slots, &mut st, v, &mut waiting, shared);
            }
            continue;
        }
        if let Err(e) = engine.forward(&batch, &mut st.kv, &mut logits) {
            // A failed pass fails every sequence in it (their caches are now unknown).
            for &(i, _) in &fed {
                if let Some(q) = slots[i].take() {
                    let _ = q.tx.send(GenEvent::Error(e.to_string()));
                }
                st.free_seq(i);
            }
            continue;
        }
        for &(i, n) in &fed {
            if let Some(q) = slots[i].as_mut() {
                q.prefilled += n;
            }
        }
        // Greedy sequences' choices for the whole batch at once, on the pool: each thread
        // reads the part of every row its share of the output product wrote.
        let n_greedy = wants
            .iter()
            .filter(|&&(i, _)| {
                slots[i]
                    .as_ref()
                    .is_some_and(|q| q.sampler.is_plain_greedy())
            })
            .count();
        greedy.clear();
        if n_greedy > 1 {
            crate::sampler::argmax_rows(&engine.pool, &logits.data, logits.n_vocab, &mut greedy);
        }
        // Logits rows come in batch order, one per token that asked.
        for (row, &(i, _)) in wants.iter().enumerate() {
            let Some(q) = slots[i].as_mut() else { continue };
            let l = logits.row(row);
            let id = match greedy.get(row) {
                Some(&id) if q.sampler.is_plain_greedy() => id,
                _ => q.sampler.sample(l, &q.history),
            };
            let logprob = q.req.logprobs.map(|k| token_logprob(l, id, k));
            q.history.push(id);
            q.next = Some(id);
            q.generated += 1;
            let eog = q.req.stop_at_eog && tok.is_eog(id);
            let piece = if eog {
                String::new()
            } else {
                q.decoder.push(id)
            };
            let (text, hit) = q.stops.push(&piece);
            let finish_reason = if hit || eog {
                Some(FinishReason::Stop)
            } else if q.generated >= q.req.max_tokens || q.history.len() >= max_pos {
                Some(FinishReason::Length)
            } else {
                None
            };
            let mut text = text;
            if finish_reason == Some(FinishReason::Length) {
                text.push_str(&q.decoder.flush());
                text.push_str(&q.stops.flush());
            }
            let _ = q.tx.send(GenEvent::Token { id, text, logprob });
            if let Some(f) = finish_reason {
                let mut q = slots[i].take().expect("running");
                // Its full blocks stay findable for the next request that starts the same way.
                st.index_full(i, &mut q);
                st.free_seq(i);
                // The slot is free (and counted so) before the client hears it is done.
                publish(&slots, &st, shared);
                finish(q, f);
            }
        }
        for (i, s) in slots.iter_mut().enumerate() {
            if let Some(q) = s {
                st.index_full(i, q);
            }
        }
        publish(&slots, &st, shared);
    }
}

/// Store the counters [`BatchEngine::stats`] reads.
fn publish(slots: &[Option<Seq>], st: &Blocks, shared: &Shared) {
    let running = slots.iter().filter(|s| s.is_some()).count();
    shared.running.store(running, Ordering::SeqCst);
    shared.blocks_used.store(st.pool.used(), Ordering::SeqCst);
    shared
        .blocks_cached
        .store(st.pool.cached(), Ordering::SeqCst);
}

/// The running sequence admitted last.
fn newest(slots: &[Option<Seq>]) -> Option<usize> {
    (0..slots.len())
        .filter(|&i| slots[i].is_some())
        .max_by_key(|&i| slots[i].as_ref().map_or(0, |q| q.admitted))
}

/// Take `slot`'s sequence out, give its blocks back, and queue it first to be resumed.
fn preempt<'a>(
    slots: &mut [Option<Seq<'a>>],
    st: &mut Blocks,
    slot: usize,
    waiting: &mut VecDeque<Waiting<'a>>,
    shared: &Shared,
) {
    let Some(mut q) = slots[slot].take() else {
        return;
    };
    st.index_full(slot, &mut q);
    st.free_seq(slot);
    q.prefilled = 0;
    q.n_indexed = 0;
    q.hash = 0;
    waiting.push_front(Waiting::Resumed(Box::new(q)));
    shared.preemptions.fetch_add(1, Ordering::SeqCst);
}

/// Tell the client the sequence is done.
fn finish(q: Seq, finish: FinishReason) {
    let done = GenEvent::Done {
        finish,
        prompt_tokens: q.req.prompt.len(),
        completion_tokens: q.generated,
    };
    let _ = q.tx.send(done);
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
