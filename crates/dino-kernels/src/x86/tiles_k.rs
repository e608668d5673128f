//! Tile kernels for the K-quants (Q4_K, Q5_K, Q6_K against Q8_K activations): `R` weight rows ×
//! `T` tokens per step, so each unpacked weight super-block (and its scales) serves `T` tokens
//! and each activation super-block `R` rows while they sit in registers or L1.
//!
//! Every output keeps exactly the float arithmetic of the dot product it stands for (the AVX2
//! `vec_dot` per row, or the batched variant llama.cpp's x86 build uses: the repacked Q4_K
//! GEMM, the tiled Q6_K GEMM). Only exact integer work is reorganized:
//! - where the dot product keeps 8 i32 lanes per super-block and converts them to float lane by
//!   lane (Q5_K, Q6_K per row), the tile keeps the same lane partition (bytes `4l..4l+4` of every
//!   32-element group in lane `l`) and the same FMA per lane;
//! - where it folds a whole sum with a scalar FMA (Q4_K, Q6_K tiled), the tile reduces the
//!   integer lanes of 8 (row, token) "combos" at once into one vector (lane `k` = combo `k`) and
//!   runs the scalar float steps of all 8 side by side, which rounds exactly as the scalar ops.
//!
//! The integer products cannot saturate: Q8_K activation quants lie in -127..=127 (the
//! quantizer rounds `-127/max · x` with `|x| <= |max|` and clamps at 127), weights are 4..6-bit
//! unsigned, so `vpmaddubsw` pairs stay below 2·63·127 < 2^15; scales fit in i16. The VNNI
//! variants fold `vpmaddwd` + `vpaddd` into `vpdpwssd`, which gives the same lanes.
//!
//! Every `unsafe fn` here is unsafe only for its `target_feature` requirements: it must run
//! inside one of the entry points at the bottom (after run-time detection of their features).
//! Memory is read through bounds-checked slices and block references only.

// Index loops over rows, tokens and combo groups mirror the (row, token) structure of the tile.
#![allow(clippy::needless_range_loop)]

use core::arch::x86_64::*;

use super::avx2::{
    arr32, f16s, hsum_i32, hsum_ps, load16, load32, load32i, q2k_scales_mins, q3k_group,
    q3k_scales_i8, scale_pair_i16,
};
use crate::dispatch::Tile;
use crate::quant::blocks::*;
use dino_core::QK_K;

/// A tile step shape-generic over `R` rows × `T` tokens.
pub(super) trait Step {
    /// Computes outputs (rows `r0..r0+R`) × (tokens `t0..t0+T`) of `t`.
    ///
    /// # Safety
    /// The CPU must support the features of the kernel entry point that instantiates it.
    unsafe fn step<const R: usize, const T: usize>(t: &mut Tile, r0: usize, t0: usize);
}

/// Repeats `body` with `v` bound to each listed constant (loops the compiler must unroll: the
/// accumulators stay in registers and offsets and shift counts become immediates).
macro_rules! unroll {
    ($v:ident in [$($n:literal),*] $body:block) => {
        $({
            let $v: usize = $n;
            $body
        })*
    };
}

/// The whole tile in passes over the tokens: `R` × `T` steps while `T` tokens remain, then
/// `R2` × `T2` steps while `T2` remain, then single tokens in `R1`-row steps; the rows a pass's
/// step height leaves over go one at a time. (The K-quant tiles use `R1 = 1`: for decode, one
/// row after the other is one sequential stream the hardware prefetcher follows, and with a
/// single token there is no weight reuse to gain from more rows.)
///
/// # Safety
/// The CPU must support the features `S::step` needs (those of the calling entry point).
#[inline(always)]
pub(super) unsafe fn drive<
    S: Step,
    const R: usize,
    const T: usize,
    const R2: usize,
    const T2: usize,
    const R1: usize,
>(
    t: &mut Tile,
) {
    debug_assert!(t.out.len() >= t.n_rows * t.n_tok);
    let nt = t.n_tok;
    let mut t0 = 0;
    while t0 + T <= nt {
        rows_pass::<S, R, T>(t, t0);
        t0 += T;
    }
    while t0 + T2 <= nt {
        rows_pass::<S, R2, T2>(t, t0);
        t0 += T2;
    }
    while t0 < nt {
        rows_pass::<S, R1, 1>(t, t0);
        t0 += 1;
    }
}

/// Tokens `t0..t0+T` of every row: `R`-row steps, then single rows.
#[inline(always)]
unsafe fn rows_pass<S: Step, const R: usize, const T: usize>(t: &mut Tile, t0: usize) {
    let nr = t.n_rows;
    let mut r0 = 0;
    while r0 + R <= nr {
        S::step::<R, T>(t, r0, t0);
        r0 += R;
    }
    while r0 < nr {
        S::step::<1, T>(t, r0, t0);
        r0 += 1;
    }
}

