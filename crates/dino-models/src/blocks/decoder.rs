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
use crate::{
    Batch, HParams, KvCache, KvShape, KvTypes, LoadOptions, Logits, Model, ModelInfo, Observer,
};
use dino_core::{Error, Result};
use dino_formats::gguf::GgufFile;
use dino_kernels::matmul::{self, Epilogue, MatmulScratch, PreNorm, QMatrix};
use dino_kernels::ops::{self, AttnShape, RopeParams, RopeStyle};
use dino_kernels::pool::{SharedMut, ThreadPool};
use dino_kernels::sparse::ColumnMatrix;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
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
    /// Q, K and V are one `attn_qkv` tensor (phi3).
    pub fused_qkv: bool,
    /// Gate and up are one `ffn_up` tensor of `2 * n_ff` rows, gate first (phi3).
    pub fused_gate_up: bool,
    /// Mixture-of-experts feed-forward on every layer (mixtral, qwen3moe).
    pub experts: Option<Experts>,
    /// Phi-3 "long rope": per-pair frequency divisors for short and long contexts
    /// (`rope_factors_short`/`_long`), chosen by the context size against the trained one.
    pub long_rope: Option<LongRope>,
    /// Multiplies RoPE's cos and sin (`rope.scaling.attn_factor`; 1 if absent).
    pub attn_factor: f32,
}

/// The shape of a mixture-of-experts feed-forward: `n_used` of `n_expert` SwiGLU experts of
/// width `n_ff` per token, chosen by a softmax router and weighted by their renormalised
/// probabilities (as llama.cpp's `build_moe_ffn` with `norm_w`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Experts {
    pub n_expert: usize,
    pub n_used: usize,
    pub n_ff: usize,
}

/// RoPE frequency factors chosen by context size: `long` when the cache holds more than
/// `n_ctx_orig` positions (rounded up to 256, as llama.cpp pads its context), else `short`.
#[derive(Clone, Debug)]
pub struct LongRope {
    pub n_ctx_orig: usize,
    pub short: Vec<f32>,
    pub long: Vec<f32>,
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
            fused_qkv: false,
            fused_gate_up: false,
            experts: None,
            long_rope: None,
            attn_factor: 1.0,
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
    /// 1 / linear scaling factor of the windowed layers' RoPE (1: unscaled).
    pub rope_freq_scale: f32,
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
    ffn: Ffn,
    /// Activation-sparsity thresholds of the inputs of Q/K/V, Wo, gate/up and down (f32 bits;
    /// 0: dense), settable between passes (`Model::set_sparsity`).
    sparse: [AtomicU32; 4],
    /// With sparsity: the layer's matrices by input columns, for decode.
    cols: Option<Box<LayerColumns>>,
}

/// A layer's matrices in the column layout (`dino_kernels::sparse`): Q, K and V stacked, Wo,
/// gate and up stacked, down. Each is built only where its calibrated share of zero inputs
/// can reach [`COLUMN_MIN_SPARSITY`] (from [`COLUMN_BUILD_SPARSITY`] on): below it the dense
/// kernels serve every product and a column copy would only take memory.
struct LayerColumns {
    qkv: Option<ColumnMatrix>,
    o: Option<ColumnMatrix>,
    gate_up: Option<ColumnMatrix>,
    down: Option<ColumnMatrix>,
}

/// Batches of at most this many tokens take the column-layout products when sparsity is on
/// (one token at a time); larger ones (prompts) the dense kernels on the same zeroed inputs.
const SPARSE_MAX_TOKENS: usize = 4;

/// The share of zero inputs from which a column-layout product beats the dense one: below it
/// the dense kernels run on the zeroed inputs (the same function). Skipping scattered cache
/// lines defeats the hardware prefetchers' streams, so reading a random 50 % of a matrix's lines
/// takes as long as reading all of them (`examples/skip_reads`: holes pay in proportion only
/// between runs of 64 KB); `examples/sparse_gemv` (dino-kernels) measured the crossover at
/// 0.65-0.70 on Qwen2.5-1.5B's shapes (1.15x at 0.7, 1.4x at 0.75, 2.3x at 0.85).
const COLUMN_MIN_SPARSITY: f32 = 0.68;

/// The calibrated share of zero inputs from which a matrix gets a column layout at load: one
/// token's share scatters around the calibrated one, so a site calibrated a little below
/// [`COLUMN_MIN_SPARSITY`] still crosses it often.
const COLUMN_BUILD_SPARSITY: f32 = COLUMN_MIN_SPARSITY - 0.1;

/// The inputs activation sparsity thresholds, in [`Layer::sparse`]'s order.
const ATTN_IN: usize = 0;
const ATTN_OUT: usize = 1;
const FFN_IN: usize = 2;
const FFN_MID: usize = 3;

enum Ffn {
    Dense {
        gate: Weight,
        up: Weight,
        down: Weight,
    },
    Moe(Moe),
}

impl Ffn {
    /// Every matrix the layer's feed-forward may read.
    fn weights(&self) -> Vec<&Weight> {
        match self {
            Ffn::Dense { gate, up, down } => vec![gate, up, down],
            Ffn::Moe(m) => m.experts().collect(),
        }
    }
    fn weights_mut(&mut self) -> Vec<&mut Weight> {
        match self {
            Ffn::Dense { gate, up, down } => vec![gate, up, down],
            Ffn::Moe(m) => m
                .gate
                .iter_mut()
                .chain(m.up.iter_mut())
                .chain(m.down.iter_mut())
                .collect(),
        }
    }
}

/// One layer's experts: `[n_expert]` gate, up and down matrices and the F32 router.
struct Moe {
    router: Weight,
    gate: Vec<Weight>,
    up: Vec<Weight>,
    down: Vec<Weight>,
    shape: Experts,
}

impl Moe {
    fn experts(&self) -> impl Iterator<Item = &Weight> {
        self.gate.iter().chain(&self.up).chain(&self.down)
    }
}

