//! Core types shared by every Dino crate: the ggml tensor-type enum with its block geometry,
//! and the error type. This crate depends on nothing of ours.

mod dtype;
mod error;

pub use dtype::GgmlType;
pub use error::{Error, Result};

/// Super-block size of the K-quants (`QK_K` in ggml).
pub const QK_K: usize = 256;
