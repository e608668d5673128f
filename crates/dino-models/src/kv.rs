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

    /// Give back the memory of sequence `seq`'s positions from `keep` on (rounded inward to
    /// whole pages): they read as zeros afterwards, so only positions that will be written
    /// again before they are read may be released (a finished sequence's tail). The cache
    /// commits memory as positions are written; this returns it when a sequence ends, so the
    /// memory used follows the tokens held, not `n_seq * n_ctx`.
    pub fn release_seq(&mut self, seq: usize, keep: usize) {
        if seq >= self.n_seq || keep >= self.n_ctx {
            return;
        }
        let d = self.shape.n_kv_dim;
        let (start, end) = ((seq * self.n_ctx + keep) * d, (seq + 1) * self.n_ctx * d);
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            release_pages(&mut buf[start..end]);
        }
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

/// `madvise(MADV_DONTNEED)` on the whole pages inside `buf`: private anonymous memory goes back
/// to the OS and reads as zeros when touched again. Best effort (a no-op off Unix).
fn release_pages(buf: &mut [u16]) {
    #[cfg(unix)]
    {
        const PAGE: usize = 4096;
        let start = buf.as_mut_ptr() as usize;
        let end = start + std::mem::size_of_val(buf);
        let first = start.div_ceil(PAGE) * PAGE;
        let last = end / PAGE * PAGE;
        if last > first {
            // SAFETY: [first, last) lies inside `buf`, which we borrow mutably (no other
            // reference can observe the change). The memory is private and anonymous (a heap
            // or mmap'd allocation), so MADV_DONTNEED makes those pages read as zeros, a valid
            // value for u16, and the allocator keeps owning them.
            let rc = unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    last - first,
                    libc::MADV_DONTNEED,
                )
            };
            let _ = rc; // best effort: on failure the memory simply stays committed
        }
    }
    #[cfg(not(unix))]
    let _ = buf;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Releasing a sequence's tail keeps its head and every other sequence, and released
    /// positions can be written and read again.
    #[test]
    fn releasing_a_tail_keeps_the_rest() {
        let shape = KvShape {
            n_layer: 2,
            n_kv_dim: 64,
        };
        let mut kv = KvCache::new(shape, 512, 2).unwrap();
        let row: Vec<f32> = (0..64).map(|i| i as f32 * 0.5).collect();
        for seq in 0..2 {
            for pos in 0..512 {
                for il in 0..2 {
                    kv.store(il, seq, pos, &row, &row);
                }
            }
        }
        kv.release_seq(0, 100);
        let want: Vec<f16> = row.iter().map(|&x| f16::from_f32(x)).collect();
        for il in 0..2 {
            let (k0, v0) = kv.seq_layer(il, 0);
            for pos in 0..100 {
                assert_eq!(&k0[pos * 64..(pos + 1) * 64], &want[..]);
                assert_eq!(&v0[pos * 64..(pos + 1) * 64], &want[..]);
            }
            let (k1, _) = kv.seq_layer(il, 1);
            assert!(k1.chunks(64).all(|r| r == &want[..]));
        }
        kv.store(1, 0, 300, &row, &row);
        assert_eq!(&kv.seq_layer(1, 0).0[300 * 64..301 * 64], &want[..]);
        // Out of range is a no-op.
        kv.release_seq(5, 0);
        kv.release_seq(0, 512);
    }
}
