//! AVX2 + FMA + F16C kernels: the hot dot products (F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
//! Q4_K, Q5_K, Q6_K) and the activation quantizers (Q8_0, Q8_1, Q8_K, F16). Everything else in
//! the AVX2 table is the scalar kernel.
//!
//! Each kernel is an `unsafe fn` compiled with `#[target_feature(enable = "avx2,fma,f16c")]`
//! and reached through a safe wrapper that only [`avx2_kernels`] hands out, after run-time
//! detection. Kernels read memory only through references to whole blocks or fixed-size arrays
//! (or raw pointers whose range is checked against the slice length right there), so they stay
//! in bounds even if a caller passes inconsistent lengths.
//!
//! Numerics: integer sums are exact as in the scalar twins; float accumulation uses FMA in
//! 8-lane registers, so dot products differ from the scalar ones by summation order only. The
//! activation quantizers are byte-identical to the scalar ones for finite input (Q8_0/Q8_1
//! round half away from zero like `roundf`; Q8_K rounds half to even like ggml's `nearest_int`).

use core::arch::x86_64::*;

use crate::dispatch::{table, BatchDot, BatchRule, TypeKernels};
use crate::quant::blocks::*;
use crate::scalar::{float, kquants as k, legacy as l};
use dino_core::{GgmlType, QK_K};

/// Whether this CPU has everything the kernels of this module use.
pub(crate) fn avx2_detected() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

macro_rules! safe_wrappers {
    ($($safe:ident => $inner:ident ( $($arg:ident : $ty:ty),* ) $(-> $ret:ty)?;)*) => {$(
        pub(super) fn $safe($($arg: $ty),*) $(-> $ret)? {
            debug_assert!(avx2_detected());
            // SAFETY: this wrapper is private to this module and reachable only through the
            // tables returned by `avx2_kernels`, which returns them only after
            // `avx2_detected()` confirmed avx2, fma and f16c at run time. The kernel itself
            // stays in bounds for any slice lengths (see the module docs).
            unsafe { $inner($($arg),*) }
        }
    )*};
}

safe_wrappers! {
    dot_f32 => vec_dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32;
    dot_f16 => vec_dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32;
    dot_q4_0 => vec_dot_q4_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32;
    dot_q4_1 => vec_dot_q4_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32;
    dot_q5_0 => vec_dot_q5_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32;
    dot_q5_1 => vec_dot_q5_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32;
    dot_q8_0 => vec_dot_q8_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32;
    dot_q4_k => vec_dot_q4_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32;
    dot_q4_k_gemm => vec_dot_q4_k_q8_k_gemm(n: usize, w: &[u8], a: &[u8]) -> f32;
    dot_q5_k => vec_dot_q5_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32;
    dot_q6_k => vec_dot_q6_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32;
    dot_q6_k_tiled => vec_dot_q6_k_q8_k_tiled(n: usize, w: &[u8], a: &[u8]) -> f32;
    dot_q2_k => vec_dot_q2_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32;
    dot_q3_k => vec_dot_q3_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32;
    dot_q3_k_tiled => vec_dot_q3_k_q8_k_tiled(n: usize, w: &[u8], a: &[u8]) -> f32;
    quant_q8_0 => quantize_q8_0(src: &[f32], dst: &mut [u8]);
    quant_q8_1 => quantize_q8_1(src: &[f32], dst: &mut [u8]);
    quant_q8_k => quantize_q8_k(src: &[f32], dst: &mut [u8]);
    quant_f16 => quantize_f16(src: &[f32], dst: &mut [u8]);
}

macro_rules! tile_wrappers {
    ($detected:path, $kernel:ident: $($safe:ident => $block:ty;)*) => {$(
        pub(super) fn $safe(t: &mut crate::dispatch::Tile) {
            debug_assert!($detected());
            // SAFETY: reachable only through a kernel table handed out after run-time detection
            // of the features `$kernel` enables; the kernel indexes only through bounds-checked
            // slices.
            unsafe { super::tiles::$kernel::<$block>(t) }
        }
    )*};
}

tile_wrappers! { avx2_detected, tile_avx2:
    tile_q4_0 => BlockQ4_0;
    tile_q4_1 => BlockQ4_1;
    tile_q5_0 => BlockQ5_0;
    tile_q5_1 => BlockQ5_1;
    tile_q8_0 => BlockQ8_0;
}

