//! Element-wise and attention operators, written to follow ggml's numerics (RMSNorm sums in
//! f64, RoPE angles by repeated f32 multiplication, softmax with max subtraction).

use crate::quant::blocks::{as_blocks, BlockQ4_0, BlockQ8_0, QK};
use half::f16;

/// `out = x / sqrt(mean(x²) + eps) * w`, one row. `x`, `w`, `out`: `[n_embd]`.
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    debug_assert!(x.len() == w.len() && x.len() == out.len());
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    rmsnorm_finish(x, sum, w, eps, out);
}

/// The rest of [`rmsnorm`] once the squares are summed: as ggml, the mean and the root taken
/// in float.
#[inline]
fn rmsnorm_finish(x: &[f32], sum: f64, w: &[f32], eps: f32, out: &mut [f32]) {
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0f32 / (mean + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = (v * scale) * g;
    }
}

/// [`rmsnorm`] of every `w.len()`-element row of `x` into the same row of `out`, the rows'
/// sums of squares run four at a time, interleaved: each row's sum is one serial chain of
/// double additions (ggml's order), so four chains overlap where one would wait on each add.
/// Each row's arithmetic is [`rmsnorm`]'s.
pub fn rmsnorm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    assert!(n > 0 && x.len() == out.len() && x.len().is_multiple_of(n));
    let mut xs = x.chunks_exact(4 * n);
    let mut outs = out.chunks_exact_mut(4 * n);
    for (x4, o4) in (&mut xs).zip(&mut outs) {
        let rows: [&[f32]; 4] = std::array::from_fn(|k| &x4[k * n..(k + 1) * n]);
        let mut sum = [0f64; 4];
        for i in 0..n {
            for (s, r) in sum.iter_mut().zip(&rows) {
                *s += (r[i] * r[i]) as f64;
            }
        }
        for (k, o) in o4.chunks_exact_mut(n).enumerate() {
            rmsnorm_finish(rows[k], sum[k], w, eps, o);
        }
    }
    for (xr, o) in xs
        .remainder()
        .chunks_exact(n)
        .zip(outs.into_remainder().chunks_exact_mut(n))
    {
        rmsnorm(xr, w, eps, o);
    }
}

/// Rotary embedding style: `Normal` rotates adjacent pairs (Llama GGUFs), `Neox` rotates the
/// two halves of the rotated dimensions (Qwen2, Gemma, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    Normal,
    Neox,
}

/// RoPE parameters of a model.
#[derive(Clone, Debug)]
pub struct RopeParams {
    pub style: RopeStyle,
    /// Rotated dimensions per head (`rope.dimension_count`), even, ≤ head_dim.
    pub n_dims: usize,
    pub freq_base: f32,
    /// 1 / linear scaling factor.
    pub freq_scale: f32,
    /// Per-pair frequency divisors (`rope_freqs.weight`, Llama 3 scaling), `[n_dims / 2]`.
    pub freq_factors: Option<Vec<f32>>,
    pub attn_factor: f32,
}

impl RopeParams {
    /// cos/sin for position `pos`, interleaved: `cache[2i] = cos θ_i`, `cache[2i+1] = sin θ_i`.
    /// `cache`: `[n_dims]`.
    pub fn cache(&self, pos: i64, cache: &mut [f32]) {
        debug_assert_eq!(cache.len(), self.n_dims);
        let theta_scale = self.freq_base.powf(-2.0 / self.n_dims as f32);
        let mut theta = pos as f32;
        for i in (0..self.n_dims).step_by(2) {
            let ff = self.freq_factors.as_ref().map_or(1.0, |f| f[i / 2]);
            let t = self.freq_scale * (theta / ff);
            cache[i] = t.cos() * self.attn_factor;
            cache[i + 1] = t.sin() * self.attn_factor;
            theta *= theta_scale;
        }
    }

    /// Rotate every head of one token in place. `x`: `[n_heads, head_dim]`; `cache` from
    /// [`RopeParams::cache`]. The level's kernel: all levels give the same bits.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, cache: &[f32]) {
        (crate::dispatch::op_kernels().rope)(self, x, head_dim, cache)
    }

    /// Scalar twin of [`RopeParams::apply`]. Without a compile-time FMA target, `mul_add` is a
    /// library call; the x86 level compiles this same body with FMA enabled (identical
    /// results: FMA is exact).
    #[inline(always)]
    pub fn apply_scalar(&self, x: &mut [f32], head_dim: usize, cache: &[f32]) {
        let n = self.n_dims;
        for head in x.chunks_exact_mut(head_dim) {
            match self.style {
                RopeStyle::Normal => {
                    for i in (0..n).step_by(2) {
                        let (c, s) = (cache[i], cache[i + 1]);
                        let (x0, x1) = (head[i], head[i + 1]);
                        // Fused as GCC compiles ggml's `x0*c - x1*s` (bit-identical rotations).
                        head[i] = x0.mul_add(c, -(x1 * s));
                        head[i + 1] = x0.mul_add(s, x1 * c);
                    }
                }
                RopeStyle::Neox => {
                    let half = n / 2;
                    for i in (0..n).step_by(2) {
                        let (c, s) = (cache[i], cache[i + 1]);
                        let j = i / 2;
                        let (x0, x1) = (head[j], head[j + half]);
                        head[j] = x0.mul_add(c, -(x1 * s));
                        head[j + half] = x0.mul_add(s, x1 * c);
                    }
                }
            }
        }
    }
}