/// Buffers for one forward pass, grown to the largest batch seen and then reused.
#[derive(Default)]
struct Workspace {
    cap: usize,
    x: Vec<f32>,                            // [n, n_embd]
    q: Vec<f32>,                            // [n, n_head * head_dim]
    k: Vec<f32>,                            // [n, n_head_kv * head_dim]
    v: Vec<f32>,                            // [n, n_head_kv * head_dim]
    att: Vec<f32>,                          // [n, n_head * head_dim]
    gate: Vec<f32>,                         // [n, n_ff]: silu(gate) * up
    out_x: Vec<f32>,                        // [n_out, n_embd]
    y: Vec<f32>,                            // [n, n_embd]: a sublayer's output before its post-norm
    xs: Vec<f32>, // [n, n_embd]: a normed input with its small values zeroed (sparsity)
    sp: Vec<f32>, // [n_q_dim + 2 n_kv_dim | 2 n_ff]: one token's stacked outputs (sparsity)
    plan: dino_kernels::sparse::SparsePlan, // the nonzero inputs of a sparse product
    head: Vec<f32>, // [head_dim]
    run: RunBufs,
    /// Batch indices of the tokens taking the decode attention kernel.
    decode_toks: Vec<usize>,
    rope: Vec<f32>, // [rope_dims]
    mm: MatmulScratch,
    moe: MoeScratch,
}

/// The prompt attention's copies of one sequence's cache (`attend_run`), and the batch's rows
/// encoded for a quantized cache; sized on use.
#[derive(Default)]
struct RunBufs {
    kf: Vec<f32>, // [n_head_kv, head_dim, p_pad]: one sequence's K transposed to f32 (prompt batches)
    vf: Vec<f32>, // [n_pos, n_head_kv * head_dim]: same for V
    kg: Vec<half::f16>, // [n_pos, n_head_kv * head_dim]: one sequence's K gathered from its blocks
    vg: Vec<half::f16>, // [n_pos, n_head_kv * head_dim]: same for V
    kr: Vec<f32>, // [n_pos, n_head_kv * head_dim]: K gathered as f32 from a quantized cache
    kq: Vec<u8>,  // [n, n_head_kv, row bytes]: the batch's keys encoded for a quantized cache
    vq: Vec<u8>,  // [n, n_head_kv, row bytes]: same for the values
}

