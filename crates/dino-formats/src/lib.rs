//! Model file formats. GGUF is read over mmap with every offset, size, count and dimension
//! checked against the file before use, and written by [`gguf::GgufWriter`]. Hugging Face
//! checkpoint directories are read as GGUF by [`hf::HfModel`].

pub mod gguf;
pub mod hf;
