//! Tile kernels for F32, F16 and BF16 weights: `R` rows × `T` tokens per step, each converted
//! weight vector used for `T` tokens and each activation vector for `R` rows.
//!
//! F32 / F16: every output keeps exactly the arithmetic of the AVX2 `vec_dot_f32` /
//! `vec_dot_f16`: four 8-lane accumulators, accumulator `k` taking elements `i + 8k .. i + 8k + 8`
//! of every 32-element step `i` with one FMA in ascending `i`, then the 8-element steps into
//! accumulator 0, `(acc0 + acc1) + (acc2 + acc3)`, `hsum_ps`, and the scalar tail added element
//! by element. The four accumulators are independent chains, so a step may run them in
//! separate passes over a block of the row without changing any chain's order: four
//! accumulators per output do not fit the register file for useful `R`, `T`
//! ([`chains_per_pass`]). The passes read a block of each row up to four times from L1; a 1 × 1
//! step (decode) runs all four chains in one pass and so reads the row exactly as `vec_dot`.
//!
//! BF16: the AVX2 table's dot product is the scalar one (an f64 sum in element order, as
//! ggml's generic kernel), latency-bound on its one chain of f64 adds; the tile keeps that
//! order per output and advances four outputs per f64 vector ([`Bf16Tile`]).
//!
//! Every `unsafe fn` here is unsafe for its `target_feature` requirements (it must run inside
//! one of the entry points at the bottom) and, where it takes a raw pointer, for the range
//! stated on it; the steps only form pointers to elements below the checked row length.

// Index loops over rows, tokens and chains mirror the (row, token) structure of the tile.
#![allow(clippy::needless_range_loop)]

use core::arch::x86_64::*;

use super::avx2::{f16s, hsum_ps};
use super::tiles_k::{entries, Step};
use crate::dispatch::Tile;
use crate::quant::blocks::bf16_bits_to_f32;

/// Elements per block of the chain passes: a block of every row and token of a step stays in
/// L1 while the passes go over it.
const BLOCK: usize = 512;

/// A float row encoding.
pub(super) trait FloatRow {
    /// Bytes per element.
    const SIZE: usize;
    /// Elements `e..e+8` of the row at `p` as f32.
    ///
    /// # Safety
    /// The CPU must support avx2, fma and f16c; `p` must be valid for reads of
    /// `(e + 8) * SIZE` bytes.
    unsafe fn load8(p: *const u8, e: usize) -> __m256;
    /// Element `e` of `row` as the scalar tail of the dot product reads it.
    ///
    /// # Safety
    /// The CPU must support avx2, fma and f16c.
    unsafe fn at(row: &[u8], e: usize) -> f32;
}

pub(super) struct F32Row;
pub(super) struct F16Row;

impl FloatRow for F32Row {
    const SIZE: usize = 4;
    #[inline(always)]
    unsafe fn load8(p: *const u8, e: usize) -> __m256 {
        _mm256_loadu_ps(p.add(4 * e).cast())
    }
    #[inline(always)]
    unsafe fn at(row: &[u8], e: usize) -> f32 {
        f32::from_le_bytes(row[4 * e..4 * e + 4].try_into().expect("4 bytes"))
    }
}

impl FloatRow for F16Row {
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8, e: usize) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * e).cast()))
    }
    #[inline(always)]
    unsafe fn at(row: &[u8], e: usize) -> f32 {
        f16s([row[2 * e], row[2 * e + 1]])
    }
}

/// Accumulator chains per pass for an `R` × `T` step with `regs` vector registers: as many
/// of the four as fit beside the `R` weight vectors and one activation vector.
const fn chains_per_pass(r: usize, t: usize, regs: usize) -> usize {
    if 4 * r * t + r < regs {
        4
    } else if 2 * r * t + r < regs {
        2
    } else {
        1
    }
}

/// The float tile step for a machine with `REGS` vector registers.
pub(super) struct FTile<F, const REGS: usize>(core::marker::PhantomData<F>);