/// Mixture-of-experts buffers, sized on use.
#[derive(Default)]
struct MoeScratch {
    h: Vec<f32>,      // [n, n_embd]: the normed input
    logits: Vec<f32>, // [n, n_expert]
    /// `[n, n_used]`: each token's chosen experts, in descending probability, and weights.
    sel: Vec<(usize, f32)>,
    rows: Vec<usize>, // the (token, slot) pairs routed to one expert
    hx: Vec<f32>,     // [m, n_embd]: their inputs
    g: Vec<f32>,      // [m, n_ff]
    y: Vec<f32>,      // [m, n_embd]
    ys: Vec<f32>,     // [n, n_used, n_embd]: every slot's output
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
        r(&mut self.xs, n * hp.n_embd);
        r(
            &mut self.sp,
            (hp.n_q_dim() + 2 * hp.n_kv_dim()).max(2 * hp.n_ff),
        );
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
    /// RoPE for caches longer than the trained context (phi3 long rope).
    rope_long: Option<(usize, RopeParams)>,
    final_softcap: Option<f32>,
    tok_embd: Weight,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    /// `output.weight`, or the token embedding when tied.
    output: Weight,
    pool: Arc<ThreadPool>,
    ws: Mutex<Workspace>,
    /// With sparsity: weights whose input was zero, and all weights of the sparsified
    /// matrices, summed over every token run.
    /// Weights skipped, weights in all; one-token products sparsified, those by columns.
    sparse_counts: [AtomicU64; 4],
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
        if let Some(x) = &opt.experts {
            if x.n_expert == 0 || x.n_used == 0 || x.n_used > x.n_expert || x.n_ff == 0 {
                return Err(Error::format(
                    format!("{}.expert_count", opt.arch),
                    format!(
                        "{} experts, {} used, width {}: need 0 < used <= count and a width",
                        x.n_expert, x.n_used, x.n_ff
                    ),
                ));
            }
        }
        let mut layers = Vec::with_capacity(hp.n_layer);
        for il in 0..hp.n_layer {
            let n = |s: &str| format!("blk.{il}.{s}");
            let (wq, wk, wv) = if opt.fused_qkv {
                let mut v = t.split_rows(&n("attn_qkv.weight"), e, &[q, kv, kv])?;
                let wv = v.pop().expect("3 parts");
                let wk = v.pop().expect("3 parts");
                (v.pop().expect("3 parts"), wk, wv)
            } else {
                (
                    t.matrix(&n("attn_q.weight"), e, q)?,
                    t.matrix(&n("attn_k.weight"), e, kv)?,
                    t.matrix(&n("attn_v.weight"), e, kv)?,
                )
            };
            let ffn = if let Some(x) = opt.experts {
                Ffn::Moe(Moe {
                    router: t.matrix(&n("ffn_gate_inp.weight"), e, x.n_expert)?,
                    gate: t.experts(&n("ffn_gate_exps.weight"), e, x.n_ff, x.n_expert)?,
                    up: t.experts(&n("ffn_up_exps.weight"), e, x.n_ff, x.n_expert)?,
                    down: t.experts(&n("ffn_down_exps.weight"), x.n_ff, e, x.n_expert)?,
                    shape: x,
                })
            } else if opt.fused_gate_up {
                let mut v = t.split_rows(&n("ffn_up.weight"), e, &[ff, ff])?;
                let up = v.pop().expect("2 parts");
                Ffn::Dense {
                    gate: v.pop().expect("2 parts"),
                    up,
                    down: t.matrix(&n("ffn_down.weight"), ff, e)?,
                }
            } else {
                Ffn::Dense {
                    gate: t.matrix(&n("ffn_gate.weight"), e, ff)?,
                    up: t.matrix(&n("ffn_up.weight"), e, ff)?,
                    down: t.matrix(&n("ffn_down.weight"), ff, e)?,
                }
            };
            let bias = |s: &str, len: usize| -> Result<Option<Vec<f32>>> {
                if opt.qkv_bias_required {
                    t.vector(&n(s), len).map(Some)
                } else {
                    t.opt_vector(&n(s), len)
                }
            };
            layers.push(Layer {
                attn_norm: t.vector(&n("attn_norm.weight"), e)?,
                wq,
                wk,
                wv,
                bq: bias("attn_q.bias", q)?,
                bk: bias("attn_k.bias", kv)?,
                bv: bias("attn_v.bias", kv)?,
                q_norm: norm_if(opt.qk_norm, &n("attn_q_norm.weight"), hp.head_dim)?,
                k_norm: norm_if(opt.qk_norm, &n("attn_k_norm.weight"), hp.head_dim)?,
                wo: t.matrix(&n("attn_output.weight"), q, e)?,
                post_attn_norm: norm_if(opt.post_norms, &n("post_attention_norm.weight"), e)?,
                ffn_norm: t.vector(&n("ffn_norm.weight"), e)?,
                post_ffn_norm: norm_if(opt.post_norms, &n("post_ffw_norm.weight"), e)?,
                ffn,
                sparse: Default::default(),
                cols: None,
            });
        }
        if let Some(sp) = &lo.sparsity {
            set_thresholds(&layers, opt.ffn, Some(sp))?;
        }
        let mut output = output;
        if !lo.no_repack {
            for l in &mut layers {
                for w in [&mut l.wq, &mut l.wk, &mut l.wv, &mut l.wo] {
                    w.repack(&lo.pool)?;
                }
                for w in l.ffn.weights_mut() {
                    w.repack(&lo.pool)?;
                }
            }
            // The output head computes one token per decode step (and the last of a prompt).
            if matmul::repack_for_decode(output.ty()) {
                output.repack(&lo.pool)?;
            }
        }
        if let Some(sp) = &lo.sparsity {
            for l in &mut layers {
                let Ffn::Dense { gate, up, down } = &l.ffn else {
                    unreachable!("checked above")
                };
                let p = &lo.pool;
                let build = |first: &Weight, ms: &[&QMatrix]| {
                    (sp.share(first.name()) >= COLUMN_BUILD_SPARSITY)
                        .then(|| ColumnMatrix::from_matrices(p, ms))
                        .transpose()
                };
                let cols = LayerColumns {
                    qkv: build(&l.wq, &[&l.wq.matrix(), &l.wk.matrix(), &l.wv.matrix()])?,
                    o: build(&l.wo, &[&l.wo.matrix()])?,
                    gate_up: build(gate, &[&gate.matrix(), &up.matrix()])?,
                    down: build(down, &[&down.matrix()])?,
                };
                l.cols = Some(Box::new(cols));
            }
        }
        let out_norm = t.vector("output_norm.weight", e)?;
        let freq_factors = t.opt_vector("rope_freqs.weight", hp.rope_dims / 2)?;
        let rope = RopeParams {
            style: opt.rope_style,
            n_dims: hp.rope_dims,
            freq_base: hp.rope_freq_base,
            freq_scale: hp.rope_freq_scale,
            freq_factors,
            attn_factor: opt.attn_factor,
        };
        let rope = match &opt.long_rope {
            Some(lr) if rope.freq_factors.is_none() => {
                for f in [&lr.short, &lr.long] {
                    if f.len() != hp.rope_dims / 2 {
                        return Err(Error::format(
                            "rope_factors_short/long.weight",
                            format!("{} factors for {} rotated dims", f.len(), hp.rope_dims),
                        ));
                    }
                }
                RopeParams {
                    freq_factors: Some(lr.short.clone()),
                    ..rope
                }
            }
            _ => rope,
        };
        let rope_long = match &opt.long_rope {
            Some(lr) if rope.freq_factors.as_ref() == Some(&lr.short) => Some((
                lr.n_ctx_orig,
                RopeParams {
                    freq_factors: Some(lr.long.clone()),
                    ..rope.clone()
                },
            )),
            _ => None,
        };
        let swa = opt.swa.as_ref().map(|w| {
            let rope = RopeParams {
                freq_base: w.rope_freq_base,
                freq_scale: w.rope_freq_scale,
                ..rope.clone()
            };
            (w.clone(), rope)
        });
        // Bytes read per token: every dense matrix, and the used share of the experts.
        let mut weight_bytes = output.bytes().len() as u64;
        for l in &layers {
            for w in [&l.wq, &l.wk, &l.wv, &l.wo] {
                weight_bytes += w.bytes().len() as u64;
            }
            match &l.ffn {
                Ffn::Dense { .. } => {
                    for w in l.ffn.weights() {
                        weight_bytes += w.bytes().len() as u64;
                    }
                }
                Ffn::Moe(m) => {
                    let all: u64 = m.experts().map(|w| w.bytes().len() as u64).sum();
                    weight_bytes += m.router.bytes().len() as u64
                        + all * m.shape.n_used as u64 / m.shape.n_expert as u64;
                }
            }
        }
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
            rope_long,
            final_softcap: opt.final_softcap,
            tok_embd,
            layers,
            out_norm,
            output,
            pool: lo.pool.clone(),
            ws: Mutex::new(Workspace::default()),
            sparse_counts: Default::default(),
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
            let seq = batch.seq[i] as usize;
            if batch.pos[i] as usize >= kv.capacity(seq) {
                return Err(Error::invalid(format!(
                    "sequence {seq} has no KV block for position {}",
                    batch.pos[i]
                )));
            }
        }
        Ok(())
    }
}