/// The AVX2 kernel table of `t`, or `None` if `t` is unsupported or the CPU lacks AVX2/FMA/F16C.
pub(crate) fn avx2_kernels(t: GgmlType) -> Option<&'static TypeKernels> {
    use GgmlType::*;
    if !avx2_detected() {
        return None;
    }
    table!(KF32: dot_f32, float::f32_to_bytes, float::bytes_to_f32, F32, tile: super::tiles_float::tile_f32);
    table!(KF16: dot_f16, quant_f16, float::f16_to_f32, F16, tile: super::tiles_float::tile_f16);
    table!(KBF16: float::vec_dot_bf16, float::f32_to_bf16, float::bf16_to_f32, BF16, tile: super::tiles_float::tile_bf16);
    table!(KQ4_0: dot_q4_0, quant_q8_0, l::dequantize_q4_0, Q8_0, tile: tile_q4_0);
    table!(KQ4_1: dot_q4_1, quant_q8_1, l::dequantize_q4_1, Q8_1, tile: tile_q4_1);
    table!(KQ5_0: dot_q5_0, quant_q8_0, l::dequantize_q5_0, Q8_0, tile: tile_q5_0);
    table!(KQ5_1: dot_q5_1, quant_q8_1, l::dequantize_q5_1, Q8_1, tile: tile_q5_1);
    table!(KQ8_0: dot_q8_0, quant_q8_0, l::dequantize_q8_0, Q8_0, tile: tile_q8_0);
    table!(KQ8_1: l::vec_dot_q8_1_q8_1, quant_q8_1, l::dequantize_q8_1, Q8_1);
    table!(KQ2K: dot_q2_k, quant_q8_k, k::dequantize_q2_k, Q8_K, tile: super::tiles_k::tile_q2_k);
    table!(KQ3K: dot_q3_k, quant_q8_k, k::dequantize_q3_k, Q8_K, tile: super::tiles_k::tile_q3_k, batch: dot_q3_k_tiled, BatchRule::AllFrom(8), btile: super::tiles_k::tile_q3_k_tiled);
    table!(KQ4K: dot_q4_k, quant_q8_k, k::dequantize_q4_k, Q8_K, tile: super::tiles_k::tile_q4_k, batch: dot_q4_k_gemm, BatchRule::WholeGroupsOf4, btile: super::tiles_k::tile_q4_k_gemm);
    table!(KQ5K: dot_q5_k, quant_q8_k, k::dequantize_q5_k, Q8_K, tile: super::tiles_k::tile_q5_k);
    table!(KQ6K: dot_q6_k, quant_q8_k, k::dequantize_q6_k, Q8_K, tile: super::tiles_k::tile_q6_k, batch: dot_q6_k_tiled, BatchRule::AllFrom(8), btile: super::tiles_k::tile_q6_k_tiled);
    table!(KQ8K: k::vec_dot_q8_k_q8_k, quant_q8_k, k::dequantize_q8_k, Q8_K);
    Some(match t {
        F32 => &KF32,
        F16 => &KF16,
        BF16 => &KBF16,
        Q4_0 => &KQ4_0,
        Q4_1 => &KQ4_1,
        Q5_0 => &KQ5_0,
        Q5_1 => &KQ5_1,
        Q8_0 => &KQ8_0,
        Q8_1 => &KQ8_1,
        Q2_K => &KQ2K,
        Q3_K => &KQ3K,
        Q4_K => &KQ4K,
        Q5_K => &KQ5K,
        Q6_K => &KQ6K,
        Q8_K => &KQ8K,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers. All are `unsafe` only because of `target_feature`: callers must run on a CPU with
// avx2, fma and f16c. Loads take fixed-size arrays, so they are always in bounds.

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load32(b: &[u8; 32]) -> __m256i {
    // SAFETY (of the load): reads exactly the 32 bytes of `b`; unaligned loads are allowed.
    _mm256_loadu_si256(b.as_ptr().cast())
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load32i(b: &[i8; 32]) -> __m256i {
    // SAFETY (of the load): reads exactly the 32 bytes of `b`.
    _mm256_loadu_si256(b.as_ptr().cast())
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load16(b: &[u8; 16]) -> __m128i {
    // SAFETY (of the load): reads exactly the 16 bytes of `b`.
    _mm_loadu_si128(b.as_ptr().cast())
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load8f(x: &[f32; 8]) -> __m256 {
    // SAFETY (of the load): reads exactly the 8 floats of `x`.
    _mm256_loadu_ps(x.as_ptr())
}

/// `s[off..off + 32]` as an array reference (bounds-checked; offsets are constant in practice).
#[inline(always)]
pub(super) fn arr32<T>(s: &[T], off: usize) -> &[T; 32] {
    s[off..off + 32].try_into().expect("32-element window")
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16s(b: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(
        _mm_cvtsi32_si128(u16::from_le_bytes(b) as i32),
    ))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hmax_ps(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    _mm_cvtss_f32(m)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn abs_ps(v: __m256) -> __m256 {
    _mm256_andnot_ps(_mm256_set1_ps(-0.0), v)
}

/// Signed i8 x signed i8, summed in groups of 4 into 8 x i32. Exact as long as `y` holds no
/// -128 (our activation quantizers produce -127..=127).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_i8(x: __m256i, y: __m256i) -> __m256i {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
}

/// Unsigned i8 (at most 127) x signed i8, summed in groups of 4 into 8 x i32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_u8_i8(x: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
}

/// The 32 nibbles of a 16-byte `qs` in element order: low nibbles (elements 0..16) then high.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn nibbles(qs: &[u8; 16]) -> __m256i {
    let b = load16(qs);
    let m = _mm_set1_epi8(0x0F);
    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m))
}

/// Byte `i` = 0xFF if bit `i` of `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn bytes_from_bits(bits: u32) -> __m256i {
    let shuf = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
        2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuf);
    // Byte i of the mask has every bit but bit i % 8 set.
    let mask = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64);
    _mm256_cmpeq_epi8(_mm256_or_si256(bytes, mask), _mm256_set1_epi64x(-1))
}

