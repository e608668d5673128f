//! AVX-512 decode attention: the same three passes and the same arithmetic as the AVX2 form
//! in `attn.rs` (bit-identical to `ops::attend_head_decode_scalar`), with 16-lane registers.
//! ggml's f16 dot product is itself a 16-lane sum, so a K row is four (or eight) registers
//! and the reduction is the reference's tree; the value accumulators of up to four heads stay
//! in registers together, so their convert-round-FMA chains overlap.

use core::arch::x86_64::*;

use super::avx512::avx512_detected;
use crate::dispatch::OpKernels;
use crate::ops::{AttnShape, KvBlocks, KvElem, KvRows, KvSpan, KvView, KV_BLOCK};
use crate::quant::blocks::{BlockQ4_0, BlockQ8_0, QK};
use half::f16;

/// The op kernels of the AVX-512 level: this decode attention and SwiGLU, the AVX2 level's
/// others.
pub(crate) fn avx512_op_kernels() -> Option<&'static OpKernels> {
    let base = super::attn::avx2_op_kernels()?;
    static K: std::sync::OnceLock<OpKernels> = std::sync::OnceLock::new();
    avx512_detected().then(|| {
        K.get_or_init(|| OpKernels {
            attend_decode,
            attend_decode_q,
            swiglu,
            column_gemv: super::sparse::column_gemv_vnni,
            ..*base
        })
    })
}

fn swiglu(gate: &mut [f32], up: &[f32]) {
    assert!(avx512_detected());
    // SAFETY: the CPU has AVX-512 F/BW/VL (asserted), and AVX2/FMA with it; memory is read
    // and written through bounds-checked slices only.
    unsafe { swiglu_avx512(gate, up) }
}

/// `ops::swiglu_scalar` 16 lanes at a time: `x / (1 + ggml_expf(-x)) * u` with the same
/// steps, and `j · 2^n` by `vscalefps`, which rounds once as the scalar form's double product
/// does (ggml's own AVX-512 exponential uses it too).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn swiglu_avx512(gate: &mut [f32], up: &[f32]) {
    let c = |b: u32| _mm512_set1_ps(f32::from_bits(b));
    let one = _mm512_set1_ps(1.0);
    let n = gate.len().min(up.len());
    let (g16, g_tail) = gate[..n].split_at_mut(n / 16 * 16);
    let (u16, u_tail) = up[..n].split_at(n / 16 * 16);
    for (g, u) in g16.chunks_exact_mut(16).zip(u16.chunks_exact(16)) {
        let g: &mut [f32; 16] = g.try_into().expect("16 floats");
        let u: &[f32; 16] = u.try_into().expect("16 floats");
        let x = _mm512_loadu_ps(g.as_ptr());
        let nx = _mm512_sub_ps(_mm512_setzero_ps(), x);
        // ops::expf_parts(-x).
        let r = c(0x4b40_0000);
        let nn = _mm512_sub_ps(_mm512_fmadd_ps(nx, c(0x3fb8_aa3b), r), r);
        let b = _mm512_fnmadd_ps(nn, c(0x35bf_be8e), _mm512_fnmadd_ps(nn, c(0x3f31_7200), nx));
        let sq = _mm512_mul_ps(b, b);
        let j = _mm512_fmadd_ps(
            _mm512_fmadd_ps(
                _mm512_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17)),
                sq,
                _mm512_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb)),
            ),
            sq,
            _mm512_fmadd_ps(c(0x3f7f_fff6), b, one),
        );
        let mut e = _mm512_scalef_ps(j, nn);
        // |n| > 192: 0 below, infinity above.
        let big = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(nn), _mm512_set1_ps(192.0));
        if big != 0 {
            let low = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(nn, _mm512_setzero_ps());
            let edge =
                _mm512_mask_blend_ps(low, _mm512_set1_ps(f32::INFINITY), _mm512_setzero_ps());
            e = _mm512_mask_blend_ps(big, e, edge);
        }
        let silu = _mm512_div_ps(x, _mm512_add_ps(one, e));
        _mm512_storeu_ps(
            g.as_mut_ptr(),
            _mm512_mul_ps(silu, _mm512_loadu_ps(u.as_ptr())),
        );
    }
    crate::ops::swiglu_scalar(g_tail, u_tail);
}

