//! Weight × activation products for every supported weight type.
//!
//! Activations are quantized once per call to the type the weights pair with (ggml's
//! `vec_dot_type`: Q8_0, Q8_1, Q8_K, or F16/BF16/F32), then each output row is an integer (or
//! half-precision) dot product read straight from the weight bytes. Work is split over output
//! rows in chunks claimed atomically by the pool; for a batch of tokens each weight row is read
//! once and used for every token while it sits in L1.

use crate::dispatch::{self, Tile, TypeKernels};
use crate::pool::{SharedMut, ThreadPool};
use crate::scalar::panel::{self, ROWS};
use dino_core::{Error, GgmlType, Result};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A borrowed weight matrix in ggml layout: `n_out` rows of `n_in` elements of type `ty`.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub data: &'a [u8],
    pub ty: GgmlType,
    /// Row length (ggml `ne0`).
    pub n_in: usize,
    /// Number of rows (ggml `ne1`).
    pub n_out: usize,
    /// `data` is in the level's repacked layout (`TypeKernels::packed`), made by [`repack`].
    pub packed: bool,
}

impl<'a> QMatrix<'a> {
    /// Check that `data` holds exactly `n_out` rows of `n_in` elements and the type is computable.
    pub fn new(
        name: &str,
        data: &'a [u8],
        ty: GgmlType,
        n_in: usize,
        n_out: usize,
    ) -> Result<Self> {
        if dispatch::kernels(ty).is_none() {
            return Err(Error::UnsupportedType {
                tensor: name.to_string(),
                ty: ty.to_string(),
            });
        }
        let row = ty.row_size(n_in as u64).ok_or_else(|| {
            Error::invalid(format!(
                "tensor '{name}': row length {n_in} is not a multiple of the {ty} block size"
            ))
        })?;
        if (row as usize).checked_mul(n_out) != Some(data.len()) {
            return Err(Error::invalid(format!(
                "tensor '{name}': {} bytes, expected {n_out} rows of {row}",
                data.len()
            )));
        }
        Ok(QMatrix {
            data,
            ty,
            n_in,
            n_out,
            packed: false,
        })
    }

    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.n_out
    }

    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }
}

/// Memory for repacked weights: anonymous pages, on Linux asked to be transparent huge pages
/// (weights are streamed once per token: 2 MiB pages spare the TLB a miss every 4 KiB).
pub struct PackedBuf(memmap2::MmapMut);

impl PackedBuf {
    fn new(len: usize) -> Option<PackedBuf> {
        let m = memmap2::MmapMut::map_anon(len.max(1)).ok()?;
        #[cfg(target_os = "linux")]
        let _ = m.advise(memmap2::Advice::HugePage); // a hint; refusal is harmless
        Some(PackedBuf(m))
    }
}

impl std::ops::Deref for PackedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::DerefMut for PackedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

/// The repacked copy of `w` for this CPU's kernel level, or `None` when the level has no
/// faster layout for the type (or the row count does not divide into its groups, or memory
/// cannot be had). Packing is split over the pool. The result is used as
/// `QMatrix { data: &copy, packed: true, .. }`.
pub fn repack(pool: &ThreadPool, w: &QMatrix) -> Option<PackedBuf> {
    repack_releasing(pool, w, &mut |_| {})
}

/// Whether a matrix that mostly computes one token at a time (the output head: one row of
/// logits per decode step) should be [`repack`]ed: the repacked layouts serve prompts best,
/// and the level's table says whether its packed kernel is also the faster one for a single
/// token (`PackedKernels::one_token`; not so for AVX-512's Q6_K).
pub fn repack_for_decode(ty: GgmlType) -> bool {
    dispatch::kernels(ty)
        .and_then(|k| k.packed)
        .is_none_or(|p| p.one_token)
}

/// Source bytes packed per step of [`repack_releasing`].
const REPACK_STEP_BYTES: usize = 2 << 20;