/// Prefetches block `x`'s counterpart in the rows of the next `R`-row step (`R` rows further
/// on, where the step after this one reads).
///
/// Several rows read side by side are several short streams (a 2048-element Q6_K row is 1,680
/// bytes): the hardware prefetchers lose them at every step and, with the weights coming from
/// DRAM, a 2-row Q6_K step ran at under half the speed of `vec_dot` without this. One-row steps
/// read the rows as one sequential stream and need no help.
#[inline(always)]
unsafe fn prefetch_next_step<B, const R: usize>(t: &Tile, x: &B) {
    let ahead = R * t.row_bytes();
    let p = (x as *const B).cast::<i8>().wrapping_add(ahead);
    let mut off = 0;
    while off < size_of::<B>() {
        // A hint only: it never faults, and `wrapping_add` keeps the address computation defined.
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off));
        off += 64;
    }
    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(size_of::<B>() - 1));
}

/// The weight rows and activation rows of a step, as blocks.
#[inline(always)]
fn rows<'a, B: QuantBlock, const R: usize, const T: usize>(
    t: &'a Tile,
    r0: usize,
    t0: usize,
) -> ([&'a [B]; R], [&'a [BlockQ8K]; T]) {
    let (rb, ab) = (t.row_bytes(), t.act_row());
    (
        std::array::from_fn(|i| as_blocks::<B>(&t.w[(r0 + i) * rb..][..rb])),
        std::array::from_fn(|j| as_blocks::<BlockQ8K>(&t.a[(t0 + j) * ab..][..ab])),
    )
}

/// Most 8-combo groups a step may have (`R · T <= 24`).
const MAX_GROUPS: usize = 3;

/// Number of 8-combo groups of an `R` × `T` step (combo `c` = row `c / T`, token `c % T`; it
/// sits in lane `c % 8` of group `c / 8`).
const fn n_groups(r: usize, t: usize) -> usize {
    assert!(r * t <= 8 * MAX_GROUPS, "too many combos for one step");
    (r * t).div_ceil(8)
}

/// The f32 vector of group `g` with lane `k` = `f(row, token)` of combo `8g + k` (0 past the last).
#[inline(always)]
unsafe fn combo_ps<const R: usize, const T: usize>(
    g: usize,
    f: impl Fn(usize, usize) -> f32,
) -> __m256 {
    let l: [f32; 8] = std::array::from_fn(|k| {
        let c = 8 * g + k;
        if c < R * T {
            f(c / T, c % T)
        } else {
            0.0
        }
    });
    _mm256_setr_ps(l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7])
}

/// Writes lane `k` of `v` to the output of combo `8g + k`.
#[inline(always)]
unsafe fn store_combos<const R: usize, const T: usize>(
    t: &mut Tile,
    r0: usize,
    t0: usize,
    g: usize,
    v: __m256,
) {
    let mut l = [0f32; 8];
    // SAFETY (of the store): writes exactly the 8 floats of `l`.
    _mm256_storeu_ps(l.as_mut_ptr(), v);
    for (k, &x) in l.iter().enumerate() {
        let c = 8 * g + k;
        if c < R * T {
            t.out[(t0 + c % T) * t.n_rows + r0 + c / T] = x;
        }
    }
}

/// Lane `k` = the (exact, wrapping-free) sum of the 8 lanes of `v[k]`.
#[inline(always)]
unsafe fn hsum8_i32(v: [__m256i; 8]) -> __m256i {
    let h01 = _mm256_hadd_epi32(v[0], v[1]);
    let h23 = _mm256_hadd_epi32(v[2], v[3]);
    let h45 = _mm256_hadd_epi32(v[4], v[5]);
    let h67 = _mm256_hadd_epi32(v[6], v[7]);
    // Lanes 0..4: low-half sums of v[0..4]; lanes 4..8: their high-half sums.
    let h0123 = _mm256_hadd_epi32(h01, h23);
    let h4567 = _mm256_hadd_epi32(h45, h67);
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(h0123, h4567),
        _mm256_permute2x128_si256::<0x31>(h0123, h4567),
    )
}

/// Per-combo lane sums of group `g` of the `R` × `T` integer accumulators.
#[inline(always)]
unsafe fn reduce_group<const R: usize, const T: usize>(
    g: usize,
    acc: &[[__m256i; T]; R],
) -> __m256i {
    if R * T == 1 {
        return _mm256_zextsi128_si256(_mm_cvtsi32_si128(hsum_i32(acc[0][0])));
    }
    hsum8_i32(std::array::from_fn(|k| {
        let c = 8 * g + k;
        if c < R * T {
            acc[c / T][c % T]
        } else {
            _mm256_setzero_si256()
        }
    }))
}

/// The float accumulators of a Q6_K / Q3_K step and its per-super-block fold, in both orders:
/// `TILED = false` as `vec_dot_q*_k_q8_k` (`acc = fma(d_a · d_w, (float) lanes, acc)` per output
/// and lane, one horizontal sum at the end), `TILED = true` as the `_tiled` dots (each output's
/// whole integer sum `s`, then `acc = fma((float) s · d_w, d_a, acc)`).
struct KAcc<const R: usize, const T: usize, const TILED: bool> {
    lanes: [[__m256; T]; R],
    combos: [__m256; MAX_GROUPS],
}