fn attend_decode(q: &[f32], kv: &KvSpan, s: &AttnShape, out: &mut [f32]) {
    assert!(avx512_detected());
    let span = super::attn::MAX_GROUP * s.head_dim;
    for (qg, og) in q.chunks(span).zip(out.chunks_mut(span)) {
        // SAFETY: the CPU has AVX-512 F/BW/VL (asserted; the table is handed out only after the
        // same detection), and AVX2/FMA/F16C with it; memory is read through bounds-checked
        // slices only.
        unsafe {
            match s.head_dim {
                64 => group::<4>(qg, kv, s, og),
                128 => group::<8>(qg, kv, s, og),
                _ => super::attn::attend_decode_group_avx2(qg, kv, s, og),
            }
        }
    }
}

/// `round_f16(x)` as f32, 16 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn round_f16(x: __m512) -> __m512 {
    _mm512_cvtph_ps(_mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x))
}

/// 16 f16 values from a slice of at least 16, as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn load_f16x16(x: &[f16]) -> __m512 {
    let x: &[f16; 16] = x[..16].try_into().expect("16 halves");
    // SAFETY (of the load): reads exactly the 32 bytes of `x`.
    _mm512_cvtph_ps(_mm256_loadu_si256(x.as_ptr().cast()))
}

/// The first half of `ops::dot_f16_ggml_order` of a K row in registers (`16 * NZ` elements,
/// whole 64-element steps) with a query row in registers: four 16-lane accumulators combined
/// as `(0 + 2) + (1 + 3)`. [`reduce16`] finishes sixteen of them at once.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn partial_dot<const NZ: usize>(k: &[__m512; NZ], q: &[__m512; NZ]) -> __m512 {
    let mut acc = [_mm512_setzero_ps(); 4];
    for step in 0..NZ / 4 {
        for (j, a) in acc.iter_mut().enumerate() {
            *a = _mm512_fmadd_ps(k[4 * step + j], q[4 * step + j], *a);
        }
    }
    _mm512_add_ps(_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3]))
}

/// The horizontal sums of sixteen vectors, as the reference sums one: lanes `i + 8`, then
/// `i + 4` (within each half), then `i + 2`, then `i + 1` (within each quarter). Each level
/// adds the same lane pairs as the reference, for two vectors per instruction (a transpose
/// and an add), so sixteen sums take 15 adds instead of 16 × 4 and every result is bit for bit
/// the single-vector one. Lane `4q + j` of the result is the sum of `v[4j + q]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn reduce16(v: &[__m512; 16]) -> __m512 {
    // Level 1: quarters (0, 1) + (2, 3) of two vectors, one in each half of the result.
    let l1: [__m512; 8] = std::array::from_fn(|k| {
        let (a, b) = (v[2 * k], v[2 * k + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0xEE>(a, b),
            _mm512_shuffle_f32x4::<0x44>(a, b),
        )
    });
    // Level 2: quarter 0 + 1 and 2 + 3 of each half: one vector per quarter.
    let l2: [__m512; 4] = std::array::from_fn(|k| {
        let (a, b) = (l1[2 * k], l1[2 * k + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0xDD>(a, b),
            _mm512_shuffle_f32x4::<0x88>(a, b),
        )
    });
    // Level 3: lanes (0, 1) + (2, 3) of every quarter.
    let l3: [__m512; 2] = std::array::from_fn(|k| {
        let (a, b) = (l2[2 * k], l2[2 * k + 1]);
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(a, b),
            _mm512_shuffle_ps::<0xEE>(a, b),
        )
    });
    // Level 4: lane 0 + 1 and 2 + 3 of every quarter.
    _mm512_add_ps(
        _mm512_shuffle_ps::<0x88>(l3[0], l3[1]),
        _mm512_shuffle_ps::<0xDD>(l3[0], l3[1]),
    )
}