/// Packs 4 x 8 i32 (each within i8 range after saturation) into 32 i8 in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn pack_i8(i0: __m256i, i1: __m256i, i2: __m256i, i3: __m256i) -> __m256i {
    let a = _mm256_packs_epi32(i0, i1);
    let b = _mm256_packs_epi32(i2, i3);
    let c = _mm256_packs_epi16(a, b);
    _mm256_permutevar8x32_epi32(c, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

// ---------------------------------------------------------------------------------------------
// Float rows

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    debug_assert!(w.len() >= 4 * n && a.len() >= 4 * n);
    let n = n.min(w.len() / 4).min(a.len() / 4);
    let (pw, pa) = (w.as_ptr(), a.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            // SAFETY (of the loads): elements i + 8k .. i + 8k + 8 <= n are within both slices.
            let x = _mm256_loadu_ps(pw.add(4 * (i + 8 * k)).cast());
            let y = _mm256_loadu_ps(pa.add(4 * (i + 8 * k)).cast());
            *acc = _mm256_fmadd_ps(x, y, *acc);
        }
        i += 32;
    }
    while i + 8 <= n {
        // SAFETY (of the loads): elements i .. i + 8 <= n are within both slices.
        let x = _mm256_loadu_ps(pw.add(4 * i).cast());
        let y = _mm256_loadu_ps(pa.add(4 * i).cast());
        acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
        i += 8;
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut sum = hsum_ps(v);
    for j in i..n {
        let x = f32::from_le_bytes(w[4 * j..4 * j + 4].try_into().expect("4 bytes"));
        let y = f32::from_le_bytes(a[4 * j..4 * j + 4].try_into().expect("4 bytes"));
        sum += x * y;
    }
    sum
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    debug_assert!(w.len() >= 2 * n && a.len() >= 2 * n);
    let n = n.min(w.len() / 2).min(a.len() / 2);
    let (pw, pa) = (w.as_ptr(), a.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            // SAFETY (of the loads): elements i + 8k .. i + 8k + 8 <= n are within both slices.
            let x = _mm256_cvtph_ps(_mm_loadu_si128(pw.add(2 * (i + 8 * k)).cast()));
            let y = _mm256_cvtph_ps(_mm_loadu_si128(pa.add(2 * (i + 8 * k)).cast()));
            *acc = _mm256_fmadd_ps(x, y, *acc);
        }
        i += 32;
    }
    while i + 8 <= n {
        // SAFETY (of the loads): elements i .. i + 8 <= n are within both slices.
        let x = _mm256_cvtph_ps(_mm_loadu_si128(pw.add(2 * i).cast()));
        let y = _mm256_cvtph_ps(_mm_loadu_si128(pa.add(2 * i).cast()));
        acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
        i += 8;
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut sum = hsum_ps(v);
    for j in i..n {
        sum += f16s([w[2 * j], w[2 * j + 1]]) * f16s([a[2 * j], a[2 * j + 1]]);
    }
    sum
}

/// f32 -> f16 with round to nearest even (identical to `half::f16::from_f32`).
///
/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_f16(src: &[f32], dst: &mut [u8]) {
    debug_assert_eq!(dst.len(), 2 * src.len());
    let n = src.len().min(dst.len() / 2);
    let mut i = 0;
    while i + 8 <= n {
        let x = load8f(src[i..i + 8].try_into().expect("8 floats"));
        let h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT);
        // SAFETY (of the store): bytes 2i .. 2i + 16 <= 2n <= dst.len().
        _mm_storeu_si128(dst.as_mut_ptr().add(2 * i).cast(), h);
        i += 8;
    }
    for j in i..n {
        dst[2 * j..2 * j + 2].copy_from_slice(&f16_to_le(src[j]));
    }
}

