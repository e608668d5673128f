//! KV-cache storage. The engine owns instances; models write and read them in `forward`.

use dino_core::{Error, Result};
use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

use dino_kernels::ops::kv_row_offset;
pub use dino_kernels::ops::{KvBlocks, KV_BLOCK};

/// What one cached position holds, per layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    pub n_layer: usize,
    /// `n_head_kv * head_dim` (keys and values alike).
    pub n_kv_dim: usize,
    pub head_dim: usize,
}

/// F16 keys and values in blocks of [`KV_BLOCK`] positions, and each sequence's block table.
///
/// Layout per layer (K and V alike): `[n_blocks, n_head_kv, KV_BLOCK, head_dim]`, so one KV
/// head's rows of a block are contiguous. Position `p` of sequence `s` lives in block
/// `table(s)[p / KV_BLOCK]`. Memory is reserved zeroed, so pages are only committed as blocks
/// are written.
///
/// [`KvCache::new`] gives every sequence its own `n_ctx` positions (a fixed table). A paged
/// cache ([`KvCache::paged`]) starts with empty tables: the engine's block allocator fills them,
/// may point several sequences at one block (a shared prompt prefix) and copies a shared
/// block before it is written ([`KvCache::copy_block`]). The model only reads the tables.
pub struct KvCache {
    shape: KvShape,
    n_ctx: usize,
    n_blocks: usize,
    // f16 bits; `vec![0u16; n]` is a zeroed allocation, committed lazily by the OS.
    k: Vec<Vec<u16>>,
    v: Vec<Vec<u16>>,
    tables: Vec<Vec<u32>>,
}

impl KvCache {
    /// `n_seq` sequences of up to `n_ctx` positions, each with blocks of its own.
    pub fn new(shape: KvShape, n_ctx: usize, n_seq: usize) -> Result<KvCache> {
        if n_ctx == 0 || n_seq == 0 {
            return Err(Error::invalid("KV cache needs n_ctx > 0 and n_seq > 0"));
        }
        let per_seq = n_ctx.div_ceil(KV_BLOCK);
        let n_blocks = n_seq
            .checked_mul(per_seq)
            .ok_or_else(|| Error::invalid("KV cache size overflows"))?;
        let mut kv = KvCache::paged(shape, n_ctx, n_seq, n_blocks)?;
        for (s, t) in kv.tables.iter_mut().enumerate() {
            *t = (s * per_seq..(s + 1) * per_seq).map(|b| b as u32).collect();
        }
        Ok(kv)
    }

    /// `n_blocks` blocks for `n_seq` sequences of up to `n_ctx` positions; every table empty.
    pub fn paged(shape: KvShape, n_ctx: usize, n_seq: usize, n_blocks: usize) -> Result<KvCache> {
        if n_ctx == 0 || n_seq == 0 || n_blocks == 0 {
            return Err(Error::invalid(
                "KV cache needs n_ctx > 0, n_seq > 0 and n_blocks > 0",
            ));
        }
        if shape.head_dim == 0 || !shape.n_kv_dim.is_multiple_of(shape.head_dim) {
            return Err(Error::invalid(
                "KV shape: n_kv_dim is not a multiple of head_dim",
            ));
        }
        if n_blocks > u32::MAX as usize {
            return Err(Error::invalid("KV cache: too many blocks"));
        }
        let per_layer = n_blocks
            .checked_mul(KV_BLOCK * shape.n_kv_dim)
            .ok_or_else(|| Error::invalid("KV cache size overflows"))?;
        let alloc = || vec![0u16; per_layer];
        Ok(KvCache {
            shape,
            n_ctx,
            n_blocks,
            k: (0..shape.n_layer).map(|_| alloc()).collect(),
            v: (0..shape.n_layer).map(|_| alloc()).collect(),
            tables: vec![Vec::new(); n_seq],
        })
    }

    /// Bytes of one block (every layer's keys and values).
    pub fn block_bytes(shape: KvShape) -> u64 {
        2 * shape.n_layer as u64 * KV_BLOCK as u64 * shape.n_kv_dim as u64 * 2
    }

    /// Bytes a cache of `n_seq` sequences of `n_ctx` positions takes ([`KvCache::new`]).
    pub fn bytes_for(shape: KvShape, n_ctx: usize, n_seq: usize) -> u64 {
        Self::block_bytes(shape) * (n_seq as u64 * n_ctx.div_ceil(KV_BLOCK) as u64)
    }

