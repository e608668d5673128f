//! ggml-compatible quant blocks.
//!
//! Every block is `#[repr(C)]` and made only of `u8`/`i8` arrays, so it has alignment 1, no
//! padding and every bit pattern is a valid value. That makes a `&[u8]` straight from an mmap
//! (which guarantees no alignment beyond 1) safely viewable as a `&[Block]` with
//! [`as_blocks`]. Multi-byte fields (`f16` scales, the `f32` scale and `i16` sums of Q8_K) are
//! stored as little-endian byte arrays, exactly as ggml writes them on a little-endian machine,
//! and read through the accessor methods.

use dino_core::{GgmlType, QK_K};
use std::mem::{align_of, size_of};

/// Elements per block of the 32-element ("legacy") quant types.
pub const QK: usize = 32;

/// A ggml quant block that can be viewed in place over raw bytes.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, have alignment 1, no padding, and be valid for every bit
/// pattern (in practice: contain only `u8`/`i8` arrays). [`as_blocks`] relies on this.
pub unsafe trait QuantBlock: Copy + Send + Sync + 'static {
    /// The ggml type this block stores.
    const TYPE: GgmlType;
    /// Elements per block.
    const QK: usize;
}

/// Views raw bytes as blocks. Trailing bytes that do not make a whole block are ignored (callers
/// check lengths first; see [`crate::quant`]).
#[inline]
pub fn as_blocks<B: QuantBlock>(bytes: &[u8]) -> &[B] {
    let n = bytes.len() / size_of::<B>();
    // SAFETY: `B: QuantBlock` has alignment 1 and every bit pattern is valid, and
    // `n * size_of::<B>() <= bytes.len()`, so the range is in bounds and properly aligned. The
    // lifetime is tied to `bytes`.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), n) }
}

/// Views raw bytes as mutable blocks. Trailing bytes that do not make a whole block are ignored.
#[inline]
pub fn as_blocks_mut<B: QuantBlock>(bytes: &mut [u8]) -> &mut [B] {
    let n = bytes.len() / size_of::<B>();
    // SAFETY: as in `as_blocks`; the exclusive borrow of `bytes` is moved into the result, and any
    // bit pattern written through `B` is a valid `u8` sequence.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<B>(), n) }
}

/// Views blocks as their raw bytes.
#[inline]
pub fn block_bytes<B: QuantBlock>(blocks: &[B]) -> &[u8] {
    // SAFETY: `B` has no padding (QuantBlock contract), so all `size_of_val(blocks)` bytes are
    // initialized; `u8` has alignment 1.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), size_of_val(blocks)) }
}

/// An IEEE half stored little-endian, as ggml's `ggml_half`.
#[inline(always)]
pub fn f16_from_le(b: [u8; 2]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes(b)).to_f32()
}

/// f32 to IEEE half (round to nearest even, as ggml's `GGML_FP32_TO_FP16`), little-endian.
#[inline(always)]
pub fn f16_to_le(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}

/// bfloat16 bits to f32 (exact).
#[inline(always)]
pub fn bf16_bits_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// f32 to bfloat16 bits exactly as ggml's `ggml_compute_fp32_to_bf16`: NaNs are quieted and keep
/// their sign and top payload bits, everything else rounds to nearest even.
#[inline(always)]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

macro_rules! impl_block {
    ($b:ty, $t:expr, $qk:expr, $size:expr) => {
        const _: () = assert!(size_of::<$b>() == $size);
        const _: () = assert!(align_of::<$b>() == 1);
        // SAFETY: `#[repr(C)]`, made only of `u8`/`i8` arrays (asserted alignment 1, and the size
        // assert equals the sum of the field sizes, so no padding); every bit pattern is valid.
        unsafe impl QuantBlock for $b {
            const TYPE: GgmlType = $t;
            const QK: usize = $qk;
        }
    };
}

/// Q4_0: 32 weights `d * (q - 8)`, q in 0..16. `qs[j]` holds element j (low nibble) and j+16
/// (high nibble).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4_0 {
    pub d: [u8; 2],
    pub qs: [u8; QK / 2],
}
impl_block!(BlockQ4_0, GgmlType::Q4_0, QK, 18);

/// Q4_1: 32 weights `d * q + m`, q in 0..16.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qs: [u8; QK / 2],
}
impl_block!(BlockQ4_1, GgmlType::Q4_1, QK, 20);

/// Q5_0: 32 weights `d * (q - 16)`, q in 0..32; bit 4 of element j is bit j of `qh` (LE u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ5_0 {
    pub d: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
impl_block!(BlockQ5_0, GgmlType::Q5_0, QK, 22);

/// Q5_1: 32 weights `d * q + m`, q in 0..32.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ5_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
impl_block!(BlockQ5_1, GgmlType::Q5_1, QK, 24);

/// Q8_0: 32 values `d * q`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8_0 {
    pub d: [u8; 2],
    pub qs: [i8; QK],
}
impl_block!(BlockQ8_0, GgmlType::Q8_0, QK, 34);

/// Q8_1: 32 values `d * q`, plus `s = d * sum(q)` (used by the Q4_1/Q5_1 dot products).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8_1 {
    pub d: [u8; 2],
    pub s: [u8; 2],
    pub qs: [i8; QK],
}
impl_block!(BlockQ8_1, GgmlType::Q8_1, QK, 36);

/// Q2_K: 256 weights in 16 groups of 16; `scales[j]` = 4-bit scale (low) and min (high);
/// weight = `d * sc * q - dmin * m`, q in 0..4.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: [u8; 2],
    pub dmin: [u8; 2],
}
impl_block!(BlockQ2K, GgmlType::Q2_K, QK_K, 84);

