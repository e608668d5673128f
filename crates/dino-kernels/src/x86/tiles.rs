//! Tile kernels for the 32-element quant types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): `R` weight
//! rows × `T` tokens per step, so each unpacked weight block is used `T` times and each
//! activation block `R` times while they sit in registers.
//!
//! Every output keeps exactly the arithmetic of the type's AVX2 `vec_dot` (the same 8-lane
//! integer partition, the same `fmadd` per block in the same order, the same final reduction),
//! so a tile equals `vec_dot` per output bit for bit; `tests/quant_simd.rs` checks it. The
//! integer part is exact, so the VNNI variants (`vpdpbusd` in place of `vpmaddubsw` +
//! `vpmaddwd`) give the same sums.

use core::arch::x86_64::*;

use super::avx2::{dot_i8, dot_u8_i8, f16s, hsum_ps, load32i, nibbles};
use crate::dispatch::Tile;
use crate::quant::blocks::*;

/// How far ahead of the current weight block decode prefetches.
const PREFETCH_BYTES: usize = 1024;

/// A 32-element weight block as the AVX2 dot products see it.
pub(super) trait LegacyBlock: QuantBlock {
    /// The activation block type (`BlockQ8_0` or `BlockQ8_1`).
    type Act: QuantBlock + ActBlock;
    /// Quants are signed (multiplied with the sign trick) rather than unsigned.
    const SIGNED: bool;
    /// The block has a minimum (`m`) added as `m * s` of the activation block.
    const HAS_MIN: bool;
    /// The 32 quants in element order.
    ///
    /// # Safety
    /// The CPU must support avx2, fma and f16c.
    unsafe fn quants(&self) -> __m256i;
    /// Scale and minimum (0 without one), as f32.
    ///
    /// # Safety
    /// The CPU must support avx2, fma and f16c.
    unsafe fn dm(&self) -> (f32, f32);
}

/// An activation block: scale, `d * sum(qs)` (Q8_1 only) and quants.
pub(super) trait ActBlock {
    /// # Safety
    /// The CPU must support avx2, fma and f16c.
    unsafe fn ds(&self) -> (f32, f32);
    fn qs(&self) -> &[i8; 32];
}

impl ActBlock for BlockQ8_0 {
    #[inline(always)]
    unsafe fn ds(&self) -> (f32, f32) {
        (f16s(self.d), 0.0)
    }
    #[inline(always)]
    fn qs(&self) -> &[i8; 32] {
        &self.qs
    }
}

impl ActBlock for BlockQ8_1 {
    #[inline(always)]
    unsafe fn ds(&self) -> (f32, f32) {
        (f16s(self.d), f16s(self.s))
    }
    #[inline(always)]
    fn qs(&self) -> &[i8; 32] {
        &self.qs
    }
}

impl LegacyBlock for BlockQ4_0 {
    type Act = BlockQ8_0;
    const SIGNED: bool = true;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn quants(&self) -> __m256i {
        _mm256_sub_epi8(nibbles(&self.qs), _mm256_set1_epi8(8))
    }
    #[inline(always)]
    unsafe fn dm(&self) -> (f32, f32) {
        (f16s(self.d), 0.0)
    }
}

impl LegacyBlock for BlockQ4_1 {
    type Act = BlockQ8_1;
    const SIGNED: bool = false;
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn quants(&self) -> __m256i {
        nibbles(&self.qs)
    }
    #[inline(always)]
    unsafe fn dm(&self) -> (f32, f32) {
        (f16s(self.d), f16s(self.m))
    }
}

impl LegacyBlock for BlockQ5_0 {
    type Act = BlockQ8_0;
    const SIGNED: bool = true;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn quants(&self) -> __m256i {
        // As `vec_dot_q5_0_q8_0`: q - 16 via the top nibble where the fifth bit is clear.
        let hi = _mm256_andnot_si256(
            super::avx2::bytes_from_bits(self.qh()),
            _mm256_set1_epi8(0xF0u8 as i8),
        );
        _mm256_or_si256(nibbles(&self.qs), hi)
    }
    #[inline(always)]
    unsafe fn dm(&self) -> (f32, f32) {
        (f16s(self.d), 0.0)
    }
}

impl LegacyBlock for BlockQ5_1 {
    type Act = BlockQ8_1;
    const SIGNED: bool = false;
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn quants(&self) -> __m256i {
        let hi = _mm256_and_si256(
            super::avx2::bytes_from_bits(self.qh()),
            _mm256_set1_epi8(0x10),
        );
        _mm256_or_si256(nibbles(&self.qs), hi)
    }
    #[inline(always)]
    unsafe fn dm(&self) -> (f32, f32) {
        (f16s(self.d), f16s(self.m))
    }
}

impl LegacyBlock for BlockQ8_0 {
    type Act = BlockQ8_0;
    const SIGNED: bool = true;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn quants(&self) -> __m256i {
        load32i(&self.qs)
    }
    #[inline(always)]
    unsafe fn dm(&self) -> (f32, f32) {
        (f16s(self.d), 0.0)
    }
}

