//! AVX-512 VNNI GEMM over the row-interleaved ("x16") layouts of `scalar/panel.rs`, which
//! describes the layouts and the arithmetic these kernels equal bit for bit.
//!
//! A micro-tile is 16 rows (one register of per-row lanes) × up to 8 tokens: per block the
//! weights are unpacked once into up to 8 registers of unsigned bytes, then every token adds
//! `B / 4` `vpdpbusd` (4 activation bytes broadcast from memory) into its integer sum and folds
//! it into its float accumulator with two FMAs. Decode is the same code with one token.

use core::arch::x86_64::*;

use super::avx512::avx512_detected;
use crate::dispatch::Tile;
use crate::scalar::panel::{self, act_row_bytes, Layout, ACT_TINY, ROWS};

/// Tokens per micro-tile.
const MT: usize = 8;
/// How far ahead of the current unit decode prefetches the weight stream.
const PREFETCH_BYTES: usize = 4096;

/// One layout's register decoding.
trait X16 {
    const L: &'static Layout;
    /// `L.unit`, `L.block`, `L.unit_bytes` as constants the compiler unrolls by.
    const UNIT: usize = Self::L.unit;
    const BLOCK: usize = Self::L.block;
    const UNIT_BYTES: usize = Self::L.unit_bytes;
    /// Per-unit state (converted super-block scales).
    type U: Copy;
    unsafe fn unit(p: *const u8) -> Self::U;
    /// Block `blk` of the unit at `p`: fills `w[..block / 4]`, returns `(dw, bw)`.
    unsafe fn block(p: *const u8, u: Self::U, blk: usize, w: &mut [__m512i; 8])
        -> (__m512, __m512);
}

/// `-x`, exactly (the sign bit flipped with an AVX-512F integer XOR: `_mm512_xor_ps` needs
/// AVX-512DQ, which the level does not require).
#[inline(always)]
unsafe fn neg(x: __m512) -> __m512 {
    _mm512_castsi512_ps(_mm512_xor_si512(
        _mm512_castps_si512(x),
        _mm512_set1_epi32(i32::MIN),
    ))
}

#[inline(always)]
unsafe fn ld(p: *const u8) -> __m512i {
    _mm512_loadu_si512(p.cast())
}

#[inline(always)]
unsafe fn f16x16(p: *const u8) -> __m512 {
    _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
}

/// 16 bytes at `p` as f32 lanes (unsigned or signed).
#[inline(always)]
unsafe fn u8x16(p: *const u8) -> __m512 {
    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(p.cast())))
}
#[inline(always)]
unsafe fn i8x16(p: *const u8) -> __m512 {
    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast())))
}

#[inline(always)]
unsafe fn nibbles4(p: *const u8, w: &mut [__m512i; 8]) {
    let m = _mm512_set1_epi8(0x0F);
    for i in 0..4 {
        let q = ld(p.add(64 * i));
        w[i] = _mm512_and_si512(q, m);
        w[i + 4] = _mm512_and_si512(_mm512_srli_epi16::<4>(q), m);
    }
}

struct Q40;
impl X16 for Q40 {
    const L: &'static Layout = &panel::Q4_0;
    type U = ();
    unsafe fn unit(_: *const u8) {}
    #[inline(always)]
    unsafe fn block(p: *const u8, _: (), _: usize, w: &mut [__m512i; 8]) -> (__m512, __m512) {
        nibbles4(p.add(32), w);
        let dw = f16x16(p);
        (dw, _mm512_mul_ps(dw, _mm512_set1_ps(-8.0)))
    }
}

struct Q41;
impl X16 for Q41 {
    const L: &'static Layout = &panel::Q4_1;
    type U = ();
    unsafe fn unit(_: *const u8) {}
    #[inline(always)]
    unsafe fn block(p: *const u8, _: (), _: usize, w: &mut [__m512i; 8]) -> (__m512, __m512) {
        nibbles4(p.add(64), w);
        (f16x16(p), f16x16(p.add(32)))
    }
}

/// Adds 16 to the bytes of `w[g]` whose bit is set in mask `g` (8 bytes each from `p`).
#[inline(always)]
unsafe fn high_bits(p: *const u8, w: &mut [__m512i; 8]) {
    let sixteen = _mm512_set1_epi8(16);
    for (g, w) in w.iter_mut().enumerate() {
        let k = _cvtu64_mask64(p.add(8 * g).cast::<u64>().read_unaligned());
        *w = _mm512_mask_add_epi8(*w, k, *w, sixteen);
    }
}

