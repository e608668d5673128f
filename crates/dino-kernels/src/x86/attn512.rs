//! AVX-512 decode attention: the same three passes and the same arithmetic as the AVX2 form
//! in `attn.rs` (bit-identical to `ops::attend_head_decode_scalar`), with 16-lane registers.
//! ggml's f16 dot product is itself a 16-lane sum, so a K row is four (or eight) registers
//! and the reduction is the reference's tree; the value accumulators of up to four heads stay
//! in registers together, so their convert-round-FMA chains overlap.

use core::arch::x86_64::*;

use super::avx512::avx512_detected;
use crate::dispatch::OpKernels;
use crate::ops::{AttnShape, KvSpan, KV_BLOCK};
use half::f16;

/// The op kernels of the AVX-512 level: this decode attention and SwiGLU, the AVX2 level's
/// others.
pub(crate) fn avx512_op_kernels() -> Option<&'static OpKernels> {
    let base = super::attn::avx2_op_kernels()?;
    static K: std::sync::OnceLock<OpKernels> = std::sync::OnceLock::new();
    avx512_detected().then(|| {
        K.get_or_init(|| OpKernels {
            attend_decode,
            swiglu,
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
                4 => values::<NZ, 4>(kv, s, c0, nc, h, &mut acc, mss, vss),
                3 => values::<NZ, 3>(kv, s, c0, nc, h, &mut acc, mss, vss),
                2 => values::<NZ, 2>(kv, s, c0, nc, h, &mut acc, mss, vss),
                _ => values::<NZ, 1>(kv, s, c0, nc, h, &mut acc, mss, vss),
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
    kv: &KvSpan,
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
        let vr = kv.v.row(c0 + i, kv.kv_head, s);
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