/// Q3_K: 256 weights in 16 groups of 16 with 6-bit signed scales packed in 12 bytes;
/// weight = `d * (sc - 32) * (q - 4*(1 - hbit))`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: [u8; 2],
}
impl_block!(BlockQ3K, GgmlType::Q3_K, QK_K, 110);

/// Q4_K: 256 weights in 8 groups of 32 with 6-bit scales and mins packed in 12 bytes;
/// weight = `d * sc * q - dmin * m`, q in 0..16.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}
impl_block!(BlockQ4K, GgmlType::Q4_K, QK_K, 144);

/// Q5_K: as Q4_K with a fifth bit per weight in `qh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ5K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
impl_block!(BlockQ5K, GgmlType::Q5_K, QK_K, 176);

/// Q6_K: 256 weights in 16 groups of 16 with 8-bit signed scales; weight = `d * sc * (q - 32)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: [u8; 2],
}
impl_block!(BlockQ6K, GgmlType::Q6_K, QK_K, 210);

/// Q8_K: the activation type of the K-quants: 256 values `d * q` (f32 `d`) and the sums of each
/// group of 16 quants.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8K {
    pub d: [u8; 4],
    pub qs: [i8; QK_K],
    pub bsums: [[u8; 2]; QK_K / 16],
}
impl_block!(BlockQ8K, GgmlType::Q8_K, QK_K, 292);

macro_rules! impl_d {
    ($($b:ty),*) => {$(
        impl $b {
            /// The block scale `d`.
            #[inline(always)]
            pub fn d(&self) -> f32 {
                f16_from_le(self.d)
            }
        }
    )*};
}
impl_d!(
    BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1, BlockQ2K, BlockQ3K, BlockQ4K,
    BlockQ5K, BlockQ6K
);

macro_rules! impl_m {
    ($($b:ty),*) => {$(
        impl $b {
            /// The block minimum `m`.
            #[inline(always)]
            pub fn m(&self) -> f32 {
                f16_from_le(self.m)
            }
            /// The high bits as the little-endian `u32` ggml reads.
            #[inline(always)]
            pub fn qh(&self) -> u32 {
                u32::from_le_bytes(self.qh)
            }
        }
    )*};
}
impl_m!(BlockQ5_1);

impl BlockQ4_1 {
    /// The block minimum `m`.
    #[inline(always)]
    pub fn m(&self) -> f32 {
        f16_from_le(self.m)
    }
}

impl BlockQ5_0 {
    /// The high bits as the little-endian `u32` ggml reads.
    #[inline(always)]
    pub fn qh(&self) -> u32 {
        u32::from_le_bytes(self.qh)
    }
}

impl BlockQ8_1 {
    /// `d * sum(qs)`.
    #[inline(always)]
    pub fn s(&self) -> f32 {
        f16_from_le(self.s)
    }
}

impl BlockQ2K {
    /// The scale of the mins.
    #[inline(always)]
    pub fn dmin(&self) -> f32 {
        f16_from_le(self.dmin)
    }
}

impl BlockQ4K {
    /// The scale of the mins.
    #[inline(always)]
    pub fn dmin(&self) -> f32 {
        f16_from_le(self.dmin)
    }
}

impl BlockQ5K {
    /// The scale of the mins.
    #[inline(always)]
    pub fn dmin(&self) -> f32 {
        f16_from_le(self.dmin)
    }
}

impl BlockQ8K {
    /// The f32 block scale.
    #[inline(always)]
    pub fn d(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }
    /// Sum of quants `16*j .. 16*j+16`.
    #[inline(always)]
    pub fn bsum(&self, j: usize) -> i16 {
        i16::from_le_bytes(self.bsums[j])
    }
}

/// Unpacks the 6-bit scale and min of group `j` (0..8) of a Q4_K/Q5_K block
/// (ggml's `get_scale_min_k4`).
#[inline(always)]
pub fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Unpacks the 16 signed 6-bit scales of a Q3_K block (already minus 32).
#[inline(always)]
pub fn q3k_scales(s: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = (low | (high << 4)) as i8 - 32;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_core_geometry() {
        fn check<B: QuantBlock>() {
            assert_eq!(size_of::<B>(), B::TYPE.type_size(), "{}", B::TYPE);
            assert_eq!(B::QK, B::TYPE.block_size(), "{}", B::TYPE);
        }
        check::<BlockQ4_0>();
        check::<BlockQ4_1>();
        check::<BlockQ5_0>();
        check::<BlockQ5_1>();
        check::<BlockQ8_0>();
        check::<BlockQ8_1>();
        check::<BlockQ2K>();
        check::<BlockQ3K>();
        check::<BlockQ4K>();
        check::<BlockQ5K>();
        check::<BlockQ6K>();
        check::<BlockQ8K>();
    }

    #[test]
    fn unaligned_views() {
        let bytes = [0x11u8; 1 + 2 * 18];
        let b = as_blocks::<BlockQ4_0>(&bytes[1..]);
        assert_eq!(b.len(), 2);
        assert_eq!(b[1].qs[15], 0x11);
        assert_eq!(block_bytes(b), &bytes[1..]);
    }

    #[test]
    fn bf16_matches_ggml_rounding() {
        assert_eq!(f32_to_bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is a tie between 1.0 and 1 + 2^-7: rounds to even (1.0).
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert_eq!(f32_to_bf16_bits(f32::INFINITY), 0x7f80);
        assert_eq!(bf16_bits_to_f32(0xbf80), -1.0);
    }
}
