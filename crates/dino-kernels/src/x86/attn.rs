//! AVX2 + F16C + FMA decode attention, bit-identical to `ops::attend_head_decode_scalar`
//! (llama.cpp's f16 one-chunk flash attention): the same f16 roundings (F16C converts with
//! round-to-nearest-even, as `half` does), the same fused multiply-adds, the same 16-lane dot
//! product order and the same scalar softmax updates.
//!
//! Also the prompt attention over a transposed f32 cache (`attend_prompt`), bit-identical to
//! `ops::attend_prompt_scalar`: 8 positions per register for the scores, 8 value elements per
//! register for the accumulator, the same FMA chains and the same exponential.

use core::arch::x86_64::*;

use super::avx2::avx2_detected;
use crate::dispatch::OpKernels;
use crate::ops::{
    AttnShape, KvBlocks, KvElem, KvRows, KvSpan, KvView, RopeParams, ATTN_LANES, ATTN_TILE,
    KV_BLOCK,
};
use crate::quant::blocks::{BlockQ4_0, BlockQ8_0, QK};
use half::f16;

pub(crate) fn avx2_op_kernels() -> Option<&'static OpKernels> {
    static K: OpKernels = OpKernels {
        attend_decode,
        attend_decode_q,
        attend_prompt,
        swiglu,
        rope,
        fwht,
        column_gemv: super::sparse::column_gemv_avx2,
    };
    avx2_detected().then_some(&K)
}

fn attend_decode(q: &[f32], kv: &KvSpan, s: &AttnShape, out: &mut [f32]) {
    debug_assert!(avx2_detected());
    // SAFETY: handed out only by `avx2_op_kernels` after run-time detection of avx2, fma and
    // f16c; the kernel reads memory only through bounds-checked slices.
    unsafe { attend_decode_avx2(q, kv, s, out) }
}

fn swiglu(gate: &mut [f32], up: &[f32]) {
    debug_assert!(avx2_detected());
    // SAFETY: handed out only after run-time detection of avx2, fma and f16c; safe code inside.
    unsafe { swiglu_fma(gate, up) }
}

fn rope(p: &RopeParams, x: &mut [f32], head_dim: usize, cache: &[f32]) {
    debug_assert!(avx2_detected());
    // SAFETY: handed out only after run-time detection of avx2, fma and f16c; safe code inside.
    unsafe { rope_fma(p, x, head_dim, cache) }
}

fn fwht(x: &mut [f32], n: usize) {
    debug_assert!(avx2_detected());
    // SAFETY: handed out only after run-time detection of avx2, fma and f16c; safe code inside.
    unsafe { fwht_avx2(x, n) }
}

/// `ops::fwht_scalar` with a chunk in registers (8 values each): strides 1, 2 and 4 by
/// in-register shuffles, each lane taking `u + v` or `u - v` of the same pair as the scalar
/// form, then the wider strides between registers. Every value gets the same operations in the
/// same order, so the same bits. Chunks under 8 values or over 512 take the scalar body.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fwht_avx2(x: &mut [f32], n: usize) {
    if !(8..=crate::ops::MAX_HEAD_DIM).contains(&n) {
        return crate::ops::fwht_scalar(x, n);
    }
    assert!(n.is_power_of_two() && x.len().is_multiple_of(n));
    match n / 8 {
        1 => fwht_regs::<1>(x),
        2 => fwht_regs::<2>(x),
        4 => fwht_regs::<4>(x),
        8 => fwht_regs::<8>(x),
        16 => fwht_regs::<16>(x),
        32 => fwht_regs::<32>(x),
        _ => fwht_regs::<64>(x),
    }
}

/// [`fwht_avx2`] for chunks of `8 * NV` values.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fwht_regs<const NV: usize>(x: &mut [f32]) {
    let n = 8 * NV;
    let scale = _mm256_set1_ps(1.0 / (n as f32).sqrt());
    // u + v in the lanes whose bit of `sub` is clear, u - v where it is set.
    let butterfly = |u: __m256, v: __m256, sub: i32| -> __m256 {
        let (s, d) = (_mm256_add_ps(u, v), _mm256_sub_ps(u, v));
        match sub {
            0xAA => _mm256_blend_ps::<0xAA>(s, d),
            0xCC => _mm256_blend_ps::<0xCC>(s, d),
            _ => _mm256_blend_ps::<0xF0>(s, d),
        }
    };
    let mut r = [_mm256_setzero_ps(); NV];
    let nv = NV;
    for c in x.chunks_exact_mut(n) {
        for (j, r) in r.iter_mut().enumerate().take(nv) {
            let x = _mm256_mul_ps(load_f32x8(&c[8 * j..]), scale);
            // Stride 1: lanes (0, 1), (2, 3), ...: u the even lane, v the odd one.
            let x = butterfly(_mm256_moveldup_ps(x), _mm256_movehdup_ps(x), 0xAA);
            // Stride 2: lanes (0, 2), (1, 3) of each half.
            let x = butterfly(
                _mm256_shuffle_ps::<0b01_00_01_00>(x, x),
                _mm256_shuffle_ps::<0b11_10_11_10>(x, x),
                0xCC,
            );
            // Stride 4: the halves.
            *r = butterfly(
                _mm256_permute2f128_ps::<0x00>(x, x),
                _mm256_permute2f128_ps::<0x11>(x, x),
                0xF0,
            );
        }
        let mut len = 1;
        while len < nv {
            for i in (0..nv).step_by(2 * len) {
                for j in i..i + len {
                    let (u, v) = (r[j], r[j + len]);
                    r[j] = _mm256_add_ps(u, v);
                    r[j + len] = _mm256_sub_ps(u, v);
                }
            }
            len <<= 1;
        }
        for (j, &r) in r.iter().enumerate().take(nv) {
            store_f32x8(&mut c[8 * j..], r);
        }
    }
}

/// The scalar RoPE body compiled with hardware FMA: the same bits as the scalar twin.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rope_fma(p: &RopeParams, x: &mut [f32], head_dim: usize, cache: &[f32]) {
    p.apply_scalar(x, head_dim, cache)
}

/// The scalar SwiGLU body compiled with hardware FMA (and free to vectorize): `mul_add` is
/// exact either way, so the bits equal the scalar twin's.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn swiglu_fma(gate: &mut [f32], up: &[f32]) {
    crate::ops::swiglu_scalar(gate, up)
}