// ---------------------------------------------------------------------------------------------
// 32-element quants

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q4_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y) = (as_blocks::<BlockQ4_0>(w), as_blocks::<BlockQ8_0>(a));
    debug_assert!(n.is_multiple_of(QK) && x.len() >= n / QK && y.len() >= n / QK);
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y).take(n / QK) {
        let d = _mm256_set1_ps(f16s(bx.d) * f16s(by.d));
        let qx = _mm256_sub_epi8(nibbles(&bx.qs), _mm256_set1_epi8(8));
        let p = dot_i8(qx, load32i(&by.qs));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    hsum_ps(acc)
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q4_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y) = (as_blocks::<BlockQ4_1>(w), as_blocks::<BlockQ8_1>(a));
    debug_assert!(n.is_multiple_of(QK) && x.len() >= n / QK && y.len() >= n / QK);
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0.0f32;
    for (bx, by) in x.iter().zip(y).take(n / QK) {
        summs += f16s(bx.m) * f16s(by.s);
        let d = _mm256_set1_ps(f16s(bx.d) * f16s(by.d));
        let p = dot_u8_i8(nibbles(&bx.qs), load32i(&by.qs));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    hsum_ps(acc) + summs
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q5_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y) = (as_blocks::<BlockQ5_0>(w), as_blocks::<BlockQ8_0>(a));
    debug_assert!(n.is_multiple_of(QK) && x.len() >= n / QK && y.len() >= n / QK);
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y).take(n / QK) {
        let d = _mm256_set1_ps(f16s(bx.d) * f16s(by.d));
        // q - 16: where the fifth bit is clear, set the top nibble (nibble - 16 in two's
        // complement); where it is set, the value is the nibble itself.
        let hi = _mm256_andnot_si256(bytes_from_bits(bx.qh()), _mm256_set1_epi8(0xF0u8 as i8));
        let qx = _mm256_or_si256(nibbles(&bx.qs), hi);
        let p = dot_i8(qx, load32i(&by.qs));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    hsum_ps(acc)
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q5_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y) = (as_blocks::<BlockQ5_1>(w), as_blocks::<BlockQ8_1>(a));
    debug_assert!(n.is_multiple_of(QK) && x.len() >= n / QK && y.len() >= n / QK);
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0.0f32;
    for (bx, by) in x.iter().zip(y).take(n / QK) {
        summs += f16s(bx.m) * f16s(by.s);
        let d = _mm256_set1_ps(f16s(bx.d) * f16s(by.d));
        let hi = _mm256_and_si256(bytes_from_bits(bx.qh()), _mm256_set1_epi8(0x10));
        let qx = _mm256_or_si256(nibbles(&bx.qs), hi);
        let p = dot_u8_i8(qx, load32i(&by.qs));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    hsum_ps(acc) + summs
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q8_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y) = (as_blocks::<BlockQ8_0>(w), as_blocks::<BlockQ8_0>(a));
    debug_assert!(n.is_multiple_of(QK) && x.len() >= n / QK && y.len() >= n / QK);
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y).take(n / QK) {
        let d = _mm256_set1_ps(f16s(bx.d) * f16s(by.d));
        let p = dot_i8(load32i(&bx.qs), load32i(&by.qs));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    hsum_ps(acc)
}

/// Quantizes one block of 32 to i8 with `round_ties_even(v * id)` (ggml's x86 activation
/// rounding); returns the quants and their sum.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_block(x: &[f32; 32], id: f32) -> (__m256i, i32) {
    let id = _mm256_set1_ps(id);
    let mut q = [_mm256_setzero_si256(); 4];
    for (k, q) in q.iter_mut().enumerate() {
        let v = load8f(x[8 * k..8 * k + 8].try_into().expect("8 floats"));
        *q = _mm256_cvtps_epi32(_mm256_round_ps::<
            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
        >(_mm256_mul_ps(v, id)));
    }
    let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    let s = _mm_hadd_epi32(s, s);
    let s = _mm_hadd_epi32(s, s);
    (pack_i8(q[0], q[1], q[2], q[3]), _mm_cvtsi128_si32(s))
}