struct Q50;
impl X16 for Q50 {
    const L: &'static Layout = &panel::Q5_0;
    type U = ();
    unsafe fn unit(_: *const u8) {}
    #[inline(always)]
    unsafe fn block(p: *const u8, _: (), _: usize, w: &mut [__m512i; 8]) -> (__m512, __m512) {
        nibbles4(p.add(96), w);
        high_bits(p.add(32), w);
        let dw = f16x16(p);
        (dw, _mm512_mul_ps(dw, _mm512_set1_ps(-16.0)))
    }
}

struct Q51;
impl X16 for Q51 {
    const L: &'static Layout = &panel::Q5_1;
    type U = ();
    unsafe fn unit(_: *const u8) {}
    #[inline(always)]
    unsafe fn block(p: *const u8, _: (), _: usize, w: &mut [__m512i; 8]) -> (__m512, __m512) {
        nibbles4(p.add(128), w);
        high_bits(p.add(64), w);
        (f16x16(p), f16x16(p.add(32)))
    }
}

struct Q80;
impl X16 for Q80 {
    const L: &'static Layout = &panel::Q8_0;
    type U = ();
    unsafe fn unit(_: *const u8) {}
    #[inline(always)]
    unsafe fn block(p: *const u8, _: (), _: usize, w: &mut [__m512i; 8]) -> (__m512, __m512) {
        let flip = _mm512_set1_epi8(-128);
        for (g, w) in w.iter_mut().enumerate() {
            *w = _mm512_xor_si512(ld(p.add(32 + 64 * g)), flip);
        }
        let dw = f16x16(p);
        (dw, _mm512_mul_ps(dw, _mm512_set1_ps(-128.0)))
    }
}

struct Q4K;
impl X16 for Q4K {
    const L: &'static Layout = &panel::Q4_K;
    // The super-block scales are re-read per block: kept live they cost two registers.
    type U = ();
    unsafe fn unit(_: *const u8) {}
    #[inline(always)]
    unsafe fn block(p: *const u8, _: (), s: usize, w: &mut [__m512i; 8]) -> (__m512, __m512) {
        let (d, dmin) = (f16x16(p), f16x16(p.add(32)));
        let m = _mm512_set1_epi8(0x0F);
        let q = p.add(panel::Q4K_QS + 512 * (s / 2));
        let shift = _mm_cvtsi32_si128(4 * (s % 2) as i32);
        for (i, w) in w.iter_mut().enumerate() {
            *w = _mm512_and_si512(_mm512_srl_epi16(ld(q.add(64 * i)), shift), m);
        }
        let dw = _mm512_mul_ps(d, u8x16(p.add(panel::Q4K_SC + ROWS * s)));
        let mn = _mm512_mul_ps(dmin, u8x16(p.add(panel::Q4K_M + ROWS * s)));
        // -(dmin · m): the sign flip is exact, as in the reference.
        (dw, neg(mn))
    }
}

struct Q5K;
impl X16 for Q5K {
    const L: &'static Layout = &panel::Q5_K;
    // The super-block scales are re-read per block: kept live they cost two registers.
    type U = ();
    unsafe fn unit(_: *const u8) {}
    #[inline(always)]
    unsafe fn block(p: *const u8, _: (), s: usize, w: &mut [__m512i; 8]) -> (__m512, __m512) {
        let (d, dmin) = (f16x16(p), f16x16(p.add(32)));
        let m = _mm512_set1_epi8(0x0F);
        let q = p.add(panel::Q5K_QS + 512 * (s / 2));
        let shift = _mm_cvtsi32_si128(4 * (s % 2) as i32);
        for (i, w) in w.iter_mut().enumerate() {
            *w = _mm512_and_si512(_mm512_srl_epi16(ld(q.add(64 * i)), shift), m);
        }
        high_bits(p.add(panel::Q5K_H + 64 * s), w);
        let dw = _mm512_mul_ps(d, u8x16(p.add(panel::Q4K_SC + ROWS * s)));
        let mn = _mm512_mul_ps(dmin, u8x16(p.add(panel::Q4K_M + ROWS * s)));
        (dw, neg(mn))
    }
}