impl<const R: usize, const T: usize, const TILED: bool> KAcc<R, T, TILED> {
    #[inline(always)]
    unsafe fn new() -> Self {
        Self {
            lanes: [[_mm256_setzero_ps(); T]; R],
            combos: [_mm256_setzero_ps(); MAX_GROUPS],
        }
    }

    /// Folds one super-block's integer lanes `isum`, with weight scales `dw` and activation
    /// scales `dy`.
    #[inline(always)]
    unsafe fn fold(&mut self, isum: &[[__m256i; T]; R], dw: &[f32; R], dy: &[f32; T]) {
        if TILED {
            for g in 0..const { n_groups(R, T) } {
                let s = _mm256_cvtepi32_ps(reduce_group::<R, T>(g, isum));
                let r = _mm256_mul_ps(s, combo_ps::<R, T>(g, |i, _| dw[i]));
                self.combos[g] =
                    _mm256_fmadd_ps(r, combo_ps::<R, T>(g, |_, j| dy[j]), self.combos[g]);
            }
        } else {
            for i in 0..R {
                for j in 0..T {
                    let d = _mm256_set1_ps(dy[j] * dw[i]);
                    self.lanes[i][j] =
                        _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum[i][j]), self.lanes[i][j]);
                }
            }
        }
    }

    /// Writes the step's `R` × `T` outputs.
    #[inline(always)]
    unsafe fn store(&self, t: &mut Tile, r0: usize, t0: usize) {
        if TILED {
            for g in 0..const { n_groups(R, T) } {
                store_combos::<R, T>(t, r0, t0, g, self.combos[g]);
            }
        } else {
            for i in 0..R {
                for j in 0..T {
                    t.out[(t0 + j) * t.n_rows + r0 + i] = hsum_ps(self.lanes[i][j]);
                }
            }
        }
    }
}

/// The 8 scales and 8 mins of a Q4_K / Q5_K super-block as little-endian bytes of two u64s
/// (ggml's kmask unpacking; the same values as `k4_scales_mins`).
#[inline(always)]
fn k4_scales_mins_u64(s: &[u8; 12]) -> (u64, u64) {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let u = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (u0, u1, u2) = (u(0), u(1), u(2));
    let sc_lo = u0 & KMASK1;
    let sc_hi = (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4);
    let m_lo = u1 & KMASK1;
    let m_hi = ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4);
    (
        sc_lo as u64 | (sc_hi as u64) << 32,
        m_lo as u64 | (m_hi as u64) << 32,
    )
}

/// 8 bytes as 8 × u16 (zero-extended).
#[inline(always)]
unsafe fn u8x8_to_i16(v: u64) -> __m128i {
    _mm_cvtepu8_epi16(_mm_cvtsi64_si128(v as i64))
}

/// `s16` holds 8 i16 scales in both 128-bit halves: all 16 lanes = scale `j`.
#[inline(always)]
unsafe fn bcast_i16(s16: __m256i, j: usize) -> __m256i {
    let b = (2 * j) as i16 | ((2 * j + 1) as i16) << 8;
    _mm256_shuffle_epi8(s16, _mm256_set1_epi16(b))
}

/// `acc + x·s` per i32 lane on i16 pairs (`vpmaddwd` + `vpaddd`, or `vpdpwssd`).
#[inline(always)]
unsafe fn madd_acc<const VNNI: bool>(acc: __m256i, x: __m256i, s: __m256i) -> __m256i {
    if VNNI {
        // SAFETY: only instantiated with VNNI = true inside functions enabling avx512vnni and
        // avx512vl (the `*_vnni` entry points).
        _mm256_dpwssd_epi32(acc, x, s)
    } else {
        _mm256_add_epi32(acc, _mm256_madd_epi16(x, s))
    }
}

/// The 16 group sums of a Q8_K block pairwise added: 8 × i16 sums of its 32-element
/// sub-blocks (|sum| <= 32·127, no wrap).
#[inline(always)]
unsafe fn subblock_sums(by: &BlockQ8K) -> __m128i {
    let bs = load32(arr32(by.bsums.as_flattened(), 0));
    _mm_hadd_epi16(
        _mm256_castsi256_si128(bs),
        _mm256_extracti128_si256::<1>(bs),
    )
}

/// For group `g`: `[Y_0..Y_4]` with `Y_q` = combo `8g+q`'s 4 pair sums (low half) and combo
/// `8g+q+4`'s (high half), pair `p` = `Σ_{s = 2p, 2p+1} min_s · bsum_s` over 32-element
/// sub-blocks.
#[inline(always)]
unsafe fn pair_mins<const R: usize, const T: usize>(
    g: usize,
    bsum: &[__m128i; T],
    mins: &[__m128i; R],
) -> [__m256i; 4] {
    let x = |k: usize| {
        let c = 8 * g + k;
        if c < R * T {
            _mm_madd_epi16(bsum[c % T], mins[c / T])
        } else {
            _mm_setzero_si128()
        }
    };
    std::array::from_fn(|q| _mm256_set_m128i(x(q + 4), x(q)))
}