/// The scores of positions `c0..c0 + nc` for the first `g` query heads,
/// `score[h][i] = dot(K[c0 + i], q[h]) * scale` with the reference's dot product, sixteen
/// positions at a time (see [`reduce16`]).
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn scores<const NZ: usize>(
    qh: &[[__m512; NZ]; super::attn::MAX_GROUP],
    g: usize,
    kv: &KvSpan,
    s: &AttnShape,
    c0: usize,
    nc: usize,
    score: &mut [[f32; super::attn::SCRATCH_CHUNK]],
) {
    let h_kv = kv.kv_head;
    let mut part = [[_mm512_setzero_ps(); 16]; super::attn::MAX_GROUP];
    let scale = _mm512_set1_ps(s.scale);
    // Position p of a block of sixteen is lane 4 (p % 4) + p / 4 of `reduce16`'s result.
    let order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    for b0 in (0..nc).step_by(16) {
        let nb = (nc - b0).min(16);
        for (i, part_i) in (0..nb).zip(0..16) {
            let p = c0 + b0 + i;
            if p.is_multiple_of(KV_BLOCK) || p == c0 {
                // At each block: its V rows, which the value pass reads after this pass (from
                // memory they came late otherwise), and the next block's K rows.
                let left = KV_BLOCK - p % KV_BLOCK;
                super::attn::prefetch_rows(kv.v.row(p, h_kv, s), left.min(kv.n_pos - p));
                if p + left < kv.n_pos {
                    super::attn::prefetch_rows(kv.k.row(p + left, h_kv, s), KV_BLOCK);
                }
            }
            let kr = kv.k.row(p, h_kv, s);
            let kf: [__m512; NZ] = std::array::from_fn(|j| load_f16x16(&kr[16 * j..]));
            for h in 0..g {
                part[h][part_i] = partial_dot::<NZ>(&kf, &qh[h]);
            }
        }
        // Lanes past `nb` hold an earlier block's sums (each result lane depends on its own
        // position only) and are not stored.
        let keep: __mmask16 = ((1u32 << nb) - 1) as __mmask16;
        for (part, row) in part.iter().zip(score.iter_mut()).take(g) {
            let r = _mm512_permutexvar_ps(order, _mm512_mul_ps(reduce16(part), scale));
            let dst = &mut row[b0..b0 + nb];
            // SAFETY: writes only the `nb` lanes of `keep`, all inside `dst`.
            _mm512_mask_storeu_ps(dst.as_mut_ptr(), keep, r);
        }
    }
}

/// Every query head of one GQA group, head size `16 * NZ`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn group<const NZ: usize>(q: &[f32], kv: &KvSpan, s: &AttnShape, out: &mut [f32]) {
    // SAFETY: same target features as this function.
    super::attn::with_scratch(|sc| unsafe { passes::<NZ>(q, kv, s, out, sc) })
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn passes<const NZ: usize>(
    q: &[f32],
    kv: &KvSpan,
    s: &AttnShape,
    out: &mut [f32],
    (score, mss, vss): super::attn::Scratch<'_>,
) {
    use super::attn::{MAX_GROUP, SCRATCH_CHUNK as CHUNK};
    let hd = 16 * NZ;
    debug_assert_eq!(s.head_dim, hd);
    let g = q.len() / hd;
    assert!(g <= MAX_GROUP && out.len() >= g * hd);
    let mut qh = [[_mm512_setzero_ps(); NZ]; MAX_GROUP];
    for (h, qh) in qh.iter_mut().enumerate().take(g) {
        for (j, x) in qh.iter_mut().enumerate() {
            let r: &[f32; 16] = q[h * hd + 16 * j..][..16].try_into().expect("16 floats");
            *x = round_f16(_mm512_loadu_ps(r.as_ptr()));
        }
    }
    let mut acc = [[_mm512_setzero_ps(); NZ]; MAX_GROUP];
    let mut max = [f32::NEG_INFINITY; MAX_GROUP];
    let mut sum = [0f32; MAX_GROUP];
    for c0 in (kv.first..kv.n_pos).step_by(CHUNK) {
        let nc = (kv.n_pos - c0).min(CHUNK);
        scores::<NZ>(&qh, g, kv, s, c0, nc, score);
        super::attn::softmax_weights_heads(score, mss, vss, nc, &mut max[..g], &mut sum[..g]);
        // Up to four heads at a time: their accumulator chains are independent.
        let mut h = 0;
        while h < g {
            let hb = (g - h).min(4);
            match hb {
                4 => values::<NZ, 4>(&kv.v, kv.kv_head, s, c0, nc, h, &mut acc, mss, vss),
                3 => values::<NZ, 3>(&kv.v, kv.kv_head, s, c0, nc, h, &mut acc, mss, vss),
                2 => values::<NZ, 2>(&kv.v, kv.kv_head, s, c0, nc, h, &mut acc, mss, vss),
                _ => values::<NZ, 1>(&kv.v, kv.kv_head, s, c0, nc, h, &mut acc, mss, vss),
            }
            h += hb;
        }
    }
    for h in 0..g {
        let inv = if sum[h] == 0.0 { 0.0 } else { 1.0 / sum[h] };
        let iv = _mm512_set1_ps(inv);
        for (j, &x) in acc[h].iter().enumerate() {
            let o: &mut [f32; 16] = (&mut out[h * hd + 16 * j..][..16])
                .try_into()
                .expect("16 floats");
            _mm512_storeu_ps(o.as_mut_ptr(), _mm512_mul_ps(x, iv));
        }
    }
}