/// Attention of a run of 64 or more consecutive batch tokens `t0..t1` of one sequence (a
/// prompt chunk): the sequence's cache rows gathered from their blocks; without a window that
/// has moved past the first key, converted once to f32 (K transposed) for the tiled kernel,
/// otherwise read by the f32 online-softmax kernel from the window's start. One work item per
/// (token, head); outputs go to `att` (`[n, n_head * head_dim]`). A quantized cache is
/// gathered straight to f32 (dequantized exactly) and then takes the same kernels.
#[allow(clippy::too_many_arguments)]
fn attend_run(
    pool: &ThreadPool,
    kv: &KvCache,
    il: usize,
    (batch, t0, t1): (&Batch, usize, usize),
    q: &[f32],
    att: &SharedMut<f32>,
    shape: &AttnShape,
    start: &(dyn Fn(usize) -> usize + Sync),
    bufs: &mut RunBufs,
) {
    if kv.types() != KvTypes::F16 {
        return attend_run_f32(pool, kv, il, (batch, t0, t1), q, att, shape, start, bufs);
    }
    let RunBufs { kg, vg, kf, vf, .. } = bufs;
    let (hd, n_head) = (shape.head_dim, shape.n_head);
    let (qd, kvd) = (n_head * hd, shape.n_head_kv * hd);
    let group = n_head / shape.n_head_kv;
    let seq = batch.seq[t0] as usize;
    let n_pos = (t0..t1)
        .map(|t| batch.pos[t] as usize + 1)
        .max()
        .unwrap_or(0);
    let len = n_pos * kvd;
    for b in [&mut *kg, &mut *vg] {
        if b.len() < len {
            b.resize(len, half::f16::ZERO);
        }
    }
    kv.gather(il, seq, n_pos, &mut kg[..len], &mut vg[..len]);
    // The tiled kernel reads whole 64-position tiles from position 0: windowed layers take it
    // only while no query's window has moved past the first key.
    let tiled = (t0..t1).all(|t| start(t) == 0);
    let p_pad = n_pos.div_ceil(ops::ATTN_TILE) * ops::ATTN_TILE;
    if tiled {
        if kf.len() < p_pad * kvd {
            kf.resize(p_pad * kvd, 0.0);
        }
        if vf.len() < len {
            vf.resize(len, 0.0);
        }
        ops::transpose_k(&kg[..len], n_pos, shape, p_pad, kf);
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(&vg[..len], &mut vf[..len]);
    }
    let (kg, vg, kf, vf) = (&kg[..len], &vg[..len], &kf[..], &vf[..]);
    pool.for_chunks((t1 - t0) * n_head, 1, &|items| {
        for item in items {
            let (t, h) = (t0 + item / n_head, item % n_head);
            let qh = &q[t * qd + h * hd..t * qd + (h + 1) * hd];
            // SAFETY: each (token, head) output slice is written by one item.
            let dst = unsafe { att.slice(t * qd + h * hd, hd) };
            let n_vis = batch.pos[t] as usize + 1;
            if tiled {
                ops::attend_prompt(qh, kf, p_pad, vf, n_vis, h / group, shape, dst);
            } else {
                let s0 = start(t);
                let (kc, vc) = (&kg[s0 * kvd..], &vg[s0 * kvd..]);
                ops::attend_head(qh, kc, vc, n_vis - s0, h / group, shape, dst);
            }
        }
    });
}

/// [`attend_run`] over a cache with quantized keys or values: the sequence's rows gathered
/// as f32 (`kr`, `vf`), K transposed into `kf` for the tiled kernel.
#[allow(clippy::too_many_arguments)]
fn attend_run_f32(
    pool: &ThreadPool,
    kv: &KvCache,
    il: usize,
    (batch, t0, t1): (&Batch, usize, usize),
    q: &[f32],
    att: &SharedMut<f32>,
    shape: &AttnShape,
    start: &(dyn Fn(usize) -> usize + Sync),
    bufs: &mut RunBufs,
) {
    let RunBufs { kr, kf, vf, .. } = bufs;
    let (hd, n_head) = (shape.head_dim, shape.n_head);
    let (qd, kvd) = (n_head * hd, shape.n_head_kv * hd);
    let group = n_head / shape.n_head_kv;
    let seq = batch.seq[t0] as usize;
    let n_pos = (t0..t1)
        .map(|t| batch.pos[t] as usize + 1)
        .max()
        .unwrap_or(0);
    let len = n_pos * kvd;
    for b in [&mut *kr, &mut *vf] {
        if b.len() < len {
            b.resize(len, 0.0);
        }
    }
    kv.gather_f32(il, seq, n_pos, &mut kr[..len], &mut vf[..len]);
    let tiled = (t0..t1).all(|t| start(t) == 0);
    let p_pad = n_pos.div_ceil(ops::ATTN_TILE) * ops::ATTN_TILE;
    if tiled {
        if kf.len() < p_pad * kvd {
            kf.resize(p_pad * kvd, 0.0);
        }
        ops::transpose_k(&kr[..len], n_pos, shape, p_pad, kf);
    }
    let (kr, kf, vf) = (&kr[..len], &kf[..], &vf[..len]);
    pool.for_chunks((t1 - t0) * n_head, 1, &|items| {
        for item in items {
            let (t, h) = (t0 + item / n_head, item % n_head);
            let qh = &q[t * qd + h * hd..t * qd + (h + 1) * hd];
            // SAFETY: each (token, head) output slice is written by one item.
            let dst = unsafe { att.slice(t * qd + h * hd, hd) };
            let n_vis = batch.pos[t] as usize + 1;
            if tiled {
                ops::attend_prompt(qh, kf, p_pad, vf, n_vis, h / group, shape, dst);
            } else {
                let s0 = start(t);
                let (kc, vc) = (&kr[s0 * kvd..], &vf[s0 * kvd..]);
                ops::attend_head(qh, kc, vc, n_vis - s0, h / group, shape, dst);
            }
        }
    });
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
    let y = &mut y[..x.len()];
    matmul::matmul_fused(pool, &mut [(w, &mut *y)], a, n, None, Epilogue::Store, mm);
    add_sublayer(x, y, yn, Some((norm, eps)));
}

