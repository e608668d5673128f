//! GGUF v2/v3: reader over mmap, writer, typed metadata.
//!
//! Layout (little-endian): magic `GGUF`, version u32, n_tensors u64, n_kv u64, then n_kv
//! key/value pairs, then n_tensors tensor infos (name, n_dims u32, dims u64 × n_dims, type u32,
//! offset u64), padding to `general.alignment` (default 32), then the tensor data.

mod ftype;
mod reader;
mod value;
mod writer;

pub use ftype::{fallback_type, Ftype};
pub(crate) use reader::release_mapped as release_mapped_range;
pub use reader::{GgufFile, PlacedTensor, Storage, TensorInfo};
pub use value::{Array, Metadata, Value, ValueType};
pub use writer::{GgufWriter, TensorSpec};

/// `GGUF` read as a little-endian u32.
pub const MAGIC: u32 = 0x4655_4747;
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;
/// Deepest nesting of arrays accepted in metadata (real files use at most 2).
pub const MAX_ARRAY_DEPTH: usize = 8;