/// Lane `k` = the whole `Σ min·bsum` of combo `8g + k`.
#[inline(always)]
unsafe fn mins_total<const R: usize, const T: usize>(
    g: usize,
    bsum: &[__m128i; T],
    mins: &[__m128i; R],
) -> __m256i {
    if R * T == 1 {
        let m = _mm_madd_epi16(bsum[0], mins[0]);
        let m = _mm_hadd_epi32(m, m);
        return _mm256_zextsi128_si256(_mm_hadd_epi32(m, m));
    }
    let y = pair_mins::<R, T>(g, bsum, mins);
    let h0 = _mm256_hadd_epi32(y[0], y[1]);
    let h1 = _mm256_hadd_epi32(y[2], y[3]);
    _mm256_hadd_epi32(h0, h1)
}

/// `[P_0..P_4]`: lane `k` of `P_p` = pair `p`'s `Σ min·bsum` of combo `8g + k` (a 4×4
/// transpose of [`pair_mins`] within each half).
#[inline(always)]
unsafe fn mins_by_pair(y: [__m256i; 4]) -> [__m256i; 4] {
    let t0 = _mm256_unpacklo_epi32(y[0], y[1]);
    let t1 = _mm256_unpacklo_epi32(y[2], y[3]);
    let t2 = _mm256_unpackhi_epi32(y[0], y[1]);
    let t3 = _mm256_unpackhi_epi32(y[2], y[3]);
    [
        _mm256_unpacklo_epi64(t0, t1),
        _mm256_unpackhi_epi64(t0, t1),
        _mm256_unpacklo_epi64(t2, t3),
        _mm256_unpackhi_epi64(t2, t3),
    ]
}

// ---------------------------------------------------------------------------------------------
// Q4_K

/// Q4_K × Q8_K: `GEMM = false` reproduces `vec_dot_q4_k_q8_k` (one FMA per super-block),
/// `GEMM = true` `vec_dot_q4_k_q8_k_gemm` (one FMA per 64 elements).
pub(super) struct Q4K<const VNNI: bool, const GEMM: bool>;

