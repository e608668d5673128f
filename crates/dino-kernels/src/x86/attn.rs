//! AVX2 + F16C + FMA decode attention, bit-identical to `ops::attend_head_decode_scalar`
//! (llama.cpp's f16 one-chunk flash attention): the same f16 roundings (F16C converts with
//! round-to-nearest-even, as `half` does), the same fused multiply-adds, the same 16-lane dot
//! product order and the same scalar softmax updates.

use core::arch::x86_64::*;

use super::avx2::avx2_detected;
use crate::dispatch::OpKernels;
use crate::ops::AttnShape;
use half::f16;

pub(crate) fn avx2_op_kernels() -> Option<&'static OpKernels> {
    static K: OpKernels = OpKernels {
        attend_decode,
        swiglu,
    };
    avx2_detected().then_some(&K)
}

fn attend_decode(
    q: &[f32],
    k: &[f16],
    v: &[f16],
    n_pos: usize,
    kv_head: usize,
    s: &AttnShape,
    out: &mut [f32],
) {
    debug_assert!(avx2_detected());
    // SAFETY: handed out only by `avx2_op_kernels` after run-time detection of avx2, fma and
    // f16c; the kernel reads memory only through bounds-checked slices.
    unsafe { attend_decode_avx2(q, k, v, n_pos, kv_head, s, out) }
}

fn swiglu(gate: &mut [f32], up: &[f32]) {
    debug_assert!(avx2_detected());
    // SAFETY: handed out only after run-time detection of avx2, fma and f16c; safe code inside.
    unsafe { swiglu_fma(gate, up) }
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
const MAX_GROUP: usize = 8;

/// Every query head in `q` (`[n_q, head_dim]`, all reading `kv_head`: a GQA group) over the
/// cache, each K and V row loaded once for the whole group; each head's arithmetic is exactly
/// the single-head scalar form's.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_decode_avx2(
    q: &[f32],
    k: &[f16],
    v: &[f16],
    n_pos: usize,
    kv_head: usize,
    s: &AttnShape,
    out: &mut [f32],
) {
    let span = MAX_GROUP * s.head_dim;
    for (qg, og) in q.chunks(span).zip(out.chunks_mut(span)) {
        attend_group(qg, k, v, n_pos, kv_head, s, og);
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_group(
    q: &[f32],
    k: &[f16],
    v: &[f16],
    n_pos: usize,
    kv_head: usize,
    s: &AttnShape,
    out: &mut [f32],
) {
    let hd = s.head_dim;
    let g = q.len() / hd;
    let row = s.n_head_kv * hd;
    let off = kv_head * hd;
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
    for p in 0..n_pos {
        let kr = &k[p * row + off..p * row + off + hd];
        let vr = &v[p * row + off..p * row + off + hd];
        for h in 0..g {
            let acc = &mut acc[h][..hd];
            let score = dot_f16_ggml_order(kr, &qh[h][..hd]) * s.scale;
            let mut ms = 1.0f32;
            let mut vs = 1.0f32;
            if score > max[h] {
                let old = max[h];
                max[h] = score;
                ms = (old - score).exp();
                let m = _mm256_set1_ps(ms);
                for i in (0..vec_end).step_by(8) {
                    let a = load_f32x8(&acc[i..]);
                    store_f32x8(&mut acc[i..], round_f16(_mm256_mul_ps(a, m)));
                }
                for a in acc[vec_end..].iter_mut() {
                    *a = f16::from_f32(*a * ms).to_f32();
                }
            } else {
                vs = (score - max[h]).exp();
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