/// 8 lanes of 4-element integer sums `x · y`, as `dot_i8` / `dot_u8_i8`.
#[inline(always)]
unsafe fn pair_dot<B: LegacyBlock, const VNNI: bool>(x: __m256i, y: __m256i) -> __m256i {
    if VNNI {
        let (ux, sy) = if B::SIGNED {
            (_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
        } else {
            (x, y)
        };
        // SAFETY: only instantiated with VNNI = true inside functions enabling avx512vnni and
        // avx512vl (see `tile_vnni`).
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), ux, sy)
    } else if B::SIGNED {
        dot_i8(x, y)
    } else {
        dot_u8_i8(x, y)
    }
}

/// One `R` × `T` step: rows `r0..r0+R`, tokens `t0..t0+T`.
#[inline(always)]
unsafe fn step<B: LegacyBlock, const R: usize, const T: usize, const VNNI: bool>(
    t: &mut Tile,
    r0: usize,
    t0: usize,
) {
    let nb = t.n / QK;
    let (rb, ab) = (t.row_bytes(), t.act_row());
    let w: [&[B]; R] = std::array::from_fn(|i| as_blocks::<B>(&t.w[(r0 + i) * rb..][..rb]));
    let a: [&[B::Act]; T] =
        std::array::from_fn(|j| as_blocks::<B::Act>(&t.a[(t0 + j) * ab..][..ab]));
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut summs = [[0f32; T]; R];
    for b in 0..nb {
        let mut qx = [_mm256_setzero_si256(); R];
        let mut dw = [_mm256_setzero_ps(); R];
        let mut mw = [0f32; R];
        for i in 0..R {
            let bx = &w[i][b];
            if T == 1 {
                // Decode streams every weight once: fetch ahead of the hardware prefetcher.
                // A hint only; `wrapping_add` keeps the address computation defined.
                let ahead = (bx as *const B).cast::<i8>().wrapping_add(PREFETCH_BYTES);
                _mm_prefetch::<_MM_HINT_T0>(ahead);
            }
            qx[i] = bx.quants();
            let (d, m) = bx.dm();
            dw[i] = _mm256_set1_ps(d);
            mw[i] = m;
        }
        for j in 0..T {
            let by = &a[j][b];
            let y = load32i(by.qs());
            let (d, s) = by.ds();
            let da = _mm256_set1_ps(d);
            for i in 0..R {
                // As vec_dot: d = d_w * d_a rounded to f32, then acc += d * (float) sum.
                let p = pair_dot::<B, VNNI>(qx[i], y);
                let d = _mm256_mul_ps(dw[i], da);
                acc[i][j] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc[i][j]);
                if B::HAS_MIN {
                    summs[i][j] += mw[i] * s;
                }
            }
        }
    }
    for i in 0..R {
        for j in 0..T {
            t.out[(t0 + j) * t.n_rows + r0 + i] = hsum_ps(acc[i][j]) + summs[i][j];
        }
    }
}

/// The whole tile in `R` × `T` steps, with 1-row and 1-token steps for the edges.
#[inline(always)]
unsafe fn tile<B: LegacyBlock, const R: usize, const T: usize, const VNNI: bool>(t: &mut Tile) {
    debug_assert!(t.n.is_multiple_of(QK));
    debug_assert!(t.w.len() >= t.n_rows * t.n / QK * size_of::<B>());
    debug_assert!(t.a.len() >= t.n_tok * t.n / QK * size_of::<B::Act>());
    debug_assert!(t.out.len() >= t.n_rows * t.n_tok);
    let (nr, nt) = (t.n_rows, t.n_tok);
    let mut t0 = 0;
    while t0 + T <= nt {
        let mut r0 = 0;
        while r0 + R <= nr {
            step::<B, R, T, VNNI>(t, r0, t0);
            r0 += R;
        }
        while r0 < nr {
            step::<B, 1, T, VNNI>(t, r0, t0);
            r0 += 1;
        }
        t0 += T;
    }
    while t0 < nt {
        let mut r0 = 0;
        // Decode reads each weight once: one row at a time keeps a single sequential stream,
        // which the hardware prefetchers follow (several short row streams defeat them).
        while nt > 1 && r0 + R <= nr {
            step::<B, R, 1, VNNI>(t, r0, t0);
            r0 += R;
        }
        while r0 < nr {
            step::<B, 1, 1, VNNI>(t, r0, t0);
            r0 += 1;
        }
        t0 += 1;
    }
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile_avx2<B: LegacyBlock>(t: &mut Tile) {
    // 16 ymm registers: 2 rows × 4 tokens of accumulators.
    tile::<B, 2, 4, false>(t)
}

/// # Safety
/// The CPU must support avx2, fma, f16c, avx512f, avx512vl and avx512vnni.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub(super) unsafe fn tile_vnni<B: LegacyBlock>(t: &mut Tile) {
    // 32 ymm registers with AVX-512VL: 4 rows × 4 tokens of accumulators.
    tile::<B, 4, 4, true>(t)
}