/// `round_f16(x)` as f32, 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn round_f16(x: __m256) -> __m256 {
    _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x))
}

/// 8 f16 values from a slice of at least 8, as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_f16x8(x: &[f16]) -> __m256 {
    let x: &[f16; 8] = x[..8].try_into().expect("8 halves");
    // SAFETY (of the load): reads exactly the 16 bytes of `x`.
    _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().cast()))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_f32x8(x: &[f32]) -> __m256 {
    let x: &[f32; 8] = x[..8].try_into().expect("8 floats");
    // SAFETY (of the load): reads exactly the 32 bytes of `x`.
    _mm256_loadu_ps(x.as_ptr())
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store_f32x8(x: &mut [f32], v: __m256) {
    let x: &mut [f32; 8] = (&mut x[..8]).try_into().expect("8 floats");
    // SAFETY (of the store): writes exactly the 32 bytes of `x`.
    _mm256_storeu_ps(x.as_mut_ptr(), v)
}

/// `ops::dot_f16_ggml_order` with 16 lanes held as two 8-lane halves.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_ggml_order(k: &[f16], q: &[f32]) -> f32 {
    let n = k.len().min(q.len());
    let np = n & !63;
    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
    let mut i = 0;
    while i < np {
        for (j, a) in acc.iter_mut().enumerate() {
            for (h, a) in a.iter_mut().enumerate() {
                let idx = i + 16 * j + 8 * h;
                *a = _mm256_fmadd_ps(load_f16x8(&k[idx..]), load_f32x8(&q[idx..]), *a);
            }
        }
        i += 64;
    }
    // a[l] = (acc0[l] + acc2[l]) + (acc1[l] + acc3[l]); then a[8+i] + a[i]; then halves.
    let a: [__m256; 2] = std::array::from_fn(|h| {
        _mm256_add_ps(
            _mm256_add_ps(acc[0][h], acc[2][h]),
            _mm256_add_ps(acc[1][h], acc[3][h]),
        )
    });
    let t3 = _mm256_add_ps(a[1], a[0]);
    let t6 = _mm_add_ps(_mm256_extractf128_ps::<1>(t3), _mm256_castps256_ps128(t3));
    let mut t = [0f32; 4];
    // SAFETY (of the store): writes exactly the 16 bytes of `t`.
    _mm_storeu_ps(t.as_mut_ptr(), t6);
    let mut sum = ((t[0] + t[2]) + (t[1] + t[3])) as f64;
    for i in np..n {
        sum += (k[i].to_f32() * q[i]) as f64;
    }
    sum as f32
}

/// Query heads handled together (their accumulators live on the stack).
pub(super) const MAX_GROUP: usize = 8;

/// Every query head in `q` (`[n_q, head_dim]`, all reading `kv_head`: a GQA group) over the
/// cache, each K and V row loaded once for the whole group; each head's arithmetic is exactly
/// the single-head scalar form's.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_decode_avx2(q: &[f32], kv: &KvSpan, s: &AttnShape, out: &mut [f32]) {
    let span = MAX_GROUP * s.head_dim;
    for (qg, og) in q.chunks(span).zip(out.chunks_mut(span)) {
        match s.head_dim {
            64 => attend_group_3pass::<8>(qg, kv, s, og),
            128 => attend_group_3pass::<16>(qg, kv, s, og),
            _ => attend_decode_group_avx2(qg, kv, s, og),
        }
    }
}

/// Positions per pass of [`attend_group_3pass`].
const CHUNK: usize = 256;
pub(super) const SCRATCH_CHUNK: usize = CHUNK;

/// Scores, rescale factors and value weights of the three-pass kernels (`MAX_GROUP` rows of
/// `CHUNK` each).
pub(super) type Scratch<'a> = (
    &'a mut [[f32; CHUNK]],
    &'a mut [[f32; CHUNK]],
    &'a mut [[f32; CHUNK]],
);

/// [`attend_decode_group_avx2`] for a head size of `8 * NV`, in three passes over each chunk of positions,
/// with the same arithmetic in the same order: every score (each K row converted once for the
/// whole group); then each head's running maximum, exponentials and sum (scalar, as before);
/// then each head's f16-rounded accumulator over the values, held in `NV` registers instead of
/// memory. The passes remove the dependency of the next score on the softmax update, so the
/// exponentials and the accumulator chains no longer wait on each other.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_group_3pass<const NV: usize>(
    q: &[f32],
    kv: &KvSpan,
    s: &AttnShape,
    out: &mut [f32],
) {
    // SAFETY: same target features as this function.
    with_scratch(|sc| unsafe { three_passes::<NV>(q, kv, s, out, sc) })
}

thread_local! {
    /// Per thread: scores, then rescale factors and value weights, of the three-pass kernels
    /// (`[3 * MAX_GROUP][CHUNK]`): made once, not zeroed on the stack at every call.
    static SCRATCH: std::cell::RefCell<Vec<[f32; CHUNK]>> =
        std::cell::RefCell::new(vec![[0f32; CHUNK]; 3 * MAX_GROUP]);
}