/// [`repack`], in steps of about [`REPACK_STEP_BYTES`] of source, calling `done` with each
/// step's byte range of `w.data` once it is packed: a caller whose source is a file mapping
/// releases those pages as it goes, so the source and the copy are never both resident in
/// full (for a large output head that transient was the process's memory peak).
pub fn repack_releasing(
    pool: &ThreadPool,
    w: &QMatrix,
    done: &mut dyn FnMut(std::ops::Range<usize>),
) -> Option<PackedBuf> {
    let pk = dispatch::kernels(w.ty)?.packed?;
    let l = pk.layout;
    if w.packed || !w.n_out.is_multiple_of(ROWS) || !w.n_in.is_multiple_of(l.unit) {
        return None;
    }
    let gb = l.group_bytes(w.n_in);
    let n_groups = w.n_out / ROWS;
    let mut out = PackedBuf::new(gb * n_groups)?;
    let src_group = ROWS * w.row_bytes();
    let step = (REPACK_STEP_BYTES / src_group).max(1);
    let po = SharedMut::new(&mut out);
    for g0 in (0..n_groups).step_by(step) {
        let g1 = (g0 + step).min(n_groups);
        pool.for_chunks(g1 - g0, 16, &|gs| {
            let gs = g0 + gs.start..g0 + gs.end;
            // SAFETY: each chunk writes only its own groups' bytes.
            let dst = unsafe { po.slice(gs.start * gb, gs.len() * gb) };
            let src = &w.data[gs.start * src_group..gs.end * src_group];
            l.pack(src, w.n_in, gs.len() * ROWS, dst);
        });
        done(g0 * src_group..g1 * src_group);
    }
    Some(out)
}

/// Reusable buffers for quantized activations (grow once, then reused): one per activation
/// type a fused group of matrices needs.
#[derive(Default, Debug)]
pub struct MatmulScratch {
    act: [Vec<u8>; 2],
    /// `[n_tokens, n_in]` normalized input rows (fused RMSNorm).
    xn: Vec<f32>,
}

impl MatmulScratch {
    /// Reserve room for `n_tokens` activation rows of `n_in` elements for any weight type.
    pub fn reserve(&mut self, n_tokens: usize, n_in: usize) {
        // F32 activation rows are the largest encoding.
        let need = n_tokens * n_in * 4;
        for a in &mut self.act {
            if a.len() < need {
                a.resize(need, 0);
            }
        }
        if self.xn.len() < n_tokens * n_in {
            self.xn.resize(n_tokens * n_in, 0.0);
        }
    }
}

/// RMSNorm applied to the input rows before they are quantized, in the same pass.
#[derive(Clone, Copy, Debug)]
pub struct PreNorm<'a> {
    /// `[n_in]` gain.
    pub weight: &'a [f32],
    pub eps: f32,
}

/// What happens to the products before they are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// Each matrix writes its own output.
    Store,
    /// Each matrix adds its products to its output (`out += w·x`: the residual add).
    Accumulate,
    /// Exactly two matrices, gate and up: `out_gate = silu(gate·x) * (up·x)`; `out_up` is
    /// untouched (may be empty).
    SwiGlu,
    /// As `SwiGlu` with GELU (ggml's tanh form from its f16 table, [`crate::ops::geglu`]).
    GeGlu,
}

impl Epilogue {
    /// A gated pair (gate and up) whose product lands in the gate's output.
    pub fn is_glu(self) -> bool {
        matches!(self, Epilogue::SwiGlu | Epilogue::GeGlu)
    }
}

/// `out[t, r] = Σ_k w[r, k] · x[t, k]` for `n_tokens` tokens.
///
/// `x`: `[n_tokens, n_in]`, `out`: `[n_tokens, n_out]`.
pub fn matmul(
    pool: &ThreadPool,
    w: &QMatrix,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
    scratch: &mut MatmulScratch,
) {
    matmul_fused(
        pool,
        &mut [(w, out)],
        x,
        n_tokens,
        None,
        Epilogue::Store,
        scratch,
    );
}