/// `(amax / 127, 127 / amax)`, as the scalar `q8_scale_act` (ggml's x86 activation scale).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_scale(x: &[f32; 32]) -> (f32, f32) {
    let mut m = _mm256_setzero_ps();
    for k in 0..4 {
        m = _mm256_max_ps(
            m,
            abs_ps(load8f(x[8 * k..8 * k + 8].try_into().expect("8 floats"))),
        );
    }
    let amax = hmax_ps(m);
    (amax / 127.0, if amax != 0.0 { 127.0 / amax } else { 0.0 })
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    let y = as_blocks_mut::<BlockQ8_0>(dst);
    debug_assert_eq!(src.len(), y.len() * QK);
    for (x, b) in src.chunks_exact(QK).zip(y) {
        let x: &[f32; 32] = x.try_into().expect("block of 32");
        let (d, id) = q8_scale(x);
        b.d = f16_to_le(d);
        let (q, _) = q8_block(x, id);
        // SAFETY (of the store): writes exactly the 32 bytes of `b.qs`.
        _mm256_storeu_si256(b.qs.as_mut_ptr().cast(), q);
    }
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q8_1(src: &[f32], dst: &mut [u8]) {
    let y = as_blocks_mut::<BlockQ8_1>(dst);
    debug_assert_eq!(src.len(), y.len() * QK);
    for (x, b) in src.chunks_exact(QK).zip(y) {
        let x: &[f32; 32] = x.try_into().expect("block of 32");
        let (d, id) = q8_scale(x);
        b.d = f16_to_le(d);
        let (q, sum) = q8_block(x, id);
        b.s = f16_to_le(sum as f32 * d);
        // SAFETY (of the store): writes exactly the 32 bytes of `b.qs`.
        _mm256_storeu_si256(b.qs.as_mut_ptr().cast(), q);
    }
}

// ---------------------------------------------------------------------------------------------
// K-quants

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q8_k(src: &[f32], dst: &mut [u8]) {
    let y = as_blocks_mut::<BlockQ8K>(dst);
    debug_assert_eq!(src.len(), y.len() * QK_K);
    for (x, b) in src.chunks_exact(QK_K).zip(y) {
        let mut m = _mm256_setzero_ps();
        for c in x.chunks_exact(8) {
            m = _mm256_max_ps(m, abs_ps(load8f(c.try_into().expect("8 floats"))));
        }
        let amax = hmax_ps(m);
        if amax == 0.0 {
            *b = BlockQ8K {
                d: [0; 4],
                qs: [0; QK_K],
                bsums: [[0; 2]; QK_K / 16],
            };
            continue;
        }
        // The signed value of the first element of largest magnitude, as the scalar loop.
        let max = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(amax);
        let iscale = -127.0 / max;
        let vs = _mm256_set1_ps(iscale);
        let cap = _mm256_set1_epi32(127);
        for g in 0..QK_K / 32 {
            let mut q = [_mm256_setzero_si256(); 4];
            for (kk, q) in q.iter_mut().enumerate() {
                let v = load8f(
                    x[32 * g + 8 * kk..32 * g + 8 * kk + 8]
                        .try_into()
                        .expect("8 floats"),
                );
                let r = _mm256_round_ps(
                    _mm256_mul_ps(v, vs),
                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
                );
                *q = _mm256_min_epi32(_mm256_cvtps_epi32(r), cap);
            }
            let packed = pack_i8(q[0], q[1], q[2], q[3]);
            let out: &mut [i8; 32] = (&mut b.qs[32 * g..32 * g + 32])
                .try_into()
                .expect("32 quants");
            // SAFETY (of the store): writes exactly the 32 bytes of `out`.
            _mm256_storeu_si256(out.as_mut_ptr().cast(), packed);
        }
        for (s, grp) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            let sum: i32 = grp.iter().map(|&q| q as i32).sum();
            *s = (sum as i16).to_le_bytes();
        }
        b.d = (1.0 / iscale).to_le_bytes();
    }
}

/// Sum over the 16 `bsums` of `bsum[j] * mins[j / 2]`.
#[inline(always)]
pub(super) fn mins_dot(by: &BlockQ8K, mins: &[u8; 8]) -> i32 {
    let mut s = 0i32;
    for j in 0..QK_K / 16 {
        s += by.bsum(j) as i32 * mins[j / 2] as i32;
    }
    s
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q4_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // Float order of llama.cpp's repacked Q4_K GEMV: one FMA per super-block; see the scalar twin.
    let (x, y) = (as_blocks::<BlockQ4K>(w), as_blocks::<BlockQ8K>(a));
    debug_assert!(n.is_multiple_of(QK_K) && x.len() >= n / QK_K && y.len() >= n / QK_K);
    let mut acc = 0.0f32;
    let mut acc_min = 0.0f32;
    for (bx, by) in x.iter().zip(y).take(n / QK_K) {
        let dy = by.d();
        let (sc, mins) = k::k4_scales_mins(&bx.scales);
        let mut sumi = 0i32;
        for j in 0..QK_K / 64 {
            sumi += q4k_pair_sum(bx, by, &sc, j);
        }
        acc = (sumi as f32).mul_add(f16s(bx.d) * dy, acc);
        acc_min = (mins_dot(by, &mins) as f32).mul_add(f16s(bx.dmin) * dy, acc_min);
    }
    acc - acc_min
}