/// Run `f` on this thread's scratch rows (scores, rescale factors, value weights).
pub(super) fn with_scratch<R>(f: impl FnOnce(Scratch<'_>) -> R) -> R {
    SCRATCH.with(|sc| {
        let sc = &mut *sc.borrow_mut();
        let (score, rest) = sc.split_at_mut(MAX_GROUP);
        let (mss, vss) = rest.split_at_mut(MAX_GROUP);
        f((score, mss, vss))
    })
}

/// The softmax pass over a chunk of scores of the heads `0..max.len()` (at most
/// `MAX_GROUP`), positions `..nc` of their rows. Per head: the running maximum first (each
/// position's exponent is `old max - score` at a new maximum and `score - max` otherwise),
/// then the exponentials 8 at a time (glibc's `expf`, bit for bit), then the sum in order.
/// Writes each position's rescale factor (`mss`, 1 unless the maximum rose) and value weight
/// (`vss`). The heads are interleaved position by position, so their running-maximum and sum
/// chains overlap instead of running one after another.
pub(super) fn softmax_weights_heads(
    score: &[[f32; CHUNK]],
    mss: &mut [[f32; CHUNK]],
    vss: &mut [[f32; CHUNK]],
    nc: usize,
    max: &mut [f32],
    sum: &mut [f32],
) {
    debug_assert!(avx2_detected());
    assert!(nc <= CHUNK && max.len() == sum.len());
    macro_rules! heads {
        ($($g:literal)*) => {
            match max.len() {
                // SAFETY: called only from kernels handed out after detection of avx2, fma and
                // f16c.
                $($g => unsafe { softmax_heads_avx2::<$g>(score, mss, vss, nc, max, sum) },)*
                _ => panic!("softmax_weights_heads: {} heads, at most {MAX_GROUP}", max.len()),
            }
        };
    }
    heads!(1 2 3 4 5 6 7 8);
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn softmax_heads_avx2<const G: usize>(
    score: &[[f32; CHUNK]],
    mss: &mut [[f32; CHUNK]],
    vss: &mut [[f32; CHUNK]],
    nc: usize,
    max: &mut [f32],
    sum: &mut [f32],
) {
    let score: &[[f32; CHUNK]; G] = score[..G].try_into().expect("G rows");
    let mss: &mut [[f32; CHUNK]; G] = (&mut mss[..G]).try_into().expect("G rows");
    let vss: &mut [[f32; CHUNK]; G] = (&mut vss[..G]).try_into().expect("G rows");
    let mut m: [f32; G] = max.try_into().expect("G maxima");
    for i in 0..nc.min(CHUNK) {
        for h in 0..G {
            let sc = score[h][i];
            let new = sc > m[h];
            mss[h][i] = if new { m[h] - sc } else { sc - m[h] };
            vss[h][i] = if new { f32::NAN } else { 1.0 }; // NaN marks a new maximum
            m[h] = if new { sc } else { m[h] };
        }
    }
    max.copy_from_slice(&m);
    for row in mss.iter_mut() {
        expf_in_place(&mut row[..nc]);
    }
    let mut sm: [f32; G] = (&*sum).try_into().expect("G sums");
    for i in 0..nc.min(CHUNK) {
        for h in 0..G {
            let e = mss[h][i];
            let (ms, vs) = if vss[h][i].is_nan() {
                (e, 1.0)
            } else {
                (1.0, e)
            };
            mss[h][i] = ms;
            vss[h][i] = vs;
            sm[h] = sm[h].mul_add(ms, vs); // contracted as GCC compiles ggml's `S*ms + vs`
        }
    }
    sum.copy_from_slice(&sm);
}

/// The body of [`attend_group_3pass`], over scratch rows for the scores, the rescale factors
/// and the value weights (`MAX_GROUP` rows of `CHUNK` each).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn three_passes<const NV: usize>(
    q: &[f32],
    kv: &KvSpan,
    s: &AttnShape,
    out: &mut [f32],
    (score, mss, vss): Scratch<'_>,
) {
    let hd = 8 * NV;
    debug_assert_eq!(s.head_dim, hd);
    let g = q.len() / hd;
    let h_kv = kv.kv_head;
    assert!(g <= MAX_GROUP && out.len() >= g * hd);
    // The queries rounded to f16, as 8-lane vectors.
    let mut qh = [[_mm256_setzero_ps(); NV]; MAX_GROUP];
    for (h, qh) in qh.iter_mut().enumerate().take(g) {
        for (j, x) in qh.iter_mut().enumerate() {
            *x = round_f16(load_f32x8(&q[h * hd + 8 * j..]));
        }
    }
    let mut acc = [[_mm256_setzero_ps(); NV]; MAX_GROUP];
    let mut max = [f32::NEG_INFINITY; MAX_GROUP];
    let mut sum = [0f32; MAX_GROUP];
    for c0 in (kv.first..kv.n_pos).step_by(CHUNK) {
        let nc = (kv.n_pos - c0).min(CHUNK);
        for (i, p) in (c0..c0 + nc).enumerate() {
            if p.is_multiple_of(KV_BLOCK) || p == c0 {
                // At each block (a block's rows of one head are contiguous): its V rows, which
                // the value pass reads after this pass, and the next block's K rows.
                let left = KV_BLOCK - p % KV_BLOCK;
                prefetch_rows(kv.v.row(p, h_kv, s), left.min(kv.n_pos - p));
                if p + left < kv.n_pos {
                    prefetch_rows(kv.k.row(p + left, h_kv, s), KV_BLOCK);
                }
            }
            let kr = kv.k.row(p, h_kv, s);
            let kf: [__m256; NV] = std::array::from_fn(|j| load_f16x8(&kr[8 * j..]));
            for h in 0..g {
                score[h][i] = dot_ggml_order::<NV>(&kf, &qh[h]) * s.scale;
            }
        }
        softmax_weights_heads(score, mss, vss, nc, &mut max[..g], &mut sum[..g]);
        // Two heads at a time: their accumulator chains are independent, so each hides the
        // other's convert-round-FMA latency.
        for h in (0..g).step_by(2) {
            if g - h >= 2 {
                values::<NV, 2>(&kv.v, h_kv, s, c0, nc, h, &mut acc, mss, vss);
            } else {
                values::<NV, 1>(&kv.v, h_kv, s, c0, nc, h, &mut acc, mss, vss);
            }
        }
    }
    for h in 0..g {
        let inv = if sum[h] == 0.0 { 0.0 } else { 1.0 / sum[h] };
        let iv = _mm256_set1_ps(inv);
        for (j, &x) in acc[h].iter().enumerate() {
            store_f32x8(&mut out[h * hd + 8 * j..], _mm256_mul_ps(x, iv));
        }
    }
}

/// Ask for the cache lines of `rows` rows of one head starting at `first` (a block's rows of
/// one head are contiguous; hints only, `wrapping_add` keeps the addresses defined).
#[inline(always)]
pub(super) unsafe fn prefetch_rows<T>(first: &[T], rows: usize) {
    let p = first.as_ptr().cast::<i8>();
    for line in (0..std::mem::size_of_val(first) * rows).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line));
    }
}

/// `x[i] = expf_glibc(x[i])`, 8 at a time.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn expf_in_place(x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        store_f32x8(c, expf8(load_f32x8(c)));
    }
    for v in chunks.into_remainder() {
        *v = crate::ops::expf_glibc(*v);
    }
}

