//! Column-layout products (activation sparsity), bit-identical to
//! `sparse::column_gemv_scalar`: exact integer sums per output and input block, then the scalar
//! twin's float steps on 8 or 16 lanes.
//!
//! - AVX-512 VNNI: `vpdpbusd` adds four inputs' `(q + 128) × xq` products per output (the
//!   plan's `128 · Σ xq` is subtracted after); a tile's 64 float sums stay in registers across
//!   its input blocks and `y` is written once per tile.
//! - AVX2: the stored `q + 128` back to `q` (xor 0x80), signed by `xq` so that `vpmaddubsw`
//!   multiplies `|xq|` (u8) by `±q` (i8): two products of at most 127 · 127 per 16-bit lane,
//!   never saturating; `vpmaddwd` by ones adds the lane pairs, giving `Σ q · xq` exactly (the
//!   same integer as the VNNI form's). Half a tile (32 outputs) at a time.

use core::arch::x86_64::*;
use std::ops::Range;

use super::avx2::avx2_detected;
use super::avx512::avx512_detected;
use crate::quant::blocks::QK;
use crate::sparse::{ColumnView, SparsePlan, TILE};

/// Records ahead of the one being summed whose active lines are prefetched: the skipped lines
/// break the hardware prefetchers' streams, so the kernels name the lines they will read.
const PREFETCH_RECORDS: usize = 4;

/// Prefetches the lines that block `i + PREFETCH_RECORDS` of the plan (in tile `t`, or the next
/// tile's first blocks) will read.
#[inline(always)]
unsafe fn prefetch_ahead(m: &ColumnView, plan: &SparsePlan, t: usize, end: usize, i: usize) {
    let nb = plan.blocks.len();
    let (mut t, mut k) = (t, i + PREFETCH_RECORDS);
    if k >= nb {
        k -= nb;
        t += 1;
        if t >= end || k >= nb {
            return;
        }
    }
    let pb = &plan.blocks[k];
    let rec = m.record(t, pb.block as usize);
    // SAFETY (of the prefetches): hints on lines of a checked record; they never fault.
    _mm_prefetch::<_MM_HINT_T0>(rec[0].0.as_ptr().cast());
    _mm_prefetch::<_MM_HINT_T0>(rec[1].0.as_ptr().cast());
    for (idx, _) in &plan.groups[pb.g0 as usize..pb.g1 as usize] {
        for &c in idx {
            _mm_prefetch::<_MM_HINT_T0>(rec[2 + c as usize % QK].0.as_ptr().cast());
        }
    }
}

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
    let end = tiles.end;
    for t in tiles {
        let mut f = [_mm512_setzero_ps(); 4];
        for (i, pb) in plan.blocks.iter().enumerate() {
            prefetch_ahead(m, plan, t, end, i);
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

pub(super) fn column_gemv_avx2(
    m: &ColumnView,
    plan: &SparsePlan,
    tiles: Range<usize>,
    y: &mut [f32],
) {
    debug_assert!(avx2_detected());
    let j0 = tiles.start * TILE;
    assert!(tiles.end <= m.tiles() && y.len() == (tiles.end * TILE).min(m.n_out) - j0);
    // SAFETY: handed out only by `avx2_op_kernels` after run-time detection of avx2, fma and
    // f16c; every load goes through a bounds-checked record of the view and every store through
    // a checked slice of `y` or a local tile.
    unsafe { column_gemv_avx2_impl(m, plan, tiles, y) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn column_gemv_avx2_impl(
    m: &ColumnView,
    plan: &SparsePlan,
    tiles: Range<usize>,
    y: &mut [f32],
) {
    let j0 = tiles.start * TILE;
    let (flip, ones) = (_mm256_set1_epi8(-128), _mm256_set1_epi16(1));
    let end = tiles.end;
    for t in tiles {
        let mut f = [0f32; TILE];
        for (i, pb) in plan.blocks.iter().enumerate() {
            prefetch_ahead(m, plan, t, end, i);
            let rec = m.record(t, pb.block as usize);
            let groups = &plan.groups[pb.g0 as usize..pb.g1 as usize];
            let dx = _mm256_set1_ps(pb.dx);
            for h in 0..2 {
                let mut acc = [_mm256_setzero_si256(); 4];
                for (idx, xq) in groups {
                    let xv = _mm256_set1_epi32(*xq);
                    let ax = _mm256_abs_epi8(xv);
                    // SAFETY (of the loads): half of a 64-byte line of the record each.
                    let c: [__m256i; 4] = std::array::from_fn(|k| {
                        let line = &rec[2 + idx[k] as usize % QK].0[32 * h..][..32];
                        _mm256_load_si256(line.as_ptr().cast())
                    });
                    let t0 = _mm256_unpacklo_epi8(c[0], c[1]);
                    let t1 = _mm256_unpackhi_epi8(c[0], c[1]);
                    let t2 = _mm256_unpacklo_epi8(c[2], c[3]);
                    let t3 = _mm256_unpackhi_epi8(c[2], c[3]);
                    // Dword k of u[r], 128-bit lane L: the four inputs' weights of output
                    // 16L + 4r + k (of this half).
                    let u = [
                        _mm256_unpacklo_epi16(t0, t2),
                        _mm256_unpackhi_epi16(t0, t2),
                        _mm256_unpacklo_epi16(t1, t3),
                        _mm256_unpackhi_epi16(t1, t3),
                    ];
                    for r in 0..4 {
                        let q = _mm256_sign_epi8(_mm256_xor_si256(u[r], flip), xv);
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, q), ones);
                        acc[r] = _mm256_add_epi32(acc[r], p);
                    }
                }
                // Outputs 8m .. 8m + 8 of this half in nat[m].
                let nat = [
                    _mm256_permute2x128_si256::<0x20>(acc[0], acc[1]),
                    _mm256_permute2x128_si256::<0x20>(acc[2], acc[3]),
                    _mm256_permute2x128_si256::<0x31>(acc[0], acc[1]),
                    _mm256_permute2x128_si256::<0x31>(acc[2], acc[3]),
                ];
                for (mi, v) in nat.into_iter().enumerate() {
                    let o = 32 * h + 8 * mi;
                    let s = _mm256_cvtepi32_ps(v);
                    // SAFETY (of the loads and the store): 8 f16 scales of the record's line
                    // o / 32, and 8 floats of the local tile.
                    let sc = &rec[o / 32].0[2 * (o % 32)..][..16];
                    let d = _mm256_cvtph_ps(_mm_load_si128(sc.as_ptr().cast()));
                    let dd = _mm256_mul_ps(d, dx);
                    let fv = _mm256_loadu_ps(f[o..][..8].as_ptr());
                    _mm256_storeu_ps(f[o..][..8].as_mut_ptr(), _mm256_fmadd_ps(s, dd, fv));
                }
            }
        }
        let o0 = t * TILE - j0;
        let n = (y.len() - o0).min(TILE);
        y[o0..o0 + n].copy_from_slice(&f[..n]);
    }
}