/// The value pass of heads `h0..h0 + HB` over positions `c0..c0 + nc`.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn values<const NZ: usize, const HB: usize>(
    v: &KvBlocks<'_>,
    kv_head: usize,
    s: &AttnShape,
    c0: usize,
    nc: usize,
    h0: usize,
    acc: &mut [[__m512; NZ]; super::attn::MAX_GROUP],
    mss: &[[f32; super::attn::SCRATCH_CHUNK]],
    vss: &[[f32; super::attn::SCRATCH_CHUNK]],
) {
    let mut a: [[__m512; NZ]; HB] = std::array::from_fn(|b| acc[h0 + b]);
    for i in 0..nc {
        let vr = v.row(c0 + i, kv_head, s);
        let vf: [__m512; NZ] = std::array::from_fn(|j| load_f16x16(&vr[16 * j..]));
        for (b, a) in a.iter_mut().enumerate() {
            // A new maximum rescales the accumulator; a factor of exactly 1 would leave its
            // f16 values unchanged, so it is skipped.
            let ms = mss[h0 + b][i];
            if ms != 1.0 {
                let m = _mm512_set1_ps(ms);
                for x in a.iter_mut() {
                    *x = round_f16(_mm512_mul_ps(*x, m));
                }
            }
            let w = _mm512_set1_ps(vss[h0 + b][i]);
            for (x, &v) in a.iter_mut().zip(&vf) {
                *x = round_f16(_mm512_fmadd_ps(v, w, *x));
            }
        }
    }
    for (b, a) in a.iter().enumerate() {
        acc[h0 + b] = *a;
    }
}

// ---------------------------------------------------------------------------------------------
// Caches with Q8_0 / Q4_0 keys: `ops::attend_group_decode_q_scalar` bit for bit, as the AVX2
// form in `attn.rs`, with two positions per 512-bit register in the score pass (each 256-bit
// half keeps one position's eight lanes of ggml's dot product), VNNI for the integer sums and
// sixteen horizontal sums at a time; 16-lane value rows. f16 keys take the AVX2 form.