/// [`crate::ops::expf_glibc`] of 8 lanes: the same double-precision steps 4 lanes at a time
/// (the table read by a gather); lanes with `|x| >= 88` take the scalar special cases.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn expf8(x: __m256) -> __m256 {
    use crate::ops::expf_consts::*;
    let inv = _mm256_set1_pd(f64::from_bits(INV_LN2_32));
    let shift = _mm256_set1_pd(f64::from_bits(SHIFT));
    let (c0, c1, c2) = (
        _mm256_set1_pd(f64::from_bits(C0)),
        _mm256_set1_pd(f64::from_bits(C1)),
        _mm256_set1_pd(f64::from_bits(C2)),
    );
    let half = |xd: __m256d| -> __m128 {
        let kd = _mm256_fmadd_pd(xd, inv, shift);
        let ki = _mm256_castpd_si256(kd);
        let kd = _mm256_sub_pd(kd, shift);
        let r = _mm256_fmsub_pd(inv, xd, kd);
        let idx = _mm256_and_si256(ki, _mm256_set1_epi64x(31));
        // SAFETY (of the gather): every index is below 32, the table's length.
        let t = _mm256_i64gather_epi64::<8>(TAB.as_ptr().cast(), idx);
        let s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64::<47>(ki)));
        let z = _mm256_fmadd_pd(r, c0, c1);
        let y = _mm256_fmadd_pd(r, c2, _mm256_set1_pd(1.0));
        let y = _mm256_fmadd_pd(z, _mm256_mul_pd(r, r), y);
        _mm256_cvtpd_ps(_mm256_mul_pd(y, s))
    };
    let lo = half(_mm256_cvtps_pd(_mm256_castps256_ps128(x)));
    let hi = half(_mm256_cvtps_pd(_mm256_extractf128_ps::<1>(x)));
    let mut y = _mm256_set_m128(hi, lo);
    let top = _mm256_and_si256(
        _mm256_srli_epi32::<20>(_mm256_castps_si256(x)),
        _mm256_set1_epi32(0x7ff),
    );
    let special = _mm256_cmpgt_epi32(top, _mm256_set1_epi32(SPECIAL_TOP as i32 - 1));
    if _mm256_movemask_epi8(special) != 0 {
        let mut xs = [0f32; 8];
        let mut ys = [0f32; 8];
        _mm256_storeu_ps(xs.as_mut_ptr(), x);
        _mm256_storeu_ps(ys.as_mut_ptr(), y);
        for (yv, &xv) in ys.iter_mut().zip(&xs) {
            if let Some(e) = crate::ops::expf_special(xv) {
                *yv = e;
            }
        }
        y = _mm256_loadu_ps(ys.as_ptr());
    }
    y
}

/// The value pass of heads `h0..h0 + HB` over positions `c0..c0 + nc` (their accumulators in
/// registers).
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn values<const NV: usize, const HB: usize>(
    v: &KvBlocks<'_>,
    kv_head: usize,
    s: &AttnShape,
    c0: usize,
    nc: usize,
    h0: usize,
    acc: &mut [[__m256; NV]; MAX_GROUP],
    mss: &[[f32; CHUNK]],
    vss: &[[f32; CHUNK]],
) {
    let mut a: [[__m256; NV]; HB] = std::array::from_fn(|b| acc[h0 + b]);
    for i in 0..nc {
        let vr = v.row(c0 + i, kv_head, s);
        let vf: [__m256; NV] = std::array::from_fn(|j| load_f16x8(&vr[8 * j..]));
        for (b, a) in a.iter_mut().enumerate() {
            v_step(a, &vf, mss[h0 + b][i], vss[h0 + b][i]);
        }
    }
    for (b, a) in a.iter().enumerate() {
        acc[h0 + b] = *a;
    }
}

/// One position of a head's value pass: a new maximum (`ms` ≠ 1) rescales the f16 accumulator
/// (a factor of exactly 1 would leave its f16 values unchanged, so it is skipped), then
/// `acc = round_f16(v · vs + acc)`.
#[inline(always)]
unsafe fn v_step<const NV: usize>(a: &mut [__m256; NV], vf: &[__m256; NV], ms: f32, vs: f32) {
    if ms != 1.0 {
        let m = _mm256_set1_ps(ms);
        for x in a.iter_mut() {
            *x = round_f16(_mm256_mul_ps(*x, m));
        }
    }
    let w = _mm256_set1_ps(vs);
    for (x, &vv) in a.iter_mut().zip(vf) {
        *x = round_f16(_mm256_fmadd_ps(vv, w, *x));
    }
}

