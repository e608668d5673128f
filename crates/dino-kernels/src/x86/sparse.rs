//! AVX-512 VNNI column-layout products (activation sparsity), bit-identical to
//! `sparse::column_gemv_scalar`: exact integer sums per output and input block (`vpdpbusd` adds
//! four inputs' `u8 × i8` products), then the scalar twin's float steps on 16 lanes.

use core::arch::x86_64::*;

use super::avx512::avx512_detected;
use crate::sparse::{ColumnView, SparsePlan};

pub(super) fn column_gemv_vnni(m: &ColumnView, plan: &SparsePlan, j0: usize, y: &mut [f32]) {
    debug_assert!(avx512_detected());
    assert!(y.len().is_multiple_of(16) && j0 + y.len() <= m.n_out);
    // SAFETY: handed out only by `avx512_op_kernels` after run-time detection of the features
    // enabled below; every load and store goes through a bounds-checked slice of the exact
    // width read or written.
    unsafe { column_gemv_avx512(m, plan, j0, y) }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn column_gemv_avx512(m: &ColumnView, plan: &SparsePlan, j0: usize, y: &mut [f32]) {
    let n = y.len();
    let n64 = n / 64 * 64;
    let col = |i: u32, j: usize, w: usize| &m.cols[i as usize * m.n_out + j..][..w];
    y.fill(0.0);
    for pb in &plan.blocks {
        let groups = &plan.groups[pb.g0 as usize..pb.g1 as usize];
        let sc = &m.scales[pb.block as usize * m.n_out + j0..][..n];
        let mut o = 0;
        while o < n64 {
            let j = j0 + o;
            let mut acc = [_mm512_setzero_si512(); 4];
            for (idx, xq) in groups {
                let xv = _mm512_set1_epi32(*xq);
                // SAFETY (of the loads): 64 bytes of each checked column slice.
                let c: [__m512i; 4] =
                    std::array::from_fn(|k| _mm512_loadu_si512(col(idx[k], j, 64).as_ptr().cast()));
                let t0 = _mm512_unpacklo_epi8(c[0], c[1]);
                let t1 = _mm512_unpackhi_epi8(c[0], c[1]);
                let t2 = _mm512_unpacklo_epi8(c[2], c[3]);
                let t3 = _mm512_unpackhi_epi8(c[2], c[3]);
                // Dword k of lane L of u[r]: the four inputs' weights of output 16L + 4r + k.
                let u = [
                    _mm512_unpacklo_epi16(t0, t2),
                    _mm512_unpackhi_epi16(t0, t2),
                    _mm512_unpacklo_epi16(t1, t3),
                    _mm512_unpackhi_epi16(t1, t3),
                ];
                for r in 0..4 {
                    acc[r] = _mm512_dpbusd_epi32(acc[r], u[r], xv);
                }
            }
            // The 4×4 transpose of 128-bit lanes puts outputs 16r .. 16r + 16 in register r.
            let a = _mm512_shuffle_i32x4::<0x44>(acc[0], acc[1]);
            let b = _mm512_shuffle_i32x4::<0xEE>(acc[0], acc[1]);
            let c = _mm512_shuffle_i32x4::<0x44>(acc[2], acc[3]);
            let d = _mm512_shuffle_i32x4::<0xEE>(acc[2], acc[3]);
            let nat = [
                _mm512_shuffle_i32x4::<0x88>(a, c),
                _mm512_shuffle_i32x4::<0xDD>(a, c),
                _mm512_shuffle_i32x4::<0x88>(b, d),
                _mm512_shuffle_i32x4::<0xDD>(b, d),
            ];
            let (corr, dx) = (_mm512_set1_epi32(pb.corr), _mm512_set1_ps(pb.dx));
            for (r, v) in nat.into_iter().enumerate() {
                let at = o + 16 * r;
                let s = _mm512_cvtepi32_ps(_mm512_sub_epi32(v, corr));
                // SAFETY (of the loads and the store): 16 floats of checked slices.
                let dd = _mm512_mul_ps(_mm512_loadu_ps(sc[at..][..16].as_ptr()), dx);
                let yv = _mm512_loadu_ps(y[at..][..16].as_ptr());
                _mm512_storeu_ps(y[at..][..16].as_mut_ptr(), _mm512_fmadd_ps(s, dd, yv));
            }
            o += 64;
        }
        while o < n {
            let j = j0 + o;
            let mut acc = [_mm_setzero_si128(); 4];
            for (idx, xq) in groups {
                let xv = _mm_set1_epi32(*xq);
                // SAFETY (of the loads): 16 bytes of each checked column slice.
                let c: [__m128i; 4] =
                    std::array::from_fn(|k| _mm_loadu_si128(col(idx[k], j, 16).as_ptr().cast()));
                let t0 = _mm_unpacklo_epi8(c[0], c[1]);
                let t1 = _mm_unpackhi_epi8(c[0], c[1]);
                let t2 = _mm_unpacklo_epi8(c[2], c[3]);
                let t3 = _mm_unpackhi_epi8(c[2], c[3]);
                // Dword k of u[r]: output 4r + k.
                let u = [
                    _mm_unpacklo_epi16(t0, t2),
                    _mm_unpackhi_epi16(t0, t2),
                    _mm_unpacklo_epi16(t1, t3),
                    _mm_unpackhi_epi16(t1, t3),
                ];
                for r in 0..4 {
                    acc[r] = _mm_dpbusd_epi32(acc[r], u[r], xv);
                }
            }
            let (corr, dx) = (_mm_set1_epi32(pb.corr), _mm_set1_ps(pb.dx));
            for (r, v) in acc.into_iter().enumerate() {
                let at = o + 4 * r;
                let s = _mm_cvtepi32_ps(_mm_sub_epi32(v, corr));
                // SAFETY (of the loads and the store): 4 floats of checked slices.
                let dd = _mm_mul_ps(_mm_loadu_ps(sc[at..][..4].as_ptr()), dx);
                let yv = _mm_loadu_ps(y[at..][..4].as_ptr());
                _mm_storeu_ps(y[at..][..4].as_mut_ptr(), _mm_fmadd_ps(s, dd, yv));
            }
            o += 16;
        }
    }
}