/// Exact integer `Σ scale·q·a` over elements `64j..64j+64` of a Q4_K super-block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4k_pair_sum(bx: &BlockQ4K, by: &BlockQ8K, sc: &[u8; 8], j: usize) -> i32 {
    let m4 = _mm256_set1_epi8(0x0F);
    let q4 = load32(arr32(&bx.qs, 32 * j));
    let lo = _mm256_and_si256(q4, m4);
    let hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
    let p_lo = _mm256_maddubs_epi16(lo, load32i(arr32(&by.qs, 64 * j)));
    let p_hi = _mm256_maddubs_epi16(hi, load32i(arr32(&by.qs, 64 * j + 32)));
    let p_lo = _mm256_madd_epi16(p_lo, _mm256_set1_epi16(sc[2 * j] as i16));
    let p_hi = _mm256_madd_epi16(p_hi, _mm256_set1_epi16(sc[2 * j + 1] as i16));
    hsum_i32(_mm256_add_epi32(p_lo, p_hi))
}

/// Horizontal sum of 8 × i32 (exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_hadd_epi32(s, s);
    let s = _mm_hadd_epi32(s, s);
    _mm_cvtsi128_si32(s)
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q4_k_q8_k_gemm(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // Float order of llama.cpp's repacked Q4_K GEMM: one FMA per 64 elements; see the scalar twin.
    let (x, y) = (as_blocks::<BlockQ4K>(w), as_blocks::<BlockQ8K>(a));
    debug_assert!(n.is_multiple_of(QK_K) && x.len() >= n / QK_K && y.len() >= n / QK_K);
    let mut acc = 0.0f32;
    let mut acc_min = 0.0f32;
    for (bx, by) in x.iter().zip(y).take(n / QK_K) {
        let dy = by.d();
        let (sc, mins) = k::k4_scales_mins(&bx.scales);
        let (d, dmin) = (f16s(bx.d) * dy, f16s(bx.dmin) * dy);
        for j in 0..QK_K / 64 {
            let sumi = q4k_pair_sum(bx, by, &sc, j);
            let summ = mins[2 * j] as i32 * (by.bsum(4 * j) as i32 + by.bsum(4 * j + 1) as i32)
                + mins[2 * j + 1] as i32 * (by.bsum(4 * j + 2) as i32 + by.bsum(4 * j + 3) as i32);
            acc = (sumi as f32).mul_add(d, acc);
            acc_min = (summ as f32).mul_add(dmin, acc_min);
        }
    }
    acc - acc_min
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q5_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y) = (as_blocks::<BlockQ5K>(w), as_blocks::<BlockQ8K>(a));
    debug_assert!(n.is_multiple_of(QK_K) && x.len() >= n / QK_K && y.len() >= n / QK_K);
    let m4 = _mm256_set1_epi8(0x0F);
    let one = _mm256_set1_epi8(1);
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = 0.0f32;
    for (bx, by) in x.iter().zip(y).take(n / QK_K) {
        let dy = by.d();
        let (sc, mins) = k::k4_scales_mins(&bx.scales);
        acc_m += f16s(bx.dmin) * dy * mins_dot(by, &mins) as f32;
        let hbits = load32(&bx.qh);
        let mut sumi = _mm256_setzero_si256();
        for j in 0..QK_K / 64 {
            let q4 = load32(arr32(&bx.qs, 32 * j));
            // Bits 2j (elements 64j..64j+32) and 2j+1 (the next 32) of each qh byte.
            let h = _mm256_srl_epi16(hbits, _mm_cvtsi32_si128(2 * j as i32));
            let h_lo = _mm256_slli_epi16(_mm256_and_si256(h, one), 4);
            let h_hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 1), one), 4);
            let lo = _mm256_or_si256(_mm256_and_si256(q4, m4), h_lo);
            let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4, 4), m4), h_hi);
            let p_lo = _mm256_maddubs_epi16(lo, load32i(arr32(&by.qs, 64 * j)));
            let p_hi = _mm256_maddubs_epi16(hi, load32i(arr32(&by.qs, 64 * j + 32)));
            let p_lo = _mm256_madd_epi16(p_lo, _mm256_set1_epi16(sc[2 * j] as i16));
            let p_hi = _mm256_madd_epi16(p_hi, _mm256_set1_epi16(sc[2 * j + 1] as i16));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p_lo, p_hi));
        }
        let d = _mm256_set1_ps(f16s(bx.d) * dy);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) - acc_m
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q6_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y) = (as_blocks::<BlockQ6K>(w), as_blocks::<BlockQ8K>(a));
    debug_assert!(n.is_multiple_of(QK_K) && x.len() >= n / QK_K && y.len() >= n / QK_K);
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y).take(n / QK_K) {
        let d = _mm256_set1_ps(by.d() * f16s(bx.d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(q6k_lanes(bx, by)), acc);
    }
    hsum_ps(acc)
}