struct Q6K;
impl X16 for Q6K {
    const L: &'static Layout = &panel::Q6_K;
    type U = __m512;
    #[inline(always)]
    unsafe fn unit(p: *const u8) -> __m512 {
        f16x16(p)
    }
    #[inline(always)]
    unsafe fn block(p: *const u8, d: __m512, s: usize, w: &mut [__m512i; 8]) -> (__m512, __m512) {
        let (c, g0) = (s / 8, 4 * (s % 8));
        let chunk = p.add(panel::Q6K_L + panel::Q6K_CHUNK * c);
        let lo = chunk.add(64 * (g0 % 16));
        let hi = chunk.add(panel::Q6K_HI + 64 * (g0 % 8));
        let ls = _mm_cvtsi32_si128(4 * (g0 / 16) as i32);
        let hs = _mm_cvtsi32_si128(2 * (g0 / 8) as i32);
        let (m4, m2) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x03));
        for (i, w) in w.iter_mut().take(4).enumerate() {
            let l = _mm512_and_si512(_mm512_srl_epi16(ld(lo.add(64 * i)), ls), m4);
            let h = _mm512_and_si512(_mm512_srl_epi16(ld(hi.add(64 * i)), hs), m2);
            *w = _mm512_or_si512(l, _mm512_slli_epi16::<4>(h));
        }
        let dw = _mm512_mul_ps(d, i8x16(p.add(panel::Q6K_SC + ROWS * s)));
        (dw, _mm512_mul_ps(dw, _mm512_set1_ps(-32.0)))
    }
}

/// 16 rows of one group × `N` tokens from `acts` (activation rows of `ab` bytes).
#[inline(always)]
unsafe fn micro<K: X16, const N: usize, const PF: bool>(
    group: *const u8,
    n: usize,
    acts: *const u8,
    ab: usize,
    out: *mut f32,
    out_stride: usize,
) {
    let (nb, ng) = (K::UNIT / K::BLOCK, K::BLOCK / 4);
    let sum_off = if K::BLOCK == 32 {
        n + n / 32 * 4
    } else {
        n + n / 32 * 8
    };
    // With one or two tokens, two chains per token keep the `vpdpbusd` latency hidden.
    let chains = if N <= 2 { 2 } else { 1 };
    let mut acc = [_mm512_setzero_ps(); N];
    for u in 0..n / K::UNIT {
        let p = group.add(u * K::UNIT_BYTES);
        let us = K::unit(p);
        for blk in 0..nb {
            if PF {
                // The first pass over a group streams its weights from memory: ask for every line of the unit
                // `PREFETCH_BYTES` ahead, a block's share at a time so the requests do not
                // arrive in one burst (hints only; `wrapping_add` keeps the addresses defined).
                let lines = K::UNIT_BYTES.div_ceil(64);
                let per = lines.div_ceil(nb);
                let ahead = p.cast::<i8>().wrapping_add(PREFETCH_BYTES);
                for line in blk * per..((blk + 1) * per).min(lines) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line));
                }
            }
            let mut w = [_mm512_setzero_si512(); 8];
            let (dw, bw) = K::block(p, us, blk, &mut w);
            let e0 = u * K::UNIT + blk * K::BLOCK;
            let mut isum = [[_mm512_setzero_si512(); N]; 2];
            // Group-major: N independent chains in flight, each weight register used N times.
            for (g, &wg) in w.iter().take(ng).enumerate() {
                for (j, isum) in isum[g % chains].iter_mut().enumerate() {
                    let x = acts.add(j * ab + e0 + 4 * g).cast::<i32>().read_unaligned();
                    *isum = _mm512_dpbusd_epi32(*isum, wg, _mm512_set1_epi32(x));
                }
            }
            for (j, acc) in acc.iter_mut().enumerate() {
                let a = acts.add(j * ab);
                let isum = if chains == 2 {
                    _mm512_add_epi32(isum[0][j], isum[1][j])
                } else {
                    isum[0][j]
                };
                let da = a.add(n + 4 * (e0 / 32)).cast::<f32>().read_unaligned();
                let sa = a
                    .add(sum_off + 4 * (e0 / K::BLOCK))
                    .cast::<f32>()
                    .read_unaligned();
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(da));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, *acc);
                *acc = _mm512_fmadd_ps(bw, _mm512_set1_ps(sa), *acc);
            }
        }
    }
    for (j, acc) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.add(j * out_stride), *acc);
    }
}

