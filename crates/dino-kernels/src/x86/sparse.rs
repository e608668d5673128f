//! AVX-512 VNNI column-layout products (activation sparsity), bit-identical to
//! `sparse::column_gemv_scalar`: exact integer sums per output and input block (`vpdpbusd` adds
//! four inputs' `u8 × i8` products), then the scalar twin's float steps on 16 lanes. A tile's 64
//! float sums stay in registers across its input blocks; `y` is written once per tile.

use core::arch::x86_64::*;
use std::ops::Range;

use super::avx512::avx512_detected;
use crate::quant::blocks::QK;
use crate::sparse::{ColumnView, SparsePlan, TILE};

pub(super) fn column_gemv_vnni(
    m: &ColumnView,
    plan: &SparsePlan,
    tiles: Range<usize>,
    y: &mut [f32],
) {
    debug_assert!(avx512_detected());
    let j0 = tiles.start * TILE;
    assert!(tiles.end <= m.tiles() && y.len() == (tiles.end * TILE).min(m.n_out) - j0);
    // SAFETY: handed out only by `avx512_op_kernels` after run-time detection of the features
    // enabled below; every load goes through a bounds-checked record of the view and every
    // store through a checked slice of `y` or a local tile.
    unsafe { column_gemv_avx512(m, plan, tiles, y) }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn column_gemv_avx512(
    m: &ColumnView,
    plan: &SparsePlan,
    tiles: Range<usize>,
    y: &mut [f32],
) {
    let j0 = tiles.start * TILE;
    for t in tiles {
        let mut f = [_mm512_setzero_ps(); 4];
        for pb in &plan.blocks {
            let rec = m.record(t, pb.block as usize);
            let mut acc = [_mm512_setzero_si512(); 4];
            for (idx, xq) in &plan.groups[pb.g0 as usize..pb.g1 as usize] {
                let xv = _mm512_set1_epi32(*xq);
                // SAFETY (of the loads): one whole 64-byte line of the record each.
                let c: [__m512i; 4] = std::array::from_fn(|k| {
                    _mm512_load_si512(rec[2 + idx[k] as usize % QK].0.as_ptr().cast())
                });
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
                let s = _mm512_cvtepi32_ps(_mm512_sub_epi32(v, corr));
                // SAFETY (of the load): 16 f16 scales, half of the record's line r / 2.
                let h = _mm256_load_si256(rec[r / 2].0[32 * (r % 2)..][..32].as_ptr().cast());
                let dd = _mm512_mul_ps(_mm512_cvtph_ps(h), dx);
                f[r] = _mm512_fmadd_ps(s, dd, f[r]);
            }
        }
        let o0 = t * TILE - j0;
        let n = (y.len() - o0).min(TILE);
        if n == TILE {
            for (r, v) in f.into_iter().enumerate() {
                // SAFETY (of the store): 16 floats of a checked slice.
                _mm512_storeu_ps(y[o0 + 16 * r..][..16].as_mut_ptr(), v);
            }
        } else {
            let mut tmp = [0f32; TILE];
            for (r, v) in f.into_iter().enumerate() {
                // SAFETY (of the store): 16 floats of the local tile.
                _mm512_storeu_ps(tmp[16 * r..][..16].as_mut_ptr(), v);
            }
            y[o0..o0 + n].copy_from_slice(&tmp[..n]);
        }
    }
}
