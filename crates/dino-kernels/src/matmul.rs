//! Weight × activation products for every supported weight type.
//!
//! Activations are quantized once per call to the type the weights pair with (ggml's
//! `vec_dot_type`: Q8_0, Q8_1, Q8_K, or F16/BF16/F32), then each output row is an integer (or
//! half-precision) dot product read straight from the weight bytes. Work is split over output
//! rows in chunks claimed atomically by the pool; for a batch of tokens each weight row is read
//! once and used for every token while it sits in L1.

use crate::dispatch::{self, Tile, TypeKernels};
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
        pool.for_chunks(n_tokens, 8, &|r| {
            for t in r {
                // SAFETY: each token's activation row is written by exactly one chunk.
                let dst = unsafe { pa.slice(t * act_row, act_row) };
                (k.quantize_act)(&x[t * n_in..(t + 1) * n_in], dst);
            }
        });
    }
    let act = &*act;
    // The leading tokens llama.cpp's x86 build computes with a batched kernel take that
    // kernel's float order (see `TypeKernels::batch`), the rest the per-row order.
    let (n_gemm, gemm) = match k.batch {
        Some(b) => (b.rule.tokens(n_tokens), (b.dot, b.tile)),
        None => (0, (k.vec_dot, k.tile)),
    };
    let per_row = (k.vec_dot, k.tile);
    // Work items: (row chunk, token block); a token block never straddles `n_gemm`.
    let n_out = w.n_out;
    let row_chunk = if n_tokens == 1 {
        // Enough chunks to balance the threads, few enough to keep claims cheap.
        (n_out / (pool.n_threads() * 16)).clamp(8, ROW_CHUNK_MAX) / 8 * 8
    } else {
        ROW_CHUNK_MAX
    };
    let n_row_chunks = n_out.div_ceil(row_chunk);
    let tok_blocks = token_blocks(n_tokens, n_gemm);
    let n_tb = tok_blocks.len;
    let po = SharedMut::new(out);
    let rb = w.row_bytes();
    pool.for_chunks(n_row_chunks * n_tb, 1, &|items| {
        let mut buf = [0f32; ROW_CHUNK_MAX * TOKEN_BLOCK];
        for item in items {
            // Token block outer: consecutive items share the activation block.
            let (tb, rc) = (item / n_row_chunks, item % n_row_chunks);
            let (t0, t1) = tok_blocks.get(tb);
            let r0 = rc * row_chunk;
            let r1 = (r0 + row_chunk).min(n_out);
            let (dot, tile_fn) = if t0 < n_gemm { gemm } else { per_row };
            let (nr, nt) = (r1 - r0, t1 - t0);
            let mut tile = Tile {
                n: w.n_in,
                w: &w.data[r0 * rb..r1 * rb],
                n_rows: nr,
                a: &act[t0 * act_row..t1 * act_row],
                n_tok: nt,
                out: &mut buf[..nr * nt],
            };
            match tile_fn {
                Some(f) => f(&mut tile),
                None => tile.by_dot(dot),
            }
            for t in 0..nt {
                // SAFETY: outputs (t0 + t, r0..r1) belong to this work item only.
                let dst = unsafe { po.slice((t0 + t) * n_out + r0, nr) };
                dst.copy_from_slice(&buf[t * nr..(t + 1) * nr]);
            }
        }
    });
}

/// Largest row chunk of one work item.
const ROW_CHUNK_MAX: usize = 32;
/// Tokens per work item: their activations stay in L2 while the item's rows stream past.
const TOKEN_BLOCK: usize = 64;

/// The token blocks of a batch: `TOKEN_BLOCK`-sized, split at `n_gemm`.
struct TokenBlocks {
    n_gemm: usize,
    n: usize,
    first: usize,
    len: usize,
}

fn token_blocks(n: usize, n_gemm: usize) -> TokenBlocks {
    let first = n_gemm.div_ceil(TOKEN_BLOCK);
    TokenBlocks {
        n_gemm,
        n,
        first,
        len: first + (n - n_gemm).div_ceil(TOKEN_BLOCK),
    }
}

impl TokenBlocks {
    /// Token range of block `i`.
    fn get(&self, i: usize) -> (usize, usize) {
        if i < self.first {
            let t0 = i * TOKEN_BLOCK;
            (t0, (t0 + TOKEN_BLOCK).min(self.n_gemm))
        } else {
            let t0 = self.n_gemm + (i - self.first) * TOKEN_BLOCK;
            (t0, (t0 + TOKEN_BLOCK).min(self.n))
        }
    }
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
    fn token_blocks_cover_the_batch_and_split_at_n_gemm() {
        for n in [1usize, 5, 64, 65, 130, 512] {
            for n_gemm in [0, n / 2 / 4 * 4, n] {
                let tb = token_blocks(n, n_gemm);
                let mut next = 0;
                for i in 0..tb.len {
                    let (a, b) = tb.get(i);
                    assert_eq!(a, next);
                    assert!(b > a && b - a <= TOKEN_BLOCK);
                    assert!(b <= n_gemm || a >= n_gemm, "{n} {n_gemm}: {a}..{b}");
                    next = b;
                }
                assert_eq!(next, n);
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