fn attend_decode_q(q: &[f32], kv: &KvView, s: &AttnShape, out: &mut [f32]) {
    assert!(avx512_detected());
    if matches!(kv.k, KvRows::F16(_)) || !matches!(s.head_dim, 64 | 128 | 256) {
        return super::attn::attend_decode_q(q, kv, s, out);
    }
    let span = super::attn::MAX_GROUP * s.head_dim;
    for (qg, og) in q.chunks(span).zip(out.chunks_mut(span)) {
        // SAFETY: the CPU has AVX-512 F/BW/VL/VNNI (asserted; the table is handed out only
        // after the same detection), and AVX2/FMA/F16C with it; memory is read through
        // bounds-checked slices and fixed-size arrays only.
        super::attn::with_scratch(|sc| unsafe {
            match s.head_dim {
                64 => q_passes::<4, 2>(qg, kv, s, og, sc),
                128 => q_passes::<8, 4>(qg, kv, s, og, sc),
                _ => q_passes::<16, 8>(qg, kv, s, og, sc),
            }
        })
    }
}

/// Quantized keys as VNNI reads them: a block's 32 values as unsigned bytes `u`, with
/// `value = u - OFFSET` (Q8_0: the byte with its sign bit flipped, offset 128; Q4_0: the nibble,
/// offset 8), so `Σ value·y = vpdpbusd(u, y) - OFFSET·Σy`, exactly.
trait KeyBlock512: KvElem {
    const OFFSET: i8;
    /// # Safety
    /// Only inside functions compiled with avx2, fma and f16c.
    unsafe fn unsigned(&self) -> __m256i;
    fn scale(&self) -> [u8; 2];
}

impl KeyBlock512 for BlockQ8_0 {
    // 128 as the unsigned byte 0x80.
    const OFFSET: i8 = i8::MIN;
    #[inline(always)]
    unsafe fn unsigned(&self) -> __m256i {
        _mm256_xor_si256(super::avx2::load32i(&self.qs), _mm256_set1_epi8(i8::MIN))
    }
    #[inline(always)]
    fn scale(&self) -> [u8; 2] {
        self.d
    }
}

impl KeyBlock512 for BlockQ4_0 {
    const OFFSET: i8 = 8;
    #[inline(always)]
    unsafe fn unsigned(&self) -> __m256i {
        super::avx2::nibbles(&self.qs)
    }
    #[inline(always)]
    fn scale(&self) -> [u8; 2] {
        self.d
    }
}

/// Quantized values: a block's 32 values as f32 (`q · d`) in two 16-lane registers.
trait ValueBlock512: KvElem {
    /// # Safety
    /// Only inside functions compiled with the AVX-512 level's features.
    unsafe fn to_f32(&self, out: &mut [__m512]);
}

impl ValueBlock512 for BlockQ8_0 {
    #[inline(always)]
    unsafe fn to_f32(&self, out: &mut [__m512]) {
        let d = _mm512_set1_ps(super::avx2::f16s(self.d));
        let q = super::avx2::load32i(&self.qs);
        for (k, half) in [_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q)]
            .into_iter()
            .enumerate()
        {
            out[k] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(half)), d);
        }
    }
}

impl ValueBlock512 for BlockQ4_0 {
    #[inline(always)]
    unsafe fn to_f32(&self, out: &mut [__m512]) {
        let d = _mm512_set1_ps(super::avx2::f16s(self.d));
        let q = _mm256_sub_epi8(super::avx2::nibbles(&self.qs), _mm256_set1_epi8(8));
        for (k, half) in [_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q)]
            .into_iter()
            .enumerate()
        {
            out[k] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(half)), d);
        }
    }
}

/// The queries of a GQA group quantized to Q8_0, each block's quants in both 256-bit halves,
/// their scales, and the offset correction `-OFFSET·Σy` of each lane of four.
struct QueryQ<const NB: usize> {
    y: [[__m512i; NB]; super::attn::MAX_GROUP],
    d: [[__m512; NB]; super::attn::MAX_GROUP],
    bias: [[__m512i; NB]; super::attn::MAX_GROUP],
}

