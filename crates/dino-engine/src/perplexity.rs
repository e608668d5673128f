//! Perplexity computed the way llama.cpp's `llama-perplexity` does, so the numbers compare one to
//! one: the text is tokenized once (BOS per the model), cut into chunks of `n_ctx` tokens; each
//! chunk is evaluated from an empty cache with its first token replaced by BOS (when the model
//! adds BOS), and only the second half of each chunk is scored (positions `n_ctx/2 .. n_ctx-1`
//! predicting the following token). NLL is accumulated in f64; the error is the standard error
//! of the mean NLL, scaled by PPL.

use crate::{Batch, Engine, Logits};
use dino_core::{Error, Result};
use dino_kernels::ops::log_softmax_at;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct PerplexityOptions {
    pub n_ctx: usize,
    /// Evaluate at most this many chunks (None = all).
    pub max_chunks: Option<usize>,
    /// Tokens per forward batch (≤ n_ctx).
    pub n_batch: usize,
}

impl Default for PerplexityOptions {
    fn default() -> Self {
        PerplexityOptions {
            n_ctx: 512,
            max_chunks: None,
            n_batch: 512,
        }
    }
}

#[derive(Clone, Debug)]
pub struct PerplexityResult {
    pub n_tokens: usize,
    pub n_chunks: usize,
    pub n_scored: usize,
    pub ppl: f64,
    /// ± of the final estimate, as llama.cpp prints it.
    pub ppl_err: f64,
    /// Running PPL after each chunk.
    pub per_chunk: Vec<f64>,
    pub elapsed: Duration,
}

/// Compute perplexity of `text`. `on_chunk(i, n_chunks, running_ppl)` is called after each chunk.
pub fn perplexity(
    engine: &Engine,
    text: &str,
    opts: &PerplexityOptions,
    mut on_chunk: impl FnMut(usize, usize, f64),
) -> Result<PerplexityResult> {
    let t0 = Instant::now();
    let n_ctx = opts.n_ctx;
    if n_ctx < 4 {
        return Err(Error::invalid("perplexity needs --ctx-size of at least 4"));
    }
    let tokens = engine.tokenizer.encode(text, true, false)?;
    if tokens.len() < 2 * n_ctx {
        return Err(Error::invalid(format!(
            "you need at least {} tokens to evaluate perplexity with a context of {n_ctx}; the text has {} tokens",
            2 * n_ctx,
            tokens.len()
        )));
    }
    let mut n_chunks = tokens.len() / n_ctx;
    if let Some(m) = opts.max_chunks {
        n_chunks = n_chunks.min(m.max(1));
    }
    let add_bos = engine.tokenizer.add_bos();
    let bos = engine.tokenizer.bos();
    let first = n_ctx / 2;
    let n_batch = opts.n_batch.clamp(1, n_ctx);
    let mut kv = engine.new_kv(n_ctx)?;
    let mut logits = Logits::default();
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    let mut per_chunk = Vec::with_capacity(n_chunks);
    for c in 0..n_chunks {
        let start = c * n_ctx;
        let mut chunk: Vec<u32> = tokens[start..start + n_ctx].to_vec();
        if add_bos {
            if let Some(b) = bos {
                chunk[0] = b;
            }
        }
        // The cache is rebuilt from position 0 for every chunk; old entries are overwritten.
        for (bi, part) in chunk.chunks(n_batch).enumerate() {
            let p0 = bi * n_batch;
            let mut batch = Batch::from_tokens(part, p0, 0, true);
            for (i, w) in batch.want_logits.iter_mut().enumerate() {
                *w = p0 + i >= first;
            }
            engine.forward(&batch, &mut kv, &mut logits)?;
            // Positions first .. n_ctx-2 predict tokens first+1 .. n_ctx-1 (the original
            // tokens, not the BOS that replaced the first one).
            for (row, &bidx) in logits.batch_index.iter().enumerate() {
                let p = p0 + bidx;
                if p + 1 >= n_ctx {
                    continue;
                }
                let v = -log_softmax_at(logits.row(row), tokens[start + p + 1] as usize);
                nll += v;
                nll2 += v * v;
                count += 1;
            }
        }
        let running = (nll / count as f64).exp();
        per_chunk.push(running);
        on_chunk(c, n_chunks, running);
    }
    let mean = nll / count as f64;
    let ppl = mean.exp();
    let var = nll2 / count as f64 - mean * mean;
    let ppl_err = if var > 0.0 && count > 1 {
        (var / (count - 1) as f64).sqrt() * ppl
    } else {
        0.0
    };
    Ok(PerplexityResult {
        n_tokens: tokens.len(),
        n_chunks,
        n_scored: count,
        ppl,
        ppl_err,
        per_chunk,
        elapsed: t0.elapsed(),
    })
}
