//! The AVX-512 level: AVX2 kernels plus VNNI (`vpdpbusd`) tile kernels on 256-bit registers
//! (AVX-512VL gives 32 of them, so tiles grow to 4 rows × 4 tokens). Integer sums are exact, so
//! every output is bit-identical to the AVX2 level's; the table differs only in speed.

use super::avx2::*;
use crate::dispatch::{table, BatchDot, BatchRule, PackedKernels, TypeKernels};
use crate::quant::blocks::*;
use crate::scalar::{float, kquants as k, legacy as l, panel};
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

/// A row-interleaved layout with its VNNI GEMM.
const fn pk(layout: &'static panel::Layout, tile: crate::dispatch::TileFn) -> PackedKernels {
    PackedKernels {
        layout,
        tile,
        quantize_act: super::panel::quantize_act,
        one_token: true,
    }
}

/// For one token from memory the file layout's per-row Q6_K kernel streams faster than the
/// Q6_K panel (`examples/gemm_stream`, 40 matrices of 1536 x 8960, 2 threads: 32 against
/// 28.5 GB/s), so a Q6_K output head keeps the file layout (Qwen2.5-Coder-1.5B Q4_K_M, whose
/// Q6_K head is a fifth of a token's reads: tg64 28.0 -> 30.8 tok/s).
const Q6K_PACKED: PackedKernels = PackedKernels {
    one_token: false,
    ..pk(&panel::Q6_K, super::panel::tile_q6_k)
};

/// The AVX-512 kernel table of `t`, or `None` if unsupported here.
pub(crate) fn avx512_kernels(t: GgmlType) -> Option<&'static TypeKernels> {
    use GgmlType::*;
    if !avx512_detected() {
        return None;
    }
    table!(KF32: dot_f32, float::f32_to_bytes, float::bytes_to_f32, F32, tile: super::tiles_float::wide_f32);
    table!(KF16: dot_f16, quant_f16, float::f16_to_f32, F16, tile: super::tiles_float::wide_f16, packed: PackedKernels {
        layout: &panel::F16,
        tile: super::panel::tile_f16,
        quantize_act: float::f32_to_bytes,
        one_token: true,
    });
    table!(KBF16: float::vec_dot_bf16, float::f32_to_bf16, float::bf16_to_f32, BF16, tile: super::tiles_float::wide_bf16);
    table!(KQ4_0: dot_q4_0, quant_q8_0, l::dequantize_q4_0, Q8_0, tile: vnni_q4_0, packed: pk(&panel::Q4_0, super::panel::tile_q4_0));
    table!(KQ4_1: dot_q4_1, quant_q8_1, l::dequantize_q4_1, Q8_1, tile: vnni_q4_1, packed: pk(&panel::Q4_1, super::panel::tile_q4_1));
    table!(KQ5_0: dot_q5_0, quant_q8_0, l::dequantize_q5_0, Q8_0, tile: vnni_q5_0, packed: pk(&panel::Q5_0, super::panel::tile_q5_0));
    table!(KQ5_1: dot_q5_1, quant_q8_1, l::dequantize_q5_1, Q8_1, tile: vnni_q5_1, packed: pk(&panel::Q5_1, super::panel::tile_q5_1));
    table!(KQ8_0: dot_q8_0, quant_q8_0, l::dequantize_q8_0, Q8_0, tile: vnni_q8_0, packed: pk(&panel::Q8_0, super::panel::tile_q8_0));
    table!(KQ4K: dot_q4_k, quant_q8_k, k::dequantize_q4_k, Q8_K, tile: super::tiles_k::vnni_q4_k, batch: dot_q4_k_gemm, BatchRule::WholeGroupsOf4, btile: super::tiles_k::vnni_q4_k_gemm, packed: pk(&panel::Q4_K, super::panel::tile_q4_k));
    table!(KQ5K: dot_q5_k, quant_q8_k, k::dequantize_q5_k, Q8_K, tile: super::tiles_k::vnni_q5_k, packed: pk(&panel::Q5_K, super::panel::tile_q5_k));
    table!(KQ6K: dot_q6_k, quant_q8_k, k::dequantize_q6_k, Q8_K, tile: super::tiles_k::vnni_q6_k, batch: dot_q6_k_tiled, BatchRule::AllFrom(8), btile: super::tiles_k::vnni_q6_k_tiled, packed: Q6K_PACKED);
    table!(KQ2K: dot_q2_k, quant_q8_k, k::dequantize_q2_k, Q8_K, tile: super::tiles_k::vnni_q2_k);
    table!(KQ3K: dot_q3_k, quant_q8_k, k::dequantize_q3_k, Q8_K, tile: super::tiles_k::vnni_q3_k, batch: dot_q3_k_tiled, BatchRule::AllFrom(8), btile: super::tiles_k::vnni_q3_k_tiled);
    Some(match t {
        F32 => &KF32,
        F16 => &KF16,
        BF16 => &KBF16,
        Q4_0 => &KQ4_0,
        Q4_1 => &KQ4_1,
        Q5_0 => &KQ5_0,
        Q5_1 => &KQ5_1,
        Q8_0 => &KQ8_0,
        Q2_K => &KQ2K,
        Q3_K => &KQ3K,
        Q4_K => &KQ4K,
        Q5_K => &KQ5K,
        Q6_K => &KQ6K,
        _ => return avx2_kernels(t),
    })
}