impl<const VNNI: bool, const GEMM: bool> Step for Q4K<VNNI, GEMM> {
    #[inline(always)]
    unsafe fn step<const R: usize, const T: usize>(t: &mut Tile, r0: usize, t0: usize) {
        let nb = t.n / QK_K;
        let (w, a) = rows::<BlockQ4K, R, T>(t, r0, t0);
        let ng = const { n_groups(R, T) };
        let mut acc = [_mm256_setzero_ps(); MAX_GROUPS];
        let mut acc_min = [_mm256_setzero_ps(); MAX_GROUPS];
        let m4 = _mm256_set1_epi8(0x0F);
        for b in 0..nb {
            let mut sc = [_mm256_setzero_si256(); R];
            let mut mins = [_mm_setzero_si128(); R];
            let mut dw = [0f32; R];
            let mut dmw = [0f32; R];
            for i in 0..R {
                let bx = &w[i][b];
                if R > 1 {
                    prefetch_next_step::<_, R>(t, bx);
                }
                let (s, m) = k4_scales_mins_u64(&bx.scales);
                sc[i] = _mm256_broadcastsi128_si256(u8x8_to_i16(s));
                mins[i] = u8x8_to_i16(m);
                dw[i] = f16s(bx.d);
                dmw[i] = f16s(bx.dmin);
            }
            let mut bsum = [_mm_setzero_si128(); T];
            let mut dy = [0f32; T];
            for j in 0..T {
                bsum[j] = subblock_sums(&a[j][b]);
                dy[j] = a[j][b].d();
            }
            // As the dot: d = d_w · d_a and dmin_w · d_a, each rounded to f32.
            let mut d = [_mm256_setzero_ps(); MAX_GROUPS];
            let mut dmin = [_mm256_setzero_ps(); MAX_GROUPS];
            let mut pm = [[_mm256_setzero_si256(); 4]; MAX_GROUPS];
            for g in 0..ng {
                let dyv = combo_ps::<R, T>(g, |_, j| dy[j]);
                d[g] = _mm256_mul_ps(combo_ps::<R, T>(g, |i, _| dw[i]), dyv);
                dmin[g] = _mm256_mul_ps(combo_ps::<R, T>(g, |i, _| dmw[i]), dyv);
                if GEMM {
                    pm[g] = mins_by_pair(pair_mins::<R, T>(g, &bsum, &mins));
                } else {
                    pm[g][0] = mins_total::<R, T>(g, &bsum, &mins);
                }
            }
            let mut isum = [[_mm256_setzero_si256(); T]; R];
            unroll!(p in [0, 1, 2, 3] {
                for i in 0..R {
                    let q4 = load32(arr32(&w[i][b].qs, 32 * p));
                    let lo = _mm256_and_si256(q4, m4);
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q4), m4);
                    let (sl, sh) = (bcast_i16(sc[i], 2 * p), bcast_i16(sc[i], 2 * p + 1));
                    for j in 0..T {
                        let by = &a[j][b];
                        let xl = _mm256_maddubs_epi16(lo, load32i(arr32(&by.qs, 64 * p)));
                        let xh = _mm256_maddubs_epi16(hi, load32i(arr32(&by.qs, 64 * p + 32)));
                        let base = if GEMM {
                            _mm256_setzero_si256()
                        } else {
                            isum[i][j]
                        };
                        isum[i][j] = madd_acc::<VNNI>(madd_acc::<VNNI>(base, xl, sl), xh, sh);
                    }
                }
                if GEMM {
                    for g in 0..ng {
                        let s = _mm256_cvtepi32_ps(reduce_group::<R, T>(g, &isum));
                        acc[g] = _mm256_fmadd_ps(s, d[g], acc[g]);
                        let m = _mm256_cvtepi32_ps(pm[g][p]);
                        acc_min[g] = _mm256_fmadd_ps(m, dmin[g], acc_min[g]);
                    }
                }
            });
            if !GEMM {
                for g in 0..ng {
                    let s = _mm256_cvtepi32_ps(reduce_group::<R, T>(g, &isum));
                    acc[g] = _mm256_fmadd_ps(s, d[g], acc[g]);
                    let m = _mm256_cvtepi32_ps(pm[g][0]);
                    acc_min[g] = _mm256_fmadd_ps(m, dmin[g], acc_min[g]);
                }
            }
        }
        for g in 0..ng {
            store_combos::<R, T>(t, r0, t0, g, _mm256_sub_ps(acc[g], acc_min[g]));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Q5_K

/// Q5_K × Q8_K with the arithmetic of the AVX2 `vec_dot_q5_k_q8_k`: 8 float lanes per output,
/// one FMA per super-block, and a scalar mins sum.
pub(super) struct Q5K<const VNNI: bool>;

impl<const VNNI: bool> Step for Q5K<VNNI> {
    #[inline(always)]
    unsafe fn step<const R: usize, const T: usize>(t: &mut Tile, r0: usize, t0: usize) {
        let nb = t.n / QK_K;
        let (w, a) = rows::<BlockQ5K, R, T>(t, r0, t0);
        let ng = const { n_groups(R, T) };
        let mut acc = [[_mm256_setzero_ps(); T]; R];
        let mut acc_m = [_mm256_setzero_ps(); MAX_GROUPS];
        let m4 = _mm256_set1_epi8(0x0F);
        let one = _mm256_set1_epi8(1);
        for b in 0..nb {
            let mut sc = [_mm256_setzero_si256(); R];
            let mut mins = [_mm_setzero_si128(); R];
            let mut dw = [0f32; R];
            let mut dmw = [0f32; R];
            for i in 0..R {
                let bx = &w[i][b];
                if R > 1 {
                    prefetch_next_step::<_, R>(t, bx);
                }
                let (s, m) = k4_scales_mins_u64(&bx.scales);
                sc[i] = _mm256_broadcastsi128_si256(u8x8_to_i16(s));
                mins[i] = u8x8_to_i16(m);
                dw[i] = f16s(bx.d);
                dmw[i] = f16s(bx.dmin);
            }
            let mut bsum = [_mm_setzero_si128(); T];
            let mut dy = [0f32; T];
            for j in 0..T {
                bsum[j] = subblock_sums(&a[j][b]);
                dy[j] = a[j][b].d();
            }
            // As the dot: acc_m += (dmin_w · d_a) · (float) Σ min·bsum, unfused.
            for g in 0..ng {
                let dyv = combo_ps::<R, T>(g, |_, j| dy[j]);
                let dmin = _mm256_mul_ps(combo_ps::<R, T>(g, |i, _| dmw[i]), dyv);
                let m = _mm256_cvtepi32_ps(mins_total::<R, T>(g, &bsum, &mins));
                acc_m[g] = _mm256_add_ps(acc_m[g], _mm256_mul_ps(dmin, m));
            }
            let mut isum = [[_mm256_setzero_si256(); T]; R];
            unroll!(p in [0, 1, 2, 3] {
                for i in 0..R {
                    let bx = &w[i][b];
                    let q4 = load32(arr32(&bx.qs, 32 * p));
                    // Bits 2p (elements 64p..64p+32) and 2p+1 (the next 32) of each qh byte.
                    let h = _mm256_srl_epi16(load32(&bx.qh), _mm_cvtsi32_si128(2 * p as i32));
                    let h_lo = _mm256_slli_epi16::<4>(_mm256_and_si256(h, one));
                    let h_hi =
                        _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<1>(h), one));
                    let lo = _mm256_or_si256(_mm256_and_si256(q4, m4), h_lo);
                    let hi =
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q4), m4), h_hi);
                    let (sl, sh) = (bcast_i16(sc[i], 2 * p), bcast_i16(sc[i], 2 * p + 1));
                    for j in 0..T {
                        let by = &a[j][b];
                        let xl = _mm256_maddubs_epi16(lo, load32i(arr32(&by.qs, 64 * p)));
                        let xh = _mm256_maddubs_epi16(hi, load32i(arr32(&by.qs, 64 * p + 32)));
                        isum[i][j] = madd_acc::<VNNI>(madd_acc::<VNNI>(isum[i][j], xl, sl), xh, sh);
                    }
                }
            });
            for i in 0..R {
                for j in 0..T {
                    let d = _mm256_set1_ps(dw[i] * dy[j]);
                    acc[i][j] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum[i][j]), acc[i][j]);
                }
            }
        }
        for g in 0..ng {
            let mut m = [0f32; 8];
            // SAFETY (of the store): writes exactly the 8 floats of `m`.
            _mm256_storeu_ps(m.as_mut_ptr(), acc_m[g]);
            for (k, &mk) in m.iter().enumerate() {
                let c = 8 * g + k;
                if c < R * T {
                    let (i, j) = (c / T, c % T);
                    t.out[(t0 + j) * t.n_rows + r0 + i] = hsum_ps(acc[i][j]) - mk;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Q6_K

/// Q6_K × Q8_K: `TILED = false` reproduces `vec_dot_q6_k_q8_k` (8 float lanes per output),
/// `TILED = true` `vec_dot_q6_k_q8_k_tiled` (the whole integer sum, scaled by the weight and
/// then the activation scale, per super-block).
pub(super) struct Q6K<const VNNI: bool, const TILED: bool>;

impl<const VNNI: bool, const TILED: bool> Step for Q6K<VNNI, TILED> {
    #[inline(always)]
    unsafe fn step<const R: usize, const T: usize>(t: &mut Tile, r0: usize, t0: usize) {
        let nb = t.n / QK_K;
        let (w, a) = rows::<BlockQ6K, R, T>(t, r0, t0);
        let mut acc = KAcc::<R, T, TILED>::new();
        let m4 = _mm256_set1_epi8(0x0F);
        let m2 = _mm256_set1_epi8(0x03);
        // Low half: i16 0 of each dword, high half: i16 1.
        let split = _mm256_setr_epi8(
            0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, //
            2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
        );
        for b in 0..nb {
            let mut s16 = [_mm256_setzero_si256(); R];
            let mut dw = [0f32; R];
            for i in 0..R {
                let bx = &w[i][b];
                if R > 1 {
                    prefetch_next_step::<_, R>(t, bx);
                }
                let s: &[u8; 16] = bytemuck_i8(&bx.scales);
                s16[i] = _mm256_cvtepi8_epi16(load16(s));
                dw[i] = f16s(bx.d);
            }
            let mut isum = [[_mm256_setzero_si256(); T]; R];
            unroll!(g in [0, 1, 2, 3, 4, 5, 6, 7] {
                let (h, kk) = (g / 4, g % 4);
                for i in 0..R {
                    let bx = &w[i][b];
                    let ql = load32(arr32(&bx.ql, 64 * h + 32 * (kk % 2)));
                    let low = if kk < 2 {
                        _mm256_and_si256(ql, m4)
                    } else {
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql), m4)
                    };
                    let qh = load32(arr32(&bx.qh, 32 * h));
                    let high = _mm256_and_si256(
                        _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * kk as i32)),
                        m2,
                    );
                    let q = _mm256_or_si256(low, _mm256_slli_epi16::<4>(high)); // 0..64
                                                                                // Scale 2g in the low half, 2g+1 in the high half (16 elements each).
                    let sv = _mm256_shuffle_epi8(
                        _mm256_permutevar8x32_epi32(s16[i], _mm256_set1_epi32(g as i32)),
                        split,
                    );
                    for j in 0..T {
                        let y = load32i(arr32(&a[j][b].qs, 32 * g));
                        isum[i][j] = madd_acc::<VNNI>(isum[i][j], _mm256_maddubs_epi16(q, y), sv);
                    }
                }
            });
            // The lanes of `q6k_lanes`: minus 32·Σ bsum·scale over the groups 2l, 2l+1.
            let mut dy = [0f32; T];
            for j in 0..T {
                let by = &a[j][b];
                dy[j] = by.d();
                let bsv = load32(arr32(by.bsums.as_flattened(), 0));
                for i in 0..R {
                    let corr = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bsv, s16[i]));
                    isum[i][j] = _mm256_sub_epi32(isum[i][j], corr);
                }
            }
            acc.fold(&isum, &dw, &dy);
        }
        acc.store(t, r0, t0);
    }
}

