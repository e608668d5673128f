//! AVX-512 VNNI tile over repacked Q4_0x4 rows (see `scalar/packed.rs` for the layout and the
//! reference arithmetic it equals bit for bit). One 512-bit register holds a 4-row group's 64
//! quant bytes: each 128-bit lane is one row, each 32-bit lane `j` of it the integer sum of
//! elements `4j..4j+4` and `16+4j..16+4j+4`, so a block costs two `vpdpbusd` per 4 rows and
//! the scales of 4 rows convert in one instruction.

use core::arch::x86_64::*;

use super::avx512::avx512_detected;
use crate::dispatch::Tile;
use crate::quant::blocks::*;
use crate::scalar::packed::{GROUP_BLOCK, ROWS};

/// How far ahead of the current block decode prefetches the weight stream.
const PREFETCH_BYTES: usize = 1024;

pub(super) fn tile_q4_0x4(t: &mut Tile) {
    debug_assert!(avx512_detected());
    // SAFETY: reachable only through the avx512 kernel table, handed out after run-time
    // detection of avx512f/bw/vl/vnni (and avx2/fma/f16c); every load goes through a
    // bounds-checked slice of the exact width read.
    unsafe { tile_avx512(t) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn load64(b: &[u8]) -> __m512i {
    let b: &[u8; 64] = b[..64].try_into().expect("64 bytes");
    // SAFETY (of the load): reads exactly the 64 bytes of `b`.
    _mm512_loadu_si512(b.as_ptr().cast())
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn bcast16(b: &[i8]) -> __m512i {
    let b: &[i8; 16] = b[..16].try_into().expect("16 bytes");
    // SAFETY (of the load): reads exactly the 16 bytes of `b`.
    _mm512_broadcast_i32x4(_mm_loadu_si128(b.as_ptr().cast()))
}

/// One step: `G` groups of 4 rows from group `g0`, `T` tokens from `t0`.
#[inline(always)]
unsafe fn step<const G: usize, const T: usize>(t: &mut Tile, g0: usize, t0: usize) {
    let nb = t.n / QK;
    let gb = nb * GROUP_BLOCK;
    let ab = t.act_row();
    let groups: [&[u8]; G] = std::array::from_fn(|i| &t.w[(g0 + i) * gb..][..gb]);
    let acts: [&[BlockQ8_0]; T] =
        std::array::from_fn(|j| as_blocks::<BlockQ8_0>(&t.a[(t0 + j) * ab..][..ab]));
    let mask = _mm512_set1_epi8(0x0F);
    let ones = _mm512_set1_epi8(1);
    let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    let mut acc = [[_mm512_setzero_ps(); T]; G];
    for b in 0..nb {
        let mut lo = [_mm512_setzero_si512(); G];
        let mut hi = [_mm512_setzero_si512(); G];
        let mut dw = [_mm512_setzero_ps(); G];
        for i in 0..G {
            let o = &groups[i][b * GROUP_BLOCK..(b + 1) * GROUP_BLOCK];
            if T == 1 {
                // A hint only; `wrapping_add` keeps the address computation defined.
                _mm_prefetch::<_MM_HINT_T0>(o.as_ptr().cast::<i8>().wrapping_add(PREFETCH_BYTES));
            }
            let q = load64(&o[8..72]);
            lo[i] = _mm512_and_si512(q, mask);
            hi[i] = _mm512_and_si512(_mm512_srli_epi16::<4>(q), mask);
            let s: &[u8; 8] = o[..8].try_into().expect("4 scales");
            let d4 = _mm_cvtph_ps(_mm_loadl_epi64(s.as_ptr().cast()));
            dw[i] = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(d4));
        }
        for j in 0..T {
            let by = &acts[j][b];
            let ylo = bcast16(&by.qs[..16]);
            let yhi = bcast16(&by.qs[16..]);
            // 8 × (sum of each lane's 8 activations): (q - 8)·y = q·y - 8·y, exactly.
            let ys = _mm512_dpbusd_epi32(
                _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, ylo),
                ones,
                yhi,
            );
            let ys8 = _mm512_slli_epi32::<3>(ys);
            let da = _mm512_set1_ps(f16_from_le(by.d));
            for i in 0..G {
                let p = _mm512_dpbusd_epi32(
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[i], ylo),
                    hi[i],
                    yhi,
                );
                let p = _mm512_sub_epi32(p, ys8);
                let d = _mm512_mul_ps(dw[i], da);
                acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), d, acc[i][j]);
            }
        }
    }
    for (i, acc_i) in acc.iter().enumerate() {
        for (j, &a) in acc_i.iter().enumerate() {
            // Per row (128-bit lane): (a0 + a1) + (a2 + a3).
            let s1 = _mm512_add_ps(a, _mm512_shuffle_ps::<0xB1>(a, a));
            let s2 = _mm512_add_ps(s1, _mm512_shuffle_ps::<0x4E>(s1, s1));
            let mut lanes = [0f32; 16];
            // SAFETY (of the store): writes exactly the 64 bytes of `lanes`.
            _mm512_storeu_ps(lanes.as_mut_ptr(), s2);
            for r in 0..ROWS {
                t.out[(t0 + j) * t.n_rows + (g0 + i) * ROWS + r] = lanes[4 * r];
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_avx512(t: &mut Tile) {
    assert!(t.n_rows.is_multiple_of(ROWS) && t.n.is_multiple_of(QK));
    let ng = t.n_rows / ROWS;
    let nt = t.n_tok;
    let mut t0 = 0;
    while t0 + 4 <= nt {
        let mut g = 0;
        while g + 2 <= ng {
            step::<2, 4>(t, g, t0);
            g += 2;
        }
        if g < ng {
            step::<1, 4>(t, g, t0);
        }
        t0 += 4;
    }
    while t0 < nt {
        // One group at a time: a single sequential stream keeps the hardware prefetchers on.
        for g in 0..ng {
            step::<1, 1>(t, g, t0);
        }
        t0 += 1;
    }
}