/// [`dot_f16_ggml_order`] of a K row already converted to f32 with a query row in registers
/// (`8 * NV` elements, a whole number of its 64-element steps: `NV` is 8 or 16).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_ggml_order<const NV: usize>(kf: &[__m256; NV], q: &[__m256; NV]) -> f32 {
    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
    // Element 64·step + 16·j + 8·h is vector 8·step + 2·j + h.
    for step in 0..NV / 8 {
        for (j, a) in acc.iter_mut().enumerate() {
            for (h, a) in a.iter_mut().enumerate() {
                let x = 8 * step + 2 * j + h;
                *a = _mm256_fmadd_ps(kf[x], q[x], *a);
            }
        }
    }
    let a: [__m256; 2] = std::array::from_fn(|h| {
        _mm256_add_ps(
            _mm256_add_ps(acc[0][h], acc[2][h]),
            _mm256_add_ps(acc[1][h], acc[3][h]),
        )
    });
    let t3 = _mm256_add_ps(a[1], a[0]);
    let t6 = _mm_add_ps(_mm256_extractf128_ps::<1>(t3), _mm256_castps256_ps128(t3));
    // (t0 + t2) + (t1 + t3).
    let t8 = _mm_add_ps(t6, _mm_movehl_ps(t6, t6));
    _mm_cvtss_f32(_mm_add_ss(t8, _mm_shuffle_ps::<1>(t8, t8)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn attend_decode_group_avx2(
    q: &[f32],
    kv: &KvSpan,
    s: &AttnShape,
    out: &mut [f32],
) {
    let hd = s.head_dim;
    let g = q.len() / hd;
    let vec_end = hd & !7;
    let mut qh = [[0f32; 512]; MAX_GROUP];
    for (h, qh) in qh.iter_mut().enumerate().take(g) {
        let qr = &q[h * hd..(h + 1) * hd];
        for i in (0..vec_end).step_by(8) {
            store_f32x8(&mut qh[i..], round_f16(load_f32x8(&qr[i..])));
        }
        for i in vec_end..hd {
            qh[i] = f16::from_f32(qr[i]).to_f32();
        }
    }
    let mut acc = [[0f32; 512]; MAX_GROUP];
    let mut max = [f32::NEG_INFINITY; MAX_GROUP];
    let mut sum = [0f32; MAX_GROUP];
    for p in kv.first..kv.n_pos {
        let kr = kv.k.row(p, kv.kv_head, s);
        let vr = kv.v.row(p, kv.kv_head, s);
        for h in 0..g {
            let acc = &mut acc[h][..hd];
            let score = dot_f16_ggml_order(kr, &qh[h][..hd]) * s.scale;
            let mut ms = 1.0f32;
            let mut vs = 1.0f32;
            if score > max[h] {
                let old = max[h];
                max[h] = score;
                ms = crate::ops::expf_glibc(old - score);
                let m = _mm256_set1_ps(ms);
                for i in (0..vec_end).step_by(8) {
                    let a = load_f32x8(&acc[i..]);
                    store_f32x8(&mut acc[i..], round_f16(_mm256_mul_ps(a, m)));
                }
                for a in acc[vec_end..].iter_mut() {
                    *a = f16::from_f32(*a * ms).to_f32();
                }
            } else {
                vs = crate::ops::expf_glibc(score - max[h]);
            }
            let w = _mm256_set1_ps(vs);
            for i in (0..vec_end).step_by(8) {
                let a = load_f32x8(&acc[i..]);
                let x = _mm256_fmadd_ps(load_f16x8(&vr[i..]), w, a);
                store_f32x8(&mut acc[i..], round_f16(x));
            }
            for i in vec_end..hd {
                acc[i] = f16::from_f32(vr[i].to_f32().mul_add(vs, acc[i])).to_f32();
            }
            sum[h] = sum[h].mul_add(ms, vs);
        }
    }
    for h in 0..g {
        let inv = if sum[h] == 0.0 { 0.0 } else { 1.0 / sum[h] };
        for (o, &a) in out[h * hd..(h + 1) * hd].iter_mut().zip(acc[h].iter()) {
            *o = a * inv;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn attend_prompt(
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
    if !hd.is_multiple_of(ATTN_TILE) {
        return crate::ops::attend_prompt_scalar(q, kt, p_pad, v, n_vis, kv_head, s, out);
    }
    let row = s.n_head_kv * hd;
    assert!(avx2_detected() && q.len() == hd && out.len() == hd && kv_head < s.n_head_kv);
    assert!(n_vis <= p_pad && p_pad.is_multiple_of(ATTN_TILE));
    assert!(kt.len() >= row * p_pad && v.len() >= n_vis * row);
    // SAFETY: avx2/fma detected (asserted); the asserts bound every access: scores read
    // `kt[(kv_head * hd + d) * p_pad + p]` for `p < p_pad`, values read rows `p < n_vis` of
    // `v`, and `q`/`out` are `hd` long.
    unsafe { attend_prompt_avx2(q, kt, p_pad, v, n_vis, kv_head, s, out) }
}

/// `ops::exp_attn` on 8 lanes (same operations, same roundings).
#[inline(always)]
unsafe fn exp_attn8(x: __m256) -> __m256 {
    let c = |b: u32| _mm256_set1_ps(f32::from_bits(b));
    let r = c(0x4b40_0000);
    let n = _mm256_sub_ps(_mm256_fmadd_ps(x, c(0x3fb8_aa3b), r), r);
    let b = _mm256_fnmadd_ps(n, c(0x35bf_be8e), _mm256_fnmadd_ps(n, c(0x3f31_7200), x));
    let u = _mm256_mul_ps(b, b);
    let j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(
            _mm256_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17)),
            u,
            _mm256_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb)),
        ),
        u,
        _mm256_fmadd_ps(c(0x3f7f_fff6), b, _mm256_set1_ps(1.0)),
    );
    let e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(e));
    let keep = _mm256_cmp_ps::<_CMP_GE_OQ>(n, _mm256_set1_ps(-125.0));
    _mm256_and_ps(_mm256_mul_ps(j, pow2), keep)
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_prompt_avx2(
    q: &[f32],
    kt: &[f32],
    p_pad: usize,
    v: &[f32],
    n_vis: usize,
    kv_head: usize,
    s: &AttnShape,
    out: &mut [f32],
) {
    const R: usize = ATTN_TILE / 8;
    let hd = s.head_dim;
    let row = s.n_head_kv * hd;
    let kt = kt.as_ptr().add(kv_head * hd * p_pad);
    let vp = v.as_ptr().add(kv_head * hd);
    let iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mut max = f32::NEG_INFINITY;
    let mut sums = _mm256_setzero_ps();
    out.fill(0.0);
    let mut w = [0f32; ATTN_TILE];
    for p0 in (0..n_vis).step_by(ATTN_TILE) {
        let mut acc = [_mm256_setzero_ps(); R];
        for (d, &qd) in q.iter().enumerate() {
            let qv = _mm256_set1_ps(qd);
            let r = kt.add(d * p_pad + p0);
            for (i, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(qv, _mm256_loadu_ps(r.add(8 * i)), *a);
            }
        }
        let scale = _mm256_set1_ps(s.scale);
        let mut tmax = _mm256_set1_ps(f32::NEG_INFINITY);
        for (i, a) in acc.iter_mut().enumerate() {
            *a = _mm256_mul_ps(*a, scale);
            if p0 + 8 * (i + 1) > n_vis {
                let idx = _mm256_add_epi32(iota, _mm256_set1_epi32((p0 + 8 * i) as i32));
                let visible = _mm256_cmpgt_epi32(_mm256_set1_epi32(n_vis as i32), idx);
                *a = _mm256_blendv_ps(
                    _mm256_set1_ps(f32::NEG_INFINITY),
                    *a,
                    _mm256_castsi256_ps(visible),
                );
            }
            tmax = _mm256_max_ps(tmax, *a);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), tmax);
        let tile_max = lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if tile_max > max {
            let c = crate::ops::exp_attn(max - tile_max);
            let cv = _mm256_set1_ps(c);
            sums = _mm256_mul_ps(sums, cv);
            for o in out.chunks_exact_mut(8) {
                _mm256_storeu_ps(
                    o.as_mut_ptr(),
                    _mm256_mul_ps(_mm256_loadu_ps(o.as_ptr()), cv),
                );
            }
            max = tile_max;
        }
        let mv = _mm256_set1_ps(max);
        for (i, a) in acc.iter().enumerate() {
            let e = exp_attn8(_mm256_sub_ps(*a, mv));
            sums = _mm256_add_ps(sums, e);
            _mm256_storeu_ps(w.as_mut_ptr().add(8 * i), e);
        }
        let n_l = (n_vis - p0).min(ATTN_TILE);
        for c0 in (0..hd).step_by(64) {
            let o = out.as_mut_ptr().add(c0);
            let mut oa = [_mm256_setzero_ps(); 8];
            for (i, x) in oa.iter_mut().enumerate() {
                *x = _mm256_loadu_ps(o.add(8 * i));
            }
            for (l, &wl) in w.iter().enumerate().take(n_l) {
                let wv = _mm256_set1_ps(wl);
                let r = vp.add((p0 + l) * row + c0);
                for (i, x) in oa.iter_mut().enumerate() {
                    *x = _mm256_fmadd_ps(wv, _mm256_loadu_ps(r.add(8 * i)), *x);
                }
            }
            for (i, x) in oa.iter().enumerate() {
                _mm256_storeu_ps(o.add(8 * i), *x);
            }
        }
    }
    let mut lanes = [0f32; ATTN_LANES];
    _mm256_storeu_ps(lanes.as_mut_ptr(), sums);
    let sum = lanes.iter().fold(0f32, |a, &b| a + b);
    let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
    out.iter_mut().for_each(|o| *o *= inv);
}

