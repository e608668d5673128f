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

/// The text's tokens (BOS per the model) and how many chunks of `n_ctx` are evaluated; an
/// error when the context is too small or the text too short for two chunks.
fn chunked_tokens(
    engine: &Engine,
    text: &str,
    opts: &PerplexityOptions,
) -> Result<(Vec<u32>, usize)> {
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
    Ok((tokens, n_chunks))
}

/// Chunk `c`'s tokens, the first replaced by BOS when the model adds one.
fn chunk_tokens(engine: &Engine, tokens: &[u32], c: usize, n_ctx: usize) -> Vec<u32> {
    let mut chunk = tokens[c * n_ctx..(c + 1) * n_ctx].to_vec();
    if engine.tokenizer.add_bos() {
        if let Some(b) = engine.tokenizer.bos() {
            chunk[0] = b;
        }
    }
    chunk
}

/// Compute perplexity of `text`. `on_chunk(i, n_chunks, running_ppl)` is called after each chunk.
pub fn perplexity(
    engine: &Engine,
    text: &str,
    opts: &PerplexityOptions,
    on_chunk: impl FnMut(usize, usize, f64),
) -> Result<PerplexityResult> {
    perplexity_observed(engine, text, opts, on_chunk, None)
}

/// [`perplexity`], handing every layer's matrix inputs to `obs` when given (calibration).
pub(crate) fn perplexity_observed(
    engine: &Engine,
    text: &str,
    opts: &PerplexityOptions,
    mut on_chunk: impl FnMut(usize, usize, f64),
    mut obs: Option<&mut dino_models::Observer>,
) -> Result<PerplexityResult> {
    let t0 = Instant::now();
    let n_ctx = opts.n_ctx;
    let (tokens, n_chunks) = chunked_tokens(engine, text, opts)?;
    let first = n_ctx / 2;
    let n_batch = opts.n_batch.clamp(1, n_ctx);
    let mut kv = engine.new_kv(n_ctx)?;
    let mut logits = Logits::default();
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    let mut per_chunk = Vec::with_capacity(n_chunks);
    for c in 0..n_chunks {
        let start = c * n_ctx;
        let chunk = chunk_tokens(engine, &tokens, c, n_ctx);
        // The cache is rebuilt from position 0 for every chunk; old entries are overwritten.
        for (bi, part) in chunk.chunks(n_batch).enumerate() {
            let p0 = bi * n_batch;
            let mut batch = Batch::from_tokens(part, p0, 0, true);
            for (i, w) in batch.want_logits.iter_mut().enumerate() {
                *w = p0 + i >= first;
            }
            match obs.as_mut() {
                Some(o) => engine.forward_observed(&batch, &mut kv, &mut logits, *o)?,
                None => engine.forward(&batch, &mut kv, &mut logits)?,
            }
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

/// What [`kl_divergence`] measured: a model against a base model (its F16/F32 original) on the
/// same tokens, llama.cpp's `--kl-divergence` statistics.
#[derive(Clone, Debug)]
pub struct KlResult {
    pub n_chunks: usize,
    pub n_scored: usize,
    /// Perplexity of the model and of the base, and `exp(mean ln(PPL ratio))` ± its error.
    pub ppl: f64,
    pub ppl_base: f64,
    pub ppl_ratio: f64,
    pub ppl_ratio_err: f64,
    /// KL(base ‖ model) per scored token: mean ± standard error, and its distribution.
    pub kld_mean: f64,
    pub kld_err: f64,
    pub kld_median: f64,
    pub kld_p99: f64,
    pub kld_max: f64,
    /// Fraction of tokens whose most probable next token is the same in both, ± error.
    pub same_top: f64,
    pub same_top_err: f64,
    /// Root mean square of the change in the probability of the actual next token.
    pub dp_rms: f64,
    pub elapsed: Duration,
}

/// `ln softmax(row)` in f64 (the sum of exponentials in double, as llama.cpp's KL divergence).
pub(crate) fn log_probs(row: &[f32], out: &mut Vec<f64>) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    let log_sum = sum.ln();
    out.clear();
    out.extend(row.iter().map(|&x| x as f64 - max - log_sum));
}

/// `KL(p ‖ q)` of two log-probability rows (from [`log_probs`]), clamped at 0; terms where
/// `p` underflows (`ln p <= -700`) count 0.
pub(crate) fn kld_of_log_probs(lp: &[f64], lq: &[f64]) -> f64 {
    let k: f64 = lp
        .iter()
        .zip(lq)
        .map(|(&b, &q)| if b > -700.0 { b.exp() * (b - q) } else { 0.0 })
        .sum();
    k.max(0.0)
}

fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best
}

/// KL divergence of `engine`'s next-token distributions from `base`'s over `text`, chunked and
/// scored exactly as [`perplexity`] (the same positions), both models run here chunk by chunk
/// (llama.cpp saves the base's logits to a file first; here no file is needed). The two must
/// share a vocabulary: the text must tokenize the same with both.
pub fn kl_divergence(
    engine: &Engine,
    base: &Engine,
    text: &str,
    opts: &PerplexityOptions,
    mut on_chunk: impl FnMut(usize, usize, f64),
) -> Result<KlResult> {
    let t0 = Instant::now();
    let n_ctx = opts.n_ctx;
    let (tokens, n_chunks) = chunked_tokens(engine, text, opts)?;
    let base_tokens = base.tokenizer.encode(text, true, false)?;
    if tokens != base_tokens
        || engine.model.info().hparams.n_vocab != base.model.info().hparams.n_vocab
    {
        return Err(Error::invalid(
            "the model and the KL-divergence base do not share a vocabulary (the text tokenizes \
             differently, or the vocabulary sizes differ): compare a model with its own original",
        ));
    }
    let first = n_ctx / 2;
    let n_batch = opts.n_batch.clamp(1, n_ctx);
    let (mut kv, mut kv_base) = (engine.new_kv(n_ctx)?, base.new_kv(n_ctx)?);
    let mut logits = Logits::default();
    // Per scored token: base log-probs of the chunk (rows `first..n_ctx-1`).
    let mut base_rows: Vec<Vec<f32>> = Vec::new();
    let (mut lp, mut lq) = (Vec::new(), Vec::new());
    let mut klds: Vec<f64> = Vec::new();
    let (mut nll_q, mut nll_b, mut dlog, mut dlog2) = (0f64, 0f64, 0f64, 0f64);
    let (mut same, mut dp2) = (0usize, 0f64);
    let eval = |e: &Engine,
                kv: &mut dino_models::KvCache,
                chunk: &[u32],
                logits: &mut Logits,
                f: &mut dyn FnMut(usize, &[f32])|
     -> Result<()> {
        for (bi, part) in chunk.chunks(n_batch).enumerate() {
            let p0 = bi * n_batch;
            let mut batch = Batch::from_tokens(part, p0, 0, true);
            for (i, w) in batch.want_logits.iter_mut().enumerate() {
                *w = p0 + i >= first && p0 + i + 1 < n_ctx;
            }
            e.forward(&batch, kv, logits)?;
            for (row, &bidx) in logits.batch_index.iter().enumerate() {
                f(p0 + bidx, logits.row(row));
            }
        }
        Ok(())
    };
    for c in 0..n_chunks {
        let start = c * n_ctx;
        let chunk = chunk_tokens(engine, &tokens, c, n_ctx);
        base_rows.resize_with(n_ctx - 1 - first, Vec::new);
        eval(base, &mut kv_base, &chunk, &mut logits, &mut |p, row| {
            let r = &mut base_rows[p - first];
            r.clear();
            r.extend_from_slice(row);
        })?;
        eval(engine, &mut kv, &chunk, &mut logits, &mut |p, row| {
            let target = tokens[start + p + 1] as usize;
            log_probs(&base_rows[p - first], &mut lp);
            log_probs(row, &mut lq);
            klds.push(kld_of_log_probs(&lp, &lq));
            nll_b -= lp[target];
            nll_q -= lq[target];
            let d = lq[target] - lp[target];
            dlog -= d;
            dlog2 += d * d;
            same += usize::from(argmax(&lp) == argmax(&lq));
            let dp = lq[target].exp() - lp[target].exp();
            dp2 += dp * dp;
        })?;
        let n = klds.len() as f64;
        on_chunk(c, n_chunks, klds.iter().sum::<f64>() / n);
    }
    let n = klds.len();
    let nf = n as f64;
    let mean = klds.iter().sum::<f64>() / nf;
    let var = klds.iter().map(|k| (k - mean) * (k - mean)).sum::<f64>() / (nf - 1.0).max(1.0);
    let mut sorted = klds.clone();
    sorted.sort_by(f64::total_cmp);
    let pct = |p: f64| sorted[((nf - 1.0) * p).round() as usize];
    let mean_dlog = dlog / nf;
    let var_dlog = (dlog2 / nf - mean_dlog * mean_dlog).max(0.0) / (nf - 1.0).max(1.0);
    let ratio = mean_dlog.exp();
    let p_same = same as f64 / nf;
    Ok(KlResult {
        n_chunks,
        n_scored: n,
        ppl: (nll_q / nf).exp(),
        ppl_base: (nll_b / nf).exp(),
        ppl_ratio: ratio,
        ppl_ratio_err: var_dlog.sqrt() * ratio,
        kld_mean: mean,
        kld_err: (var / nf).sqrt(),
        kld_median: pct(0.5),
        kld_p99: pct(0.99),
        kld_max: sorted[n - 1],
        same_top: p_same,
        same_top_err: (p_same * (1.0 - p_same) / (nf - 1.0).max(1.0)).sqrt(),
        dp_rms: (dp2 / nf).sqrt(),
        elapsed: t0.elapsed(),
    })
}