impl<const NB: usize> QueryQ<NB> {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn new(q: &[f32], g: usize, offset: i8) -> Self {
        let hd = NB * QK;
        let mut r = QueryQ {
            y: [[_mm512_setzero_si512(); NB]; super::attn::MAX_GROUP],
            d: [[_mm512_setzero_ps(); NB]; super::attn::MAX_GROUP],
            bias: [[_mm512_setzero_si512(); NB]; super::attn::MAX_GROUP],
        };
        let off = _mm512_set1_epi8(offset);
        for h in 0..g {
            let mut bytes = [0u8; crate::ops::MAX_HEAD_DIM / QK * 34];
            let bytes = &mut bytes[..NB * 34];
            let kq = crate::dispatch::kernels(dino_core::GgmlType::Q8_0).expect("Q8_0");
            (kq.quantize_act)(&q[h * hd..(h + 1) * hd], bytes);
            let blocks = crate::quant::blocks::as_blocks::<BlockQ8_0>(bytes);
            for (b, blk) in blocks.iter().enumerate().take(NB) {
                let y = _mm512_broadcast_i64x4(super::avx2::load32i(&blk.qs));
                r.y[h][b] = y;
                r.d[h][b] = _mm512_set1_ps(super::avx2::f16s(blk.d));
                // OFFSET·Σy per lane of four (OFFSET as an unsigned byte), negated.
                let sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), off, y);
                r.bias[h][b] = _mm512_sub_epi32(_mm512_setzero_si512(), sum);
            }
        }
        r
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q_passes<const NZ: usize, const NB: usize>(
    q: &[f32],
    kv: &KvView,
    s: &AttnShape,
    out: &mut [f32],
    (score, mss, vss): super::attn::Scratch<'_>,
) {
    use super::attn::{MAX_GROUP, SCRATCH_CHUNK as CHUNK};
    let hd = 16 * NZ;
    debug_assert!(s.head_dim == hd && 2 * NB == NZ);
    let g = q.len() / hd;
    assert!(g <= MAX_GROUP && out.len() >= g * hd);
    let offset = match kv.k {
        KvRows::Q8_0(_) => BlockQ8_0::OFFSET,
        _ => BlockQ4_0::OFFSET,
    };
    let qr = QueryQ::<NB>::new(q, g, offset);
    let mut acc = [[_mm512_setzero_ps(); NZ]; MAX_GROUP];
    let mut max = [f32::NEG_INFINITY; MAX_GROUP];
    let mut sum = [0f32; MAX_GROUP];
    for c0 in (kv.first..kv.n_pos).step_by(CHUNK) {
        let nc = (kv.n_pos - c0).min(CHUNK);
        match &kv.k {
            KvRows::Q8_0(k) => scores_q::<NB, _>(&qr, g, k, kv, s, c0, nc, score),
            KvRows::Q4_0(k) => scores_q::<NB, _>(&qr, g, k, kv, s, c0, nc, score),
            KvRows::F16(_) => unreachable!("f16 keys take the AVX2 form"),
        }
        super::attn::softmax_weights_heads(score, mss, vss, nc, &mut max[..g], &mut sum[..g]);
        match &kv.v {
            KvRows::F16(v) => {
                let mut h = 0;
                while h < g {
                    let hb = (g - h).min(4);
                    match hb {
                        4 => values::<NZ, 4>(v, kv.kv_head, s, c0, nc, h, &mut acc, mss, vss),
                        3 => values::<NZ, 3>(v, kv.kv_head, s, c0, nc, h, &mut acc, mss, vss),
                        2 => values::<NZ, 2>(v, kv.kv_head, s, c0, nc, h, &mut acc, mss, vss),
                        _ => values::<NZ, 1>(v, kv.kv_head, s, c0, nc, h, &mut acc, mss, vss),
                    }
                    h += hb;
                }
            }
            KvRows::Q8_0(v) => {
                values_q::<NZ, NB, _>(v, kv.kv_head, s, c0, nc, g, &mut acc, mss, vss)
            }
            KvRows::Q4_0(v) => {
                values_q::<NZ, NB, _>(v, kv.kv_head, s, c0, nc, g, &mut acc, mss, vss)
            }
        }
    }
    for h in 0..g {
        let inv = if sum[h] == 0.0 { 0.0 } else { 1.0 / sum[h] };
        let iv = _mm512_set1_ps(inv);
        for (j, &x) in acc[h].iter().enumerate() {
            let o: &mut [f32; 16] = (&mut out[h * hd + 16 * j..][..16])
                .try_into()
                .expect("16 floats");
            _mm512_storeu_ps(o.as_mut_ptr(), _mm512_mul_ps(x, iv));
        }
    }
}