    pub fn shape(&self) -> KvShape {
        self.shape
    }
    /// Most positions one sequence may hold.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }
    pub fn n_seq(&self) -> usize {
        self.tables.len()
    }
    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }
    /// Bytes reserved (committed only as blocks are written).
    pub fn bytes(&self) -> u64 {
        Self::block_bytes(self.shape) * self.n_blocks as u64
    }

    /// Sequence `seq`'s block ids, in position order.
    pub fn table(&self, seq: usize) -> &[u32] {
        &self.tables[seq]
    }

    /// Append block `id` to sequence `seq`'s table (the engine's allocator decides which).
    pub fn push_block(&mut self, seq: usize, id: u32) -> Result<()> {
        self.check_block(id)?;
        let t = &mut self.tables[seq];
        if t.len() * KV_BLOCK >= self.n_ctx {
            return Err(Error::invalid(format!(
                "sequence {seq} already has blocks for the context size {}",
                self.n_ctx
            )));
        }
        t.push(id);
        Ok(())
    }

    /// Point entry `i` of sequence `seq`'s table at block `id` (a copy replacing a shared block).
    pub fn set_block(&mut self, seq: usize, i: usize, id: u32) -> Result<()> {
        self.check_block(id)?;
        let t = &mut self.tables[seq];
        if i >= t.len() {
            return Err(Error::invalid(format!(
                "sequence {seq} has {} blocks, not {}",
                t.len(),
                i + 1
            )));
        }
        t[i] = id;
        Ok(())
    }

    /// Keep the first `n` entries of sequence `seq`'s table.
    pub fn truncate_table(&mut self, seq: usize, n: usize) {
        self.tables[seq].truncate(n);
    }

    fn check_block(&self, id: u32) -> Result<()> {
        if id as usize >= self.n_blocks {
            return Err(Error::invalid(format!(
                "KV block {id} is past the cache's {} blocks",
                self.n_blocks
            )));
        }
        Ok(())
    }

    /// Positions sequence `seq` has blocks for.
    pub fn capacity(&self, seq: usize) -> usize {
        (self.tables[seq].len() * KV_BLOCK).min(self.n_ctx)
    }

    /// Layer `il`'s keys and values of sequence `seq`, as the attention kernels read them.
    pub fn view(&self, il: usize, seq: usize) -> (KvBlocks<'_>, KvBlocks<'_>) {
        let t = &self.tables[seq];
        (
            KvBlocks {
                data: self.k[il].reinterpret_cast(),
                table: t,
            },
            KvBlocks {
                data: self.v[il].reinterpret_cast(),
                table: t,
            },
        )
    }

    /// Layer `il`'s keys and values of positions `0..n_pos` of `seq` as `[n_pos, n_kv_dim]`
    /// rows (the prompt attention's layout) into `k` and `v`.
    pub fn gather(&self, il: usize, seq: usize, n_pos: usize, k: &mut [f16], v: &mut [f16]) {
        let (d, hd) = (self.shape.n_kv_dim, self.shape.head_dim);
        let n_head_kv = d / hd;
        let t = &self.tables[seq];
        for (src, dst) in [(&self.k[il], &mut *k), (&self.v[il], &mut *v)] {
            let src: &[f16] = src.reinterpret_cast();
            for p in 0..n_pos {
                let b = t[p / KV_BLOCK] as usize;
                for h in 0..n_head_kv {
                    let at = kv_row_offset(b, h, p, n_head_kv, hd);
                    dst[p * d + h * hd..p * d + (h + 1) * hd].copy_from_slice(&src[at..at + hd]);
                }
            }
        }
    }

    /// Make every page of the cache resident now (written once), instead of as blocks are
    /// first used: a server's footprint is then fixed from the start and does not grow under
    /// load, and no page fault lands in a request.
    pub fn commit(&mut self) {
        const PAGE_U16: usize = 4096 / 2;
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            for x in buf.iter_mut().step_by(PAGE_U16) {
                touch(x);
            }
        }
    }

    /// Copy block `src` into block `dst` in every layer (before a shared block is written).
    pub fn copy_block(&mut self, src: u32, dst: u32) {
        let n = KV_BLOCK * self.shape.n_kv_dim;
        let (s, d) = (src as usize * n, dst as usize * n);
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            buf.copy_within(s..s + n, d);
        }
    }

    /// Give the memory of blocks `ids` back to the OS (whole pages inside them): they read as
    /// zeros afterwards. For blocks no table will read before writing them again.
    pub fn release_blocks(&mut self, ids: &[u32]) {
        let n = KV_BLOCK * self.shape.n_kv_dim;
        for &b in ids {
            let at = b as usize * n;
            for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
                release_pages(&mut buf[at..at + n]);
            }
        }
    }

    /// Store one position's key and value rows (`[n_kv_dim]` each) for layer `il`.
    pub fn store(&mut self, il: usize, seq: usize, pos: usize, k: &[f32], v: &[f32]) {
        let (d, hd) = (self.shape.n_kv_dim, self.shape.head_dim);
        let n_head_kv = d / hd;
        let b = self.tables[seq][pos / KV_BLOCK] as usize;
        for (buf, src) in [(&mut self.k[il], k), (&mut self.v[il], v)] {
            for h in 0..n_head_kv {
                let at = kv_row_offset(b, h, pos, n_head_kv, hd);
                let dst: &mut [f16] = buf[at..at + hd].reinterpret_cast_mut();
                dst.convert_from_f32_slice(&src[h * hd..(h + 1) * hd]);
            }
        }
    }
}

