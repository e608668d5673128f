//! Pieces shared by the architectures.

pub mod decoder;
pub mod weights;