/// Every 16-row group of a tile × its tokens in micro-tiles of up to `MT`: calls
/// `$micro::<[K,] N>(group, n, acts, act_row_bytes, out, out_stride)` with `N` a constant
/// (`micro[K]` or `micro_f16[]`).
macro_rules! micro_tiles {
    ($t:ident, $gb:expr, $ab:expr, $micro:ident[$($k:ty),*]) => {{
        let (n, gb, ab) = ($t.n, $gb, $ab);
        let (w, a, out) = ($t.w.as_ptr(), $t.a.as_ptr(), $t.out.as_mut_ptr());
        for g in 0..$t.n_rows / ROWS {
            let mut t0 = 0;
            while t0 < $t.n_tok {
                let nt = ($t.n_tok - t0).min(MT);
                let (gp, ap, op) = (
                    w.add(g * gb),
                    a.add(t0 * ab),
                    out.add(t0 * $t.n_rows + g * ROWS),
                );
                let stride = $t.n_rows;
                // The first micro-tile of a group reads its weights from memory: it prefetches.
                if t0 == 0 {
                    match nt {
                        8 => $micro::<$($k,)* 8, true>(gp, n, ap, ab, op, stride),
                        7 => $micro::<$($k,)* 7, true>(gp, n, ap, ab, op, stride),
                        6 => $micro::<$($k,)* 6, true>(gp, n, ap, ab, op, stride),
                        5 => $micro::<$($k,)* 5, true>(gp, n, ap, ab, op, stride),
                        4 => $micro::<$($k,)* 4, true>(gp, n, ap, ab, op, stride),
                        3 => $micro::<$($k,)* 3, true>(gp, n, ap, ab, op, stride),
                        2 => $micro::<$($k,)* 2, true>(gp, n, ap, ab, op, stride),
                        _ => $micro::<$($k,)* 1, true>(gp, n, ap, ab, op, stride),
                    }
                } else {
                    match nt {
                        8 => $micro::<$($k,)* 8, false>(gp, n, ap, ab, op, stride),
                        7 => $micro::<$($k,)* 7, false>(gp, n, ap, ab, op, stride),
                        6 => $micro::<$($k,)* 6, false>(gp, n, ap, ab, op, stride),
                        5 => $micro::<$($k,)* 5, false>(gp, n, ap, ab, op, stride),
                        4 => $micro::<$($k,)* 4, false>(gp, n, ap, ab, op, stride),
                        3 => $micro::<$($k,)* 3, false>(gp, n, ap, ab, op, stride),
                        2 => $micro::<$($k,)* 2, false>(gp, n, ap, ab, op, stride),
                        _ => $micro::<$($k,)* 1, false>(gp, n, ap, ab, op, stride),
                    }
                }
                t0 += nt;
            }
        }
    }};
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_impl<K: X16>(t: &mut Tile) {
    micro_tiles!(t, K::L.group_bytes(t.n), act_row_bytes(t.n), micro[K])
}

fn tile<K: X16>(t: &mut Tile) {
    assert!(avx512_detected());
    let l = K::L;
    assert!(t.n.is_multiple_of(l.unit) && t.n_rows.is_multiple_of(ROWS));
    assert!(t.w.len() >= t.n_rows / ROWS * l.group_bytes(t.n));
    assert!(t.a.len() >= t.n_tok * act_row_bytes(t.n));
    assert!(t.out.len() >= t.n_tok * t.n_rows);
    // SAFETY: the CPU has the enabled features (asserted above; the avx512 table is handed out
    // only after the same detection), and the asserts bound every access: the kernel reads
    // `n_rows / 16` groups of `group_bytes(n)` weight bytes, `n_tok` activation rows of
    // `act_row_bytes(n)` bytes, and writes `n_tok × n_rows` outputs.
    unsafe { tile_impl::<K>(t) }
}

/// The F16 layout: 16 rows' halves per element, converted once and used by every token of
/// the micro-tile; two FMA chains (even / odd elements) per output, as the reference.
#[inline(always)]
unsafe fn micro_f16<const N: usize, const PF: bool>(
    group: *const u8,
    n: usize,
    acts: *const u8,
    ab: usize,
    out: *mut f32,
    out_stride: usize,
) {
    let (mut acc0, mut acc1) = ([_mm512_setzero_ps(); N], [_mm512_setzero_ps(); N]);
    for e0 in (0..n).step_by(32) {
        let p = group.add(32 * e0);
        for e in (0..32).step_by(2) {
            if PF {
                // One of the 16 lines of these 32 elements per step, 4 KiB ahead (as `micro`).
                let ahead = p.cast::<i8>().wrapping_add(PREFETCH_BYTES);
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(32 * e));
            }
            let (w0, w1) = (f16x16(p.add(32 * e)), f16x16(p.add(32 * e + 32)));
            for j in 0..N {
                let x = acts.add(j * ab + 4 * (e0 + e)).cast::<f32>();
                acc0[j] = _mm512_fmadd_ps(w0, _mm512_set1_ps(x.read_unaligned()), acc0[j]);
                acc1[j] = _mm512_fmadd_ps(w1, _mm512_set1_ps(x.add(1).read_unaligned()), acc1[j]);
            }
        }
    }
    for j in 0..N {
        _mm512_storeu_ps(out.add(j * out_stride), _mm512_add_ps(acc0[j], acc1[j]));
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_f16_impl(t: &mut Tile) {
    micro_tiles!(t, panel::F16.group_bytes(t.n), 4 * t.n, micro_f16[])
}

pub(super) fn tile_f16(t: &mut Tile) {
    assert!(avx512_detected());
    let l = &panel::F16;
    assert!(t.n.is_multiple_of(l.unit) && t.n_rows.is_multiple_of(ROWS));
    assert!(t.w.len() >= t.n_rows / ROWS * l.group_bytes(t.n));
    assert!(t.a.len() >= t.n_tok * 4 * t.n && t.out.len() >= t.n_tok * t.n_rows);
    // SAFETY: features detected (asserted); the asserts bound every access: `n_rows / 16`
    // groups of `32 n` bytes, `n_tok` f32 rows of `n` elements, `n_tok × n_rows` outputs.
    unsafe { tile_f16_impl(t) }
}

pub(super) fn tile_q4_0(t: &mut Tile) {
    tile::<Q40>(t)
}
pub(super) fn tile_q4_1(t: &mut Tile) {
    tile::<Q41>(t)
}
pub(super) fn tile_q5_0(t: &mut Tile) {
    tile::<Q50>(t)
}
pub(super) fn tile_q5_1(t: &mut Tile) {
    tile::<Q51>(t)
}
pub(super) fn tile_q8_0(t: &mut Tile) {
    tile::<Q80>(t)
}
pub(super) fn tile_q5_k(t: &mut Tile) {
    tile::<Q5K>(t)
}
pub(super) fn tile_q4_k(t: &mut Tile) {
    tile::<Q4K>(t)
}
pub(super) fn tile_q6_k(t: &mut Tile) {
    tile::<Q6K>(t)
}

/// `panel::quantize_act` with AVX-512 (bit-identical).
pub(super) fn quantize_act(x: &[f32], dst: &mut [u8]) {
    let n = x.len();
    assert!(avx512_detected() && n.is_multiple_of(32) && dst.len() == act_row_bytes(n));
    // SAFETY: features detected above; `quant` reads `n` floats and writes `act_row_bytes(n)`
    // bytes, both asserted.
    unsafe { quant(x, dst) }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn quant(x: &[f32], dst: &mut [u8]) {
    let n = x.len();
    let nb = n / 32;
    let (qs, meta) = dst.split_at_mut(n);
    let (d, sums) = meta.split_at_mut(nb * 4);
    let (s32, s16) = sums.split_at_mut(nb * 4);
    let (lo, hi) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
    for b in 0..nb {
        let v0 = _mm512_loadu_ps(x.as_ptr().add(32 * b));
        let v1 = _mm512_loadu_ps(x.as_ptr().add(32 * b + 16));
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        let (dd, id) = if amax >= ACT_TINY {
            (amax / 127.0, 127.0 / amax)
        } else {
            (0.0, 0.0)
        };
        let idv = _mm512_set1_ps(id);
        let q0 = _mm512_min_epi32(
            _mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v0, idv)), lo),
            hi,
        );
        let q1 = _mm512_min_epi32(
            _mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v1, idv)), lo),
            hi,
        );
        _mm_storeu_si128(qs.as_mut_ptr().add(32 * b).cast(), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128(
            qs.as_mut_ptr().add(32 * b + 16).cast(),
            _mm512_cvtepi32_epi8(q1),
        );
        let (h0, h1) = (_mm512_reduce_add_epi32(q0), _mm512_reduce_add_epi32(q1));
        d[4 * b..4 * b + 4].copy_from_slice(&dd.to_le_bytes());
        s32[4 * b..4 * b + 4].copy_from_slice(&(dd * (h0 + h1) as f32).to_le_bytes());
        s16[8 * b..8 * b + 4].copy_from_slice(&(dd * h0 as f32).to_le_bytes());
        s16[8 * b + 4..8 * b + 8].copy_from_slice(&(dd * h1 as f32).to_le_bytes());
    }
}