// ---------------------------------------------------------------------------------------------
// Caches with quantized keys or values: `ops::attend_group_decode_q_scalar`, bit for bit, in
// the three passes of the f16 kernel (scores, softmax, values) over chunks of positions.

pub(super) fn attend_decode_q(q: &[f32], kv: &KvView, s: &AttnShape, out: &mut [f32]) {
    debug_assert!(avx2_detected());
    // SAFETY: handed out only by `avx2_op_kernels` (or the AVX-512 table, on CPUs that have
    // AVX2 too) after run-time detection of avx2, fma and f16c; the kernels read memory only
    // through bounds-checked slices and fixed-size arrays.
    unsafe { attend_decode_q_avx2(q, kv, s, out) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_decode_q_avx2(q: &[f32], kv: &KvView, s: &AttnShape, out: &mut [f32]) {
    let span = MAX_GROUP * s.head_dim;
    // f16 keys need whole 64-value steps of ggml's f16 dot product.
    let f16_k = matches!(kv.k, KvRows::F16(_));
    for (qg, og) in q.chunks(span).zip(out.chunks_mut(span)) {
        // SAFETY: the same target features as this function.
        with_scratch(|sc| unsafe {
            match s.head_dim {
                64 => q_passes::<8, 2>(qg, kv, s, og, sc),
                128 => q_passes::<16, 4>(qg, kv, s, og, sc),
                256 => q_passes::<32, 8>(qg, kv, s, og, sc),
                96 if !f16_k => q_passes::<12, 3>(qg, kv, s, og, sc),
                _ => crate::ops::attend_group_decode_q_scalar(qg, kv, s, og),
            }
        })
    }
}

/// The queries of a GQA group in registers, in K's dot type.
pub(super) struct QueryRegs<const NV: usize, const NB: usize> {
    /// f16 keys: each head's query rounded to f16.
    pub(super) f16: [[__m256; NV]; MAX_GROUP],
    /// Q8_0 / Q4_0 keys: each head's query quantized to Q8_0 (ggml's x86 rule), the quants of
    /// each block,
    pub(super) qs: [[__m256i; NB]; MAX_GROUP],
    /// and each block's scale, in every lane.
    pub(super) qd: [[__m256; NB]; MAX_GROUP],
}

impl<const NV: usize, const NB: usize> QueryRegs<NV, NB> {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn new(q: &[f32], g: usize, k: crate::ops::KvType) -> Self {
        let hd = 8 * NV;
        let mut r = QueryRegs {
            f16: [[_mm256_setzero_ps(); NV]; MAX_GROUP],
            qs: [[_mm256_setzero_si256(); NB]; MAX_GROUP],
            qd: [[_mm256_setzero_ps(); NB]; MAX_GROUP],
        };
        for h in 0..g {
            let qr = &q[h * hd..(h + 1) * hd];
            if k == crate::ops::KvType::F16 {
                for (j, x) in r.f16[h].iter_mut().enumerate() {
                    *x = round_f16(load_f32x8(&qr[8 * j..]));
                }
            } else {
                let mut bytes = [0u8; crate::ops::MAX_HEAD_DIM / QK * 34];
                let bytes = &mut bytes[..NB * 34];
                let kq = crate::dispatch::kernels(dino_core::GgmlType::Q8_0).expect("Q8_0");
                (kq.quantize_act)(qr, bytes);
                let blocks = crate::quant::blocks::as_blocks::<BlockQ8_0>(bytes);
                for (b, blk) in blocks.iter().enumerate() {
                    r.qs[h][b] = super::avx2::load32i(&blk.qs);
                    r.qd[h][b] = _mm256_set1_ps(super::avx2::f16s(blk.d));
                }
            }
        }
        r
    }
}

/// Quantized keys: a block's 32 values as signed bytes, in order, and its scale.
pub(super) trait KeyBlock: KvElem {
    /// # Safety
    /// Only inside functions compiled with avx2, fma and f16c.
    unsafe fn values(&self) -> __m256i;
    fn scale(&self) -> [u8; 2];
}

impl KeyBlock for BlockQ8_0 {
    #[inline(always)]
    unsafe fn values(&self) -> __m256i {
        super::avx2::load32i(&self.qs)
    }
    #[inline(always)]
    fn scale(&self) -> [u8; 2] {
        self.d
    }
}

impl KeyBlock for BlockQ4_0 {
    #[inline(always)]
    unsafe fn values(&self) -> __m256i {
        _mm256_sub_epi8(super::avx2::nibbles(&self.qs), _mm256_set1_epi8(8))
    }
    #[inline(always)]
    fn scale(&self) -> [u8; 2] {
        self.d
    }
}

/// Quantized values: a block's 32 values as f32 (`q · d`, exactly as `to_float`) in four
/// registers.
pub(super) trait ValueBlock: KvElem {
    /// # Safety
    /// Only inside functions compiled with avx2, fma and f16c.
    unsafe fn to_f32(&self, out: &mut [__m256]);
}

impl ValueBlock for BlockQ8_0 {
    #[inline(always)]
    unsafe fn to_f32(&self, out: &mut [__m256]) {
        let d = _mm256_set1_ps(super::avx2::f16s(self.d));
        let q = super::avx2::load32i(&self.qs);
        let (lo, hi) = (_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
        for (k, half) in [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)]
            .into_iter()
            .enumerate()
        {
            out[k] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(half)), d);
        }
    }
}