/// ggml's `hsum_float_8` of sixteen 8-lane vectors held two per register (`v[k]` = position
/// `2k` in its low half, `2k + 1` in its high half), each level adding the same lane pairs as
/// the single-vector form: lane `p` of the result is position `p`'s sum.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn hsum16x8(v: &[__m512; 8]) -> __m512 {
    // Level 1: lanes j + j+4 of each position; quarters of the result: positions 4m..4m+4.
    let l1: [__m512; 4] = std::array::from_fn(|m| {
        let (a, b) = (v[2 * m], v[2 * m + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(a, b),
            _mm512_shuffle_f32x4::<0xDD>(a, b),
        )
    });
    // Level 2: lanes 0 + 2 and 1 + 3 of each position, two positions per quarter.
    let l2: [__m512; 2] = std::array::from_fn(|m| {
        let (a, b) = (l1[2 * m], l1[2 * m + 1]);
        _mm512_add_ps(
            _mm512_shuffle_ps::<0b01_00_01_00>(a, b),
            _mm512_shuffle_ps::<0b11_10_11_10>(a, b),
        )
    });
    // Level 3: (0 + 2) + (1 + 3); lane 4i + j is position 4j + i.
    let l3 = _mm512_add_ps(
        _mm512_shuffle_ps::<0b10_00_10_00>(l2[0], l2[1]),
        _mm512_shuffle_ps::<0b11_01_11_01>(l2[0], l2[1]),
    );
    let order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    _mm512_permutexvar_ps(order, l3)
}

/// `score[h][i]` of positions `c0 + i`, `i < nc`, over Q8_0 / Q4_0 keys, sixteen positions at a
/// time: each pair of K rows loaded once for the group (one per 256-bit half), each head's
/// eight lanes per position as [`crate::ops::dot_q8_0_lanes`] (the integer sums by VNNI, the
/// scales by FMA), then [`hsum16x8`].
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn scores_q<const NB: usize, B: KeyBlock512>(
    qr: &QueryQ<NB>,
    g: usize,
    k: &KvBlocks<'_, B>,
    kv: &KvView,
    s: &AttnShape,
    c0: usize,
    nc: usize,
    score: &mut [[f32; super::attn::SCRATCH_CHUNK]],
) {
    let scale = _mm512_set1_ps(s.scale);
    let mut kx = [[_mm512_setzero_si512(); NB]; 8];
    let mut kd = [[_mm512_setzero_ps(); NB]; 8];
    for b0 in (0..nc).step_by(16) {
        let n16 = (nc - b0).min(16);
        let n_pairs = n16.div_ceil(2);
        for pair in 0..n_pairs {
            let p = c0 + b0 + 2 * pair;
            let two = 2 * pair + 1 < n16;
            super::attn::prefetch_block(kv, s, p, c0);
            let r0 = k.row(p, kv.kv_head, s);
            let r1 = if two {
                super::attn::prefetch_block(kv, s, p + 1, c0);
                k.row(p + 1, kv.kv_head, s)
            } else {
                r0
            };
            for b in 0..NB {
                kx[pair][b] = _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(r0[b].unsigned()),
                    r1[b].unsigned(),
                );
                // Each row's scale in its half (through f64 casts: no AVX-512DQ needed).
                let d0 = _mm256_castps_pd(_mm256_set1_ps(super::avx2::f16s(r0[b].scale())));
                let d1 = _mm256_castps_pd(_mm256_set1_ps(super::avx2::f16s(r1[b].scale())));
                kd[pair][b] =
                    _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castpd256_pd512(d0), d1));
            }
        }
        for (h, row) in score.iter_mut().enumerate().take(g) {
            let mut part = [_mm512_setzero_ps(); 8];
            for (pair, pt) in part.iter_mut().enumerate().take(n_pairs) {
                let mut a = _mm512_setzero_ps();
                for b in 0..NB {
                    let sums = _mm512_dpbusd_epi32(qr.bias[h][b], kx[pair][b], qr.y[h][b]);
                    let d = _mm512_mul_ps(kd[pair][b], qr.d[h][b]);
                    a = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sums), a);
                }
                *pt = a;
            }
            let r = _mm512_mul_ps(hsum16x8(&part), scale);
            let keep: __mmask16 = ((1u32 << n16) - 1) as __mmask16;
            let dst = &mut row[b0..b0 + n16];
            // SAFETY: writes only the `n16` lanes of `keep`, all inside `dst`.
            _mm512_mask_storeu_ps(dst.as_mut_ptr(), keep, r);
        }
    }
}