/// `x += y`, or with a post-norm `x += rmsnorm(y) * norm` row by row (through `yn`).
fn add_sublayer(x: &mut [f32], y: &[f32], yn: &mut [f32], post_norm: Option<(&[f32], f32)>) {
    let Some((norm, eps)) = post_norm else {
        ops::add_assign(x, &y[..x.len()]);
        return;
    };
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

/// Sets every layer's input thresholds from `s` (`None`: 0, dense).
fn set_thresholds(layers: &[Layer], ffn: Epilogue, s: Option<&crate::Sparsity>) -> Result<()> {
    let mut all = Vec::with_capacity(layers.len());
    for l in layers {
        let Some(s) = s else {
            all.push([0.0; 4]);
            continue;
        };
        let Ffn::Dense { gate, down, .. } = &l.ffn else {
            return Err(Error::Unsupported(
                "activation sparsity on a mixture-of-experts model".into(),
            ));
        };
        if ffn != Epilogue::SwiGlu {
            return Err(Error::Unsupported(
                "activation sparsity: only SwiGLU feed-forwards so far".into(),
            ));
        }
        all.push([
            s.threshold(l.wq.name())?,
            s.threshold(l.wo.name())?,
            s.threshold(gate.name())?,
            s.threshold(down.name())?,
        ]);
    }
    for (l, t) in layers.iter().zip(all) {
        for (a, v) in l.sparse.iter().zip(t) {
            a.store(v.to_bits(), Ordering::Relaxed);
        }
    }
    Ok(())
}

/// [`residual`] through a column-layout matrix, one token at a time.
#[allow(clippy::too_many_arguments)]
fn sparse_residual(
    pool: &ThreadPool,
    c: &ColumnMatrix,
    a: &[f32],
    x: &mut [f32],
    n: usize,
    post_norm: Option<(&[f32], f32)>,
    (y, yn): (&mut [f32], &mut [f32]),
    plan: &mut dino_kernels::sparse::SparsePlan,
) {
    let (w, e) = (c.n_in, c.n_out);
    for t in 0..n {
        c.gemv(
            pool,
            &a[t * w..(t + 1) * w],
            &mut y[t * e..(t + 1) * e],
            plan,
        );
    }
    add_sublayer(x, &y[..n * e], yn, post_norm);
}

/// `x += moe(rmsnorm(x) * norm)` for `n` tokens, as llama.cpp's `build_moe_ffn` with softmax
/// gating and `norm_w`: router probabilities by softmax, the `n_used` most probable experts,
/// their probabilities renormalised to sum 1, their SwiGLU outputs weighted and summed in
/// order of decreasing probability. Each expert runs once over the tokens routed to it, so
/// only the chosen experts' weights are read.
#[allow(clippy::too_many_arguments)]
fn moe_ffn(
    pool: &ThreadPool,
    m: &Moe,
    norm: &[f32],
    eps: f32,
    x: &mut [f32],
    n: usize,
    s: &mut MoeScratch,
    mm: &mut MatmulScratch,
) {
    let Experts {
        n_expert,
        n_used: k,
        n_ff,
    } = m.shape;
    let e = norm.len();
    let grow = |v: &mut Vec<f32>, len: usize| {
        if v.len() < len {
            v.resize(len, 0.0);
        }
    };
    grow(&mut s.h, n * e);
    grow(&mut s.logits, n * n_expert);
    grow(&mut s.ys, n * k * e);
    let h = &mut s.h[..n * e];
    for (xr, hr) in x.chunks_exact(e).zip(h.chunks_exact_mut(e)) {
        ops::rmsnorm(xr, norm, eps, hr);
    }
    let logits = &mut s.logits[..n * n_expert];
    matmul::matmul(pool, &m.router.matrix(), h, n, logits, mm);
    s.sel.clear();
    for row in logits.chunks_exact_mut(n_expert) {
        route(row, k, &mut s.sel);
    }
    for ex in 0..n_expert {
        s.rows.clear();
        s.rows.extend((0..n * k).filter(|&i| s.sel[i].0 == ex));
        let rows = s.rows.len();
        if rows == 0 {
            continue;
        }
        grow(&mut s.hx, rows * e);
        grow(&mut s.g, rows * n_ff);
        grow(&mut s.y, rows * e);
        let hx = &mut s.hx[..rows * e];
        for (dst, &i) in hx.chunks_exact_mut(e).zip(&s.rows) {
            let t = i / k;
            dst.copy_from_slice(&h[t * e..(t + 1) * e]);
        }
        let (wg, wu, wd) = (m.gate[ex].matrix(), m.up[ex].matrix(), m.down[ex].matrix());
        let g = &mut s.g[..rows * n_ff];
        matmul::matmul_fused(
            pool,
            &mut [(&wg, &mut *g), (&wu, &mut [])],
            hx,
            rows,
            None,
            Epilogue::SwiGlu,
            mm,
        );
        let y = &mut s.y[..rows * e];
        matmul::matmul(pool, &wd, g, rows, y, mm);
        for (yr, &i) in y.chunks_exact(e).zip(&s.rows) {
            s.ys[i * e..(i + 1) * e].copy_from_slice(yr);
        }
    }
    // out = ((y0 * w0 + y1 * w1) + y2 * w2) + ...; x = out + x.
    for t in 0..n {
        let xr = &mut x[t * e..(t + 1) * e];
        for (c, xv) in xr.iter_mut().enumerate() {
            let mut acc = s.ys[(t * k) * e + c] * s.sel[t * k].1;
            for j in 1..k {
                acc += s.ys[(t * k + j) * e + c] * s.sel[t * k + j].1;
            }
            *xv += acc;
        }
    }
}

/// Softmax of one token's router logits (in place; ggml's: max subtracted, sum in double),
/// then the `k` most probable experts with their probabilities divided by their sum
/// (clamped below at 2^-14 as llama.cpp does), appended to `sel` in descending order.
fn route(logits: &mut [f32], k: usize, sel: &mut Vec<(usize, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for v in logits.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    logits.iter_mut().for_each(|v| *v *= inv);
    let start = sel.len();
    for _ in 0..k {
        // The most probable expert not yet chosen (the lowest index on a tie).
        let mut best: Option<usize> = None;
        for (i, &p) in logits.iter().enumerate() {
            if sel[start..].iter().any(|&(j, _)| j == i) {
                continue;
            }
            if best.is_none_or(|b| p > logits[b]) {
                best = Some(i);
            }
        }
        let b = best.expect("k <= n_expert");
        sel.push((b, logits[b]));
    }
    let total: f32 = sel[start..].iter().map(|&(_, p)| p).sum();
    // llama.cpp's clamp, 6.103515625e-5.
    let total = total.max(1.0 / 16384.0);
    sel[start..].iter_mut().for_each(|(_, p)| *p /= total);
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
            head_dim: self.hp.head_dim,
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
            for w in [&l.wq, &l.wk, &l.wv, &l.wo] {
                touch(w);
            }
            for w in l.ffn.weights() {
                touch(w);
            }
        }
        std::hint::black_box(acc);
    }

    fn forward(&self, batch: &Batch, kv: &mut KvCache, out: &mut Logits) -> Result<()> {
        self.run(batch, kv, out, None)
    }

    fn measured_sparsity(&self) -> Option<f64> {
        let [skipped, all, ..] = &self.sparse_counts;
        let all = all.load(Ordering::Relaxed);
        (all > 0).then(|| skipped.load(Ordering::Relaxed) as f64 / all as f64)
    }

    fn column_share(&self) -> Option<f64> {
        let [.., products, by_columns] = &self.sparse_counts;
        let products = products.load(Ordering::Relaxed);
        (products > 0).then(|| by_columns.load(Ordering::Relaxed) as f64 / products as f64)
    }

    fn set_sparsity(&self, s: Option<&crate::Sparsity>) -> Result<()> {
        set_thresholds(&self.layers, self.ffn, s)
    }

    fn forward_observed(
        &self,
        batch: &Batch,
        kv: &mut KvCache,
        out: &mut Logits,
        obs: &mut Observer,
    ) -> Result<()> {
        self.run(batch, kv, out, Some(obs))
    }
}