// ---------------------------------------------------------------------------------------------
// Q3_K

/// Q3_K × Q8_K: `TILED = false` reproduces `vec_dot_q3_k_q8_k` (8 float lanes per output),
/// `TILED = true` `vec_dot_q3_k_q8_k_tiled` (the whole integer sum, scaled by the weight and
/// then the activation scale, per super-block). The pair sums are those of `q3k_lanes`:
/// `maddubs(value, a) - maddubs(4, a)`, where the second term is shared by all rows.
pub(super) struct Q3K<const VNNI: bool, const TILED: bool>;

impl<const VNNI: bool, const TILED: bool> Step for Q3K<VNNI, TILED> {
    #[inline(always)]
    unsafe fn step<const R: usize, const T: usize>(t: &mut Tile, r0: usize, t0: usize) {
        let nb = t.n / QK_K;
        let (w, a) = rows::<BlockQ3K, R, T>(t, r0, t0);
        let mut acc = KAcc::<R, T, TILED>::new();
        let four = _mm256_set1_epi8(4);
        for b in 0..nb {
            let mut s16 = [_mm256_setzero_si256(); R];
            let mut hb = [_mm256_setzero_si256(); R];
            let mut dw = [0f32; R];
            for i in 0..R {
                let bx = &w[i][b];
                if R > 1 {
                    prefetch_next_step::<_, R>(t, bx);
                }
                s16[i] = _mm256_cvtepi8_epi16(q3k_scales_i8(&bx.scales));
                hb[i] = load32(&bx.hmask);
                dw[i] = f16s(bx.d);
            }
            let mut isum = [[_mm256_setzero_si256(); T]; R];
            unroll!(g in [0, 1, 2, 3, 4, 5, 6, 7] {
                let q: [__m256i; R] = std::array::from_fn(|i| q3k_group(&w[i][b], hb[i], g));
                let sv: [__m256i; R] = std::array::from_fn(|i| scale_pair_i16(s16[i], g));
                for j in 0..T {
                    let y = load32i(arr32(&a[j][b].qs, 32 * g));
                    // The tiled sum needs no lane partition: it takes the 4s off at the end.
                    let m = if TILED { _mm256_setzero_si256() } else { _mm256_maddubs_epi16(four, y) };
                    for i in 0..R {
                        let mut p = _mm256_maddubs_epi16(q[i], y);
                        if !TILED {
                            p = _mm256_sub_epi16(p, m);
                        }
                        isum[i][j] = madd_acc::<VNNI>(isum[i][j], p, sv[i]);
                    }
                }
            });
            let dy: [f32; T] = std::array::from_fn(|j| a[j][b].d());
            if TILED {
                // Σ scale·(value - 4)·a = Σ scale·value·a - 4·Σ scale·bsum (exact).
                for j in 0..T {
                    let bsv = load32(arr32(a[j][b].bsums.as_flattened(), 0));
                    for i in 0..R {
                        let corr = _mm256_slli_epi32::<2>(_mm256_madd_epi16(bsv, s16[i]));
                        isum[i][j] = _mm256_sub_epi32(isum[i][j], corr);
                    }
                }
            }
            acc.fold(&isum, &dw, &dy);
        }
        acc.store(t, r0, t0);
    }
}

