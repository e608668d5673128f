//! KV-cache storage. The engine owns instances; models write and read them in `forward`.

use dino_core::{Error, Result};
use half::f16;
use half::slice::HalfBitsSliceExt;

/// What one cached position holds, per layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    pub n_layer: usize,
    /// `n_head_kv * head_dim` (keys and values alike).
    pub n_kv_dim: usize,
}

/// F16 keys and values for `n_seq` sequences of up to `n_ctx` positions each.
///
/// Layout per layer: `[n_seq, n_ctx, n_kv_dim]`. Memory is reserved zeroed, so pages are only
/// committed as positions are filled.
pub struct KvCache {
    shape: KvShape,
    n_ctx: usize,
    n_seq: usize,
    // f16 bits; `vec![0u16; n]` is a zeroed allocation, committed lazily by the OS.
    k: Vec<Vec<u16>>,
    v: Vec<Vec<u16>>,
}

impl KvCache {
    pub fn new(shape: KvShape, n_ctx: usize, n_seq: usize) -> Result<KvCache> {
        let per_layer = n_seq
            .checked_mul(n_ctx)
            .and_then(|x| x.checked_mul(shape.n_kv_dim))
            .ok_or_else(|| Error::invalid("KV cache size overflows"))?;
        if n_ctx == 0 || n_seq == 0 {
            return Err(Error::invalid("KV cache needs n_ctx > 0 and n_seq > 0"));
        }
        let alloc = || vec![0u16; per_layer];
        Ok(KvCache {
            shape,
            n_ctx,
            n_seq,
            k: (0..shape.n_layer).map(|_| alloc()).collect(),
            v: (0..shape.n_layer).map(|_| alloc()).collect(),
        })
    }

    /// Bytes a cache of this shape takes.
    pub fn bytes_for(shape: KvShape, n_ctx: usize, n_seq: usize) -> u64 {
        2 * shape.n_layer as u64 * n_seq as u64 * n_ctx as u64 * shape.n_kv_dim as u64 * 2
    }

    pub fn shape(&self) -> KvShape {
        self.shape
    }
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }
    pub fn n_seq(&self) -> usize {
        self.n_seq
    }
    pub fn bytes(&self) -> u64 {
        Self::bytes_for(self.shape, self.n_ctx, self.n_seq)
    }

    /// Keys and values of layer `il`, sequence `seq`: `[n_ctx, n_kv_dim]` each.
    pub fn seq_layer(&self, il: usize, seq: usize) -> (&[f16], &[f16]) {
        let n = self.n_ctx * self.shape.n_kv_dim;
        (
            self.k[il][seq * n..(seq + 1) * n].reinterpret_cast(),
            self.v[il][seq * n..(seq + 1) * n].reinterpret_cast(),
        )
    }

    /// Store one position's key and value rows (`[n_kv_dim]` each) for layer `il`.
    pub fn store(&mut self, il: usize, seq: usize, pos: usize, k: &[f32], v: &[f32]) {
        let d = self.shape.n_kv_dim;
        let at = (seq * self.n_ctx + pos) * d;
        for (dst, &x) in self.k[il][at..at + d].iter_mut().zip(k) {
            *dst = f16::from_f32(x).to_bits();
        }
        for (dst, &x) in self.v[il][at..at + d].iter_mut().zip(v) {
            *dst = f16::from_f32(x).to_bits();
        }
    }
}