/// Hands `rows` (the input of the matrices `ws`) to the observer; `norm` first applies the
/// RMSNorm the fused product applies on the fly.
fn observe(
    obs: &mut Option<&mut Observer>,
    ws: &[&Weight],
    rows: &[f32],
    n: usize,
    norm: Option<(&[f32], f32)>,
) {
    let Some(obs) = obs.as_mut() else { return };
    let mut names: Vec<&str> = Vec::with_capacity(ws.len());
    for w in ws {
        if !names.contains(&w.name()) {
            names.push(w.name());
        }
    }
    match norm {
        None => obs(&names, rows, n),
        Some((weight, eps)) => {
            let width = rows.len() / n.max(1);
            let mut normed = vec![0f32; rows.len()];
            for (x, y) in rows.chunks_exact(width).zip(normed.chunks_exact_mut(width)) {
                ops::rmsnorm(x, weight, eps, y);
            }
            obs(&names, &normed, n)
        }
    }
}

impl Decoder {
    /// Whether `n` tokens' product over inputs with `share` zeros (`None`: not sparsified)
    /// takes the column layout `col` (outer `None`: a batch too large for columns; inner: the
    /// site has none), counted for [`Model::column_share`].
    fn by_columns<'c>(
        &self,
        col: Option<Option<&'c ColumnMatrix>>,
        share: Option<f32>,
        n: usize,
    ) -> Option<&'c ColumnMatrix> {
        let (col, share) = (col?, share?);
        let [.., products, by_columns] = &self.sparse_counts;
        products.fetch_add(n as u64, Ordering::Relaxed);
        let c = col.filter(|_| share >= COLUMN_MIN_SPARSITY)?;
        by_columns.fetch_add(n as u64, Ordering::Relaxed);
        Some(c)
    }

    /// [`Decoder::sparsify`] at one site's threshold; `None` (nothing done) where the site is
    /// dense (threshold 0).
    fn sparsify_site(&self, rows: &mut [f32], threshold: f32, n_out: usize) -> Option<f32> {
        (threshold > 0.0).then(|| self.sparsify(rows, threshold, n_out))
    }

    /// Zeroes the values of `rows` (inputs of matrices with `n_out` rows in all) below
    /// `threshold`, counting the weights they no longer need; returns the share of zeros.
    fn sparsify(&self, rows: &mut [f32], threshold: f32, n_out: usize) -> f32 {
        let [skipped, all, ..] = &self.sparse_counts;
        let zeros = crate::sparsity::sparsify(rows, threshold);
        skipped.fetch_add((zeros * n_out) as u64, Ordering::Relaxed);
        all.fetch_add((rows.len() * n_out) as u64, Ordering::Relaxed);
        zeros as f32 / rows.len().max(1) as f32
    }

    /// Applies the RMSNorm `(weight, eps)` to each `[width]` row of `x` into `xs`, then zeroes
    /// its values below `threshold` (the input of a fused product that would norm on the fly).
    fn norm_and_sparsify(
        &self,
        x: &[f32],
        (weight, eps): (&[f32], f32),
        xs: &mut [f32],
        threshold: f32,
        n_out: usize,
    ) -> f32 {
        let width = weight.len();
        for (xr, yr) in x.chunks_exact(width).zip(xs.chunks_exact_mut(width)) {
            ops::rmsnorm(xr, weight, eps, yr);
        }
        self.sparsify(xs, threshold, n_out)
    }

    fn run(
        &self,
        batch: &Batch,
        kv: &mut KvCache,
        out: &mut Logits,
        mut obs: Option<&mut Observer>,
    ) -> Result<()> {
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
        let xs = &mut ws.xs[..n * e];

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
            if let Some(o) = obs.as_mut() {
                o(&[&crate::layer_input_name(il)], x, n);
            }
            // Attention: RMSNorm, then Q, K and V from one quantized input in one pass.
            let (wq, wk, wv) = (l.wq.matrix(), l.wk.matrix(), l.wv.matrix());
            observe(
                &mut obs,
                &[&l.wq, &l.wk, &l.wv],
                x,
                n,
                Some((&l.attn_norm, hp.rms_eps)),
            );
            let outs = &mut [(&wq, &mut *q), (&wk, &mut *k), (&wv, &mut *v)];
            let cols = l.cols.as_deref().filter(|_| n <= SPARSE_MAX_TOKENS);
            let sparse = l
                .sparse
                .each_ref()
                .map(|t| f32::from_bits(t.load(Ordering::Relaxed)));
            if sparse[ATTN_IN] > 0.0 {
                let norm = (&l.attn_norm[..], hp.rms_eps);
                let share = self.norm_and_sparsify(x, norm, xs, sparse[ATTN_IN], qd + 2 * kvd);
                let col = cols.map(|c| c.qkv.as_ref());
                if let Some(c) = self.by_columns(col, Some(share), n) {
                    let sp = &mut ws.sp[..qd + 2 * kvd];
                    for t in 0..n {
                        c.gemv(pool, &xs[t * e..(t + 1) * e], sp, &mut ws.plan);
                        q[t * qd..(t + 1) * qd].copy_from_slice(&sp[..qd]);
                        k[t * kvd..(t + 1) * kvd].copy_from_slice(&sp[qd..qd + kvd]);
                        v[t * kvd..(t + 1) * kvd].copy_from_slice(&sp[qd + kvd..]);
                    }
                } else {
                    matmul::matmul_fused(pool, outs, xs, n, None, Epilogue::Store, &mut ws.mm);
                }
            } else {
                let norm = Some(PreNorm {
                    weight: &l.attn_norm,
                    eps: hp.rms_eps,
                });
                matmul::matmul_fused(pool, outs, x, n, norm, Epilogue::Store, &mut ws.mm);
            }
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
            let rope = match (&self.swa, &self.rope_long) {
                (Some((w, r)), _) if w.layers[il] => r,
                (_, Some((n_orig, r))) if kv.n_ctx().div_ceil(256) * 256 > *n_orig => r,
                _ => &self.rope,
            };
            // A quantized cache: llama.cpp's Walsh–Hadamard rotations of the queries and keys
            // (quantized K) and of the values (quantized V), after RoPE.
            let (rot_k, rot_v) = kv.types().rotations(hd);
            let rope_token =
                |t: usize, q: &mut [f32], k: &mut [f32], v: &mut [f32], c: &mut [f32]| {
                    rope.cache(batch.pos[t] as i64, c);
                    rope.apply(q, hd, c);
                    rope.apply(k, hd, c);
                    if let Some(s) = self.q_scale {
                        q.iter_mut().for_each(|v| *v *= s);
                    }
                    if let Some(r) = rot_k {
                        ops::fwht(q, r);
                        ops::fwht(k, r);
                    }
                    if let Some(r) = rot_v {
                        ops::fwht(v, r);
                    }
                };
            const ROPE_MAX: usize = 512;
            if n == 1 || rope.n_dims > ROPE_MAX {
                for t in 0..n {
                    rope_token(
                        t,
                        &mut q[t * qd..(t + 1) * qd],
                        &mut k[t * kvd..(t + 1) * kvd],
                        &mut v[t * kvd..(t + 1) * kvd],
                        &mut ws.rope,
                    );
                }
            } else {
                // One token per work item: the rotations are the serial part of a decode
                // batch otherwise.
                let (pq, pk, pv) = (SharedMut::new(q), SharedMut::new(k), SharedMut::new(v));
                pool.for_chunks(n, 1, &|ts| {
                    let mut c = [0f32; ROPE_MAX];
                    for t in ts {
                        // SAFETY: token t's rows of q, k and v are touched by this item only.
                        let (qt, kt, vt) = unsafe {
                            (
                                pq.slice(t * qd, qd),
                                pk.slice(t * kvd, kvd),
                                pv.slice(t * kvd, kvd),
                            )
                        };
                        rope_token(t, qt, kt, vt, &mut c[..rope.n_dims]);
                    }
                });
            }
            let types = kv.types();
            if types == KvTypes::F16 || n == 1 {
                for t in 0..n {
                    kv.store(
                        il,
                        batch.seq[t] as usize,
                        batch.pos[t] as usize,
                        &k[t * kvd..(t + 1) * kvd],
                        &v[t * kvd..(t + 1) * kvd],
                    );
                }
            } else {
                // Quantizing the rows is the costly part: on the pool, one token per item.
                let (rk, rv) = types.row_bytes(kv.shape())?;
                let (kb, vb) = (rk * hp.n_head_kv, rv * hp.n_head_kv);
                let RunBufs { kq, vq, .. } = &mut ws.run;
                kq.resize(n * kb, 0);
                vq.resize(n * vb, 0);
                let (pk, pv) = (SharedMut::new(&mut kq[..]), SharedMut::new(&mut vq[..]));
                let (kr, vr) = (&*k, &*v);
                pool.for_chunks(n, 1, &|ts| {
                    for t in ts {
                        // SAFETY: token t's rows of kq and vq are written by this item only.
                        let (kt, vt) = unsafe { (pk.slice(t * kb, kb), pv.slice(t * vb, vb)) };
                        KvCache::encode(types.k, hd, &kr[t * kvd..(t + 1) * kvd], kt);
                        KvCache::encode(types.v, hd, &vr[t * kvd..(t + 1) * kvd], vt);
                    }
                });
                for t in 0..n {
                    kv.store_encoded(
                        il,
                        batch.seq[t] as usize,
                        batch.pos[t] as usize,
                        &kq[t * kb..(t + 1) * kb],
                        &vq[t * vb..(t + 1) * vb],
                    );
                }
            }
            {
                let kv = &*kv;
                let q = &*q;
                let pa = SharedMut::new(att);
                let start = |t: usize| {
                    self.swa
                        .as_ref()
                        .map_or(0, |(w, _)| w.start(il, batch.pos[t] as usize))
                };
                // Like llama.cpp's CPU flash attention: under 64 query tokens, its f16
                // one-chunk path; 64 or more, its f32 tiled path. The choice is made per run of
                // one sequence's tokens, so a sequence gets the same arithmetic whatever else
                // shares the batch (other sequences' decode tokens, say).
                ws.decode_toks.clear();
                let mut t0 = 0;
                while t0 < n {
                    let seq = batch.seq[t0];
                    let t1 = (t0..n).find(|&t| batch.seq[t] != seq).unwrap_or(n);
                    t0 = if t1 - t0 < 64 {
                        ws.decode_toks.extend(t0..t1);
                        t1
                    } else {
                        attend_run(
                            pool,
                            kv,
                            il,
                            (batch, t0, t1),
                            q,
                            &pa,
                            &shape,
                            &start,
                            &mut ws.run,
                        );
                        t1
                    };
                }
                // The decode kernel reads the blocks in place. Work items are (token, part of
                // a GQA group): the heads of one item share each K/V row they read. Groups are
                // split only as far as needed to keep every thread busy.
                let toks = &ws.decode_toks[..];
                let nd = toks.len();
                if nd > 0 {
                    // A quantized cache's kernel shares more per K/V row between the heads of
                    // an item (unpacking, scales, value conversion): one item per thread is
                    // enough there, where the f16 kernel wants four for balance.
                    let per_thread = if kv.types() == KvTypes::F16 { 4 } else { 1 };
                    let parts = (per_thread * pool.n_threads())
                        .div_ceil(nd * hp.n_head_kv)
                        .clamp(1, group);
                    let per_item = group.div_ceil(parts);
                    let items_per_group = group.div_ceil(per_item);
                    let per_tok = hp.n_head_kv * items_per_group;
                    pool.for_chunks(nd * per_tok, 1, &|items| {
                        for item in items {
                            let (t, rest) = (toks[item / per_tok], item % per_tok);
                            let (g, part) = (rest / items_per_group, rest % items_per_group);
                            let h0 = g * group + part * per_item;
                            let nh = per_item.min((g + 1) * group - h0);
                            let (kb, vb) = kv.view(il, batch.seq[t] as usize);
                            let span = t * qd + h0 * hd..t * qd + (h0 + nh) * hd;
                            // SAFETY: each (token, heads) output slice is written by one item.
                            let dst = unsafe { pa.slice(span.start, span.len()) };
                            let kvs = ops::KvView {
                                k: kb,
                                v: vb,
                                kv_head: g,
                                // The window's keys only (llama.cpp skips masked positions).
                                first: start(t),
                                n_pos: batch.pos[t] as usize + 1,
                            };
                            ops::attend_decode(&q[span], &kvs, &shape, dst);
                        }
                    });
                }
            }

            if let Some(r) = rot_v {
                // Rotated values give a rotated output: rotate it back.
                if n == 1 {
                    ops::fwht(att, r);
                } else {
                    let pa = SharedMut::new(att);
                    pool.for_chunks(n, 1, &|ts| {
                        for t in ts {
                            // SAFETY: token t's row of att is touched by this item only.
                            ops::fwht(unsafe { pa.slice(t * qd, qd) }, r);
                        }
                    });
                }
            }

            // x += Wo · att (the residual add fused into the product's store), or with
            // post-norms x += norm(Wo · att).
            let wo = l.wo.matrix();
            observe(&mut obs, &[&l.wo], att, n, None);
            let share = self.sparsify_site(att, sparse[ATTN_OUT], e);
            if let Some(c) = self.by_columns(cols.map(|c| c.o.as_ref()), share, n) {
                let post = l.post_attn_norm.as_deref().map(|w| (w, hp.rms_eps));
                let bufs = (&mut ws.y[..], &mut ws.out_x[..]);
                sparse_residual(pool, c, att, x, n, post, bufs, &mut ws.plan);
            } else {
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
            }

            let (gate_w, up_w, down_w) = match &l.ffn {
                Ffn::Dense { gate, up, down } => (gate, up, down),
                Ffn::Moe(m) => {
                    moe_ffn(
                        pool,
                        m,
                        &l.ffn_norm,
                        hp.rms_eps,
                        x,
                        n,
                        &mut ws.moe,
                        &mut ws.mm,
                    );
                    continue;
                }
            };
            // Feed-forward: RMSNorm, gate and up in one pass ending in silu(gate) * up.
            let (wg, wu) = (gate_w.matrix(), up_w.matrix());
            observe(
                &mut obs,
                &[gate_w, up_w],
                x,
                n,
                Some((&l.ffn_norm, hp.rms_eps)),
            );
            let outs = &mut [(&wg, &mut *gate), (&wu, &mut [])];
            if sparse[FFN_IN] > 0.0 {
                let norm = (&l.ffn_norm[..], hp.rms_eps);
                let share = self.norm_and_sparsify(x, norm, xs, sparse[FFN_IN], 2 * ff);
                let col = cols.map(|c| c.gate_up.as_ref());
                if let Some(c) = self.by_columns(col, Some(share), n) {
                    let sp = &mut ws.sp[..2 * ff];
                    for t in 0..n {
                        c.gemv(pool, &xs[t * e..(t + 1) * e], sp, &mut ws.plan);
                        let (g, u) = sp.split_at_mut(ff);
                        ops::swiglu(g, u);
                        gate[t * ff..(t + 1) * ff].copy_from_slice(g);
                    }
                } else {
                    matmul::matmul_fused(pool, outs, xs, n, None, self.ffn, &mut ws.mm);
                }
            } else {
                let norm = Some(PreNorm {
                    weight: &l.ffn_norm,
                    eps: hp.rms_eps,
                });
                matmul::matmul_fused(pool, outs, x, n, norm, self.ffn, &mut ws.mm);
            }
            let wd = down_w.matrix();
            observe(&mut obs, &[down_w], gate, n, None);
            let share = self.sparsify_site(gate, sparse[FFN_MID], e);
            if let Some(c) = self.by_columns(cols.map(|c| c.down.as_ref()), share, n) {
                let post = l.post_ffn_norm.as_deref().map(|w| (w, hp.rms_eps));
                let bufs = (&mut ws.y[..], &mut ws.out_x[..]);
                sparse_residual(pool, c, gate, x, n, post, bufs, &mut ws.plan);
                continue;
            }
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

        if let Some(o) = obs.as_mut() {
            o(&[&crate::layer_input_name(self.layers.len())], x, n);
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

#[cfg(test)]
mod tests {
    use super::route;

    /// Softmax, the k most probable in descending order, renormalised to sum 1.
    #[test]
    fn routing_picks_the_most_probable_experts_and_renormalises() {
        let logits = [0.5f32, 2.0, -1.0, 1.5, 2.0 - 1e-3];
        let mut row = logits;
        let mut sel = vec![(9, 9.0)]; // earlier tokens' choices are kept
        route(&mut row, 3, &mut sel);
        assert_eq!(sel[0], (9, 9.0));
        let ids: Vec<usize> = sel[1..].iter().map(|s| s.0).collect();
        assert_eq!(ids, [1, 4, 3]);
        let e: Vec<f64> = [2.0f64, 2.0 - 1e-3, 1.5].iter().map(|v| v.exp()).collect();
        let sum: f64 = e.iter().sum();
        for (s, want) in sel[1..].iter().zip(&e) {
            assert!((s.1 as f64 - want / sum).abs() < 1e-6, "{s:?}");
        }
        // All experts: weights are the softmax itself.
        let mut row = logits;
        let mut all = Vec::new();
        route(&mut row, 5, &mut all);
        let total: f32 = all.iter().map(|s| s.1).sum();
        assert!((total - 1.0).abs() < 1e-6);
        // Extreme logits neither overflow nor produce NaN.
        let mut row = [1e30f32, -1e30, 0.0, f32::MIN];
        let mut sel = Vec::new();
        route(&mut row, 2, &mut sel);
        assert_eq!(sel[0], (0, 1.0));
        assert!(sel.iter().all(|s| s.1.is_finite()));
    }
}
