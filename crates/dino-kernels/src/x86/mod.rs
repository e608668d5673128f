//! x86-64 SIMD kernels: the AVX2 level (`avx2.rs`), the AVX-512 level (`avx512.rs`, AVX2 plus
//! VNNI tiles) and the tile kernels both share (`tiles.rs` for the 32-element quants,
//! `tiles_k.rs` for the K-quants, `tiles_float.rs` for F32 / F16 / BF16), decode
//! attention (`attn.rs`), the GEMM over the row-interleaved repacked layouts (`panel.rs`) and
//! the column-layout products of activation sparsity (`sparse.rs`).

#[macro_use]
mod avx2;
mod attn;
mod attn512;
mod avx512;
mod panel;
mod sparse;
mod tiles;
mod tiles_float;
mod tiles_k;

pub(crate) use attn::avx2_op_kernels;
pub(crate) use attn512::avx512_op_kernels;
pub(crate) use avx2::{avx2_detected, avx2_kernels};
pub(crate) use avx512::{avx512_detected, avx512_kernels};
