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

/// The op kernels of the AVX-512 level: this decode attention, the AVX2 level's others.
pub(crate) fn avx512_op_kernels() -> Option<&'static OpKernels> {
    let base = super::attn::avx2_op_kernels()?;
    static K: std::sync::OnceLock<OpKernels> = std::sync::OnceLock::new();
    avx512_detected().then(|| {
        K.get_or_init(|| OpKernels {
            attend_decode,
            ..*base
        })
    })
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

/// `ops::dot_f16_ggml_order` of a K row in registers (`16 * NZ` elements, whole 64-element
/// steps) with a query row in registers: four 16-lane accumulators, `(0 + 2) + (1 + 3)`, then
/// lanes 8 + 8, 4 + 4, `(0 + 2) + (1 + 3)`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn dot<const NZ: usize>(k: &[__m512; NZ], q: &[__m512; NZ]) -> f32 {
    let mut acc = [_mm512_setzero_ps(); 4];
    for step in 0..NZ / 4 {
        for (j, a) in acc.iter_mut().enumerate() {
            *a = _mm512_fmadd_ps(k[4 * step + j], q[4 * step + j], *a);
        }
    }
    let a = _mm512_add_ps(_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3]));
    let t3 = _mm256_add_ps(_mm512_extractf32x8_ps::<1>(a), _mm512_castps512_ps256(a));
    let t6 = _mm_add_ps(_mm256_extractf128_ps::<1>(t3), _mm256_castps256_ps128(t3));
    let t8 = _mm_add_ps(t6, _mm_movehl_ps(t6, t6));
    _mm_cvtss_f32(_mm_add_ss(t8, _mm_shuffle_ps::<1>(t8, t8)))
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
    let h_kv = kv.kv_head;
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
        for (i, p) in (c0..c0 + nc).enumerate() {
            if p % KV_BLOCK == 0 && p + KV_BLOCK < kv.n_pos {
                super::attn::prefetch_rows(kv.k.row(p + KV_BLOCK, h_kv, s));
                super::attn::prefetch_rows(kv.v.row(p + KV_BLOCK, h_kv, s));
            }
            let kr = kv.k.row(p, h_kv, s);
            let kf: [__m512; NZ] = std::array::from_fn(|j| load_f16x16(&kr[16 * j..]));
            for h in 0..g {
                score[h][i] = dot::<NZ>(&kf, &qh[h]) * s.scale;
            }
        }
        for h in 0..g {
            super::attn::softmax_weights(
                &score[h][..nc],
                &mut mss[h][..nc],
                &mut vss[h][..nc],
                &mut max[h],
                &mut sum[h],
            );
        }
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
