//! Weight tensors borrowed from the mmap'd file, checked for shape and type at load.

use dino_core::{Error, GgmlType, Result};
use dino_formats::gguf::{GgufFile, TensorInfo};
use dino_kernels::matmul::{self, QMatrix};
use dino_kernels::pool::ThreadPool;
use dino_kernels::quant;
use std::sync::Arc;

/// A 2-D weight matrix living in the file: `n_out` rows of `n_in` elements. It is a whole
/// tensor, or a run of its rows (one part of a fused tensor, one expert of a 3-D one).
pub struct Weight {
    file: Arc<GgufFile>,
    info: TensorInfo,
    /// The bytes of the tensor's data this matrix is.
    range: std::ops::Range<usize>,
    pub n_in: usize,
    pub n_out: usize,
    /// The kernel level's repacked copy, when one was made at load.
    packed: Option<matmul::PackedBuf>,
}

impl Weight {
    pub fn name(&self) -> &str {
        &self.info.name
    }
    pub fn ty(&self) -> GgmlType {
        self.info.ty
    }
    /// The bytes the kernels read: the repacked copy if there is one, else the file's.
    pub fn bytes(&self) -> &[u8] {
        self.packed
            .as_deref()
            .unwrap_or_else(|| &self.file.tensor_data(&self.info)[self.range.clone()])
    }
    pub fn matrix(&self) -> QMatrix<'_> {
        QMatrix {
            data: self.bytes(),
            ty: self.info.ty,
            n_in: self.n_in,
            n_out: self.n_out,
            packed: self.packed.is_some(),
        }
    }

    /// Repack into the kernel level's faster layout if it has one for this type, letting the
    /// OS drop the file pages as they are packed (the copy replaces them, so resident memory
    /// does not double, even for a moment). Returns whether the weight was repacked.
    pub fn repack(&mut self, pool: &ThreadPool) -> Result<bool> {
        if self.packed.is_some() {
            return Ok(true);
        }
        let (file, offset) = (&self.file, self.info.offset + self.range.start as u64);
        let mut released = Ok(());
        let copy = matmul::repack_releasing(pool, &self.matrix(), &mut |r| {
            if released.is_ok() {
                released = file.release_range(offset + r.start as u64, r.len() as u64);
            }
        });
        let Some(copy) = copy else {
            return Ok(false);
        };
        released?;
        self.packed = Some(copy);
        // The steps' boundary pages (each step releases only the pages inside it).
        self.file.release_range(offset, self.range.len() as u64)?;
        Ok(true)
    }
}

/// Looks tensors up by their GGUF names and checks them against the expected shapes.
pub struct TensorLoader {
    pub file: Arc<GgufFile>,
}

impl TensorLoader {
    pub fn new(file: Arc<GgufFile>) -> Self {
        TensorLoader { file }
    }

    pub fn has(&self, name: &str) -> bool {
        self.file.tensor_info(name).is_some()
    }

    /// Dimensions of a tensor, if present.
    pub fn dims(&self, name: &str) -> Option<&[u64]> {
        self.file.tensor_info(name).map(|i| i.dims.as_slice())
    }

    fn info(&self, name: &str, dims: &[usize]) -> Result<TensorInfo> {
        let info = self
            .file
            .tensor_info(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let want: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        // Trailing 1-dims are equivalent in ggml.
        let mut found = info.dims.clone();
        while found.len() > want.len() && found.last() == Some(&1) {
            found.pop();
        }
        if found != want {
            return Err(Error::Shape {
                tensor: name.to_string(),
                expected: want,
                found: info.dims.clone(),
            });
        }
        if !quant::is_supported(info.ty) {
            return Err(Error::UnsupportedType {
                tensor: name.to_string(),
                ty: info.ty.to_string(),
            });
        }
        Ok(info.clone())
    }

    /// A matrix of `n_out` rows of `n_in` (GGUF dims `[n_in, n_out]`).
    pub fn matrix(&self, name: &str, n_in: usize, n_out: usize) -> Result<Weight> {
        let info = self.info(name, &[n_in, n_out])?;
        Ok(self.views(name, info, n_in, &[n_out])?.remove(0))
    }

    /// A fused matrix of `parts.iter().sum()` rows of `n_in`, as one matrix per run of rows
    /// (phi3's `attn_qkv`: Q, K and V rows).
    pub fn split_rows(&self, name: &str, n_in: usize, parts: &[usize]) -> Result<Vec<Weight>> {
        let info = self.info(name, &[n_in, parts.iter().sum()])?;
        self.views(name, info, n_in, parts)
    }

    /// A 3-D expert tensor (GGUF dims `[n_in, n_out, n_expert]`) as one matrix per expert.
    pub fn experts(
        &self,
        name: &str,
        n_in: usize,
        n_out: usize,
        n_expert: usize,
    ) -> Result<Vec<Weight>> {
        let info = self.info(name, &[n_in, n_out, n_expert])?;
        self.views(name, info, n_in, &vec![n_out; n_expert])
    }

    /// Consecutive runs of `parts[i]` rows of `info`, checked as whole matrices.
    fn views(
        &self,
        name: &str,
        info: TensorInfo,
        n_in: usize,
        parts: &[usize],
    ) -> Result<Vec<Weight>> {
        let data = self.file.tensor_data(&info);
        let row = info.ty.row_size(n_in as u64).ok_or_else(|| {
            Error::format(
                format!("tensor '{name}'"),
                format!(
                    "row length {n_in} is not a multiple of the {} block size",
                    info.ty
                ),
            )
        })? as usize;
        let mut start = 0usize;
        let mut out = Vec::with_capacity(parts.len());
        for &n_out in parts {
            let range = start..start + n_out * row;
            let bytes = data.get(range.clone()).ok_or_else(|| {
                Error::format(format!("tensor '{name}'"), "data shorter than its shape")
            })?;
            QMatrix::new(name, bytes, info.ty, n_in, n_out)?;
            out.push(Weight {
                file: self.file.clone(),
                info: info.clone(),
                range: range.clone(),
                n_in,
                n_out,
                packed: None,
            });
            start = range.end;
        }
        Ok(out)
    }

    /// A vector (norm weight, bias) dequantized to f32.
    pub fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        let info = self.info(name, &[n])?;
        let mut out = vec![0f32; n];
        quant::dequantize_row(info.ty, self.file.tensor_data(&info), &mut out)
            .map_err(|e| Error::format(format!("tensor '{name}'"), e))?;
        Ok(out)
    }

    pub fn opt_vector(&self, name: &str, n: usize) -> Result<Option<Vec<f32>>> {
        if self.has(name) {
            self.vector(name, n).map(Some)
        } else {
            Ok(None)
        }
    }
}
