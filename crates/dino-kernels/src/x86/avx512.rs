//! The AVX-512 level: AVX2 kernels plus VNNI (`vpdpbusd`) tile kernels on 256-bit registers
//! (AVX-512VL gives 32 of them, so tiles grow to 4 rows × 4 tokens). Integer sums are exact, so
//! every output is bit-identical to the AVX2 level's; the table differs only in speed.

use super::avx2::*;
use crate::dispatch::{table, TypeKernels};
use crate::quant::blocks::*;
use crate::scalar::legacy as l;
use dino_core::GgmlType;

/// avx512f, avx512bw, avx512vl and avx512vnni, on top of the AVX2 level's features.
pub(crate) fn avx512_detected() -> bool {
    avx2_detected()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

tile_wrappers! { avx512_detected, tile_vnni:
    vnni_q4_0 => BlockQ4_0;
    vnni_q4_1 => BlockQ4_1;
    vnni_q5_0 => BlockQ5_0;
    vnni_q5_1 => BlockQ5_1;
    vnni_q8_0 => BlockQ8_0;
}

/// The AVX-512 kernel table of `t`, or `None` if unsupported here.
pub(crate) fn avx512_kernels(t: GgmlType) -> Option<&'static TypeKernels> {
    use GgmlType::*;
    if !avx512_detected() {
        return None;
    }
    table!(KQ4_0: dot_q4_0, quant_q8_0, l::dequantize_q4_0, Q8_0, tile: vnni_q4_0, packed: crate::dispatch::PackedKernels {
        tile: super::packed::tile_q4_0x4,
        ..crate::dispatch::Q4_0X4_SCALAR
    });
    table!(KQ4_1: dot_q4_1, quant_q8_1, l::dequantize_q4_1, Q8_1, tile: vnni_q4_1);
    table!(KQ5_0: dot_q5_0, quant_q8_0, l::dequantize_q5_0, Q8_0, tile: vnni_q5_0);
    table!(KQ5_1: dot_q5_1, quant_q8_1, l::dequantize_q5_1, Q8_1, tile: vnni_q5_1);
    table!(KQ8_0: dot_q8_0, quant_q8_0, l::dequantize_q8_0, Q8_0, tile: vnni_q8_0);
    Some(match t {
        Q4_0 => &KQ4_0,
        Q4_1 => &KQ4_1,
        Q5_0 => &KQ5_0,
        Q5_1 => &KQ5_1,
        Q8_0 => &KQ8_0,
        _ => return avx2_kernels(t),
    })
}