/// Positions per step of the quantized value pass (rows converted to f32 once for the group).
const VSUB: usize = 32;

/// The value pass over Q8_0 / Q4_0 values for the first `g` heads, positions `c0..c0 + nc`,
/// f32 accumulators as [`crate::ops::attend_group_decode_q_scalar`].
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn values_q<const NZ: usize, const NB: usize, B: ValueBlock512>(
    v: &KvBlocks<'_, B>,
    kv_head: usize,
    s: &AttnShape,
    c0: usize,
    nc: usize,
    g: usize,
    acc: &mut [[__m512; NZ]; super::attn::MAX_GROUP],
    mss: &[[f32; super::attn::SCRATCH_CHUNK]],
    vss: &[[f32; super::attn::SCRATCH_CHUNK]],
) {
    let mut rows = [[_mm512_setzero_ps(); NZ]; VSUB];
    for s0 in (0..nc).step_by(VSUB) {
        let ns = (nc - s0).min(VSUB);
        for (i, r) in rows.iter_mut().enumerate().take(ns) {
            let vr = v.row(c0 + s0 + i, kv_head, s);
            for (b, blk) in vr.iter().enumerate().take(NB) {
                blk.to_f32(&mut r[2 * b..2 * b + 2]);
            }
        }
        let rows = &rows[..ns];
        let w = |h: usize| (&mss[h][s0..s0 + ns], &vss[h][s0..s0 + ns]);
        // As many heads at a time as keep their accumulators in registers.
        let hb_max = (16 / NZ).max(1);
        let mut h = 0;
        while h < g {
            let hb = (g - h).min(hb_max);
            match hb {
                4 => values_f32::<NZ, 4>(rows, h, acc, std::array::from_fn(|b| w(h + b))),
                3 => values_f32::<NZ, 3>(rows, h, acc, std::array::from_fn(|b| w(h + b))),
                2 => values_f32::<NZ, 2>(rows, h, acc, std::array::from_fn(|b| w(h + b))),
                _ => values_f32::<NZ, 1>(rows, h, acc, [w(h)]),
            }
            h += hb;
        }
    }
}

/// Heads `h0..h0 + HB` over f32 value rows (`(ms, vs)` per head): per row, a new maximum
/// rescales the accumulator (a factor of exactly 1 is skipped), then `acc = fma(v, vs, acc)`.
#[inline(always)]
unsafe fn values_f32<const NZ: usize, const HB: usize>(
    rows: &[[__m512; NZ]],
    h0: usize,
    acc: &mut [[__m512; NZ]; super::attn::MAX_GROUP],
    w: [(&[f32], &[f32]); HB],
) {
    let mut a: [[__m512; NZ]; HB] = std::array::from_fn(|b| acc[h0 + b]);
    for (i, r) in rows.iter().enumerate() {
        for (b, a) in a.iter_mut().enumerate() {
            let m = w[b].0[i];
            if m != 1.0 {
                let m = _mm512_set1_ps(m);
                for x in a.iter_mut() {
                    *x = _mm512_mul_ps(*x, m);
                }
            }
            let vs = _mm512_set1_ps(w[b].1[i]);
            for (x, &vv) in a.iter_mut().zip(r) {
                *x = _mm512_fmadd_ps(vv, vs, *x);
            }
        }
    }
    for (b, a) in a.iter().enumerate() {
        acc[h0 + b] = *a;
    }
}
