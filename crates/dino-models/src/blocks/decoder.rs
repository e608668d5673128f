//! The standard pre-norm decoder stack shared by Llama-shaped families:
//!
//! ```text
//! x = embed(tokens)
//! per layer: x += Wo · attn(rope(Wq·n(x)+bq), rope(Wk·n(x)+bk), Wv·n(x)+bv)
//!            x += Wdown · (silu(Wgate·n(x)) ⊙ Wup·n(x))
//! logits = Wout · n(x)
//! ```
//!
//! Families differ only in options (RoPE style, biases) or keep their quirks in their own file.

use super::weights::{TensorLoader, Weight};
use crate::{Batch, HParams, KvCache, KvShape, LoadOptions, Logits, Model, ModelInfo};
use dino_core::{Error, Result};
use dino_formats::gguf::GgufFile;
use dino_kernels::matmul::{self, Epilogue, MatmulScratch, PreNorm};
use dino_kernels::ops::{self, AttnShape, RopeParams, RopeStyle};
use dino_kernels::pool::{SharedMut, ThreadPool};
use std::sync::{Arc, Mutex};

/// Family-specific switches. [`DecoderOptions::new`] gives the Llama defaults.
pub struct DecoderOptions {
    pub arch: &'static str,
    pub rope_style: RopeStyle,
    /// Q/K/V biases must be present (qwen2); otherwise they are used when present.
    pub qkv_bias_required: bool,
    /// Per-head RMSNorm of Q and K before RoPE (`attn_q_norm`, `attn_k_norm`: qwen3, gemma3).
    pub qk_norm: bool,
    /// RMSNorm of the attention and FFN outputs before their residual adds
    /// (`post_attention_norm`, `post_ffw_norm`: gemma3).
    pub post_norms: bool,
    /// Embeddings are multiplied by this (gemma3: `sqrt(n_embd)`).
    pub embed_scale: Option<f32>,
    /// The gated feed-forward's activation.
    pub ffn: Epilogue,
    /// Q is multiplied by this after RoPE and attention scores are not scaled again (gemma3);
    /// `None`: scores are scaled by `1/sqrt(head_dim)`.
    pub q_scale: Option<f32>,
    /// Sliding-window attention on some layers.
    pub swa: Option<SlidingWindow>,
    /// `logits = c · tanh(logits / c)` (gemma3 when the file sets it).
    pub final_softcap: Option<f32>,
}

impl DecoderOptions {
    /// A Llama-shaped decoder: SwiGLU, no extra norms, full attention.
    pub fn new(arch: &'static str, rope_style: RopeStyle) -> DecoderOptions {
        DecoderOptions {
            arch,
            rope_style,
            qkv_bias_required: false,
            qk_norm: false,
            post_norms: false,
            embed_scale: None,
            ffn: Epilogue::SwiGlu,
            q_scale: None,
            swa: None,
            final_softcap: None,
        }
    }
}

/// Sliding-window attention: on the layers marked, a query at position `p` sees the keys at
/// `p - n_swa < k <= p` (llama.cpp's standard window), with its own RoPE base and no RoPE
/// scaling.
#[derive(Clone, Debug)]
pub struct SlidingWindow {
    pub n_swa: usize,
    /// `[n_layer]`: whether each layer is windowed.
    pub layers: Vec<bool>,
    pub rope_freq_base: f32,
}