/// ggml's exponential split as `e^x = j · 2^n`: `n` the nearest integer to `x / ln 2` (as a
/// float), `j` the polynomial of the remainder.
#[inline]
fn expf_parts(x: f32) -> (f32, f32) {
    let c = f32::from_bits;
    let r = c(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(c(0x3fb8_aa3b), r); // x / ln 2, rounded to an integer via the magic
    let n = z - r;
    // b = x - n·ln2, with ln2 split in two parts (fnmadd(a, b, c) = c - a·b).
    let b = (-n).mul_add(c(0x35bf_be8e), (-n).mul_add(c(0x3f31_7200), x));
    let u = b * b;
    let j = c(0x3c07_2010)
        .mul_add(b, c(0x3d2b_9f17))
        .mul_add(u, c(0x3e2a_af33).mul_add(b, c(0x3eff_fedb)))
        .mul_add(u, c(0x3f7f_fff6).mul_add(b, 1.0));
    (n, j)
}

/// `e^x` as ggml's vectorized `ggml_v_expf` computes it (a degree-5 polynomial after range
/// reduction by ln 2, accurate to about 1.5 ulp). llama.cpp's SwiGLU uses it, so matching it
/// bit for bit keeps activations, and the 8-bit roundings after them, identical.
#[inline]
pub fn ggml_expf(x: f32) -> f32 {
    let (n, j) = expf_parts(x);
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    // scalef(j, n) = j · 2^n, exact in f64 then rounded once (2^n built from its exponent
    // bits: |n| <= 192 here, well inside f64's normal range).
    (j as f64 * f64::from_bits(((n as i64 + 1023) as u64) << 52)) as f32
}

/// 2^(i/32) rounded to the nearest double, i = 0..32: the table of glibc's `expf`.
const EXP2_32: [u64; 32] = [
    0x3ff0_0000_0000_0000,
    0x3ff0_59b0_d315_8574,
    0x3ff0_b558_6cf9_890f,
    0x3ff1_1301_d012_5b51,
    0x3ff1_72b8_3c7d_517b,
    0x3ff1_d487_3168_b9aa,
    0x3ff2_387a_6e75_6238,
    0x3ff2_9e9d_f51f_dee1,
    0x3ff3_06fe_0a31_b715,
    0x3ff3_71a7_373a_a9cb,
    0x3ff3_dea6_4c12_3422,
    0x3ff4_4e08_6061_892d,
    0x3ff4_bfda_d536_2a27,
    0x3ff5_342b_569d_4f82,
    0x3ff5_ab07_dd48_5429,
    0x3ff6_247e_b03a_5585,
    0x3ff6_a09e_667f_3bcd,
    0x3ff7_1f75_e8ec_5f74,
    0x3ff7_a114_73eb_0187,
    0x3ff8_2589_994c_ce13,
    0x3ff8_ace5_422a_a0db,
    0x3ff9_3737_b0cd_c5e5,
    0x3ff9_c491_82a3_f090,
    0x3ffa_5503_b23e_255d,
    0x3ffa_e89f_995a_d3ad,
    0x3ffb_7f76_f2fb_5e47,
    0x3ffc_199b_dd85_529c,
    0x3ffc_b720_dcef_9069,
    0x3ffd_5818_dcfb_a487,
    0x3ffd_fc97_337b_9b5f,
    0x3ffe_a4af_a2a4_90da,
    0x3fff_5076_5b6e_4540,
];

/// The constants of [`expf_glibc`] (glibc's `__exp2f_data`): the table with each entry's
/// exponent offset taken out (`bits(2^(i/32)) - (i << 47)`, so adding `k << 47` for any `k`
/// with `k % 32 == i` gives `bits(2^(k/32))`), 32/ln 2, the rounding shift and the
/// polynomial.
pub(crate) mod expf_consts {
    pub const TAB: [u64; 32] = {
        let mut t = super::EXP2_32;
        let mut i = 0;
        while i < 32 {
            t[i] = t[i].wrapping_sub((i as u64) << 47);
            i += 1;
        }
        t
    };
    pub const INV_LN2_32: u64 = 0x4047_1547_652b_82fe;
    pub const SHIFT: u64 = 0x4338_0000_0000_0000;
    pub const C0: u64 = 0x3ebc_6af8_4b91_2394;
    pub const C1: u64 = 0x3f2e_bfce_50fa_c4f3;
    pub const C2: u64 = 0x3f96_2e42_ff0c_52d6;
    /// |x| at or above 88 (by its top 12 bits) takes the special cases.
    pub const SPECIAL_TOP: u32 = 0x42b;
    /// Above ln(2^128): overflow to infinity.
    pub const OVERFLOW: u32 = 0x42b1_7217;
    /// Below ln(2^-150): zero.
    pub const UNDERFLOW: u32 = 0xc2cf_f1b4;
    /// Below ln(2^-149): the least subnormal (glibc's "may underflow" result).
    pub const MAY_UNDERFLOW: u32 = 0xc2ce_8ecf;
}

/// `e^x` bit for bit as glibc's `expf` computes it on an FMA machine (the `__expf_fma` variant
/// its ifunc picks): `x·32/ln 2` split into `k + r` in double, `2^(k/32)` from a 32-entry table,
/// a cubic in `r`, one rounding to float. llama.cpp's decode attention calls `expf` for its
/// softmax; with this form the SIMD kernels compute the same exponentials 8 at a time, and the
/// results do not depend on the platform's libm.
#[inline]
pub fn expf_glibc(x: f32) -> f32 {
    use expf_consts::*;
    let bits = x.to_bits();
    if (bits >> 20) & 0x7ff >= SPECIAL_TOP {
        if let Some(y) = expf_special(x) {
            return y;
        }
    }
    let xd = x as f64;
    let (inv, shift) = (f64::from_bits(INV_LN2_32), f64::from_bits(SHIFT));
    let kd = xd.mul_add(inv, shift);
    let ki = kd.to_bits();
    let kd = kd - shift;
    let r = inv.mul_add(xd, -kd);
    let s = f64::from_bits(TAB[(ki & 31) as usize].wrapping_add(ki << 47));
    let z = r.mul_add(f64::from_bits(C0), f64::from_bits(C1));
    let y = r.mul_add(f64::from_bits(C2), 1.0);
    (z.mul_add(r * r, y) * s) as f32
}

/// The special cases of [`expf_glibc`] for `|x| >= 88`: `None` where the main path applies.
#[inline]
pub(crate) fn expf_special(x: f32) -> Option<f32> {
    use expf_consts::*;
    if x == f32::NEG_INFINITY {
        Some(0.0)
    } else if x.is_nan() || x.is_infinite() {
        Some(x + x)
    } else if x > f32::from_bits(OVERFLOW) {
        Some(f32::INFINITY)
    } else if x < f32::from_bits(UNDERFLOW) {
        Some(0.0)
    } else if x < f32::from_bits(MAY_UNDERFLOW) {
        Some(f32::from_bits(1))
    } else {
        None
    }
}

/// ggml's vectorized SiLU: `x / (1 + e^-x)` with [`ggml_expf`].
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + ggml_expf(-x))
}

/// SwiGLU in place: `gate[i] = silu(gate[i]) * up[i]` (the level's kernel; all levels give
/// the same bits).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    (crate::dispatch::op_kernels().swiglu)(gate, up)
}

/// Scalar twin of [`swiglu`]. Without a compile-time FMA target, `mul_add` is a library call;
/// the x86 level compiles this same body with FMA enabled (identical results: FMA is exact).
#[inline(always)]
pub fn swiglu_scalar(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

/// GELU, tanh form, as ggml's `ggml_gelu_f32` compiled by GCC for an FMA target, which
/// contracts `1 + A*x*x` into `fma(A*x, x, 1)`. That matters: without the fused add, one entry
/// of the f16 GELU table (x = -1.999) differs by one f16 ulp from ggml's, enough to turn one
/// of Gemma-3-270M's greedy continuations after 12 tokens.
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF_A: f32 = 0.044715;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (COEF_A * x).mul_add(x, 1.0)).tanh())
}

/// ggml's GELU table: `f16(gelu_tanh(f32(h)))` for every f16 bit pattern `h`.
fn gelu_f16_table() -> &'static [f16] {
    static TABLE: std::sync::OnceLock<Vec<f16>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|b| f16::from_f32(gelu_tanh(f16::from_bits(b).to_f32())))
            .collect()
    })
}

/// GeGLU in place, as ggml's `ggml_vec_geglu_f32` (built with `GGML_GELU_FP16`): `gate[i] =
/// gelu(gate[i]) * up[i]`, GELU looked up for the f16-rounded input, 0 at or below -10 and the
/// identity at or above 10.
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    let table = gelu_f16_table();
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x * u
        } else {
            table[f16::from_f32(x).to_bits() as usize].to_f32() * u
        };
    }
}

/// `y += x`.
pub fn add_assign(y: &mut [f32], x: &[f32]) {
    for (a, &b) in y.iter_mut().zip(x) {
        *a += b;
    }
}

/// Shape of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Usually `1 / sqrt(head_dim)`.
    pub scale: f32,
}

/// Causal attention of one query head over `n_pos` cached positions, with an online softmax
/// (one pass over K and V, no score buffer).
///
/// `q`: `[head_dim]`; `k`, `v`: `[n_pos, n_head_kv * head_dim]` (f16 as cached, or f32 from a
/// quantized cache); `kv_head` selects the head inside each cached row; `out`: `[head_dim]`.
pub fn attend_head<T: Copy + Into<f32>>(
    q: &[f32],
    k: &[T],
    v: &[T],
    n_pos: usize,
    kv_head: usize,
    s: &AttnShape,
    out: &mut [f32],
) {
    let hd = s.head_dim;
    let row = s.n_head_kv * hd;
    let off = kv_head * hd;
    let mut max = f32::NEG_INFINITY;
    let mut sum = 0f32;
    out.fill(0.0);
    let mut kf = [0f32; 512];
    let kf = &mut kf[..hd];
    for p in 0..n_pos {
        let kr = &k[p * row + off..p * row + off + hd];
        for (d, &x) in kf.iter_mut().zip(kr) {
            *d = x.into();
        }
        let mut dot = 0f32;
        for i in 0..hd {
            dot += q[i] * kf[i];
        }
        let score = dot * s.scale;
        let vr = &v[p * row + off..p * row + off + hd];
        if score > max {
            // Rescale what was accumulated under the old maximum.
            let c = (max - score).exp();
            sum *= c;
            for o in out.iter_mut() {
                *o *= c;
            }
            max = score;
        }
        let w = (score - max).exp();
        sum += w;
        for (d, &x) in kf.iter_mut().zip(vr) {
            *d = x.into();
        }
        for i in 0..hd {
            out[i] += w * kf[i];
        }
    }
    let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
    for o in out.iter_mut() {
        *o *= inv;
    }
}

/// Positions per tile of the prompt attention ([`attend_prompt`]).
pub const ATTN_TILE: usize = 64;
/// Lanes of the prompt attention's sum of weights (its SIMD width).
pub const ATTN_LANES: usize = 8;