impl ValueBlock for BlockQ4_0 {
    #[inline(always)]
    unsafe fn to_f32(&self, out: &mut [__m256]) {
        let d = _mm256_set1_ps(super::avx2::f16s(self.d));
        let q = _mm256_sub_epi8(super::avx2::nibbles(&self.qs), _mm256_set1_epi8(8));
        let (lo, hi) = (_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
        for (k, half) in [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)]
            .into_iter()
            .enumerate()
        {
            out[k] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(half)), d);
        }
    }
}

/// Hints for the rows of `r` at position `p` of head `h` and the `rows - 1` after it (in one
/// block).
#[inline(always)]
pub(super) unsafe fn prefetch_kv(r: &KvRows, p: usize, h: usize, s: &AttnShape, rows: usize) {
    match r {
        KvRows::F16(b) => prefetch_rows(b.row(p, h, s), rows),
        KvRows::Q8_0(b) => prefetch_rows(b.row(p, h, s), rows),
        KvRows::Q4_0(b) => prefetch_rows(b.row(p, h, s), rows),
    }
}

/// At each block of 16 positions (and at the chunk's start): hints for its V rows, read by the
/// value pass after this one, and the next block's K rows.
#[inline(always)]
pub(super) unsafe fn prefetch_block(kv: &KvView, s: &AttnShape, p: usize, c0: usize) {
    if p.is_multiple_of(KV_BLOCK) || p == c0 {
        let left = KV_BLOCK - p % KV_BLOCK;
        prefetch_kv(&kv.v, p, kv.kv_head, s, left.min(kv.n_pos - p));
        if p + left < kv.n_pos {
            prefetch_kv(&kv.k, p + left, kv.kv_head, s, KV_BLOCK);
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q_passes<const NV: usize, const NB: usize>(
    q: &[f32],
    kv: &KvView,
    s: &AttnShape,
    out: &mut [f32],
    (score, mss, vss): Scratch<'_>,
) {
    let hd = 8 * NV;
    debug_assert!(s.head_dim == hd && 4 * NB == NV);
    let g = q.len() / hd;
    assert!(g <= MAX_GROUP && out.len() >= g * hd);
    let qr = QueryRegs::<NV, NB>::new(q, g, kv.k.kv_type());
    let mut acc = [[_mm256_setzero_ps(); NV]; MAX_GROUP];
    let mut max = [f32::NEG_INFINITY; MAX_GROUP];
    let mut sum = [0f32; MAX_GROUP];
    for c0 in (kv.first..kv.n_pos).step_by(CHUNK) {
        let nc = (kv.n_pos - c0).min(CHUNK);
        match &kv.k {
            KvRows::F16(k) => scores_f16::<NV>(&qr.f16, g, k, kv, s, c0, nc, score),
            KvRows::Q8_0(k) => scores_q::<NV, NB, _>(&qr, g, k, kv, s, c0, nc, score),
            KvRows::Q4_0(k) => scores_q::<NV, NB, _>(&qr, g, k, kv, s, c0, nc, score),
        }
        softmax_weights_heads(score, mss, vss, nc, &mut max[..g], &mut sum[..g]);
        match &kv.v {
            KvRows::F16(v) => {
                for h in (0..g).step_by(2) {
                    if g - h >= 2 {
                        values::<NV, 2>(v, kv.kv_head, s, c0, nc, h, &mut acc, mss, vss);
                    } else {
                        values::<NV, 1>(v, kv.kv_head, s, c0, nc, h, &mut acc, mss, vss);
                    }
                }
            }
            KvRows::Q8_0(v) => {
                values_q::<NV, NB, _>(v, kv.kv_head, s, c0, nc, g, &mut acc, mss, vss)
            }
            KvRows::Q4_0(v) => {
                values_q::<NV, NB, _>(v, kv.kv_head, s, c0, nc, g, &mut acc, mss, vss)
            }
        }
    }
    for h in 0..g {
        let inv = if sum[h] == 0.0 { 0.0 } else { 1.0 / sum[h] };
        let iv = _mm256_set1_ps(inv);
        for (j, &x) in acc[h].iter().enumerate() {
            store_f32x8(&mut out[h * hd + 8 * j..], _mm256_mul_ps(x, iv));
        }
    }
}

/// The score pass over f16 keys (the f16 kernel's), for a cache whose values are quantized.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_f16<const NV: usize>(
    qh: &[[__m256; NV]; MAX_GROUP],
    g: usize,
    k: &KvBlocks<'_>,
    kv: &KvView,
    s: &AttnShape,
    c0: usize,
    nc: usize,
    score: &mut [[f32; CHUNK]],
) {
    for (i, p) in (c0..c0 + nc).enumerate() {
        prefetch_block(kv, s, p, c0);
        let kr = k.row(p, kv.kv_head, s);
        let kf: [__m256; NV] = std::array::from_fn(|j| load_f16x8(&kr[8 * j..]));
        for h in 0..g {
            score[h][i] = dot_ggml_order::<NV>(&kf, &qh[h]) * s.scale;
        }
    }
}

/// ggml's `hsum_float_8` of eight vectors at once: lane `i` of the result is the horizontal
/// sum of `v[i]` with the same additions, ((0 + 4) + (2 + 6)) + ((1 + 5) + (3 + 7)), each
/// level adding the lanes of two vectors in one instruction.
#[inline(always)]
pub(super) unsafe fn hsum8x8(v: &[__m256; 8]) -> __m256 {
    // Level 1: halves, two vectors per register: [v0 lo + hi | v1 lo + hi].
    let l1: [__m256; 4] = std::array::from_fn(|k| {
        let (a, b) = (v[2 * k], v[2 * k + 1]);
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(a, b),
            _mm256_permute2f128_ps::<0x31>(a, b),
        )
    });
    // Level 2: lanes 0 + 2 and 1 + 3 of each half; lane order [v0 v0 v2 v2 | v1 v1 v3 v3].
    let l2: [__m256; 2] = std::array::from_fn(|k| {
        let (a, b) = (l1[2 * k], l1[2 * k + 1]);
        _mm256_add_ps(
            _mm256_shuffle_ps::<0b01_00_01_00>(a, b),
            _mm256_shuffle_ps::<0b11_10_11_10>(a, b),
        )
    });
    // Level 3: (0 + 2) + (1 + 3); lane order [v0 v2 v4 v6 | v1 v3 v5 v7].
    let l3 = _mm256_add_ps(
        _mm256_shuffle_ps::<0b10_00_10_00>(l2[0], l2[1]),
        _mm256_shuffle_ps::<0b11_01_11_01>(l2[0], l2[1]),
    );
    _mm256_permutevar8x32_ps(l3, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// `score[h][i]` of positions `c0 + i`, `i < nc`, over Q8_0 / Q4_0 keys: eight positions at a
/// time, each K row's blocks loaded once for the whole group, each head's dot products in
/// ggml's AVX2 lane order ([`crate::ops::dot_q8_0_lanes`]) and their horizontal sums eight at
/// a time ([`hsum8x8`]).
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_q<const NV: usize, const NB: usize, B: KeyBlock>(
    qr: &QueryRegs<NV, NB>,
    g: usize,
    k: &KvBlocks<'_, B>,
    kv: &KvView,
    s: &AttnShape,
    c0: usize,
    nc: usize,
    score: &mut [[f32; CHUNK]],
) {
    let scale = _mm256_set1_ps(s.scale);
    let ones = _mm256_set1_epi16(1);
    let mut kx = [[_mm256_setzero_si256(); NB]; 8];
    let mut kax = [[_mm256_setzero_si256(); NB]; 8];
    let mut kd = [[_mm256_setzero_ps(); NB]; 8];
    for b0 in (0..nc).step_by(8) {
        let n8 = (nc - b0).min(8);
        for i in 0..n8 {
            let p = c0 + b0 + i;
            prefetch_block(kv, s, p, c0);
            let kr = k.row(p, kv.kv_head, s);
            for (b, blk) in kr.iter().enumerate().take(NB) {
                let x = blk.values();
                kx[i][b] = x;
                kax[i][b] = _mm256_sign_epi8(x, x);
                kd[i][b] = _mm256_set1_ps(super::avx2::f16s(blk.scale()));
            }
        }
        for (h, row) in score.iter_mut().enumerate().take(g) {
            let mut lanes = [_mm256_setzero_ps(); 8];
            for (i, l) in lanes.iter_mut().enumerate().take(n8) {
                let mut a = _mm256_setzero_ps();
                for b in 0..NB {
                    // ggml's `mul_sum_i8_pairs_float`: |x| · sign(y, x), in pairs, in fours.
                    let sy = _mm256_sign_epi8(qr.qs[h][b], kx[i][b]);
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(kax[i][b], sy), ones);
                    let d = _mm256_mul_ps(kd[i][b], qr.qd[h][b]);
                    a = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), a);
                }
                *l = a;
            }
            let r = _mm256_mul_ps(hsum8x8(&lanes), scale);
            if n8 == 8 {
                store_f32x8(&mut row[b0..], r);
            } else {
                let mut t = [0f32; 8];
                store_f32x8(&mut t, r);
                row[b0..b0 + n8].copy_from_slice(&t[..n8]);
            }
        }
    }
}