/// The 8 i32 lanes ggml's AVX2 Q6_K kernel holds for one super-block: products of the unsigned
/// 6-bit values (lane `l` = bytes `4l..4l+4` of every 32-element group) times their scales,
/// minus `32·Σ bsum·scale` over the 16-element groups `2l, 2l+1`. Their sum is the exact dot.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q6k_lanes(bx: &BlockQ6K, by: &BlockQ8K) -> __m256i {
    let m4 = _mm256_set1_epi8(0x0F);
    let m2 = _mm256_set1_epi8(0x03);
    let mut sumi = _mm256_setzero_si256();
    for h in 0..2 {
        let qh = load32(arr32(&bx.qh, 32 * h));
        let ql0 = load32(arr32(&bx.ql, 64 * h));
        let ql1 = load32(arr32(&bx.ql, 64 * h + 32));
        let lows = [
            _mm256_and_si256(ql0, m4),
            _mm256_and_si256(ql1, m4),
            _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
            _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
        ];
        for (kk, low) in lows.into_iter().enumerate() {
            let high = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * kk as i32)), m2);
            let q = _mm256_or_si256(low, _mm256_slli_epi16(high, 4)); // 0..64
            let q8 = load32i(arr32(&by.qs, 128 * h + 32 * kk));
            let p = _mm256_maddubs_epi16(q, q8);
            let s0 = bx.scales[8 * h + 2 * kk] as i16;
            let s1 = bx.scales[8 * h + 2 * kk + 1] as i16;
            let sc = _mm256_set_m128i(_mm_set1_epi16(s1), _mm_set1_epi16(s0));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, sc));
        }
    }
    let mut bs = [0i16; 16];
    let mut sc16 = [0i16; 16];
    for g in 0..16 {
        bs[g] = by.bsum(g);
        sc16[g] = bx.scales[g] as i16;
    }
    let bsv = _mm256_loadu_si256(bs.as_ptr().cast());
    let scv = _mm256_loadu_si256(sc16.as_ptr().cast());
    _mm256_sub_epi32(sumi, _mm256_slli_epi32(_mm256_madd_epi16(bsv, scv), 5))
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q6_k_q8_k_tiled(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // Float order of llama.cpp's tiled K-quant GEMM; see the scalar twin.
    let (x, y) = (as_blocks::<BlockQ6K>(w), as_blocks::<BlockQ8K>(a));
    debug_assert!(n.is_multiple_of(QK_K) && x.len() >= n / QK_K && y.len() >= n / QK_K);
    let mut acc = 0.0f32;
    for (bx, by) in x.iter().zip(y).take(n / QK_K) {
        let r = hsum_i32(q6k_lanes(bx, by)) as f32 * f16s(bx.d);
        acc = r.mul_add(by.d(), acc);
    }
    acc
}

/// The 16 signed scales of a Q3_K super-block as i8 (ggml's kmask unpacking; the same values
/// as `q3k_scales`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q3k_scales_i8(s: &[u8; 12]) -> __m128i {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let u = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (a0, a1, a2) = (u(0), u(1), u(2));
    let v = _mm_setr_epi32(
        ((a0 & KMASK2) | ((a2 & KMASK1) << 4)) as i32,
        ((a1 & KMASK2) | (((a2 >> 2) & KMASK1) << 4)) as i32,
        (((a0 >> 4) & KMASK2) | (((a2 >> 4) & KMASK1) << 4)) as i32,
        (((a1 >> 4) & KMASK2) | (((a2 >> 6) & KMASK1) << 4)) as i32,
    );
    _mm_sub_epi8(v, _mm_set1_epi8(32))
}

/// The unsigned 3-bit values (low bits plus 4 if the high bit is set, 0..8) of 32-element
/// group `g` of a Q3_K super-block; `value - 4` is the signed quant.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q3k_group(bx: &BlockQ3K, hbits: __m256i, g: usize) -> __m256i {
    let (n, j) = (g / 4, g % 4);
    let m3 = _mm256_set1_epi8(3);
    let m1 = _mm256_set1_epi8(1);
    let qs = load32(arr32(&bx.qs, 32 * n));
    let low = _mm256_and_si256(_mm256_srl_epi16(qs, _mm_cvtsi32_si128(2 * j as i32)), m3);
    let high = _mm256_and_si256(
        _mm256_srl_epi16(hbits, _mm_cvtsi32_si128((4 * n + j) as i32)),
        m1,
    );
    _mm256_or_si256(low, _mm256_slli_epi16::<2>(high))
}