impl<F: FloatRow, const REGS: usize> Step for FTile<F, REGS> {
    #[inline(always)]
    unsafe fn step<const R: usize, const T: usize>(t: &mut Tile, r0: usize, t0: usize) {
        let kc = const { chains_per_pass(R, T, REGS) };
        let (rb, ab) = (t.row_bytes(), t.act_row());
        let w: [&[u8]; R] = std::array::from_fn(|i| &t.w[(r0 + i) * rb..][..rb]);
        let a: [&[u8]; T] = std::array::from_fn(|j| &t.a[(t0 + j) * ab..][..ab]);
        // Every pointer read below stays within its row: elements < n <= row length.
        debug_assert!(rb >= t.n * F::SIZE && ab >= t.n * F::SIZE);
        let n = t.n.min(rb / F::SIZE).min(ab / F::SIZE);
        let pw = w.map(|s| s.as_ptr());
        let pa = a.map(|s| s.as_ptr());
        let mut acc = [[[_mm256_setzero_ps(); 4]; T]; R];
        let n32 = n / 32 * 32;
        let mut b0 = 0;
        while b0 < n32 {
            let b1 = (b0 + BLOCK).min(n32);
            for p in 0..4 / kc {
                // This pass's chains in locals (registers); the others wait in `acc`.
                let mut cur = [[[_mm256_setzero_ps(); 4]; T]; R];
                for r in 0..R {
                    for j in 0..T {
                        for q in 0..kc {
                            cur[r][j][q] = acc[r][j][p * kc + q];
                        }
                    }
                }
                let mut i = b0;
                while i < b1 {
                    if R > 1 && p == 0 {
                        // The same elements of the next step's rows (see
                        // `tiles_k::prefetch_next_step`). A hint only: it never faults, and
                        // `wrapping_add` keeps the address computation defined.
                        for &row in &pw {
                            let ahead = row.wrapping_add(R * rb + i * F::SIZE).cast::<i8>();
                            for off in (0..32 * F::SIZE).step_by(64) {
                                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(off));
                            }
                        }
                    }
                    for q in 0..kc {
                        let e = i + 8 * (p * kc + q);
                        // SAFETY (of the loads): e + 8 <= n32 <= n.
                        let x: [__m256; R] = std::array::from_fn(|r| F::load8(pw[r], e));
                        for j in 0..T {
                            let y = F::load8(pa[j], e);
                            for r in 0..R {
                                cur[r][j][q] = _mm256_fmadd_ps(x[r], y, cur[r][j][q]);
                            }
                        }
                    }
                    i += 32;
                }
                for r in 0..R {
                    for j in 0..T {
                        for q in 0..kc {
                            acc[r][j][p * kc + q] = cur[r][j][q];
                        }
                    }
                }
            }
            b0 = b1;
        }
        let mut i = n32;
        while i + 8 <= n {
            // SAFETY (of the loads): i + 8 <= n.
            let x: [__m256; R] = std::array::from_fn(|r| F::load8(pw[r], i));
            for j in 0..T {
                let y = F::load8(pa[j], i);
                for r in 0..R {
                    acc[r][j][0] = _mm256_fmadd_ps(x[r], y, acc[r][j][0]);
                }
            }
            i += 8;
        }
        for r in 0..R {
            for j in 0..T {
                let c = &acc[r][j];
                let v = _mm256_add_ps(_mm256_add_ps(c[0], c[1]), _mm256_add_ps(c[2], c[3]));
                let mut sum = hsum_ps(v);
                for e in i..n {
                    sum += F::at(w[r], e) * F::at(a[j], e);
                }
                t.out[(t0 + j) * t.n_rows + r0 + r] = sum;
            }
        }
    }
}

/// The BF16 tile step, with the arithmetic of the scalar `vec_dot_bf16` (the AVX2 table's
/// BF16 dot product, as ggml's generic one): every product rounded to f32, widened, and added
/// to an f64 sum in element order. Four (row, token) combos share an f64 vector, so the
/// sequential sums of several outputs advance side by side.
pub(super) struct Bf16Tile;

/// Elements `e..e+8` of the BF16 row at `p` as f32.
///
/// # Safety
/// The CPU must support avx2; `p` must be valid for reads of `2 * (e + 8)` bytes.
#[inline(always)]
unsafe fn bf16x8(p: *const u8, e: usize) -> __m256 {
    let h = _mm_loadu_si128(p.add(2 * e).cast());
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
}