// ---------------------------------------------------------------------------------------------
// Q2_K

/// Q2_K × Q8_K, reproducing `vec_dot_q2_k_q8_k`: per super-block and output, the mins lanes
/// (`min·bsum` pairs) with one FMA by `-d_a·dmin_w`, then the scaled-product lanes with one
/// FMA by `d_a·d_w`.
pub(super) struct Q2K<const VNNI: bool>;

impl<const VNNI: bool> Step for Q2K<VNNI> {
    #[inline(always)]
    unsafe fn step<const R: usize, const T: usize>(t: &mut Tile, r0: usize, t0: usize) {
        let nb = t.n / QK_K;
        let (w, a) = rows::<BlockQ2K, R, T>(t, r0, t0);
        let mut acc = [[_mm256_setzero_ps(); T]; R];
        let m3 = _mm256_set1_epi8(3);
        for b in 0..nb {
            let mut s16 = [_mm256_setzero_si256(); R];
            let mut m16 = [_mm256_setzero_si256(); R];
            let mut dw = [0f32; R];
            let mut mw = [0f32; R];
            for i in 0..R {
                let bx = &w[i][b];
                if R > 1 {
                    prefetch_next_step::<_, R>(t, bx);
                }
                (s16[i], m16[i]) = q2k_scales_mins(bx);
                dw[i] = f16s(bx.d);
                mw[i] = f16s(bx.dmin);
            }
            let dy: [f32; T] = std::array::from_fn(|j| a[j][b].d());
            for j in 0..T {
                let bs = load32(arr32(a[j][b].bsums.as_flattened(), 0));
                for i in 0..R {
                    let prod = _mm256_cvtepi32_ps(_mm256_madd_epi16(m16[i], bs));
                    acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(-dy[j] * mw[i]), prod, acc[i][j]);
                }
            }
            let mut isum = [[_mm256_setzero_si256(); T]; R];
            unroll!(g in [0, 1, 2, 3, 4, 5, 6, 7] {
                let (n, k) = (g / 4, g % 4);
                let q: [__m256i; R] = std::array::from_fn(|i| {
                    let qs = load32(arr32(&w[i][b].qs, 32 * n));
                    _mm256_and_si256(_mm256_srl_epi16(qs, _mm_cvtsi32_si128(2 * k as i32)), m3)
                });
                let sv: [__m256i; R] = std::array::from_fn(|i| scale_pair_i16(s16[i], g));
                for j in 0..T {
                    let y = load32i(arr32(&a[j][b].qs, 32 * g));
                    for i in 0..R {
                        let p = _mm256_maddubs_epi16(q[i], y);
                        isum[i][j] = madd_acc::<VNNI>(isum[i][j], p, sv[i]);
                    }
                }
            });
            for i in 0..R {
                for j in 0..T {
                    let d = _mm256_set1_ps(dy[j] * dw[i]);
                    acc[i][j] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum[i][j]), acc[i][j]);
                }
            }
        }
        for i in 0..R {
            for j in 0..T {
                t.out[(t0 + j) * t.n_rows + r0 + i] = hsum_ps(acc[i][j]);
            }
        }
    }
}