impl SlidingWindow {
    /// First key position a query at `pos` sees on layer `il`.
    fn start(&self, il: usize, pos: usize) -> usize {
        if self.layers[il] {
            (pos + 1).saturating_sub(self.n_swa)
        } else {
            0
        }
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Weight,
    wk: Weight,
    wv: Weight,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    /// `[head_dim]` each, with `qk_norm`.
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: Weight,
    /// `[n_embd]`, with `post_norms`.
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    post_ffn_norm: Option<Vec<f32>>,
    w_gate: Weight,
    w_up: Weight,
    w_down: Weight,
}

/// Buffers for one forward pass, grown to the largest batch seen and then reused.
#[derive(Default)]
struct Workspace {
    cap: usize,
    x: Vec<f32>,     // [n, n_embd]
    q: Vec<f32>,     // [n, n_head * head_dim]
    k: Vec<f32>,     // [n, n_head_kv * head_dim]
    v: Vec<f32>,     // [n, n_head_kv * head_dim]
    att: Vec<f32>,   // [n, n_head * head_dim]
    gate: Vec<f32>,  // [n, n_ff]: silu(gate) * up
    out_x: Vec<f32>, // [n_out, n_embd]
    y: Vec<f32>,     // [n, n_embd]: a sublayer's output before its post-norm
    head: Vec<f32>,  // [head_dim]
    kf: Vec<f32>, // [n_head_kv, head_dim, p_pad]: one sequence's K transposed to f32 (prompt batches)
    vf: Vec<f32>, // [n_pos, n_head_kv * head_dim]: same for V
    rope: Vec<f32>, // [rope_dims]
    mm: MatmulScratch,
}

impl Workspace {
    fn ensure(&mut self, n: usize, hp: &HParams) {
        if n <= self.cap {
            return;
        }
        let r = |v: &mut Vec<f32>, len: usize| v.resize(len, 0.0);
        r(&mut self.x, n * hp.n_embd);
        r(&mut self.q, n * hp.n_q_dim());
        r(&mut self.k, n * hp.n_kv_dim());
        r(&mut self.v, n * hp.n_kv_dim());
        r(&mut self.att, n * hp.n_q_dim());
        r(&mut self.gate, n * hp.n_ff);
        r(&mut self.out_x, n * hp.n_embd);
        r(&mut self.y, n * hp.n_embd);
        r(&mut self.head, hp.head_dim);
        r(&mut self.rope, hp.rope_dims);
        self.mm.reserve(n, hp.n_ff.max(hp.n_embd).max(hp.n_q_dim()));
        self.cap = n;
    }
}

pub struct Decoder {
    info: ModelInfo,
    hp: HParams,
    rope: RopeParams,
    embed_scale: Option<f32>,
    ffn: Epilogue,
    q_scale: Option<f32>,
    /// The windowed layers and their RoPE.
    swa: Option<(SlidingWindow, RopeParams)>,
    final_softcap: Option<f32>,
    tok_embd: Weight,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    /// `output.weight`, or the token embedding when tied.
    output: Weight,
    pool: Arc<ThreadPool>,
    ws: Mutex<Workspace>,
}

impl Decoder {
    /// Tied embeddings (no `output.weight`) whose output head was repacked: lookups read the
    /// repacked copy, so the file's embedding pages (released by the repack) stay out of RAM.
    fn embeds_from_output(&self) -> bool {
        self.output.name() == self.tok_embd.name() && self.output.matrix().packed
    }

