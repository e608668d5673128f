//! Dino's compute kernels. Models call these; they never name an instruction set themselves.
//!
//! - `quant`: ggml-compatible quant blocks, (de)quantization and dot products per tensor type.
//! - `dispatch`: the run-time kernel table, filled once from CPU feature detection (`DINO_ISA`).
//! - `pool`: the persistent thread pool.
//! - `matmul`: weight × activation products over any supported weight type.
//! - `ops`: RMSNorm, RoPE, softmax, SwiGLU, attention.
//! - `sparse`: column-major weights whose products skip the columns of zero inputs.

pub mod dispatch;
pub mod matmul;
pub mod ops;
pub mod pool;
pub mod quant;
mod scalar;
pub mod sparse;
/// The row-interleaved repacked layouts and their activation format (the reference arithmetic).
pub use scalar::panel;
#[cfg(target_arch = "x86_64")]
mod x86;
