//! Weight tensors borrowed from the mmap'd file, checked for shape and type at load.

use dino_core::{Error, GgmlType, Result};
use dino_formats::gguf::{GgufFile, TensorInfo};
use dino_kernels::matmul::{self, QMatrix};
use dino_kernels::pool::ThreadPool;
use dino_kernels::quant;
use std::sync::Arc;

/// A 2-D weight matrix living in the file: `n_out` rows of `n_in` elements.
pub struct Weight {
    file: Arc<GgufFile>,
    info: TensorInfo,
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
            .unwrap_or_else(|| self.file.tensor_data(&self.info))
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
        let (file, offset) = (&self.file, self.info.offset);
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
        self.file.release_range(self.info.offset, self.info.size)?;
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
        QMatrix::new(name, self.file.tensor_data(&info), info.ty, n_in, n_out)?;
        Ok(Weight {
            file: self.file.clone(),
            info,
            n_in,
            n_out,
            packed: None,
        })
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