/// The 8 i32 lanes ggml's AVX2 Q3_K kernel holds for one super-block: lane `l` = the scaled
/// products of the signed 3-bit values at bytes `4l..4l+4` of every 32-element group. Each
/// 16-bit pair is `maddubs(value, a) - maddubs(4, a)`, the same pair sum as ggml's
/// `maddubs(low, a) - maddubs(4·!high, a)`. Their sum is the exact dot.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q3k_lanes(bx: &BlockQ3K, by: &BlockQ8K) -> __m256i {
    let s16 = _mm256_cvtepi8_epi16(q3k_scales_i8(&bx.scales));
    let hbits = load32(&bx.hmask);
    let four = _mm256_set1_epi8(4);
    let mut sumi = _mm256_setzero_si256();
    for g in 0..8 {
        let q = q3k_group(bx, hbits, g);
        let y = load32i(arr32(&by.qs, 32 * g));
        let p = _mm256_sub_epi16(_mm256_maddubs_epi16(q, y), _mm256_maddubs_epi16(four, y));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair_i16(s16, g)));
    }
    sumi
}

/// `s16` holds 16 i16 scales: scale `2g` in the low 128-bit half, `2g + 1` in the high half.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn scale_pair_i16(s16: __m256i, g: usize) -> __m256i {
    let split = _mm256_setr_epi8(
        0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, //
        2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
    );
    _mm256_shuffle_epi8(
        _mm256_permutevar8x32_epi32(s16, _mm256_set1_epi32(g as i32)),
        split,
    )
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q3_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (x, y) = (as_blocks::<BlockQ3K>(w), as_blocks::<BlockQ8K>(a));
    debug_assert!(n.is_multiple_of(QK_K) && x.len() >= n / QK_K && y.len() >= n / QK_K);
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y).take(n / QK_K) {
        let d = _mm256_set1_ps(by.d() * f16s(bx.d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(q3k_lanes(bx, by)), acc);
    }
    hsum_ps(acc)
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q3_k_q8_k_tiled(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // Float order of llama.cpp's tiled K-quant GEMM; see the scalar twin.
    let (x, y) = (as_blocks::<BlockQ3K>(w), as_blocks::<BlockQ8K>(a));
    debug_assert!(n.is_multiple_of(QK_K) && x.len() >= n / QK_K && y.len() >= n / QK_K);
    let mut acc = 0.0f32;
    for (bx, by) in x.iter().zip(y).take(n / QK_K) {
        let r = hsum_i32(q3k_lanes(bx, by)) as f32 * f16s(bx.d);
        acc = r.mul_add(by.d(), acc);
    }
    acc
}

/// The 16 mins (high nibbles) and 16 scales (low nibbles) of a Q2_K super-block as i16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q2k_scales_mins(bx: &BlockQ2K) -> (__m256i, __m256i) {
    let sm = load16(&bx.scales);
    let m4 = _mm_set1_epi8(0xF);
    let scales = _mm256_cvtepu8_epi16(_mm_and_si128(sm, m4));
    let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(sm), m4));
    (scales, mins)
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q2_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // ggml's AVX2 kernel: per super-block the mins lanes, then the scaled products, one FMA
    // each; see the scalar twin.
    let (x, y) = (as_blocks::<BlockQ2K>(w), as_blocks::<BlockQ8K>(a));
    debug_assert!(n.is_multiple_of(QK_K) && x.len() >= n / QK_K && y.len() >= n / QK_K);
    let m3 = _mm256_set1_epi8(3);
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y).take(n / QK_K) {
        let dy = by.d();
        let d = _mm256_set1_ps(dy * f16s(bx.d));
        let dmin = _mm256_set1_ps(-dy * f16s(bx.dmin));
        let (s16, m16) = q2k_scales_mins(bx);
        let bs = load32(arr32(by.bsums.as_flattened(), 0));
        let prod = _mm256_madd_epi16(m16, bs);
        acc = _mm256_fmadd_ps(dmin, _mm256_cvtepi32_ps(prod), acc);
        let mut sumi = _mm256_setzero_si256();
        for g in 0..8 {
            let (n, j) = (g / 4, g % 4);
            let qs = load32(arr32(&bx.qs, 32 * n));
            let q = _mm256_and_si256(_mm256_srl_epi16(qs, _mm_cvtsi32_si128(2 * j as i32)), m3);
            let p = _mm256_maddubs_epi16(q, load32i(arr32(&by.qs, 32 * g)));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair_i16(s16, g)));
        }
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}