/// Positions per step of the quantized value pass: their rows are converted to f32 once, into
/// a buffer that stays in L1, for every head of the group.
const VSUB: usize = 32;

/// The value pass over Q8_0 / Q4_0 values for the first `g` heads, positions `c0..c0 + nc`:
/// f32 accumulators (`acc = fma(v, vs, acc)`, `acc *= ms` at a new maximum).
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn values_q<const NV: usize, const NB: usize, B: ValueBlock>(
    v: &KvBlocks<'_, B>,
    kv_head: usize,
    s: &AttnShape,
    c0: usize,
    nc: usize,
    g: usize,
    acc: &mut [[__m256; NV]; MAX_GROUP],
    mss: &[[f32; CHUNK]],
    vss: &[[f32; CHUNK]],
) {
    let mut rows = [[_mm256_setzero_ps(); NV]; VSUB];
    for s0 in (0..nc).step_by(VSUB) {
        let ns = (nc - s0).min(VSUB);
        for (i, r) in rows.iter_mut().enumerate().take(ns) {
            let vr = v.row(c0 + s0 + i, kv_head, s);
            for (b, blk) in vr.iter().enumerate().take(NB) {
                blk.to_f32(&mut r[4 * b..4 * b + 4]);
            }
        }
        let rows = &rows[..ns];
        let (mss, vss) = (
            |h: usize| &mss[h][s0..s0 + ns],
            |h: usize| &vss[h][s0..s0 + ns],
        );
        let mut h = 0;
        while h < g {
            if NV <= 8 && g - h >= 2 {
                values_f32::<NV, 2>(rows, h, acc, [mss(h), mss(h + 1)], [vss(h), vss(h + 1)]);
                h += 2;
            } else {
                values_f32::<NV, 1>(rows, h, acc, [mss(h)], [vss(h)]);
                h += 1;
            }
        }
    }
}

/// Heads `h0..h0 + HB` over f32 value rows: per row, a new maximum (`ms` ≠ 1) rescales the
/// accumulator (a factor of exactly 1 would leave it unchanged, so it is skipped), then
/// `acc = fma(v, vs, acc)`.
#[inline(always)]
unsafe fn values_f32<const NV: usize, const HB: usize>(
    rows: &[[__m256; NV]],
    h0: usize,
    acc: &mut [[__m256; NV]; MAX_GROUP],
    ms: [&[f32]; HB],
    vs: [&[f32]; HB],
) {
    let mut a: [[__m256; NV]; HB] = std::array::from_fn(|b| acc[h0 + b]);
    for (i, r) in rows.iter().enumerate() {
        for (b, a) in a.iter_mut().enumerate() {
            let m = ms[b][i];
            if m != 1.0 {
                let m = _mm256_set1_ps(m);
                for x in a.iter_mut() {
                    *x = _mm256_mul_ps(*x, m);
                }
            }
            let w = _mm256_set1_ps(vs[b][i]);
            for (x, &vv) in a.iter_mut().zip(r) {
                *x = _mm256_fmadd_ps(vv, w, *x);
            }
        }
    }
    for (b, a) in a.iter().enumerate() {
        acc[h0 + b] = *a;
    }
}