/// Several matrices reading the same input (Q/K/V, gate/up) in one pass: the input is
/// normalized (optionally) and quantized once per activation type, then one pool launch
/// computes every matrix's outputs. Each output equals what [`matmul`] gives on its own.
///
/// `x`: `[n_tokens, n_in]`; each output `[n_tokens, n_out]` of its matrix. With `norm`, each
/// input row is normalized (as `ops::rmsnorm`) right before it is quantized.
pub fn matmul_fused(
    pool: &ThreadPool,
    mats: &mut [(&QMatrix, &mut [f32])],
    x: &[f32],
    n_tokens: usize,
    norm: Option<PreNorm>,
    epilogue: Epilogue,
    scratch: &mut MatmulScratch,
) {
    assert!(!mats.is_empty(), "matmul: no matrices");
    let n_in = mats[0].0.n_in;
    assert_eq!(
        x.len(),
        n_tokens * n_in,
        "matmul: x is not [n_tokens, n_in]"
    );
    if epilogue.is_glu() {
        assert!(
            mats.len() == 2 && mats[0].0.n_out == mats[1].0.n_out,
            "matmul: SwiGLU needs gate and up of one shape"
        );
    }
    for (w, out) in mats.iter() {
        assert_eq!(w.n_in, n_in, "matmul: matrices read different input widths");
        let n_out = if epilogue.is_glu() {
            mats[0].0.n_out
        } else {
            w.n_out
        };
        assert!(
            out.len() == n_tokens * n_out || (epilogue.is_glu() && out.is_empty()),
            "matmul: out is not [n_tokens, n_out]"
        );
    }
    // The activation formats needed (at most two distinct ones in one fused group).
    let mut act_kinds: [Option<ActKind>; 2] = [None, None];
    let mut slot = [0usize; 4];
    assert!(
        mats.len() <= slot.len(),
        "matmul: at most 4 matrices per fused group"
    );
    for (i, (w, _)) in mats.iter().enumerate() {
        let at = act_kind(w);
        slot[i] = match act_kinds.iter().position(|a| *a == Some(at)) {
            Some(p) => p,
            None => {
                let p = act_kinds
                    .iter()
                    .position(|a| a.is_none())
                    .expect("matmul: at most two activation formats per fused group");
                act_kinds[p] = Some(at);
                p
            }
        };
    }
    scratch.reserve(n_tokens, n_in);
    let quantizers: [Option<Quantizer>; 2] = std::array::from_fn(|p| {
        let i = slot.iter().take(mats.len()).position(|&s| s == p)?;
        let w = mats[i].0;
        Some(match act_kinds[p]? {
            ActKind::Ggml(at) => {
                let row = at
                    .row_size(n_in as u64)
                    .expect("activation type shares the block size");
                (kernels_of(w).quantize_act, row as usize)
            }
            ActKind::Panel(act) => (
                kernels_of(w).packed.expect("packed").quantize_act,
                act.row_bytes(n_in),
            ),
        })
    });
    let [a0, a1] = &mut scratch.act;
    let pa = [SharedMut::new(a0), SharedMut::new(a1)];
    let pxn = SharedMut::new(&mut scratch.xn);
    // Quantizes tokens `r` (normalized first with a pre-norm); run by the product launch
    // itself before its barrier, so a matmul is one launch.
    let quantize = |r: std::ops::Range<usize>| {
        if let Some(nm) = norm {
            // SAFETY: tokens r's normalized rows belong to this chunk only.
            let xn = unsafe { pxn.slice(r.start * n_in, r.len() * n_in) };
            crate::ops::rmsnorm_rows(&x[r.start * n_in..r.end * n_in], nm.weight, nm.eps, xn);
        }
        for t in r {
            let mut xr = &x[t * n_in..(t + 1) * n_in];
            if norm.is_some() {
                // SAFETY: token t's normalized row belongs to this chunk only (written above).
                xr = unsafe { pxn.slice_ref(t * n_in, n_in) };
            }
            for (p, q) in quantizers.iter().enumerate() {
                if let Some((quantize, row)) = q {
                    // SAFETY: token t's activation rows belong to this chunk only, and no
                    // product reads them before the launch's barrier.
                    let dst = unsafe { pa[p].slice(t * row, *row) };
                    quantize(xr, dst);
                }
            }
        }
    };
    run_products(
        pool,
        mats,
        n_tokens,
        &pa,
        &slot,
        &quantizers,
        epilogue,
        &quantize,
    );
}