    pub fn load(
        file: Arc<GgufFile>,
        hp: HParams,
        opt: &DecoderOptions,
        lo: &LoadOptions,
    ) -> Result<Decoder> {
        let t = TensorLoader::new(file.clone());
        let (e, q, kv, ff) = (hp.n_embd, hp.n_q_dim(), hp.n_kv_dim(), hp.n_ff);
        let tok_embd = t.matrix("token_embd.weight", e, hp.n_vocab)?;
        let output = if t.has("output.weight") {
            t.matrix("output.weight", e, hp.n_vocab)?
        } else {
            t.matrix("token_embd.weight", e, hp.n_vocab)?
        };
        if !matches!(opt.ffn, Epilogue::SwiGlu | Epilogue::GeGlu) {
            return Err(Error::invalid(
                "decoder: the FFN activation must be SwiGLU or GeGLU",
            ));
        }
        if let Some(w) = &opt.swa {
            if w.layers.len() != hp.n_layer || w.n_swa == 0 {
                return Err(Error::format(
                    format!("{}.attention.sliding_window", opt.arch),
                    format!(
                        "window {} over {} layer flags for {} layers",
                        w.n_swa,
                        w.layers.len(),
                        hp.n_layer
                    ),
                ));
            }
        }
        let norm_if = |on: bool, name: &str, len: usize| -> Result<Option<Vec<f32>>> {
            if on {
                t.vector(name, len).map(Some)
            } else {
                Ok(None)
            }
        };
        let mut layers = Vec::with_capacity(hp.n_layer);
        for il in 0..hp.n_layer {
            let n = |s: &str| format!("blk.{il}.{s}");
            let bias = |s: &str, len: usize| -> Result<Option<Vec<f32>>> {
                if opt.qkv_bias_required {
                    t.vector(&n(s), len).map(Some)
                } else {
                    t.opt_vector(&n(s), len)
                }
            };
            layers.push(Layer {
                attn_norm: t.vector(&n("attn_norm.weight"), e)?,
                wq: t.matrix(&n("attn_q.weight"), e, q)?,
                wk: t.matrix(&n("attn_k.weight"), e, kv)?,
                wv: t.matrix(&n("attn_v.weight"), e, kv)?,
                bq: bias("attn_q.bias", q)?,
                bk: bias("attn_k.bias", kv)?,
                bv: bias("attn_v.bias", kv)?,
                q_norm: norm_if(opt.qk_norm, &n("attn_q_norm.weight"), hp.head_dim)?,
                k_norm: norm_if(opt.qk_norm, &n("attn_k_norm.weight"), hp.head_dim)?,
                wo: t.matrix(&n("attn_output.weight"), q, e)?,
                post_attn_norm: norm_if(opt.post_norms, &n("post_attention_norm.weight"), e)?,
                ffn_norm: t.vector(&n("ffn_norm.weight"), e)?,
                post_ffn_norm: norm_if(opt.post_norms, &n("post_ffw_norm.weight"), e)?,
                w_gate: t.matrix(&n("ffn_gate.weight"), e, ff)?,
                w_up: t.matrix(&n("ffn_up.weight"), e, ff)?,
                w_down: t.matrix(&n("ffn_down.weight"), ff, e)?,
            });
        }
        let mut output = output;
        if !lo.no_repack {
            for l in &mut layers {
                for w in [
                    &mut l.wq,
                    &mut l.wk,
                    &mut l.wv,
                    &mut l.wo,
                    &mut l.w_gate,
                    &mut l.w_up,
                    &mut l.w_down,
                ] {
                    w.repack(&lo.pool)?;
                }
            }
            output.repack(&lo.pool)?;
        }
        let out_norm = t.vector("output_norm.weight", e)?;
        let freq_factors = t.opt_vector("rope_freqs.weight", hp.rope_dims / 2)?;
        let rope = RopeParams {
            style: opt.rope_style,
            n_dims: hp.rope_dims,
            freq_base: hp.rope_freq_base,
            freq_scale: hp.rope_freq_scale,
            freq_factors,
            attn_factor: 1.0,
        };
        let swa = opt.swa.as_ref().map(|w| {
            let rope = RopeParams {
                freq_base: w.rope_freq_base,
                freq_scale: 1.0,
                ..rope.clone()
            };
            (w.clone(), rope)
        });
        let weight_bytes = layers
            .iter()
            .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down])
            .chain([&output])
            .map(|w| w.bytes().len() as u64)
            .sum();
        let info = ModelInfo {
            arch: opt.arch.to_string(),
            name: file
                .metadata()
                .opt_str("general.name")?
                .map(|s| s.to_string()),
            hparams: hp.clone(),
            weight_bytes,
        };
        Ok(Decoder {
            info,
            hp,
            rope,
            embed_scale: opt.embed_scale,
            ffn: opt.ffn,
            q_scale: opt.q_scale,
            swa,
            final_softcap: opt.final_softcap,
            tok_embd,
            layers,
            out_norm,
            output,
            pool: lo.pool.clone(),
            ws: Mutex::new(Workspace::default()),
        })
    }

    fn check_batch(&self, batch: &Batch, kv: &KvCache) -> Result<()> {
        let n = batch.len();
        if batch.pos.len() != n || batch.seq.len() != n || batch.want_logits.len() != n {
            return Err(Error::invalid(
                "batch: tokens, pos, seq and want_logits differ in length",
            ));
        }
        if kv.shape() != self.kv_shape() {
            return Err(Error::invalid("KV cache shape does not match the model"));
        }
        for i in 0..n {
            if batch.tokens[i] as usize >= self.hp.n_vocab {
                return Err(Error::invalid(format!(
                    "token id {} is out of range (vocabulary has {})",
                    batch.tokens[i], self.hp.n_vocab
                )));
            }
            if batch.pos[i] as usize >= kv.n_ctx() {
                return Err(Error::invalid(format!(
                    "position {} exceeds the context size {}",
                    batch.pos[i],
                    kv.n_ctx()
                )));
            }
            if batch.seq[i] as usize >= kv.n_seq() {
                return Err(Error::invalid(format!(
                    "sequence {} exceeds the KV cache's {} sequences",
                    batch.seq[i],
                    kv.n_seq()
                )));
            }
        }
        Ok(())
    }
}