/// The exponential of the prompt attention's softmax, for `x <= 0` (scores minus their
/// maximum): ggml's polynomial (as [`ggml_expf`]) with the power of two built in f32, and
/// results below 2^-125 flushed to zero (they cannot move a softmax whose largest weight is 1).
/// The SIMD twins compute exactly this.
#[inline]
pub fn exp_attn(x: f32) -> f32 {
    let (n, j) = expf_parts(x);
    // x = -inf gives n = NaN: a zero weight too.
    if n.is_nan() || n < -125.0 {
        return 0.0;
    }
    j * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Prompt attention of one query head over `n_vis` positions of an f32 copy of one sequence's
/// cache, in 64-position tiles (flash-attention style, as llama.cpp's tiled CPU path):
/// the tile's scores, its maximum rescaling the running sum and accumulator once, then the
/// value rows accumulated. This scalar form defines the order the SIMD twins keep: each score
/// is an FMA chain over the head dimension, the weights' sum runs in 8 lanes (position `p`
/// into lane `p % 8`) added up in lane order at the end, and each output element is an FMA
/// chain over positions.
///
/// `q`: `[head_dim]`; `kt`: `[n_head_kv, head_dim, p_pad]` (K transposed, zero beyond the
/// cached positions, `p_pad` a multiple of 64); `v`: `[>= n_vis, n_head_kv * head_dim]`;
/// `out`: `[head_dim]`.
#[allow(clippy::too_many_arguments)]
pub fn attend_prompt_scalar(
    q: &[f32],
    kt: &[f32],
    p_pad: usize,
    v: &[f32],
    n_vis: usize,
    kv_head: usize,
    s: &AttnShape,
    out: &mut [f32],
) {
    let hd = s.head_dim;
    let row = s.n_head_kv * hd;
    let kt = &kt[kv_head * hd * p_pad..(kv_head + 1) * hd * p_pad];
    assert!(n_vis <= p_pad && p_pad.is_multiple_of(ATTN_TILE) && q.len() == hd);
    let mut max = f32::NEG_INFINITY;
    let mut sums = [0f32; ATTN_LANES];
    out.fill(0.0);
    let mut sc = [0f32; ATTN_TILE];
    for p0 in (0..n_vis).step_by(ATTN_TILE) {
        for (l, sv) in sc.iter_mut().enumerate() {
            let mut acc = 0f32;
            for (d, &qd) in q.iter().enumerate() {
                acc = qd.mul_add(kt[d * p_pad + p0 + l], acc);
            }
            *sv = if p0 + l < n_vis {
                acc * s.scale
            } else {
                f32::NEG_INFINITY
            };
        }
        let tile_max = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if tile_max > max {
            let c = exp_attn(max - tile_max);
            sums.iter_mut().for_each(|x| *x *= c);
            out.iter_mut().for_each(|x| *x *= c);
            max = tile_max;
        }
        for (l, sv) in sc.iter_mut().enumerate() {
            *sv = exp_attn(*sv - max);
            sums[l % ATTN_LANES] += *sv;
        }
        for (l, &w) in sc.iter().enumerate().take(n_vis - p0) {
            let vr = &v[(p0 + l) * row + kv_head * hd..][..hd];
            for (o, &x) in out.iter_mut().zip(vr) {
                *o = w.mul_add(x, *o);
            }
        }
    }
    let sum = sums.iter().fold(0f32, |a, &b| a + b);
    let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
    out.iter_mut().for_each(|o| *o *= inv);
}

/// [`attend_prompt_scalar`] or its SIMD twin (bit-identical), by the dispatch level.
#[allow(clippy::too_many_arguments)]
pub fn attend_prompt(
    q: &[f32],
    kt: &[f32],
    p_pad: usize,
    v: &[f32],
    n_vis: usize,
    kv_head: usize,
    s: &AttnShape,
    out: &mut [f32],
) {
    (crate::dispatch::op_kernels().attend_prompt)(q, kt, p_pad, v, n_vis, kv_head, s, out)
}

/// A prompt-attention kernel (see [`attend_prompt_scalar`]).
pub type AttendPromptFn = fn(&[f32], &[f32], usize, &[f32], usize, usize, &AttnShape, &mut [f32]);

/// `kt[h, d, p] = k[p, h * head_dim + d]` for `p < n_pos`, zero up to `p_pad`: the transposed
/// f32 K that [`attend_prompt`] reads, from `n_pos` cached rows (f16, or f32 from a quantized
/// cache).
pub fn transpose_k<T: Copy + Into<f32>>(
    k: &[T],
    n_pos: usize,
    s: &AttnShape,
    p_pad: usize,
    kt: &mut [f32],
) {
    let (hd, row) = (s.head_dim, s.n_head_kv * s.head_dim);
    assert!(k.len() >= n_pos * row && kt.len() >= row * p_pad && n_pos <= p_pad);
    for (hdim, col) in kt[..row * p_pad].chunks_exact_mut(p_pad).enumerate() {
        let (h, d) = (hdim / hd, hdim % hd);
        for (p, o) in col[..n_pos].iter_mut().enumerate() {
            *o = k[p * row + h * hd + d].into();
        }
        col[n_pos..].fill(0.0);
    }
}

/// Positions per block of the paged KV cache.
pub const KV_BLOCK: usize = 16;

/// One layer's cached keys (or values) of one sequence, in blocks: `data` is the layer's whole
/// store, `[n_blocks, n_head_kv, KV_BLOCK, head_dim / T::QK]` (`T`: f16, or a Q8_0 / Q4_0 block
/// of 32 elements), and `table` the sequence's block ids in position order: position `p` is row
/// `p % KV_BLOCK` of block `table[p / KV_BLOCK]`. Each KV head's rows of a block are
/// contiguous, so one GQA group reads whole lines.
#[derive(Clone, Copy, Debug)]
pub struct KvBlocks<'a, T: KvElem = f16> {
    pub data: &'a [T],
    pub table: &'a [u32],
}

/// An element of a cached row: an f16 value, or a quant block of `QK` values.
pub trait KvElem: Copy + std::fmt::Debug + 'static {
    /// Values per element.
    const QK: usize;
}
impl KvElem for f16 {
    const QK: usize = 1;
}
impl KvElem for BlockQ8_0 {
    const QK: usize = QK;
}
impl KvElem for BlockQ4_0 {
    const QK: usize = QK;
}

/// Where position `p` of KV head `h` starts in a block store (`[n_blocks, n_head_kv, KV_BLOCK,
/// head_dim]`) when `p` lives in block `block`: the one statement of the block layout.
#[inline]
pub fn kv_row_offset(block: usize, h: usize, p: usize, n_head_kv: usize, head_dim: usize) -> usize {
    ((block * n_head_kv + h) * KV_BLOCK + p % KV_BLOCK) * head_dim
}

impl<'a, T: KvElem> KvBlocks<'a, T> {
    /// Position `p` of KV head `h`: `[head_dim / T::QK]`.
    #[inline]
    pub fn row(&self, p: usize, h: usize, s: &AttnShape) -> &'a [T] {
        let n = s.head_dim / T::QK;
        let b = self.table[p / KV_BLOCK] as usize;
        let at = kv_row_offset(b, h, p, s.n_head_kv, n);
        &self.data[at..at + n]
    }
}

/// What one decode-attention call reads: KV head `kv_head` at positions `first..n_pos` of one
/// sequence (`first` is a sliding window's start, 0 without one).
#[derive(Clone, Copy, Debug)]
pub struct KvSpan<'a> {
    pub k: KvBlocks<'a>,
    pub v: KvBlocks<'a>,
    pub kv_head: usize,
    pub first: usize,
    pub n_pos: usize,
}

/// Attention of the query heads in `q` (`[n_q, head_dim]`, one GQA group reading
/// `kv.kv_head`; `out` likewise) for batches under 64 tokens (decode included), with
/// llama.cpp's CPU flash-attention numerics for an F16 cache: the query is rounded to f16,
/// scores are f16·f16 dot products accumulated in f32, and the value accumulator is kept in
/// f16 (each update rounded), with the online-softmax sum in f32. Matching these roundings
/// keeps greedy decoding token-exact with llama.cpp; [`attend_head`] is the f32 form.
pub fn attend_head_decode(q: &[f32], kv: &KvSpan, s: &AttnShape, out: &mut [f32]) {
    (crate::dispatch::op_kernels().attend_decode)(q, kv, s, out)
}

/// Scalar twin of [`attend_head_decode`] for `q.len() / head_dim` query heads sharing
/// `kv.kv_head` (a GQA group; `out` is `[n_q, head_dim]`): each head as
/// [`attend_head_decode_scalar`].
pub fn attend_group_decode_scalar(q: &[f32], kv: &KvSpan, s: &AttnShape, out: &mut [f32]) {
    let hd = s.head_dim;
    for (qh, oh) in q.chunks_exact(hd).zip(out.chunks_exact_mut(hd)) {
        attend_head_decode_scalar(qh, kv, s, oh);
    }
}

/// The decode attention signature (see [`attend_head_decode`]).
pub type AttendFn = fn(&[f32], &KvSpan, &AttnShape, &mut [f32]);