/// The activation format a matrix reads: its type's `vec_dot` type, or the repacked layouts'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ActKind {
    Ggml(GgmlType),
    Panel(panel::PanelAct),
}

fn act_kind(w: &QMatrix) -> ActKind {
    if w.packed {
        ActKind::Panel(kernels_of(w).packed.expect("packed").layout.act)
    } else {
        ActKind::Ggml(kernels_of(w).act_type)
    }
}

/// An activation quantizer and the bytes of one quantized row.
type Quantizer = (fn(&[f32], &mut [u8]), usize);

fn kernels_of(w: &QMatrix) -> &'static TypeKernels {
    dispatch::kernels(w.ty).expect("QMatrix::new checked the type")
}

/// The product pass of [`matmul_fused`], in one launch: each thread first quantizes its share
/// of the tokens' activations (`quantize`, in chunks of 4 tokens), all wait at a barrier, then
/// work items (matrix, row chunk, token block) are claimed one at a time.
#[allow(clippy::too_many_arguments)]
fn run_products(
    pool: &ThreadPool,
    mats: &mut [(&QMatrix, &mut [f32])],
    n_tokens: usize,
    acts: &[SharedMut<u8>; 2],
    slot: &[usize; 4],
    quantizers: &[Option<Quantizer>; 2],
    epilogue: Epilogue,
    quantize: &(dyn Fn(std::ops::Range<usize>) + Sync),
) {
    struct Job<'a> {
        w: QMatrix<'a>,
        k: &'static TypeKernels,
        out: SharedMut<f32>,
        /// The activation rows (`act_row * n_tokens` bytes), written before the barrier.
        act: SharedMut<u8>,
        act_row: usize,
        /// Items before this job's first.
        first_item: usize,
    }
    let n_threads = pool.n_threads();
    let row_chunk = |n_out: usize| {
        if n_tokens <= DECODE_TOKENS {
            // Decode (one token, or one per sequence of a batch) streams the weights once:
            // one contiguous row range per thread keeps each thread's reads one sequential
            // stream for the prefetchers (computed in pieces that fit the tile buffer). Four
            // interleaved chunks per thread were 15 % slower at one token, 36 % at eight
            // (examples/gemm_stream.rs).
            n_out
                .div_ceil(n_threads * DECODE_CHUNKS_PER_THREAD)
                .div_ceil(ROWS)
                .saturating_mul(ROWS)
                .max(8)
        } else {
            ROW_CHUNK_MAX
        }
    };
    let swiglu = epilogue.is_glu();
    let mut jobs: [Option<Job>; 4] = [None, None, None, None];
    let mut n_items_per_tb = 0;
    for (i, (w, out)) in mats.iter_mut().enumerate() {
        let (_, act_row) = quantizers[slot[i]].expect("activation quantized");
        let rc = row_chunk(w.n_out);
        let n_row_chunks = w.n_out.div_ceil(rc);
        jobs[i] = Some(Job {
            w: **w,
            k: kernels_of(w),
            out: SharedMut::new(out),
            act: acts[slot[i]],
            act_row,
            first_item: n_items_per_tb,
        });
        // With SwiGLU one item computes gate and up together: only the gate's items count.
        if !swiglu || i == 0 {
            n_items_per_tb += n_row_chunks;
        }
    }
    let jobs = &jobs;
    let n_mats = mats.len();
    // The token blocks: the batched-kernel rule is per type, so split at every job's n_gemm.
    let n_gemm_of = |j: &Job| j.k.batch.map_or(0, |b| b.rule.tokens(n_tokens));
    let n_gemm = jobs[0].as_ref().map_or(0, n_gemm_of);
    let uniform = jobs.iter().flatten().all(|j| n_gemm_of(j) == n_gemm);
    // Mixed batch rules in one group are rare: fall back to per-matrix token blocks aligned to
    // every split point by using single-token blocks past the smallest split.
    let tok_blocks = token_blocks(n_tokens, if uniform { n_gemm } else { 0 });
    let split_all = !uniform;
    let n_tb = tok_blocks.len;
    let n_items = n_items_per_tb * n_tb;
    let n_qchunks = n_tokens.div_ceil(QUANT_CHUNK);
    let (next, arrived) = (AtomicUsize::new(0), AtomicUsize::new(0));
    pool.run_on(n_items.max(n_qchunks), &|tid, nt| {
        for c in (tid..n_qchunks).step_by(nt) {
            quantize(c * QUANT_CHUNK..((c + 1) * QUANT_CHUNK).min(n_tokens));
        }
        // Every thread's activations are written before any product reads them.
        arrived.fetch_add(1, Ordering::AcqRel);
        while arrived.load(Ordering::Acquire) < nt {
            std::hint::spin_loop();
        }
        TILE_BUFS.with(|bufs| {
            let (buf, buf_up) = &mut *bufs.borrow_mut();
            loop {
                let item = next.fetch_add(1, Ordering::Relaxed);
                if item >= n_items {
                    break;
                }
                // Row chunk major: the token blocks of one row chunk run back to back (on both
                // threads at once), so its weights come from DRAM once per batch, not once per
                // token block.
                let (tb, mut it) = (item % n_tb, item / n_tb);
                let mut ji = 0;
                while ji + 1 < n_mats
                    && !(swiglu && ji == 0)
                    && it >= jobs[ji + 1].as_ref().expect("job").first_item
                {
                    ji += 1;
                }
                let job = jobs[ji].as_ref().expect("job");
                it -= job.first_item;
                let (t0, t1) = tok_blocks.get(tb);
                let rc = row_chunk(job.w.n_out);
                let (c0, c1) = (it * rc, ((it + 1) * rc).min(job.w.n_out));
                // The item's rows in pieces whose outputs fit the tile buffers.
                let nt = t1 - t0;
                let piece = (ROW_CHUNK_MAX * TOKEN_BLOCK / nt / ROWS * ROWS).max(ROWS);
                for r0 in (c0..c1).step_by(piece) {
                    let r1 = (r0 + piece).min(c1);
                    let nr = r1 - r0;
                    compute_tile(
                        job.w,
                        job.k,
                        // SAFETY: the activations were written before the barrier and are
                        // only read after it.
                        unsafe { job.act.slice_ref(0, job.act_row * n_tokens) },
                        job.act_row,
                        (r0, r1),
                        (t0, t1),
                        n_tokens,
                        split_all,
                        &mut buf[..nr * nt],
                    );
                    if swiglu {
                        let up = jobs[1].as_ref().expect("up job");
                        compute_tile(
                            up.w,
                            up.k,
                            // SAFETY: as the gate's, written before the barrier.
                            unsafe { up.act.slice_ref(0, up.act_row * n_tokens) },
                            up.act_row,
                            (r0, r1),
                            (t0, t1),
                            n_tokens,
                            split_all,
                            &mut buf_up[..nr * nt],
                        );
                        if epilogue == Epilogue::GeGlu {
                            crate::ops::geglu(&mut buf[..nr * nt], &buf_up[..nr * nt]);
                        } else {
                            crate::ops::swiglu(&mut buf[..nr * nt], &buf_up[..nr * nt]);
                        }
                    }
                    let n_out = job.w.n_out;
                    for t in 0..nt {
                        // SAFETY: outputs (t0 + t, r0..r1) of this matrix belong to this item
                        // only.
                        let dst = unsafe { job.out.slice((t0 + t) * n_out + r0, nr) };
                        let src = &buf[t * nr..(t + 1) * nr];
                        if epilogue == Epilogue::Accumulate {
                            crate::ops::add_assign(dst, src);
                        } else {
                            dst.copy_from_slice(src);
                        }
                    }
                }
            }
        });
    });
}

