//! Weight × activation products for every supported weight type.
//!
//! Activations are quantized once per call to the type the weights pair with (ggml's
//! `vec_dot_type`: Q8_0, Q8_1, Q8_K, or F16/BF16/F32), then each output row is an integer (or
//! half-precision) dot product read straight from the weight bytes. Work is split over output
//! rows in chunks claimed atomically by the pool; for a batch of tokens each weight row is read
//! once and used for every token while it sits in L1.

use crate::dispatch::{self, TypeKernels};
use crate::pool::{SharedMut, ThreadPool};
use dino_core::{Error, GgmlType, Result};

/// A borrowed weight matrix in ggml layout: `n_out` rows of `n_in` elements of type `ty`.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub data: &'a [u8],
    pub ty: GgmlType,
    /// Row length (ggml `ne0`).
    pub n_in: usize,
    /// Number of rows (ggml `ne1`).
    pub n_out: usize,
}

impl<'a> QMatrix<'a> {
    /// Check that `data` holds exactly `n_out` rows of `n_in` elements and the type is computable.
    pub fn new(
        name: &str,
        data: &'a [u8],
        ty: GgmlType,
        n_in: usize,
        n_out: usize,
    ) -> Result<Self> {
        if dispatch::kernels(ty).is_none() {
            return Err(Error::UnsupportedType {
                tensor: name.to_string(),
                ty: ty.to_string(),
            });
        }
        let row = ty.row_size(n_in as u64).ok_or_else(|| {
            Error::invalid(format!(
                "tensor '{name}': row length {n_in} is not a multiple of the {ty} block size"
            ))
        })?;
        if (row as usize).checked_mul(n_out) != Some(data.len()) {
            return Err(Error::invalid(format!(
                "tensor '{name}': {} bytes, expected {n_out} rows of {row}",
                data.len()
            )));
        }
        Ok(QMatrix {
            data,
            ty,
            n_in,
            n_out,
        })
    }

    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.n_out
    }

    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }
}

/// Reusable buffer for quantized activations (grows once, then reused).
#[derive(Default, Debug)]
pub struct MatmulScratch {
    act: Vec<u8>,
}

impl MatmulScratch {
    /// Reserve room for `n_tokens` activation rows of `n_in` elements for any weight type.
    pub fn reserve(&mut self, n_tokens: usize, n_in: usize) {
        // F32 activation rows are the largest encoding.
        let need = n_tokens * n_in * 4;
        if self.act.len() < need {
            self.act.resize(need, 0);
        }
    }
}

/// Rows of output computed per claimed chunk.
const ROW_CHUNK: usize = 16;

/// `out[t, r] = Σ_k w[r, k] · x[t, k]` for `n_tokens` tokens.
///
/// `x`: `[n_tokens, n_in]`, `out`: `[n_tokens, n_out]`.
pub fn matmul(
    pool: &ThreadPool,
    w: &QMatrix,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
    scratch: &mut MatmulScratch,
) {
    assert_eq!(
        x.len(),
        n_tokens * w.n_in,
        "matmul: x is not [n_tokens, n_in]"
    );
    assert_eq!(
        out.len(),
        n_tokens * w.n_out,
        "matmul: out is not [n_tokens, n_out]"
    );
    let k: &TypeKernels = dispatch::kernels(w.ty).expect("QMatrix::new checked the type");
    let act_row = k
        .act_type
        .row_size(w.n_in as u64)
        .expect("activation type shares the weight block size") as usize;
    scratch.reserve(n_tokens, w.n_in);
    let act = &mut scratch.act[..act_row * n_tokens];
    // [n_tokens, act_row] bytes
    {
        let pa = SharedMut::new(act);
        let n_in = w.n_in;
        pool.for_chunks(n_tokens, 4, &|r| {
            for t in r {
                // SAFETY: each token's activation row is written by exactly one chunk.
                let dst = unsafe { pa.slice(t * act_row, act_row) };
                (k.quantize_act)(&x[t * n_in..(t + 1) * n_in], dst);
            }
        });
    }
    let act = &*act;
    let n_out = w.n_out;
    let po = SharedMut::new(out);
    let chunk = if n_tokens == 1 {
        ROW_CHUNK
    } else {
        // Fewer, larger chunks when each row is reused over many tokens.
        ROW_CHUNK.max(n_out / (pool.n_threads() * 8)).min(256)
    };
    // The leading tokens llama.cpp's x86 build computes with a batched kernel take that
    // kernel's float order (see `TypeKernels::batch`), the rest the per-row order.
    let (n_gemm, gemm) = match k.batch {
        Some(b) => (b.rule.tokens(n_tokens), b.dot),
        None => (0, k.vec_dot),
    };
    pool.for_chunks(n_out, chunk, &|rows| {
        for r in rows {
            let wr = w.row(r);
            for t in 0..n_tokens {
                let dot = if t < n_gemm { gemm } else { k.vec_dot };
                let v = dot(w.n_in, wr, &act[t * act_row..(t + 1) * act_row]);
                // SAFETY: element (t, r) is written only by the chunk that owns row r.
                unsafe { po.slice(t * n_out + r, 1)[0] = v };
            }
        }
    });
}

/// Dequantize row `r` of `w` into `dst` (`[n_in]`), e.g. an embedding lookup.
pub fn dequantize_row(w: &QMatrix, r: usize, dst: &mut [f32]) {
    let k = dispatch::kernels(w.ty).expect("QMatrix::new checked the type");
    (k.dequantize)(w.row(r), dst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }

    #[test]
    fn matmul_matches_dequantized_reference() {
        let pool = ThreadPool::new(3);
        let mut seed = 42u64;
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
        ] {
            let (n_in, n_out) = (256usize, 37usize);
            let wf: Vec<f32> = (0..n_in * n_out).map(|_| lcg(&mut seed)).collect();
            let mut wq = vec![0u8; ty.row_size((n_in * n_out) as u64).unwrap() as usize];
            quant::quantize_row(ty, &wf, &mut wq).unwrap();
            let m = QMatrix::new("w", &wq, ty, n_in, n_out).unwrap();
            let mut wd = vec![0f32; n_in * n_out];
            quant::dequantize_row(ty, &wq, &mut wd).unwrap();
            for n_tokens in [1usize, 3] {
                let x: Vec<f32> = (0..n_tokens * n_in).map(|_| lcg(&mut seed)).collect();
                let mut out = vec![0f32; n_tokens * n_out];
                matmul(
                    &pool,
                    &m,
                    &x,
                    n_tokens,
                    &mut out,
                    &mut MatmulScratch::default(),
                );
                for t in 0..n_tokens {
                    for r in 0..n_out {
                        let want: f64 = (0..n_in)
                            .map(|i| wd[r * n_in + i] as f64 * x[t * n_in + i] as f64)
                            .sum();
                        let got = out[t * n_out + r] as f64;
                        // Activation quantization to 8 bits costs up to ~1% of the row norm.
                        assert!((got - want).abs() < 0.15, "{ty} t{t} r{r}: {got} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn qmatrix_rejects_bad_sizes() {
        assert!(QMatrix::new("w", &[0u8; 10], GgmlType::Q8_0, 32, 1).is_err());
        assert!(QMatrix::new("w", &[0u8; 34], GgmlType::Q8_0, 31, 1).is_err());
        assert!(QMatrix::new("w", &[0u8; 34], GgmlType::Q8_0, 32, 1).is_ok());
    }
}