/// The 16 signed scale bytes as unsigned bytes (same bits).
#[inline(always)]
fn bytemuck_i8(s: &[i8; 16]) -> &[u8; 16] {
    // SAFETY: i8 and u8 have the same size, alignment and validity; the reference covers
    // exactly the 16 bytes of `s`.
    unsafe { &*(s as *const [i8; 16]).cast::<[u8; 16]>() }
}

// ---------------------------------------------------------------------------------------------
// Entry points

/// Defines tile kernels `$kernel` (compiled with `$features`, driving `$step` with the given
/// step shapes) and their safe wrappers `$safe` for the kernel tables.
macro_rules! entries {
    ($features:literal, $detected:path: $($safe:ident => $kernel:ident = $step:ty,
        $r:literal x $t:literal, $r2:literal x $t2:literal, $r1:literal x 1;)*) => {$(
        /// # Safety
        #[doc = concat!("The CPU must support ", $features, ".")]
        #[target_feature(enable = $features)]
        unsafe fn $kernel(t: &mut $crate::dispatch::Tile) {
            $crate::x86::tiles_k::drive::<$step, $r, $t, $r2, $t2, $r1>(t)
        }

        pub(super) fn $safe(t: &mut $crate::dispatch::Tile) {
            debug_assert!($detected());
            // SAFETY: reachable only through a kernel table handed out after run-time detection
            // of the features `$kernel` enables; the kernel reads weights and activations only
            // through bounds-checked slices, fixed-size block references or pointers to
            // elements below the checked row length.
            unsafe { $kernel(t) }
        }
    )*};
}
pub(super) use entries;

entries! { "avx2,fma,f16c", super::avx2::avx2_detected:
    tile_q4_k => q4_k_avx2 = Q4K<false, false>, 4 x 3, 4 x 2, 1 x 1;
    tile_q4_k_gemm => q4_k_gemm_avx2 = Q4K<false, true>, 1 x 8, 2 x 4, 1 x 1;
    tile_q5_k => q5_k_avx2 = Q5K<false>, 1 x 4, 1 x 2, 1 x 1;
    tile_q6_k => q6_k_avx2 = Q6K<false, false>, 2 x 4, 2 x 2, 1 x 1;
    tile_q6_k_tiled => q6_k_tiled_avx2 = Q6K<false, true>, 1 x 8, 2 x 4, 1 x 1;
    tile_q3_k => q3_k_avx2 = Q3K<false, false>, 2 x 4, 2 x 2, 1 x 1;
    tile_q3_k_tiled => q3_k_tiled_avx2 = Q3K<false, true>, 1 x 8, 2 x 4, 1 x 1;
    tile_q2_k => q2_k_avx2 = Q2K<false>, 2 x 4, 2 x 2, 1 x 1;
}

entries! { "avx2,fma,f16c,avx512f,avx512vl,avx512vnni", super::avx512::avx512_detected:
    vnni_q4_k => q4_k_vnni = Q4K<true, false>, 4 x 3, 4 x 2, 1 x 1;
    vnni_q4_k_gemm => q4_k_gemm_vnni = Q4K<true, true>, 2 x 8, 4 x 4, 1 x 1;
    vnni_q5_k => q5_k_vnni = Q5K<true>, 2 x 4, 2 x 2, 1 x 1;
    vnni_q6_k => q6_k_vnni = Q6K<true, false>, 3 x 4, 3 x 2, 1 x 1;
    vnni_q6_k_tiled => q6_k_tiled_vnni = Q6K<true, true>, 2 x 8, 4 x 4, 1 x 1;
    vnni_q3_k => q3_k_vnni = Q3K<true, false>, 3 x 4, 3 x 2, 1 x 1;
    vnni_q3_k_tiled => q3_k_tiled_vnni = Q3K<true, true>, 2 x 8, 4 x 4, 1 x 1;
    vnni_q2_k => q2_k_vnni = Q2K<true>, 3 x 4, 3 x 2, 1 x 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q3k_scale_unpacking_matches_the_scalar_one() {
        if !super::super::avx2::avx2_detected() {
            return;
        }
        let mut x = 0x0fed_cba9_8765_4321_u64;
        for _ in 0..1000 {
            let mut s = [0u8; 12];
            for b in &mut s {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let mut got = [0i8; 16];
            // SAFETY: AVX2 was detected above; the store writes exactly the 16 bytes of `got`.
            unsafe {
                _mm_storeu_si128(got.as_mut_ptr().cast(), q3k_scales_i8(&s));
            }
            assert_eq!(got, q3k_scales(&s));
        }
    }

    #[test]
    fn k4_unpacking_matches_the_scalar_one() {
        let mut x = 0x1234_5678_9abc_def0_u64;
        for _ in 0..1000 {
            let mut s = [0u8; 12];
            for b in &mut s {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let (sc, m) = crate::scalar::kquants::k4_scales_mins(&s);
            let (sc2, m2) = k4_scales_mins_u64(&s);
            assert_eq!(u64::from_le_bytes(sc), sc2);
            assert_eq!(u64::from_le_bytes(m), m2);
        }
    }
}