impl Step for Bf16Tile {
    #[inline(always)]
    unsafe fn step<const R: usize, const T: usize>(t: &mut Tile, r0: usize, t0: usize) {
        const { assert!(R * T <= 16, "at most 4 groups of 4 combos") };
        let ng = const { (R * T).div_ceil(4) };
        let (rb, ab) = (t.row_bytes(), t.act_row());
        let w: [&[u8]; R] = std::array::from_fn(|i| &t.w[(r0 + i) * rb..][..rb]);
        let a: [&[u8]; T] = std::array::from_fn(|j| &t.a[(t0 + j) * ab..][..ab]);
        debug_assert!(rb >= 2 * t.n && ab >= 2 * t.n);
        let n = t.n.min(rb / 2).min(ab / 2);
        let pw = w.map(|s| s.as_ptr());
        let pa = a.map(|s| s.as_ptr());
        // Group g, lane k: the running sum of combo c = 4g + k (row c / T, token c % T).
        let mut acc = [_mm256_setzero_pd(); 4];
        let n8 = n / 8 * 8;
        let mut e = 0;
        while e < n8 {
            if R > 1 && e % 32 == 0 {
                // The same elements of the next step's rows (see `tiles_k`). A hint only: it
                // never faults, and `wrapping_add` keeps the address computation defined.
                for &row in &pw {
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(R * rb + 2 * e).cast());
                }
            }
            // SAFETY (of the loads): e + 8 <= n8 <= n.
            let x: [__m256; R] = std::array::from_fn(|i| bf16x8(pw[i], e));
            let y: [__m256; T] = std::array::from_fn(|j| bf16x8(pa[j], e));
            for g in 0..ng {
                let p: [__m256; 4] = std::array::from_fn(|k| {
                    let c = 4 * g + k;
                    if c < R * T {
                        _mm256_mul_ps(x[c / T], y[c % T])
                    } else {
                        _mm256_setzero_ps()
                    }
                });
                // Transpose: u_m holds element m (low half) and m + 4 (high half) of the 4 combos.
                let lo01 = _mm256_unpacklo_ps(p[0], p[1]);
                let hi01 = _mm256_unpackhi_ps(p[0], p[1]);
                let lo23 = _mm256_unpacklo_ps(p[2], p[3]);
                let hi23 = _mm256_unpackhi_ps(p[2], p[3]);
                let u = [
                    _mm256_shuffle_ps::<0x44>(lo01, lo23),
                    _mm256_shuffle_ps::<0xEE>(lo01, lo23),
                    _mm256_shuffle_ps::<0x44>(hi01, hi23),
                    _mm256_shuffle_ps::<0xEE>(hi01, hi23),
                ];
                for um in u {
                    acc[g] = _mm256_add_pd(acc[g], _mm256_cvtps_pd(_mm256_castps256_ps128(um)));
                }
                for um in u {
                    let hi = _mm256_extractf128_ps::<1>(um);
                    acc[g] = _mm256_add_pd(acc[g], _mm256_cvtps_pd(hi));
                }
            }
            e += 8;
        }
        for g in 0..ng {
            let mut sums = [0f64; 4];
            // SAFETY (of the store): writes exactly the 4 doubles of `sums`.
            _mm256_storeu_pd(sums.as_mut_ptr(), acc[g]);
            for (k, &s) in sums.iter().enumerate() {
                let c = 4 * g + k;
                if c < R * T {
                    let (i, j) = (c / T, c % T);
                    let mut sum = s;
                    for e in n8..n {
                        let xv =
                            bf16_bits_to_f32(u16::from_le_bytes([w[i][2 * e], w[i][2 * e + 1]]));
                        let yv =
                            bf16_bits_to_f32(u16::from_le_bytes([a[j][2 * e], a[j][2 * e + 1]]));
                        sum += (xv * yv) as f64;
                    }
                    t.out[(t0 + j) * t.n_rows + r0 + i] = sum as f32;
                }
            }
        }
    }
}

entries! { "avx2,fma,f16c", super::avx2::avx2_detected:
    tile_f32 => f32_avx2 = FTile<F32Row, 16>, 3 x 4, 3 x 2, 1 x 1;
    tile_f16 => f16_avx2 = FTile<F16Row, 16>, 3 x 4, 3 x 2, 1 x 1;
    tile_bf16 => bf16_avx2 = Bf16Tile, 4 x 4, 4 x 2, 4 x 1;
}

// AVX-512VL: the same code with 32 ymm registers.
entries! { "avx2,fma,f16c,avx512f,avx512vl", super::avx512::avx512_detected:
    wide_f32 => f32_wide = FTile<F32Row, 32>, 4 x 4, 4 x 2, 1 x 1;
    wide_f16 => f16_wide = FTile<F16Row, 32>, 4 x 4, 4 x 2, 1 x 1;
    wide_bf16 => bf16_wide = Bf16Tile, 2 x 8, 4 x 4, 4 x 1;
}
