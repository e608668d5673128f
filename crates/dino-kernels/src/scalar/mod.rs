//! Scalar kernels: the readable reference twin of every SIMD kernel, and the fallback on any CPU.
//!
//! All functions take raw little-endian block bytes and assume the caller checked the lengths
//! (`n` a multiple of the block size, slices long enough); they never read out of bounds, and
//! debug builds assert the lengths.

pub mod float;
pub mod kquantize;
pub mod kquants;
pub mod legacy;
pub mod panel;