/// Write `x`'s own value back so that the page holding it is faulted in: through
/// `black_box`, the compiler cannot drop the store of an unchanged value.
#[inline]
fn touch(x: &mut u16) {
    *x = std::hint::black_box(*x);
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

    /// Rows stored through one table read back through another that shares its blocks, a
    /// copied block is independent of its source, and released blocks read as zeros.
    #[test]
    fn blocks_are_shared_copied_and_released() {
        let shape = KvShape {
            n_layer: 2,
            n_kv_dim: 128,
            head_dim: 64,
        };
        let mut kv = KvCache::paged(shape, 512, 2, 64).unwrap();
        for b in [5, 9, 2] {
            kv.push_block(0, b).unwrap();
        }
        let row =
            |pos: usize| -> Vec<f32> { (0..128).map(|i| (pos * 128 + i) as f32 * 0.25).collect() };
        for pos in 0..40 {
            for il in 0..2 {
                kv.store(il, 0, pos, &row(pos), &row(pos + 1));
            }
        }
        // Sequence 1 shares the first two blocks, and a copy of the third.
        kv.copy_block(2, 7);
        for b in [5, 9, 2] {
            kv.push_block(1, b).unwrap();
        }
        kv.set_block(1, 2, 7).unwrap();
        kv.store(0, 0, 35, &row(99), &row(99));
        let (mut k, mut v) = (vec![f16::ZERO; 40 * 128], vec![f16::ZERO; 40 * 128]);
        kv.gather(1, 1, 40, &mut k, &mut v);
        for pos in 0..40 {
            let want: Vec<f16> = row(pos).iter().map(|&x| f16::from_f32(x)).collect();
            assert_eq!(&k[pos * 128..(pos + 1) * 128], &want[..], "pos {pos}");
        }
        // Layer 0 of sequence 1 kept the old position 35 (the copy); sequence 0 has the new.
        let (k1, _) = kv.view(0, 1);
        let (k0, _) = kv.view(0, 0);
        let s = dino_kernels::ops::AttnShape {
            n_head: 2,
            n_head_kv: 2,
            head_dim: 64,
            scale: 1.0,
        };
        assert_eq!(k1.row(35, 1, &s)[0], f16::from_f32(row(35)[64]));
        assert_eq!(k0.row(35, 1, &s)[0], f16::from_f32(row(99)[64]));
        // Releasing block 7 leaves the others intact.
        kv.release_blocks(&[7]);
        kv.gather(0, 1, 32, &mut k, &mut v);
        for pos in 0..32 {
            assert_eq!(k[pos * 128], f16::from_f32(row(pos)[0]), "pos {pos}");
        }
        assert_eq!(KvCache::block_bytes(shape), 2 * 2 * 16 * 128 * 2);
        // Bad ids and overlong tables are refused.
        assert!(kv.push_block(1, 64).is_err());
        assert!(kv.set_block(1, 3, 1).is_err());
        for b in 10..29 {
            kv.push_block(1, b).unwrap();
        }
        assert_eq!(kv.capacity(1), 352);
        for b in 29..39 {
            kv.push_block(1, b).unwrap();
        }
        assert_eq!(kv.capacity(1), 512);
        assert!(kv.push_block(1, 40).is_err());
        kv.truncate_table(1, 2);
        assert_eq!(kv.table(1), &[5, 9]);
    }

    /// `new` gives each sequence `n_ctx` positions of its own.
    #[test]
    fn fixed_tables_cover_the_context() {
        let shape = KvShape {
            n_layer: 1,
            n_kv_dim: 64,
            head_dim: 64,
        };
        let kv = KvCache::new(shape, 100, 3).unwrap();
        assert_eq!(kv.n_blocks(), 3 * 7);
        for s in 0..3 {
            assert_eq!(kv.capacity(s), 100);
            assert_eq!(kv.table(s)[0] as usize, s * 7);
        }
        assert_eq!(kv.bytes(), KvCache::bytes_for(shape, 100, 3));
    }
}