thread_local! {
    /// Per-thread tile outputs (`[TOKEN_BLOCK, ROW_CHUNK_MAX]`, gate and up), allocated once
    /// per thread instead of zeroed on the stack at every launch.
    static TILE_BUFS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = std::cell::RefCell::new((
        vec![0f32; ROW_CHUNK_MAX * TOKEN_BLOCK],
        vec![0f32; ROW_CHUNK_MAX * TOKEN_BLOCK],
    ));
}

/// Outputs `rows` × `toks` of one matrix into `buf` (`[n_toks, n_rows]`), each token with the
/// kernel llama.cpp's x86 build would use for it (see `TypeKernels::batch`).
#[allow(clippy::too_many_arguments)]
fn compute_tile(
    w: QMatrix,
    k: &TypeKernels,
    act: &[u8],
    act_row: usize,
    (r0, r1): (usize, usize),
    (t0, t1): (usize, usize),
    n_tokens: usize,
    split_all: bool,
    buf: &mut [f32],
) {
    let rb = w.row_bytes();
    let nr = r1 - r0;
    if w.packed {
        let pk = k.packed.expect("packed matrices come from `repack`");
        debug_assert!(r0.is_multiple_of(ROWS) && nr.is_multiple_of(ROWS));
        (pk.tile)(&mut Tile {
            n: w.n_in,
            w: &w.data[r0 * rb..r1 * rb],
            n_rows: nr,
            a: &act[t0 * act_row..t1 * act_row],
            n_tok: t1 - t0,
            out: buf,
        });
        return;
    }
    let n_gemm = k.batch.map_or(0, |b| b.rule.tokens(n_tokens));
    let run = |a: usize, b: usize, use_batch: bool, buf: &mut [f32]| {
        let (dot, tile_fn) = match (use_batch, k.batch) {
            (true, Some(bd)) => (bd.dot, bd.tile),
            _ => (k.vec_dot, k.tile),
        };
        let mut tile = Tile {
            n: w.n_in,
            w: &w.data[r0 * rb..r1 * rb],
            n_rows: nr,
            a: &act[a * act_row..b * act_row],
            n_tok: b - a,
            out: buf,
        };
        match tile_fn {
            Some(f) => f(&mut tile),
            None => tile.by_dot(dot),
        }
    };
    if !split_all || n_gemm <= t0 || n_gemm >= t1 {
        run(t0, t1, t0 < n_gemm, buf);
    } else {
        let (lo, hi) = buf.split_at_mut((n_gemm - t0) * nr);
        run(t0, n_gemm, true, lo);
        run(n_gemm, t1, false, hi);
    }
}

