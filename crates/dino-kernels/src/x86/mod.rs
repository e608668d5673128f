//! x86-64 SIMD kernels.

mod avx2;

pub(crate) use avx2::{avx2_detected, avx2_kernels};