/// `x += w · a`, or with a post-norm `x += rmsnorm(w · a) * norm` (through `y` and `yn`,
/// `[n, n_embd]` each).
#[allow(clippy::too_many_arguments)]
fn residual(
    pool: &ThreadPool,
    w: &matmul::QMatrix,
    a: &[f32],
    x: &mut [f32],
    n: usize,
    post_norm: Option<(&[f32], f32)>,
    (y, yn): (&mut [f32], &mut [f32]),
    mm: &mut MatmulScratch,
) {
    let Some((norm, eps)) = post_norm else {
        matmul::matmul_fused(pool, &mut [(w, x)], a, n, None, Epilogue::Accumulate, mm);
        return;
    };
    let len = x.len();
    let (y, yn) = (&mut y[..len], &mut yn[..len]);
    matmul::matmul_fused(pool, &mut [(w, &mut *y)], a, n, None, Epilogue::Store, mm);
    let e = norm.len();
    for ((xr, yr), ynr) in x
        .chunks_exact_mut(e)
        .zip(y.chunks_exact(e))
        .zip(yn.chunks_exact_mut(e))
    {
        ops::rmsnorm(yr, norm, eps, ynr);
        ops::add_assign(xr, ynr);
    }
}

fn add_bias(rows: &mut [f32], bias: &Option<Vec<f32>>) {
    if let Some(b) = bias {
        for r in rows.chunks_exact_mut(b.len()) {
            ops::add_assign(r, b);
        }
    }
}

impl Model for Decoder {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn kv_shape(&self) -> KvShape {
        KvShape {
            n_layer: self.hp.n_layer,
            n_kv_dim: self.hp.n_kv_dim(),
        }
    }

    fn warm_up(&self) {
        // Read one byte per page of every matrix the forward pass uses (repacked copies too).
        let mut acc = 0u8;
        let mut touch = |w: &Weight| {
            for b in w.bytes().iter().step_by(4096) {
                acc = acc.wrapping_add(*b);
            }
        };
        // Not the embedding table: a token reads one row of it, and touching all of it would
        // make every page resident (94 MB of Qwen-0.5B's) for rows most prompts never use.
        touch(&self.output);
        for l in &self.layers {
            for w in [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down] {
                touch(w);
            }
        }
        std::hint::black_box(acc);
    }