/// Scalar twin of [`attend_head_decode`]: the reference the SIMD forms must equal bit for bit.
pub fn attend_head_decode_scalar(q: &[f32], kv: &KvSpan, s: &AttnShape, out: &mut [f32]) {
    let hd = s.head_dim;
    let mut qh = [0f32; 512];
    let qh = &mut qh[..hd];
    for (d, &x) in qh.iter_mut().zip(q) {
        *d = f16::from_f32(x).to_f32();
    }
    // f16 accumulator, held as the f32 value of each f16.
    let mut acc = [0f32; 512];
    let acc = &mut acc[..hd];
    let mut max = f32::NEG_INFINITY;
    let mut sum = 0f32;
    for p in kv.first..kv.n_pos {
        let kr = kv.k.row(p, kv.kv_head, s);
        let score = dot_f16_ggml_order(kr, qh) * s.scale;
        let mut ms = 1.0f32;
        let mut vs = 1.0f32;
        if score > max {
            let old = max;
            max = score;
            ms = expf_glibc(old - max);
            for a in acc.iter_mut() {
                *a = f16::from_f32(*a * ms).to_f32();
            }
        } else {
            vs = expf_glibc(score - max);
        }
        let vr = kv.v.row(p, kv.kv_head, s);
        for i in 0..hd {
            acc[i] = f16::from_f32(vr[i].to_f32().mul_add(vs, acc[i])).to_f32();
        }
        sum = sum.mul_add(ms, vs); // contracted as GCC compiles ggml's `S*ms + vs`
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for (o, &a) in out.iter_mut().zip(acc.iter()) {
        *o = a * inv;
    }
}

/// `[n_pos, n_head_kv * head_dim]` rows (the layout [`attend_head`] reads) into the blocks of
/// `table` in a `[n_blocks, n_head_kv, KV_BLOCK, head_dim]` store; for tests and benchmarks.
pub fn rows_to_blocks(rows: &[f16], n_pos: usize, s: &AttnShape, table: &[u32], store: &mut [f16]) {
    let hd = s.head_dim;
    for p in 0..n_pos {
        for h in 0..s.n_head_kv {
            let b = table[p / KV_BLOCK] as usize;
            let at = kv_row_offset(b, h, p, s.n_head_kv, hd);
            let src = (p * s.n_head_kv + h) * hd;
            store[at..at + hd].copy_from_slice(&rows[src..src + hd]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Quantized KV caches (`--cache-type-k/-v q8_0|q4_0`)

/// The element type of a KV cache's keys, or of its values, named as llama.cpp names them
/// (`-ctk`, `-ctv`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    /// IEEE half precision (llama.cpp's default).
    #[default]
    F16,
    /// Blocks of 32 values: an f16 scale and 32 signed bytes (34 bytes, 8.5 bits per value).
    Q8_0,
    /// Blocks of 32 values: an f16 scale and 32 nibbles (18 bytes, 4.5 bits per value).
    Q4_0,
}

impl KvType {
    pub const ALL: [KvType; 3] = [KvType::F16, KvType::Q8_0, KvType::Q4_0];

    /// llama.cpp's name (`ggml_type_name`).
    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
        }
    }

    /// Parses a name (any case).
    pub fn from_name(s: &str) -> Option<KvType> {
        KvType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s.trim()))
    }

    pub fn ggml_type(self) -> dino_core::GgmlType {
        match self {
            KvType::F16 => dino_core::GgmlType::F16,
            KvType::Q8_0 => dino_core::GgmlType::Q8_0,
            KvType::Q4_0 => dino_core::GgmlType::Q4_0,
        }
    }

    /// Values per stored element: 1 for f16, 32 for the block types.
    pub fn block_size(self) -> usize {
        match self {
            KvType::F16 => 1,
            KvType::Q8_0 | KvType::Q4_0 => QK,
        }
    }

    /// Bytes of one cached row of `head_dim` values; an error (naming the type and the head
    /// size) when the row is not a whole number of blocks.
    pub fn row_bytes(self, head_dim: usize) -> Result<usize, String> {
        let bs = self.block_size();
        if head_dim == 0 || !head_dim.is_multiple_of(bs) {
            return Err(format!(
                "KV cache type {self} needs a head size that is a multiple of {bs}; this model's is {head_dim}"
            ));
        }
        let per_block = match self {
            KvType::F16 => 2,
            KvType::Q8_0 => std::mem::size_of::<BlockQ8_0>(),
            KvType::Q4_0 => std::mem::size_of::<BlockQ4_0>(),
        };
        Ok(head_dim / bs * per_block)
    }

    /// Store one row `src` (`[n]`) into `dst` (`row_bytes(n)` bytes) as llama.cpp's CPU backend
    /// writes its cache (the type's `from_float`): f16 rounded to nearest even; Q8_0 by ggml's
    /// x86 quantizer (`127/amax`, ties to even: the activations' rule, the same bytes at every
    /// kernel level); Q4_0 by its reference quantizer.
    pub fn quantize_row(self, src: &[f32], dst: &mut [u8]) {
        match self {
            KvType::F16 => crate::scalar::float::f32_to_f16(src, dst),
            KvType::Q8_0 => quantize_q8_0_act(src, dst),
            KvType::Q4_0 => crate::scalar::legacy::quantize_q4_0(src, dst),
        }
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvType {
    type Err = String;
    fn from_str(s: &str) -> Result<KvType, String> {
        KvType::from_name(s).ok_or_else(|| {
            let names: Vec<&str> = KvType::ALL.iter().map(|t| t.name()).collect();
            format!("unknown KV cache type '{s}' (one of: {})", names.join(", "))
        })
    }
}

/// Q8_0 activations (the query of a quantized-key attention) with the level's quantizer:
/// ggml's x86 rule, byte-identical at every level for finite input.
#[inline]
fn quantize_q8_0_act(src: &[f32], dst: &mut [u8]) {
    let k = crate::dispatch::kernels(dino_core::GgmlType::Q8_0).expect("Q8_0 has kernels");
    (k.quantize_act)(src, dst)
}

/// One layer's keys or values of one sequence, in the cache's element type.
#[derive(Clone, Copy, Debug)]
pub enum KvRows<'a> {
    F16(KvBlocks<'a, f16>),
    Q8_0(KvBlocks<'a, BlockQ8_0>),
    Q4_0(KvBlocks<'a, BlockQ4_0>),
}

impl KvRows<'_> {
    pub fn kv_type(&self) -> KvType {
        match self {
            KvRows::F16(_) => KvType::F16,
            KvRows::Q8_0(_) => KvType::Q8_0,
            KvRows::Q4_0(_) => KvType::Q4_0,
        }
    }

    /// Position `p` of KV head `h` as f32 (`out`: `[head_dim]`), exactly as ggml's `to_float`
    /// gives it (`q · d` for the block types).
    pub fn row_f32(&self, p: usize, h: usize, s: &AttnShape, out: &mut [f32]) {
        match self {
            KvRows::F16(b) => {
                half::slice::HalfFloatSliceExt::convert_to_f32_slice(b.row(p, h, s), out)
            }
            KvRows::Q8_0(b) => dequantize_q8_0_blocks(b.row(p, h, s), out),
            KvRows::Q4_0(b) => dequantize_q4_0_blocks(b.row(p, h, s), out),
        }
    }
}

/// `out[32 i + j] = qs[j] · d` of block `i` (ggml's `dequantize_row_q8_0`).
pub fn dequantize_q8_0_blocks(x: &[BlockQ8_0], out: &mut [f32]) {
    for (b, o) in x.iter().zip(out.chunks_exact_mut(QK)) {
        let d = b.d();
        for (o, &q) in o.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

/// `out[32 i + j] = (nibble j - 8) · d` of block `i`, low nibbles first (ggml's
/// `dequantize_row_q4_0`).
pub fn dequantize_q4_0_blocks(x: &[BlockQ4_0], out: &mut [f32]) {
    for (b, o) in x.iter().zip(out.chunks_exact_mut(QK)) {
        let d = b.d();
        for j in 0..QK / 2 {
            o[j] = ((b.qs[j] & 0x0F) as i32 - 8) as f32 * d;
            o[j + QK / 2] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// What one decode-attention call reads from a cache of any element types: KV head `kv_head`
/// at positions `first..n_pos` of one sequence (see [`KvSpan`]).
#[derive(Clone, Copy, Debug)]
pub struct KvView<'a> {
    pub k: KvRows<'a>,
    pub v: KvRows<'a>,
    pub kv_head: usize,
    pub first: usize,
    pub n_pos: usize,
}

impl<'a> KvView<'a> {
    /// The f16 span, when keys and values are both f16.
    pub fn f16(&self) -> Option<KvSpan<'a>> {
        match (self.k, self.v) {
            (KvRows::F16(k), KvRows::F16(v)) => Some(KvSpan {
                k,
                v,
                kv_head: self.kv_head,
                first: self.first,
                n_pos: self.n_pos,
            }),
            _ => None,
        }
    }
}

/// Decode attention of a GQA group (as [`attend_head_decode`]) over a cache of any element
/// types: f16 keys and values take [`attend_head_decode`] (llama.cpp's f16 arithmetic); any
/// quantized part takes the level's twin of [`attend_group_decode_q_scalar`].
pub fn attend_decode(q: &[f32], kv: &KvView, s: &AttnShape, out: &mut [f32]) {
    match kv.f16() {
        Some(span) => attend_head_decode(q, &span, s, out),
        None => (crate::dispatch::op_kernels().attend_decode_q)(q, kv, s, out),
    }
}

/// The quantized-cache decode attention signature (see [`attend_group_decode_q_scalar`]).
pub type AttendQFn = fn(&[f32], &KvView, &AttnShape, &mut [f32]);

/// Largest head size of the decode kernels (their per-head buffers live on the stack).
pub const MAX_HEAD_DIM: usize = 512;

/// Scalar twin of the decode attention over a cache with quantized keys or values, for the
/// query heads in `q` (`[n_q, head_dim]`, one GQA group; `out` likewise): the reference the
/// SIMD forms must equal bit for bit. As llama.cpp's one-chunk CPU flash attention
/// (`ggml_compute_forward_flash_attn_ext_f16_one_chunk`) with a K or V of type Q8_0 / Q4_0:
/// - the query is converted to K's dot type: rounded to f16 for f16 keys, quantized to Q8_0
///   (ggml's x86 rule) for Q8_0 / Q4_0 keys; a score is K's dot product in ggml's x86 order
///   ([`dot_f16_ggml_order`], [`dot_q8_0_lanes`], [`dot_q4_0_lanes`]) times the scale;
/// - the online softmax is the f16 form's (glibc's `expf`, `S = S·ms + vs` fused);
/// - f16 values accumulate in f16 as in [`attend_head_decode_scalar`]; quantized values are
///   converted to f32 (`q · d`) and accumulated in f32: `acc = fma(v, vs, acc)`, and
///   `acc *= ms` at a new maximum.
pub fn attend_group_decode_q_scalar(q: &[f32], kv: &KvView, s: &AttnShape, out: &mut [f32]) {
    let hd = s.head_dim;
    for (qh, oh) in q.chunks_exact(hd).zip(out.chunks_exact_mut(hd)) {
        attend_head_decode_q_scalar(qh, kv, s, oh);
    }
}

/// The query of one head in K's dot type (a stack temporary: the variants' sizes do not
/// matter).
#[allow(clippy::large_enum_variant)]
enum QueryDot {
    /// Rounded to f16, held as f32.
    F16([f32; MAX_HEAD_DIM]),
    /// Q8_0 blocks, as bytes.
    Q8([u8; MAX_HEAD_DIM / QK * std::mem::size_of::<BlockQ8_0>()]),
}

impl QueryDot {
    fn new(q: &[f32], k: KvType) -> QueryDot {
        assert!(q.len() <= MAX_HEAD_DIM);
        match k {
            KvType::F16 => {
                let mut qh = [0f32; MAX_HEAD_DIM];
                for (d, &x) in qh.iter_mut().zip(q) {
                    *d = f16::from_f32(x).to_f32();
                }
                QueryDot::F16(qh)
            }
            KvType::Q8_0 | KvType::Q4_0 => {
                let mut qb = [0u8; MAX_HEAD_DIM / QK * std::mem::size_of::<BlockQ8_0>()];
                let n = q.len() / QK * std::mem::size_of::<BlockQ8_0>();
                crate::scalar::legacy::quantize_q8_0_act(q, &mut qb[..n]);
                QueryDot::Q8(qb)
            }
        }
    }
}

fn attend_head_decode_q_scalar(q: &[f32], kv: &KvView, s: &AttnShape, out: &mut [f32]) {
    let hd = s.head_dim;
    let nb = hd / QK;
    let qd = QueryDot::new(&q[..hd], kv.k.kv_type());
    let f16_acc = matches!(kv.v, KvRows::F16(_));
    // The value accumulator: f16 values held as f32 for f16 V, f32 otherwise.
    let mut acc = [0f32; MAX_HEAD_DIM];
    let acc = &mut acc[..hd];
    let mut vf = [0f32; MAX_HEAD_DIM];
    let vf = &mut vf[..hd];
    let mut max = f32::NEG_INFINITY;
    let mut sum = 0f32;
    for p in kv.first..kv.n_pos {
        let dot = match (&kv.k, &qd) {
            (KvRows::F16(k), QueryDot::F16(qh)) => {
                dot_f16_ggml_order(k.row(p, kv.kv_head, s), &qh[..hd])
            }
            (KvRows::Q8_0(k), QueryDot::Q8(qb)) => {
                dot_q8_0_lanes(k.row(p, kv.kv_head, s), &as_blocks(qb)[..nb])
            }
            (KvRows::Q4_0(k), QueryDot::Q8(qb)) => {
                dot_q4_0_lanes(k.row(p, kv.kv_head, s), &as_blocks(qb)[..nb])
            }
            _ => unreachable!("the query follows the key type"),
        };
        let score = dot * s.scale;
        let mut ms = 1.0f32;
        let mut vs = 1.0f32;
        if score > max {
            let old = max;
            max = score;
            ms = expf_glibc(old - max);
            for a in acc.iter_mut() {
                *a = if f16_acc {
                    f16::from_f32(*a * ms).to_f32()
                } else {
                    *a * ms
                };
            }
        } else {
            vs = expf_glibc(score - max);
        }
        match &kv.v {
            KvRows::F16(v) => {
                let vr = v.row(p, kv.kv_head, s);
                for i in 0..hd {
                    acc[i] = f16::from_f32(vr[i].to_f32().mul_add(vs, acc[i])).to_f32();
                }
            }
            v => {
                v.row_f32(p, kv.kv_head, s, vf);
                for (a, &x) in acc.iter_mut().zip(vf.iter()) {
                    *a = x.mul_add(vs, *a);
                }
            }
        }
        sum = sum.mul_add(ms, vs);
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for (o, &a) in out.iter_mut().zip(acc.iter()) {
        *o = a * inv;
    }
}

/// The Walsh–Hadamard rotation llama.cpp applies to queries, keys and values when its KV
/// cache is quantized (`llama_mul_mat_hadamard`, which ggml's CPU backend computes with
/// `ggml_compute_forward_fwht`): each chunk of `n` values (`n` a power of two) becomes `H·x`,
/// `H` the orthonormal `n × n` Sylvester–Hadamard matrix (`H·H = I`, so applying it twice
/// gives `x` back up to rounding). Rotating queries and keys alike leaves their dot products
/// unchanged, but spreads a channel's outlier over the whole chunk, so the 32-value blocks
/// quantize with far less error. The arithmetic is ggml's: every value times `1/√n` first,
/// then butterflies `(u + v, u − v)` over strides 1, 2, 4, … (each value sees the same
/// operations in the same order whatever the order of independent butterflies, so every
/// level's kernel gives the same bits).
pub fn fwht(x: &mut [f32], n: usize) {
    (crate::dispatch::op_kernels().fwht)(x, n)
}

/// Scalar twin of [`fwht`]: strides 1, 2 and 4 within each group of eight values, then the
/// wider strides across the chunk. The x86 level compiles this same body with AVX2.
#[inline(always)]
pub fn fwht_scalar(x: &mut [f32], n: usize) {
    assert!(n.is_power_of_two() && x.len().is_multiple_of(n));
    let scale = 1.0 / (n as f32).sqrt();
    let butterflies = |c: &mut [f32], len: usize| {
        for pair in c.chunks_exact_mut(2 * len) {
            let (a, b) = pair.split_at_mut(len);
            for (u, v) in a.iter_mut().zip(b.iter_mut()) {
                let (x, y) = (*u, *v);
                *u = x + y;
                *v = x - y;
            }
        }
    };
    for c in x.chunks_exact_mut(n) {
        if n < 8 {
            c.iter_mut().for_each(|v| *v *= scale);
            let mut len = 1;
            while len < n {
                butterflies(c, len);
                len <<= 1;
            }
            continue;
        }
        for g in c.chunks_exact_mut(8) {
            let mut v: [f32; 8] = std::array::from_fn(|i| g[i] * scale);
            for (len, firsts) in [(1, [0, 2, 4, 6]), (2, [0, 1, 4, 5]), (4, [0, 1, 2, 3])] {
                for i in firsts {
                    let (a, b) = (v[i], v[i + len]);
                    v[i] = a + b;
                    v[i + len] = a - b;
                }
            }
            g.copy_from_slice(&v);
        }
        let mut len = 8;
        while len < n {
            butterflies(c, len);
            len <<= 1;
        }
    }
}

/// ggml's `hsum_float_8`: ((0 + 4) + (2 + 6)) + ((1 + 5) + (3 + 7)).
#[inline]
pub fn hsum_lanes8(a: &[f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// Q8_0 keys · a Q8_0 query summed as ggml's AVX2 `ggml_vec_dot_q8_0_q8_0`: per block, eight
/// exact integer sums of four consecutive products (lane `l`: values `4l..4l + 4`), each added
/// into its float lane as `fma(d_k · d_q, sum, lane)`; then [`hsum_lanes8`].
pub fn dot_q8_0_lanes(k: &[BlockQ8_0], q: &[BlockQ8_0]) -> f32 {
    let mut acc = [0f32; 8];
    for (bk, bq) in k.iter().zip(q) {
        let d = bk.d() * bq.d();
        for (l, a) in acc.iter_mut().enumerate() {
            let mut sum = 0i32;
            for j in 4 * l..4 * l + 4 {
                sum += bk.qs[j] as i32 * bq.qs[j] as i32;
            }
            *a = d.mul_add(sum as f32, *a);
        }
    }
    hsum_lanes8(&acc)
}

/// Q4_0 keys · a Q8_0 query summed as ggml's AVX2 `ggml_vec_dot_q4_0_q8_0` (values `nibble -
/// 8`, low nibbles first; then as [`dot_q8_0_lanes`]).
pub fn dot_q4_0_lanes(k: &[BlockQ4_0], q: &[BlockQ8_0]) -> f32 {
    let mut acc = [0f32; 8];
    for (bk, bq) in k.iter().zip(q) {
        let d = bk.d() * bq.d();
        for (l, a) in acc.iter_mut().enumerate() {
            let mut sum = 0i32;
            for j in 4 * l..4 * l + 4 {
                let n = if j < QK / 2 {
                    bk.qs[j] & 0x0F
                } else {
                    bk.qs[j - QK / 2] >> 4
                };
                sum += (n as i32 - 8) * bq.qs[j] as i32;
            }
            *a = d.mul_add(sum as f32, *a);
        }
    }
    hsum_lanes8(&acc)
}

/// Rows of `[n_pos, n_head_kv * head_dim]` f32 values stored into the blocks of `table` of a
/// `[n_blocks, n_head_kv, KV_BLOCK, head_dim / 32]` store of type `ty`'s blocks (as bytes),
/// each row quantized as the cache stores it ([`KvType::quantize_row`]); for tests and
/// benchmarks.
pub fn rows_to_blocks_q(
    ty: KvType,
    rows: &[f32],
    n_pos: usize,
    s: &AttnShape,
    table: &[u32],
    store: &mut [u8],
) {
    let hd = s.head_dim;
    let rb = ty.row_bytes(hd).expect("a whole number of blocks");
    for p in 0..n_pos {
        for h in 0..s.n_head_kv {
            let b = table[p / KV_BLOCK] as usize;
            let at = kv_row_offset(b, h, p, s.n_head_kv, rb);
            let src = (p * s.n_head_kv + h) * hd;
            ty.quantize_row(&rows[src..src + hd], &mut store[at..at + rb]);
        }
    }
}

/// f16 · f16 dot product (the query already rounded to f16, held as f32) summed in the order
/// of ggml's vectorized `ggml_vec_dot_f16` with 16-lane registers: four accumulators over
/// 64-element steps (each product is exact in f32), reduced pairwise, then across lanes
/// 8+8, 4+4, (0+2)+(1+3); a tail past the last whole step is added in double.
pub fn dot_f16_ggml_order(k: &[f16], q: &[f32]) -> f32 {
    let n = k.len().min(q.len());
    let np = n & !63;
    let mut acc = [[0f32; 16]; 4];
    for i in (0..np).step_by(64) {
        for (j, a) in acc.iter_mut().enumerate() {
            for (l, a) in a.iter_mut().enumerate() {
                let idx = i + 16 * j + l;
                *a = k[idx].to_f32().mul_add(q[idx], *a);
            }
        }
    }
    let mut a = [0f32; 16];
    for l in 0..16 {
        a[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    }
    let t3: [f32; 8] = std::array::from_fn(|i| a[8 + i] + a[i]);
    let t6: [f32; 4] = std::array::from_fn(|i| t3[4 + i] + t3[i]);
    let mut sum = ((t6[0] + t6[2]) + (t6[1] + t6[3])) as f64;
    for i in np..n {
        sum += (k[i].to_f32() * q[i]) as f64;
    }
    sum as f32
}

/// `log softmax(logits)[target]`, computed in f64 as llama.cpp's perplexity tool does.
pub fn log_softmax_at(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // As llama-perplexity: expf in float, summed in double.
    let sum: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    (logits[target] - max) as f64 - sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The interleaved rows form normalizes each row exactly as `rmsnorm` alone: 1 to 9 rows
    /// (groups of four and a remainder), wide value ranges, zero rows.
    #[test]
    fn rmsnorm_rows_equals_rmsnorm() {
        let mut seed = 3u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        for n in [1usize, 7, 64, 576] {
            let w: Vec<f32> = (0..n).map(|_| 1.0 + next()).collect();
            for rows in 1..=9 {
                let x: Vec<f32> = (0..rows * n)
                    .map(|i| match i % 11 {
                        0 => next() * 1e4,
                        1 => next() * 1e-4,
                        _ if i / n == 2 => 0.0,
                        _ => next() * 3.0,
                    })
                    .collect();
                let mut got = vec![0f32; x.len()];
                rmsnorm_rows(&x, &w, 1e-5, &mut got);
                for (r, g) in x.chunks(n).zip(got.chunks(n)) {
                    let mut want = vec![0f32; n];
                    rmsnorm(r, &w, 1e-5, &mut want);
                    assert!(g.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
                }
            }
        }
    }

    /// GeGLU follows ggml's table form: GELU of the f16-rounded input, rounded to f16, times up;
    /// 0 at or below -10 and `x * up` at or above 10.
    #[test]
    fn geglu_is_ggmls_f16_table_form() {
        let xs = [
            -12.0f32, -10.0, -9.99, -3.3, -0.5, -1e-4, 0.0, 1e-4, 0.7, 2.5, 9.99, 10.0, 37.0,
        ];
        let up: Vec<f32> = (0..xs.len()).map(|i| 0.5 + i as f32 * 0.25).collect();
        let mut g = xs.to_vec();
        geglu(&mut g, &up);
        for ((&x, &u), &got) in xs.iter().zip(&up).zip(&g) {
            let want = if x <= -10.0 {
                0.0
            } else if x >= 10.0 {
                x * u
            } else {
                let h = f16::from_f32(x).to_f32();
                f16::from_f32(gelu_tanh(h)).to_f32() * u
            };
            assert_eq!(got.to_bits(), want.to_bits(), "x {x}");
        }
        // GELU itself: 0 at 0, odd part small, close to x for large x.
        assert_eq!(gelu_tanh(0.0), 0.0);
        assert!((gelu_tanh(3.0) - 2.99636).abs() < 1e-4);
        assert!((gelu_tanh(-1.0) + 0.158808).abs() < 1e-4);
    }

    /// The f16 GELU table equals ggml's entry for entry: an FNV-1a hash of the 63,488 finite
    /// entries of `ggml_table_gelu_f16`, read from llama-cpp-python 0.3.36's libggml-cpu.so
    /// after `ggml_cpu_init`, plus the entry the unfused formula gets wrong.
    #[test]
    fn gelu_table_equals_ggmls() {
        let table = gelu_f16_table();
        assert_eq!(table[0xBFFF].to_bits(), 43475, "x = -1.999");
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (b, y) in table.iter().enumerate() {
            if f16::from_bits(b as u16).is_finite() {
                for byte in y.to_bits().to_le_bytes() {
                    h ^= byte as u64;
                    h = h.wrapping_mul(0x100_0000_01b3);
                }
            }
        }
        assert_eq!(h, 0xdd1e_e17e_273b_67fa);
    }

    #[test]
    fn tiled_prompt_attention_matches_the_online_form() {
        let sh = AttnShape {
            n_head: 4,
            n_head_kv: 2,
            head_dim: 64,
            scale: 0.125,
        };
        let row = sh.n_head_kv * sh.head_dim;
        for n_pos in [1usize, 63, 64, 65, 200] {
            let kf: Vec<f32> = (0..n_pos * row)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 13.0)
                .collect();
            let vf: Vec<f32> = (0..n_pos * row)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 7.0)
                .collect();
            let kh: Vec<f16> = kf.iter().map(|&x| f16::from_f32(x)).collect();
            let vh: Vec<f16> = vf.iter().map(|&x| f16::from_f32(x)).collect();
            let vr: Vec<f32> = vh.iter().map(|x| x.to_f32()).collect();
            let p_pad = n_pos.div_ceil(ATTN_TILE) * ATTN_TILE;
            let mut kt = vec![f32::NAN; row * p_pad];
            transpose_k(&kh, n_pos, &sh, p_pad, &mut kt);
            let q: Vec<f32> = (0..64).map(|i| (i as f32 * 0.3).cos()).collect();
            for kv_head in 0..2 {
                let mut a = vec![0f32; 64];
                let mut b = vec![0f32; 64];
                attend_head(&q, &kh, &vh, n_pos, kv_head, &sh, &mut a);
                attend_prompt_scalar(&q, &kt, p_pad, &vr, n_pos, kv_head, &sh, &mut b);
                for (x, y) in a.iter().zip(&b) {
                    assert!(
                        (x - y).abs() <= 1e-4 * (1.0 + x.abs()),
                        "n_pos {n_pos}: {x} vs {y}"
                    );
                }
            }
        }
    }

    #[test]
    fn exp_attn_tracks_expf() {
        for i in 0..2000 {
            let x = -(i as f32) * 0.05;
            let (a, b) = (exp_attn(x), x.exp());
            assert!((a - b).abs() <= 4e-7 * b + 1e-37, "{x}: {a} vs {b}");
        }
        assert_eq!(exp_attn(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_attn(0.0), 1.0);
    }

    #[test]
    fn rmsnorm_unit_rms() {
        let x: Vec<f32> = (0..64).map(|i| i as f32 - 30.0).collect();
        let w = vec![1.0; 64];
        let mut out = vec![0.0; 64];
        rmsnorm(&x, &w, 1e-6, &mut out);
        let rms = (out.iter().map(|v| v * v).sum::<f32>() / 64.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-4);
    }

    #[test]
    fn rope_preserves_norm_and_position_zero_is_identity() {
        for style in [RopeStyle::Normal, RopeStyle::Neox] {
            let p = RopeParams {
                style,
                n_dims: 8,
                freq_base: 10000.0,
                freq_scale: 1.0,
                freq_factors: None,
                attn_factor: 1.0,
            };
            let x: Vec<f32> = (0..16).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut c = vec![0.0; 8];
            p.cache(0, &mut c);
            let mut y = x.clone();
            p.apply(&mut y, 8, &c);
            assert_eq!(x, y);
            p.cache(17, &mut c);
            p.apply(&mut y, 8, &c);
            let n0: f32 = x.iter().map(|v| v * v).sum();
            let n1: f32 = y.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-4);
            assert_ne!(x, y);
        }
    }

    #[test]
    fn rope_linear_scaling_and_llama3_freq_factors_scale_the_angles() {
        let base = RopeParams {
            style: RopeStyle::Normal,
            n_dims: 8,
            freq_base: 500000.0,
            freq_scale: 1.0,
            freq_factors: None,
            attn_factor: 1.0,
        };
        let (mut a, mut b) = (vec![0.0; 8], vec![0.0; 8]);
        // Linear scaling by 4: position 40 rotates like unscaled position 10.
        let linear = RopeParams {
            freq_scale: 0.25,
            ..base.clone()
        };
        linear.cache(40, &mut a);
        base.cache(10, &mut b);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
        // Frequency factors divide each pair's angle (Llama 3 `rope_freqs.weight`).
        let factors = RopeParams {
            freq_factors: Some(vec![1.0, 2.0, 4.0, 8.0]),
            ..base.clone()
        };
        factors.cache(16, &mut a);
        base.cache(16, &mut b);
        assert_eq!(a[0], b[0]);
        let theta = |c: &[f32], i: usize| c[2 * i + 1].atan2(c[2 * i]);
        let mut unscaled = vec![0.0; 8];
        base.cache(4, &mut unscaled);
        // Pair 2 at position 16 with factor 4 equals pair 2 at position 4 without.
        assert!((theta(&a, 2) - theta(&unscaled, 2)).abs() < 1e-5);
    }

    #[test]
    fn attention_matches_two_pass_softmax() {
        let s = AttnShape {
            n_head: 2,
            n_head_kv: 1,
            head_dim: 4,
            scale: 0.5,
        };
        let n_pos = 5;
        let kf: Vec<f32> = (0..n_pos * 4)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3)
            .collect();
        let vf: Vec<f32> = (0..n_pos * 4)
            .map(|i| ((i * 3 % 7) as f32 - 3.0) * 0.5)
            .collect();
        let k: Vec<f16> = kf.iter().map(|&x| f16::from_f32(x)).collect();
        let v: Vec<f16> = vf.iter().map(|&x| f16::from_f32(x)).collect();
        let q = [0.3f32, -1.2, 2.0, 0.1];
        let mut out = [0f32; 4];
        attend_head(&q, &k, &v, n_pos, 0, &s, &mut out);
        let scores: Vec<f64> = (0..n_pos)
            .map(|p| {
                (0..4)
                    .map(|i| q[i] as f64 * k[p * 4 + i].to_f64())
                    .sum::<f64>()
                    * 0.5
            })
            .collect();
        let m = scores.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
        for i in 0..4 {
            let want: f64 = (0..n_pos)
                .map(|p| (scores[p] - m).exp() / z * v[p * 4 + i].to_f64())
                .sum();
            assert!((out[i] as f64 - want).abs() < 1e-5, "{i}");
        }
    }

    #[test]
    fn decode_attention_is_close_to_f32_attention() {
        let s = AttnShape {
            n_head: 1,
            n_head_kv: 1,
            head_dim: 64,
            scale: 0.125,
        };
        let n_pos = 37;
        let k: Vec<f16> = (0..n_pos * 64)
            .map(|i| f16::from_f32(((i * 7 % 13) as f32 - 6.0) * 0.2))
            .collect();
        let v: Vec<f16> = (0..n_pos * 64)
            .map(|i| f16::from_f32(((i * 5 % 11) as f32 - 5.0) * 0.3))
            .collect();
        let q: Vec<f32> = (0..64).map(|i| ((i * 3 % 7) as f32 - 3.0) * 0.25).collect();
        let (mut a, mut b) = (vec![0f32; 64], vec![0f32; 64]);
        attend_head(&q, &k, &v, n_pos, 0, &s, &mut a);
        // The same rows in blocks, in reverse order.
        let n_blocks = n_pos.div_ceil(KV_BLOCK);
        let table: Vec<u32> = (0..n_blocks as u32).rev().collect();
        let mut kb = vec![f16::ZERO; n_blocks * KV_BLOCK * 64];
        let mut vb = kb.clone();
        rows_to_blocks(&k, n_pos, &s, &table, &mut kb);
        rows_to_blocks(&v, n_pos, &s, &table, &mut vb);
        let span = KvSpan {
            k: KvBlocks {
                data: &kb,
                table: &table,
            },
            v: KvBlocks {
                data: &vb,
                table: &table,
            },
            kv_head: 0,
            first: 0,
            n_pos,
        };
        attend_head_decode(&q, &span, &s, &mut b);
        for i in 0..64 {
            // f16 accumulation: ~1e-3 relative.
            assert!((a[i] - b[i]).abs() < 5e-3, "{i}: {} vs {}", a[i], b[i]);
        }
    }

    /// Quantized caches give the f16 cache's attention within what their rounding allows: the
    /// same random keys, values and queries (a GQA group of 3, 300 positions, a window start),
    /// the outputs compared by their RMS error relative to the f16 outputs' RMS. Q8_0 keys
    /// and values: under 2 %; Q4_0: under 15 %; mixed pairings between.
    #[test]
    fn quantized_cache_attention_tracks_the_f16_cache() {
        let mut seed = 11u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let s = AttnShape {
            n_head: 6,
            n_head_kv: 2,
            head_dim: 64,
            scale: 0.125,
        };
        let (n_pos, row) = (300usize, 2 * 64);
        let kf: Vec<f32> = (0..n_pos * row).map(|_| 4.0 * next()).collect();
        let vf: Vec<f32> = (0..n_pos * row).map(|_| 2.0 * next()).collect();
        let q: Vec<f32> = (0..3 * 64).map(|_| 4.0 * next()).collect();
        let n_blocks = n_pos.div_ceil(KV_BLOCK);
        let table: Vec<u32> = (0..n_blocks as u32).rev().collect();
        let store = |ty: KvType, rows: &[f32]| -> (Vec<u8>, Vec<f16>) {
            let rb = ty.row_bytes(64).unwrap();
            let mut b = vec![0u8; n_blocks * KV_BLOCK * 2 * rb];
            let mut h = vec![f16::ZERO; n_blocks * KV_BLOCK * row];
            if ty == KvType::F16 {
                let rh: Vec<f16> = rows.iter().map(|&x| f16::from_f32(x)).collect();
                rows_to_blocks(&rh, n_pos, &s, &table, &mut h);
            } else {
                rows_to_blocks_q(ty, rows, n_pos, &s, &table, &mut b);
            }
            (b, h)
        };
        fn rows<'a>(ty: KvType, st: &'a (Vec<u8>, Vec<f16>), table: &'a [u32]) -> KvRows<'a> {
            match ty {
                KvType::F16 => KvRows::F16(KvBlocks { data: &st.1, table }),
                KvType::Q8_0 => KvRows::Q8_0(KvBlocks {
                    data: as_blocks(&st.0),
                    table,
                }),
                KvType::Q4_0 => KvRows::Q4_0(KvBlocks {
                    data: as_blocks(&st.0),
                    table,
                }),
            }
        }
        let run = |tk: KvType, tv: KvType, first: usize| -> Vec<f32> {
            let (ks, vs) = (store(tk, &kf), store(tv, &vf));
            let mut out = vec![0f32; 3 * 64];
            for kv_head in 0..2 {
                let view = KvView {
                    k: rows(tk, &ks, &table),
                    v: rows(tv, &vs, &table),
                    kv_head,
                    first,
                    n_pos,
                };
                let mut o = vec![0f32; 3 * 64];
                if view.f16().is_some() {
                    attend_group_decode_scalar(&q, &view.f16().unwrap(), &s, &mut o);
                } else {
                    attend_group_decode_q_scalar(&q, &view, &s, &mut o);
                }
                for (a, b) in out.iter_mut().zip(&o) {
                    *a += b;
                }
            }
            out
        };
        use KvType::*;
        for first in [0, 100] {
            let base = run(F16, F16, first);
            let rms = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
            for (tk, tv, tol) in [
                (Q8_0, Q8_0, 0.02),
                (Q8_0, F16, 0.02),
                (F16, Q8_0, 0.02),
                (Q4_0, Q4_0, 0.15),
                (Q4_0, Q8_0, 0.15),
                (Q8_0, Q4_0, 0.15),
            ] {
                let got = run(tk, tv, first);
                let err: Vec<f32> = got.iter().zip(&base).map(|(a, b)| a - b).collect();
                let rel = rms(&err) / rms(&base);
                eprintln!("k {tk} v {tv} first {first}: relative RMS error {rel:.4}");
                assert!(
                    rel < tol,
                    "k {tk} v {tv}: relative RMS error {rel} >= {tol}"
                );
            }
        }
    }

    /// The scalar lane-order dot products are ggml's AVX2 `vec_dot`s bit for bit (Dino's AVX2
    /// Q8_0 / Q4_0 weight dots follow them), and the row sizes are the block sizes.
    #[test]
    fn lane_order_dots_and_row_sizes() {
        use crate::quant::blocks::f16_to_le;
        let mut seed = 5u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        for nb in [1usize, 2, 4, 8] {
            let mut k8 = vec![0u8; nb * 34];
            let mut k4 = vec![0u8; nb * 18];
            let mut q8 = vec![0u8; nb * 34];
            for x in k8.iter_mut().chain(k4.iter_mut()).chain(q8.iter_mut()) {
                *x = next() as u8;
            }
            for (b, bs) in [(&mut k8, 34), (&mut k4, 18), (&mut q8, 34)] {
                for blk in b.chunks_exact_mut(bs) {
                    let d = (next() % 1000) as f32 * 1e-3 - 0.5;
                    blk[..2].copy_from_slice(&f16_to_le(d));
                }
            }
            for q in q8.chunks_exact_mut(34) {
                for x in &mut q[2..] {
                    if *x == 0x80 {
                        *x = 0x81; // the activation quantizer never writes -128
                    }
                }
            }
            let n = nb * QK;
            for isa in [crate::dispatch::Isa::Avx2, crate::dispatch::Isa::Avx512] {
                let (Some(t8), Some(t4)) = (
                    crate::dispatch::kernels_for(isa, dino_core::GgmlType::Q8_0),
                    crate::dispatch::kernels_for(isa, dino_core::GgmlType::Q4_0),
                ) else {
                    continue;
                };
                let a = dot_q8_0_lanes(as_blocks(&k8), as_blocks(&q8));
                assert_eq!(
                    a.to_bits(),
                    (t8.vec_dot)(n, &k8, &q8).to_bits(),
                    "{isa} q8_0"
                );
                let a = dot_q4_0_lanes(as_blocks(&k4), as_blocks(&q8));
                assert_eq!(
                    a.to_bits(),
                    (t4.vec_dot)(n, &k4, &q8).to_bits(),
                    "{isa} q4_0"
                );
            }
        }
        assert_eq!(KvType::F16.row_bytes(64), Ok(128));
        assert_eq!(KvType::Q8_0.row_bytes(64), Ok(68));
        assert_eq!(KvType::Q4_0.row_bytes(128), Ok(72));
        let e = KvType::Q8_0.row_bytes(80).unwrap_err();
        assert!(
            e.contains("q8_0") && e.contains("80") && e.contains("32"),
            "{e}"
        );
        assert!(KvType::Q4_0.row_bytes(0).is_err());
        assert_eq!("Q8_0".parse::<KvType>(), Ok(KvType::Q8_0));
        assert!("q5_0"
            .parse::<KvType>()
            .unwrap_err()
            .contains("f16, q8_0, q4_0"));
    }

    /// The fast transform is the Sylvester–Hadamard matrix (as llama.cpp's `ggml_gen_hadamard`
    /// builds it) times the chunk, and is its own inverse.
    #[test]
    fn fwht_is_the_orthonormal_hadamard_matrix() {
        for n in [64usize, 128] {
            // ggml_gen_hadamard: H[0][0] = 1/sqrt(n), then [[H, H], [H, -H]].
            let mut h = vec![0f64; n * n];
            h[0] = 1.0 / (n as f64).sqrt();
            let mut s = 1;
            while s < n {
                for i in 0..s {
                    for j in 0..s {
                        let v = h[i * n + j];
                        h[(i + s) * n + j] = v;
                        h[i * n + j + s] = v;
                        h[(i + s) * n + j + s] = -v;
                    }
                }
                s *= 2;
            }
            let x: Vec<f32> = (0..2 * n)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.3)
                .collect();
            let mut y = x.clone();
            fwht(&mut y, n);
            for c in 0..2 {
                for i in 0..n {
                    let want: f64 = (0..n).map(|j| h[i * n + j] * x[c * n + j] as f64).sum();
                    assert!((y[c * n + i] as f64 - want).abs() < 1e-5, "n {n} [{i}]");
                }
            }
            fwht(&mut y, n);
            for (a, b) in y.iter().zip(&x) {
                assert!((a - b).abs() < 1e-5);
            }
        }
    }

    /// `expf_glibc` is glibc's `expf` bit for bit (where the C library is glibc): every float
    /// from -110 to 90 at a stride of 97 ulps, and the special values; elsewhere within 1 ulp.
    #[test]
    fn expf_glibc_equals_the_c_librarys_expf() {
        let exact = cfg!(all(target_os = "linux", target_env = "gnu"));
        let mut checked = 0;
        let mut check = |x: f32| {
            let (a, b) = (expf_glibc(x), x.exp());
            if exact || a.is_nan() || b.is_nan() || a == b {
                assert!(
                    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                    "{x:e}: {a:e} vs {b:e}"
                );
            } else {
                assert!(
                    (a.to_bits() as i64 - b.to_bits() as i64).abs() <= 1,
                    "{x:e}: {a:e} vs {b:e}"
                );
            }
            checked += 1;
        };
        for bits in (0u32..=0x42b4_0000)
            .step_by(97)
            .chain((0x8000_0000u32..=0xc2dc_0000).step_by(97))
        {
            check(f32::from_bits(bits));
        }
        for x in [
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NAN,
            -0.0,
            f32::MIN_POSITIVE,
            f32::MAX,
            f32::MIN,
            -103.97,
            -103.28,
            -103.2,
            -88.0,
            -87.9,
            88.0,
            88.72,
            88.73,
            -200.0,
            f32::from_bits(expf_consts::OVERFLOW),
            f32::from_bits(expf_consts::UNDERFLOW),
            f32::from_bits(expf_consts::MAY_UNDERFLOW),
        ] {
            check(x);
            check(f32::from_bits(x.to_bits().wrapping_add(1)));
            check(f32::from_bits(x.to_bits().wrapping_sub(1)));
        }
        assert!(checked > 20_000_000);
    }

    #[test]
    fn ggml_expf_is_close_to_exp_and_handles_extremes() {
        let mut x = -100.0f32;
        while x < 88.0 {
            let (a, b) = (ggml_expf(x), x.exp());
            assert!(((a - b) / b).abs() < 4e-7, "{x}: {a} vs {b}");
            x += 0.37;
        }
        assert_eq!(ggml_expf(-300.0), 0.0);
        assert_eq!(ggml_expf(300.0), f32::INFINITY);
        assert_eq!(ggml_expf(0.0), 1.0);
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
    }

    #[test]
    fn log_softmax_is_normalized() {
        let l = [1.0f32, 2.0, 3.0, -100.0];
        let total: f64 = (0..4).map(|i| log_softmax_at(&l, i).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}