/// Row chunks per thread and matrix in decode-like batches.
const DECODE_CHUNKS_PER_THREAD: usize = 1;
/// Batches of up to this many tokens are decode-like: their weights stream from memory once,
/// in long per-thread chunks.
const DECODE_TOKENS: usize = 16;
/// Tokens per activation-quantizing chunk.
const QUANT_CHUNK: usize = 4;
/// Largest row chunk of one work item (in prompt batches).
const ROW_CHUNK_MAX: usize = 32;
/// Tokens per work item: their activations stay in L2 while the item's rows stream past.
const TOKEN_BLOCK: usize = 64;

/// The token blocks of a batch: `TOKEN_BLOCK`-sized, split at `n_gemm`.
struct TokenBlocks {
    n_gemm: usize,
    n: usize,
    first: usize,
    len: usize,
}

fn token_blocks(n: usize, n_gemm: usize) -> TokenBlocks {
    let first = n_gemm.div_ceil(TOKEN_BLOCK);
    TokenBlocks {
        n_gemm,
        n,
        first,
        len: first + (n - n_gemm).div_ceil(TOKEN_BLOCK),
    }
}

impl TokenBlocks {
    /// Token range of block `i`.
    fn get(&self, i: usize) -> (usize, usize) {
        if i < self.first {
            let t0 = i * TOKEN_BLOCK;
            (t0, (t0 + TOKEN_BLOCK).min(self.n_gemm))
        } else {
            let t0 = self.n_gemm + (i - self.first) * TOKEN_BLOCK;
            (t0, (t0 + TOKEN_BLOCK).min(self.n))
        }
    }
}