    fn forward(&self, batch: &Batch, kv: &mut KvCache, out: &mut Logits) -> Result<()> {
        self.check_batch(batch, kv)?;
        let n = batch.len();
        let hp = &self.hp;
        let (e, qd, kvd, ff, hd) = (hp.n_embd, hp.n_q_dim(), hp.n_kv_dim(), hp.n_ff, hp.head_dim);
        let pool = &*self.pool;
        let mut guard = self.ws.lock().unwrap_or_else(|p| p.into_inner());
        let ws = &mut *guard;
        ws.ensure(n, hp);
        let x = &mut ws.x[..n * e];
        let q = &mut ws.q[..n * qd];
        let k = &mut ws.k[..n * kvd];
        let v = &mut ws.v[..n * kvd];
        let att = &mut ws.att[..n * qd];
        let gate = &mut ws.gate[..n * ff];

        // Embedding lookup.
        let emb = if self.embeds_from_output() {
            self.output.matrix()
        } else {
            self.tok_embd.matrix()
        };
        for (t, &tok) in batch.tokens.iter().enumerate() {
            let row = &mut x[t * e..(t + 1) * e];
            matmul::dequantize_row(&emb, tok as usize, row);
            if let Some(s) = self.embed_scale {
                row.iter_mut().for_each(|v| *v *= s);
            }
        }

        let shape = AttnShape {
            n_head: hp.n_head,
            n_head_kv: hp.n_head_kv,
            head_dim: hd,
            scale: if self.q_scale.is_some() {
                1.0
            } else {
                1.0 / (hd as f32).sqrt()
            },
        };
        let group = hp.n_head / hp.n_head_kv;

        for (il, l) in self.layers.iter().enumerate() {
            // Attention: RMSNorm, then Q, K and V from one quantized input in one pass.
            let (wq, wk, wv) = (l.wq.matrix(), l.wk.matrix(), l.wv.matrix());
            matmul::matmul_fused(
                pool,
                &mut [(&wq, &mut *q), (&wk, &mut *k), (&wv, &mut *v)],
                x,
                n,
                Some(PreNorm {
                    weight: &l.attn_norm,
                    eps: hp.rms_eps,
                }),
                Epilogue::Store,
                &mut ws.mm,
            );
            add_bias(q, &l.bq);
            add_bias(k, &l.bk);
            add_bias(v, &l.bv);
            if let (Some(qn), Some(kn)) = (l.q_norm.as_deref(), l.k_norm.as_deref()) {
                let head = &mut ws.head[..hd];
                for (rows, w) in [(&mut *q, qn), (&mut *k, kn)] {
                    for h in rows.chunks_exact_mut(hd) {
                        head.copy_from_slice(h);
                        ops::rmsnorm(head, w, hp.rms_eps, h);
                    }
                }
            }
            let rope = match &self.swa {
                Some((w, r)) if w.layers[il] => r,
                _ => &self.rope,
            };
            for t in 0..n {
                rope.cache(batch.pos[t] as i64, &mut ws.rope);
                rope.apply(&mut q[t * qd..(t + 1) * qd], hd, &ws.rope);
                rope.apply(&mut k[t * kvd..(t + 1) * kvd], hd, &ws.rope);
                if let Some(s) = self.q_scale {
                    q[t * qd..(t + 1) * qd].iter_mut().for_each(|v| *v *= s);
                }
                kv.store(
                    il,
                    batch.seq[t] as usize,
                    batch.pos[t] as usize,
                    &k[t * kvd..(t + 1) * kvd],
                    &v[t * kvd..(t + 1) * kvd],
                );
            }
            {
                let kv = &*kv;
                let q = &*q;
                let pa = SharedMut::new(att);
                // Like llama.cpp's CPU flash attention: batches under 64 query tokens take
                // its f16 one-chunk path, larger ones its f32 tiled path. A single-sequence
                // prompt batch converts the cache rows it reads to f32 once per layer.
                let single_seq = batch.seq.iter().all(|&s| s == batch.seq[0]);
                let n_pos = batch.pos.iter().max().map_or(0, |&p| p as usize + 1);
                let start = |t: usize| {
                    self.swa
                        .as_ref()
                        .map_or(0, |(w, _)| w.start(il, batch.pos[t] as usize))
                };
                // The f32 path reads whole 64-position tiles from position 0: windowed layers
                // take it only while no query's window has moved past the first key.
                let f32_path = n >= 64 && single_seq && (0..n).all(|t| start(t) == 0);
                let p_pad = n_pos.div_ceil(ops::ATTN_TILE) * ops::ATTN_TILE;
                if f32_path {
                    let (kc, vc) = kv.seq_layer(il, batch.seq[0] as usize);
                    let len = n_pos * kvd;
                    if ws.kf.len() < p_pad * kvd {
                        ws.kf.resize(p_pad * kvd, 0.0);
                    }
                    if ws.vf.len() < len {
                        ws.vf.resize(len, 0.0);
                    }
                    ops::transpose_k(kc, n_pos, &shape, p_pad, &mut ws.kf);
                    half::slice::HalfFloatSliceExt::convert_to_f32_slice(
                        &vc[..len],
                        &mut ws.vf[..len],
                    );
                }
                let (kf, vf) = (&ws.kf[..], &ws.vf[..]);
                if n < 64 {
                    // Work items are (token, part of a GQA group): the heads of one item share
                    // each K/V row they read. Groups are split only as far as needed to keep
                    // every thread busy.
                    let parts = (4 * pool.n_threads())
                        .div_ceil(n * hp.n_head_kv)
                        .clamp(1, group);
                    let per_item = group.div_ceil(parts);
                    let items_per_group = group.div_ceil(per_item);
                    let per_tok = hp.n_head_kv * items_per_group;
                    pool.for_chunks(n * per_tok, 1, &|items| {
                        for item in items {
                            let (t, rest) = (item / per_tok, item % per_tok);
                            let (g, part) = (rest / items_per_group, rest % items_per_group);
                            let h0 = g * group + part * per_item;
                            let nh = per_item.min((g + 1) * group - h0);
                            let (kc, vc) = kv.seq_layer(il, batch.seq[t] as usize);
                            // The window's keys only (llama.cpp skips masked positions).
                            let s0 = start(t);
                            let (kc, vc) = (&kc[s0 * kvd..], &vc[s0 * kvd..]);
                            let span = t * qd + h0 * hd..t * qd + (h0 + nh) * hd;
                            // SAFETY: each (token, heads) output slice is written by one item.
                            let dst = unsafe { pa.slice(span.start, span.len()) };
                            ops::attend_head_decode(
                                &q[span],
                                kc,
                                vc,
                                batch.pos[t] as usize + 1 - s0,
                                g,
                                &shape,
                                dst,
                            );
                        }
                    });
                } else {
                    // One work item per (token, head).
                    pool.for_chunks(n * hp.n_head, 1, &|items| {
                        for item in items {
                            let (t, h) = (item / hp.n_head, item % hp.n_head);
                            let qh = &q[t * qd + h * hd..t * qd + (h + 1) * hd];
                            // SAFETY: each (token, head) output slice is written by one item.
                            let dst = unsafe { pa.slice(t * qd + h * hd, hd) };
                            let n_pos = batch.pos[t] as usize + 1;
                            if f32_path {
                                ops::attend_prompt(
                                    qh,
                                    kf,
                                    p_pad,
                                    vf,
                                    n_pos,
                                    h / group,
                                    &shape,
                                    dst,
                                );
                            } else {
                                let (kc, vc) = kv.seq_layer(il, batch.seq[t] as usize);
                                let s0 = start(t);
                                let (kc, vc) = (&kc[s0 * kvd..], &vc[s0 * kvd..]);
                                ops::attend_head(qh, kc, vc, n_pos - s0, h / group, &shape, dst);
                            }
                        }
                    });
                }
            }

            // x += Wo · att (the residual add fused into the product's store), or with
            // post-norms x += norm(Wo · att).
            let wo = l.wo.matrix();
            residual(
                pool,
                &wo,
                att,
                x,
                n,
                l.post_attn_norm.as_deref().map(|w| (w, hp.rms_eps)),
                (&mut ws.y, &mut ws.out_x),
                &mut ws.mm,
            );

            // Feed-forward: RMSNorm, gate and up in one pass ending in silu(gate) * up.
            let (wg, wu) = (l.w_gate.matrix(), l.w_up.matrix());
            matmul::matmul_fused(
                pool,
                &mut [(&wg, &mut *gate), (&wu, &mut [])],
                x,
                n,
                Some(PreNorm {
                    weight: &l.ffn_norm,
                    eps: hp.rms_eps,
                }),
                self.ffn,
                &mut ws.mm,
            );
            let wd = l.w_down.matrix();
            residual(
                pool,
                &wd,
                gate,
                x,
                n,
                l.post_ffn_norm.as_deref().map(|w| (w, hp.rms_eps)),
                (&mut ws.y, &mut ws.out_x),
                &mut ws.mm,
            );
        }

        // Output head, only for the tokens that want logits.
        // Reuse the caller's index buffer: nothing is allocated per forward once it has grown.
        out.batch_index.clear();
        out.batch_index
            .extend((0..n).filter(|&t| batch.want_logits[t]));
        let n_out = out.batch_index.len();
        let out_x = &mut ws.out_x[..n_out * e];
        for (i, &t) in out.batch_index.iter().enumerate() {
            ops::rmsnorm(
                &x[t * e..(t + 1) * e],
                &self.out_norm,
                hp.rms_eps,
                &mut out_x[i * e..(i + 1) * e],
            );
        }
        out.n_vocab = hp.n_vocab;
        out.data.resize(n_out * hp.n_vocab, 0.0);
        if n_out > 0 {
            matmul::matmul(
                pool,
                &self.output.matrix(),
                out_x,
                n_out,
                &mut out.data,
                &mut ws.mm,
            );
            if let Some(c) = self.final_softcap {
                out.data.iter_mut().for_each(|v| *v = (*v / c).tanh() * c);
            }
        }
        Ok(())
    }
}