/// Dequantize row `r` of `w` into `dst` (`[n_in]`), e.g. an embedding lookup.
pub fn dequantize_row(w: &QMatrix, r: usize, dst: &mut [f32]) {
    let k = dispatch::kernels(w.ty).expect("QMatrix::new checked the type");
    if w.packed {
        let l = k.packed.expect("packed matrices come from `repack`").layout;
        let gb = l.group_bytes(w.n_in);
        l.dequantize_row(&w.data[r / ROWS * gb..][..gb], r % ROWS, w.n_in, dst);
    } else {
        (k.dequantize)(w.row(r), dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ops, quant};

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }

    #[test]
    fn matmul_matches_dequantized_reference() {
        let pool = ThreadPool::new(3);
        let mut seed = 42u64;
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
        ] {
            let (n_in, n_out) = (256usize, 37usize);
            let wf: Vec<f32> = (0..n_in * n_out).map(|_| lcg(&mut seed)).collect();
            let mut wq = vec![0u8; ty.row_size((n_in * n_out) as u64).unwrap() as usize];
            quant::quantize_row(ty, &wf, &mut wq).unwrap();
            let m = QMatrix::new("w", &wq, ty, n_in, n_out).unwrap();
            let mut wd = vec![0f32; n_in * n_out];
            quant::dequantize_row(ty, &wq, &mut wd).unwrap();
            for n_tokens in [1usize, 3] {
                let x: Vec<f32> = (0..n_tokens * n_in).map(|_| lcg(&mut seed)).collect();
                let mut out = vec![0f32; n_tokens * n_out];
                matmul(
                    &pool,
                    &m,
                    &x,
                    n_tokens,
                    &mut out,
                    &mut MatmulScratch::default(),
                );
                for t in 0..n_tokens {
                    for r in 0..n_out {
                        let want: f64 = (0..n_in)
                            .map(|i| wd[r * n_in + i] as f64 * x[t * n_in + i] as f64)
                            .sum();
                        let got = out[t * n_out + r] as f64;
                        // Activation quantization to 8 bits costs up to ~1% of the row norm.
                        assert!((got - want).abs() < 0.15, "{ty} t{t} r{r}: {got} vs {want}");
                    }
                }
            }
        }
    }

    /// Repacking in steps reports every source byte once, in order, and gives the layout's
    /// one-shot packing of the whole matrix.
    #[test]
    fn repack_in_steps_covers_the_source_and_equals_one_pack() {
        let pool = ThreadPool::new(2);
        let ty = GgmlType::Q8_0;
        let Some(pk) = dispatch::kernels(ty).and_then(|k| k.packed) else {
            return; // this level has no repacked layout for the type: nothing to compare
        };
        // 3 steps and a partial one: 4.25 MiB of Q8_0.
        let (n_in, n_out) = (1024usize, 4096usize);
        let mut seed = 3u64;
        let wf: Vec<f32> = (0..n_in * n_out).map(|_| lcg(&mut seed)).collect();
        let mut wq = vec![0u8; ty.row_size((n_in * n_out) as u64).unwrap() as usize];
        quant::quantize_row(ty, &wf, &mut wq).unwrap();
        let m = QMatrix::new("w", &wq, ty, n_in, n_out).unwrap();
        let mut ranges = Vec::new();
        let copy = repack_releasing(&pool, &m, &mut |r| ranges.push(r)).expect("packed");
        assert!(ranges.len() >= 3, "{ranges:?}");
        let mut end = 0;
        for r in &ranges {
            assert_eq!(r.start, end, "{ranges:?}");
            end = r.end;
        }
        assert_eq!(end, wq.len());
        let mut want = vec![0u8; copy.len()];
        pk.layout.pack(&wq, n_in, n_out, &mut want);
        assert!(copy[..] == want[..], "stepped repack differs from one pack");
    }

    /// Fused groups (shared quantization, RMSNorm, SwiGLU epilogue) give exactly the outputs
    /// of separate `ops::rmsnorm` + `matmul` + `ops::swiglu` calls.
    #[test]
    fn fused_groups_equal_separate_calls() {
        let pool = ThreadPool::new(2);
        let mut seed = 7u64;
        let (n_in, n_out) = (256usize, 72usize);
        let mk = |ty: GgmlType, seed: &mut u64| {
            let wf: Vec<f32> = (0..n_in * n_out).map(|_| lcg(seed)).collect();
            let mut wq = vec![0u8; ty.row_size((n_in * n_out) as u64).unwrap() as usize];
            quant::quantize_row(ty, &wf, &mut wq).unwrap();
            wq
        };
        // Two activation types in one group (Q8_0 and Q8_K), batched rules, odd token counts.
        for tys in [
            [GgmlType::Q4_0, GgmlType::Q4_0],
            [GgmlType::Q4_K, GgmlType::Q6_K],
            [GgmlType::Q8_0, GgmlType::Q4_K],
            [GgmlType::F16, GgmlType::Q4_1],
        ] {
            let data: Vec<Vec<u8>> = tys.iter().map(|&t| mk(t, &mut seed)).collect();
            let m: Vec<QMatrix> = (0..2)
                .map(|i| QMatrix::new("w", &data[i], tys[i], n_in, n_out).unwrap())
                .collect();
            let g: Vec<f32> = (0..n_in).map(|_| 1.0 + 0.5 * lcg(&mut seed)).collect();
            for n_tokens in [1usize, 5, 9, 70] {
                let x: Vec<f32> = (0..n_tokens * n_in).map(|_| 3.0 * lcg(&mut seed)).collect();
                let mut xn = vec![0f32; x.len()];
                for t in 0..n_tokens {
                    let r = t * n_in..(t + 1) * n_in;
                    ops::rmsnorm(&x[r.clone()], &g, 1e-5, &mut xn[r]);
                }
                let mut sc = MatmulScratch::default();
                let mut want = [vec![0f32; n_tokens * n_out], vec![0f32; n_tokens * n_out]];
                for i in 0..2 {
                    matmul(&pool, &m[i], &xn, n_tokens, &mut want[i], &mut sc);
                }
                let (mut a, mut b) = (vec![0f32; n_tokens * n_out], vec![0f32; n_tokens * n_out]);
                let norm = Some(PreNorm {
                    weight: &g,
                    eps: 1e-5,
                });
                matmul_fused(
                    &pool,
                    &mut [(&m[0], &mut a), (&m[1], &mut b)],
                    &x,
                    n_tokens,
                    norm,
                    Epilogue::Store,
                    &mut sc,
                );
                assert_eq!(a, want[0], "{tys:?} n_tokens {n_tokens}");
                assert_eq!(b, want[1], "{tys:?} n_tokens {n_tokens}");
                let mut s = vec![0f32; n_tokens * n_out];
                matmul_fused(
                    &pool,
                    &mut [(&m[0], &mut s), (&m[1], &mut [])],
                    &x,
                    n_tokens,
                    norm,
                    Epilogue::SwiGlu,
                    &mut sc,
                );
                let [w0, w1] = &mut want;
                ops::swiglu(w0, w1);
                assert_eq!(s, want[0], "{tys:?} swiglu n_tokens {n_tokens}");
                let mut acc = x[..n_tokens * n_out].to_vec();
                matmul_fused(
                    &pool,
                    &mut [(&m[1], &mut acc)],
                    &xn,
                    n_tokens,
                    None,
                    Epilogue::Accumulate,
                    &mut sc,
                );
                let mut want_acc = x[..n_tokens * n_out].to_vec();
                ops::add_assign(&mut want_acc, &want[1]);
                assert_eq!(acc, want_acc, "{tys:?} accumulate n_tokens {n_tokens}");
            }
        }
    }

    #[test]
    fn token_blocks_cover_the_batch_and_split_at_n_gemm() {
        for n in [1usize, 5, 64, 65, 130, 512] {
            for n_gemm in [0, n / 2 / 4 * 4, n] {
                let tb = token_blocks(n, n_gemm);
                let mut next = 0;
                for i in 0..tb.len {
                    let (a, b) = tb.get(i);
                    assert_eq!(a, next);
                    assert!(b > a && b - a <= TOKEN_BLOCK);
                    assert!(b <= n_gemm || a >= n_gemm, "{n} {n_gemm}: {a}..{b}");
                    next = b;
                }
                assert_eq!(next, n);
            }
        }
    }

    #[test]
    fn qmatrix_rejects_bad_sizes() {
        assert!(QMatrix::new("w", &[0u8; 10], GgmlType::Q8_0, 32, 1).is_err());
        assert!(QMatrix::new("w", &[0u8; 34], GgmlType::Q8_0, 31, 1).is_err());
        assert!(QMatrix::new("w", &[0u8; 34], GgmlType::Q8_0, 32, 1).is_ok());
    }
}
