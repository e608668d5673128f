//! KV-cache storage. The engine owns instances; models write and read them in `forward`.

use dino_core::{Error, Result};
use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

use dino_kernels::ops::kv_row_offset;
pub use dino_kernels::ops::{KvBlocks, KvRows, KvType, KV_BLOCK};
use dino_kernels::quant::blocks::as_blocks;

/// What one cached position holds, per layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    pub n_layer: usize,
    /// `n_head_kv * head_dim` (keys and values alike).
    pub n_kv_dim: usize,
    pub head_dim: usize,
}

/// The element types of a cache's keys and of its values (`--cache-type-k`, `--cache-type-v`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KvTypes {
    pub k: KvType,
    pub v: KvType,
}

impl KvTypes {
    pub const F16: KvTypes = KvTypes {
        k: KvType::F16,
        v: KvType::F16,
    };

    /// The Walsh–Hadamard rotations llama.cpp applies with these types
    /// (`llama_kv_cache::attn_rot_k`/`attn_rot_v`; see `dino_kernels::ops::fwht`), as chunk
    /// sizes: quantized keys rotate queries and keys in chunks of the largest power of two
    /// dividing the head size; quantized values rotate values, and the attention output back,
    /// in chunks of 64. Both only for head sizes that are multiples of 64.
    pub fn rotations(self, head_dim: usize) -> (Option<usize>, Option<usize>) {
        let on = |t: KvType| t != KvType::F16 && head_dim.is_multiple_of(64) && head_dim > 0;
        (
            on(self.k).then(|| 1 << head_dim.trailing_zeros()),
            on(self.v).then_some(64),
        )
    }

    /// Bytes of one cached row of keys and of values for `shape`'s head size; an error (naming
    /// the type and the head size) when a quantized type's blocks do not divide the row.
    pub fn row_bytes(self, shape: KvShape) -> Result<(usize, usize)> {
        let row = |t: KvType| t.row_bytes(shape.head_dim).map_err(Error::Unsupported);
        Ok((row(self.k)?, row(self.v)?))
    }
}

impl std::fmt::Display for KvTypes {
    /// `k f16, v q8_0`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "k {}, v {}", self.k, self.v)
    }
}

/// Keys and values in blocks of [`KV_BLOCK`] positions, and each sequence's block table. Keys
/// and values are each f16, Q8_0 or Q4_0 ([`KvTypes`], chosen at creation); the quantized types
/// store each head's row of `head_dim` values as `head_dim / 32` blocks, written as llama.cpp's
/// CPU backend writes them ([`KvType::quantize_row`]).
///
/// Layout per layer (K and V alike): `[n_blocks, n_head_kv, KV_BLOCK, row]` (`row`: `head_dim`
/// f16 values or `head_dim / 32` blocks), so one KV head's rows of a block are contiguous.
/// Position `p` of sequence `s` lives in block `table(s)[p / KV_BLOCK]`. Memory is reserved
/// zeroed, so pages are only committed as blocks are written.
///
/// [`KvCache::new`] gives every sequence its own `n_ctx` positions (a fixed table). A paged
/// cache ([`KvCache::paged`]) starts with empty tables: the engine's block allocator fills them,
/// may point several sequences at one block (a shared prompt prefix) and copies a shared
/// block before it is written ([`KvCache::copy_block`]). The model only reads the tables.
pub struct KvCache {
    shape: KvShape,
    types: KvTypes,
    /// 16-bit units of one block of one layer's keys and of its values.
    block_units: (usize, usize),
    n_ctx: usize,
    n_blocks: usize,
    // f16 bits, or quant blocks two bytes per unit (every row is a whole number of units);
    // `vec![0u16; n]` is a zeroed allocation, committed lazily by the OS.
    k: Vec<Vec<u16>>,
    v: Vec<Vec<u16>>,
    tables: Vec<Vec<u32>>,
}

impl KvCache {
    /// `n_seq` sequences of up to `n_ctx` positions, each with blocks of its own (f16).
    pub fn new(shape: KvShape, n_ctx: usize, n_seq: usize) -> Result<KvCache> {
        KvCache::with_types(shape, KvTypes::F16, n_ctx, n_seq)
    }

    /// `n_blocks` f16 blocks for `n_seq` sequences of up to `n_ctx` positions; every table
    /// empty.
    pub fn paged(shape: KvShape, n_ctx: usize, n_seq: usize, n_blocks: usize) -> Result<KvCache> {
        KvCache::paged_with_types(shape, KvTypes::F16, n_ctx, n_seq, n_blocks)
    }

    /// [`KvCache::new`] with keys and values of `types`.
    pub fn with_types(
        shape: KvShape,
        types: KvTypes,
        n_ctx: usize,
        n_seq: usize,
    ) -> Result<KvCache> {
        if n_ctx == 0 || n_seq == 0 {
            return Err(Error::invalid("KV cache needs n_ctx > 0 and n_seq > 0"));
        }
        let per_seq = n_ctx.div_ceil(KV_BLOCK);
        let n_blocks = n_seq
            .checked_mul(per_seq)
            .ok_or_else(|| Error::invalid("KV cache size overflows"))?;
        let mut kv = KvCache::paged_with_types(shape, types, n_ctx, n_seq, n_blocks)?;
        for (s, t) in kv.tables.iter_mut().enumerate() {
            *t = (s * per_seq..(s + 1) * per_seq).map(|b| b as u32).collect();
        }
        Ok(kv)
    }

    /// [`KvCache::paged`] with keys and values of `types`.
    pub fn paged_with_types(
        shape: KvShape,
        types: KvTypes,
        n_ctx: usize,
        n_seq: usize,
        n_blocks: usize,
    ) -> Result<KvCache> {
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
        let (rk, rv) = types.row_bytes(shape)?;
        let n_head_kv = shape.n_kv_dim / shape.head_dim;
        // Rows are even: f16 values, 34- or 18-byte blocks.
        let block_units = (KV_BLOCK * n_head_kv * rk / 2, KV_BLOCK * n_head_kv * rv / 2);
        let per_layer = |units: usize| {
            n_blocks
                .checked_mul(units)
                .ok_or_else(|| Error::invalid("KV cache size overflows"))
        };
        let (nk, nv) = (per_layer(block_units.0)?, per_layer(block_units.1)?);
        Ok(KvCache {
            shape,
            types,
            block_units,
            n_ctx,
            n_blocks,
            k: (0..shape.n_layer).map(|_| vec![0u16; nk]).collect(),
            v: (0..shape.n_layer).map(|_| vec![0u16; nv]).collect(),
            tables: vec![Vec::new(); n_seq],
        })
    }

    /// Bytes of one block (every layer's keys and values) of a cache of `types`; an error when
    /// the types do not fit the head size (as at creation).
    pub fn block_bytes(shape: KvShape, types: KvTypes) -> Result<u64> {
        let (rk, rv) = types.row_bytes(shape)?;
        let n_head_kv = (shape.n_kv_dim / shape.head_dim.max(1)) as u64;
        Ok(shape.n_layer as u64 * KV_BLOCK as u64 * n_head_kv * (rk + rv) as u64)
    }

    /// Bytes a cache of `n_seq` sequences of `n_ctx` positions takes ([`KvCache::with_types`]).
    pub fn bytes_for(shape: KvShape, types: KvTypes, n_ctx: usize, n_seq: usize) -> Result<u64> {
        Ok(Self::block_bytes(shape, types)? * (n_seq as u64 * n_ctx.div_ceil(KV_BLOCK) as u64))
    }

    pub fn shape(&self) -> KvShape {
        self.shape
    }
    /// The element types of the keys and values.
    pub fn types(&self) -> KvTypes {
        self.types
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
        let (uk, uv) = self.block_units;
        2 * self.shape.n_layer as u64 * (uk + uv) as u64 * self.n_blocks as u64
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
    pub fn view(&self, il: usize, seq: usize) -> (KvRows<'_>, KvRows<'_>) {
        let t = &self.tables[seq];
        (
            rows_of(self.types.k, &self.k[il], t),
            rows_of(self.types.v, &self.v[il], t),
        )
    }

    /// Layer `il`'s keys and values of positions `0..n_pos` of `seq` as `[n_pos, n_kv_dim]`
    /// rows (the prompt attention's layout) into `k` and `v`, as f32 (quantized rows
    /// dequantized exactly); any types.
    pub fn gather_f32(&self, il: usize, seq: usize, n_pos: usize, k: &mut [f32], v: &mut [f32]) {
        let (d, hd) = (self.shape.n_kv_dim, self.shape.head_dim);
        let n_head_kv = d / hd;
        let s = dino_kernels::ops::AttnShape {
            n_head: n_head_kv,
            n_head_kv,
            head_dim: hd,
            scale: 1.0,
        };
        let (kr, vr) = self.view(il, seq);
        for (src, dst) in [(kr, &mut *k), (vr, &mut *v)] {
            for p in 0..n_pos {
                for h in 0..n_head_kv {
                    src.row_f32(p, h, &s, &mut dst[p * d + h * hd..p * d + (h + 1) * hd]);
                }
            }
        }
    }

    /// Layer `il`'s keys and values of positions `0..n_pos` of `seq` as `[n_pos, n_kv_dim]`
    /// rows (the prompt attention's layout) into `k` and `v`. An f16 cache only (see
    /// [`KvCache::gather_f32`]).
    pub fn gather(&self, il: usize, seq: usize, n_pos: usize, k: &mut [f16], v: &mut [f16]) {
        assert_eq!(self.types, KvTypes::F16, "gather: an f16 cache");
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
        for (buf, _) in self.stores_mut() {
            for x in buf.iter_mut().step_by(PAGE_U16) {
                touch(x);
            }
        }
    }

    /// Every layer's key store and value store, each with its units per block.
    fn stores_mut(&mut self) -> impl Iterator<Item = (&mut Vec<u16>, usize)> {
        let (uk, uv) = self.block_units;
        (self.k.iter_mut().map(move |b| (b, uk))).chain(self.v.iter_mut().map(move |b| (b, uv)))
    }

    /// Copy block `src` into block `dst` in every layer (before a shared block is written).
    pub fn copy_block(&mut self, src: u32, dst: u32) {
        for (buf, n) in self.stores_mut() {
            let (s, d) = (src as usize * n, dst as usize * n);
            buf.copy_within(s..s + n, d);
        }
    }

    /// Give the memory of blocks `ids` back to the OS (whole pages inside them): they read as
    /// zeros afterwards. For blocks no table will read before writing them again.
    pub fn release_blocks(&mut self, ids: &[u32]) {
        for (buf, n) in self.stores_mut() {
            for &b in ids {
                let at = b as usize * n;
                release_pages(&mut buf[at..at + n]);
            }
        }
    }

    /// One position's key or value rows (`src`: `[n_kv_dim]`) as a cache of element type `ty`
    /// stores them, each head's row in turn (`dst`: `n_head_kv` rows of `ty.row_bytes(head_dim)`
    /// bytes), for [`KvCache::store_encoded`]: the conversion can then run on many threads.
    pub fn encode(ty: KvType, head_dim: usize, src: &[f32], dst: &mut [u8]) {
        let rb = dst.len() / (src.len() / head_dim).max(1);
        for (s, d) in src.chunks_exact(head_dim).zip(dst.chunks_exact_mut(rb)) {
            ty.quantize_row(s, d);
        }
    }

    /// Store one position's key and value rows of layer `il` encoded by [`KvCache::encode`]
    /// with this cache's types.
    pub fn store_encoded(&mut self, il: usize, seq: usize, pos: usize, k: &[u8], v: &[u8]) {
        let n_head_kv = self.shape.n_kv_dim / self.shape.head_dim;
        let b = self.tables[seq][pos / KV_BLOCK] as usize;
        let (uk, uv) = self.block_units;
        for (buf, src, units) in [(&mut self.k[il], k, uk), (&mut self.v[il], v, uv)] {
            let row = units / (KV_BLOCK * n_head_kv);
            for (h, s) in src.chunks_exact(2 * row).enumerate().take(n_head_kv) {
                let at = kv_row_offset(b, h, pos, n_head_kv, row);
                units_as_bytes_mut(&mut buf[at..at + row]).copy_from_slice(s);
            }
        }
    }

    /// Store one position's key and value rows (`[n_kv_dim]` each) for layer `il`, each head's
    /// row converted to the cache's type.
    pub fn store(&mut self, il: usize, seq: usize, pos: usize, k: &[f32], v: &[f32]) {
        let (d, hd) = (self.shape.n_kv_dim, self.shape.head_dim);
        let n_head_kv = d / hd;
        let b = self.tables[seq][pos / KV_BLOCK] as usize;
        let (uk, uv) = self.block_units;
        let (tk, tv) = (self.types.k, self.types.v);
        for (buf, src, ty, units) in [(&mut self.k[il], k, tk, uk), (&mut self.v[il], v, tv, uv)] {
            // 16-bit units of one head's row.
            let row = units / (KV_BLOCK * n_head_kv);
            for h in 0..n_head_kv {
                let at = kv_row_offset(b, h, pos, n_head_kv, row);
                let src = &src[h * hd..(h + 1) * hd];
                if ty == KvType::F16 {
                    let dst: &mut [f16] = buf[at..at + row].reinterpret_cast_mut();
                    dst.convert_from_f32_slice(src);
                } else {
                    ty.quantize_row(src, units_as_bytes_mut(&mut buf[at..at + row]));
                }
            }
        }
    }
}

/// A layer's store `buf` of element type `ty` read through block table `table`.
fn rows_of<'a>(ty: KvType, buf: &'a [u16], table: &'a [u32]) -> KvRows<'a> {
    match ty {
        KvType::F16 => KvRows::F16(KvBlocks {
            data: buf.reinterpret_cast(),
            table,
        }),
        KvType::Q8_0 => KvRows::Q8_0(KvBlocks {
            data: as_blocks(units_as_bytes(buf)),
            table,
        }),
        KvType::Q4_0 => KvRows::Q4_0(KvBlocks {
            data: as_blocks(units_as_bytes(buf)),
            table,
        }),
    }
}

/// The bytes of 16-bit storage units (little-endian, as the quant blocks are laid out).
fn units_as_bytes(x: &[u16]) -> &[u8] {
    // SAFETY: u8 has alignment 1 and no invalid values; the range covers exactly the bytes of
    // `x`, borrowed for the same lifetime.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<u8>(), std::mem::size_of_val(x)) }
}

/// [`units_as_bytes`], writable.
fn units_as_bytes_mut(x: &mut [u16]) -> &mut [u8] {
    // SAFETY: as in `units_as_bytes`; the exclusive borrow of `x` moves into the result, and
    // every byte pattern written is a valid u16.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(x)) }
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
        let (KvRows::F16(k1), _) = kv.view(0, 1) else {
            panic!("an f16 cache")
        };
        let (KvRows::F16(k0), _) = kv.view(0, 0) else {
            panic!("an f16 cache")
        };
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
        assert_eq!(
            KvCache::block_bytes(shape, KvTypes::F16).unwrap(),
            2 * 2 * 16 * 128 * 2
        );
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
        assert_eq!(
            kv.bytes(),
            KvCache::bytes_for(shape, KvTypes::F16, 100, 3).unwrap()
        );
    }

    /// Quantized caches: their sizes (Q8_0: 34/64 of f16, Q4_0: 18/64), rows stored and read
    /// back within the type's rounding (and exactly as the type's quantizer gives them),
    /// blocks copied and released per store, and a head size the blocks do not divide refused
    /// with an error naming it.
    #[test]
    fn quantized_caches_store_their_rows_in_blocks() {
        let shape = KvShape {
            n_layer: 2,
            n_kv_dim: 128,
            head_dim: 64,
        };
        let f16_bytes = KvCache::bytes_for(shape, KvTypes::F16, 100, 2).unwrap();
        let row = |pos: usize| -> Vec<f32> {
            (0..128)
                .map(|i| ((pos * 131 + i * 7) % 61) as f32 * 0.1 - 3.0)
                .collect()
        };
        for (k, v, frac) in [
            (KvType::Q8_0, KvType::Q8_0, 34.0 / 64.0),
            (KvType::Q4_0, KvType::Q4_0, 18.0 / 64.0),
            (KvType::Q8_0, KvType::F16, (34.0 / 64.0 + 1.0) / 2.0),
        ] {
            let types = KvTypes { k, v };
            let mut kv = KvCache::with_types(shape, types, 100, 2).unwrap();
            assert_eq!(kv.types(), types);
            assert_eq!(
                kv.bytes(),
                KvCache::bytes_for(shape, types, 100, 2).unwrap()
            );
            assert_eq!(kv.bytes() as f64, f16_bytes as f64 * frac, "{types}");
            for pos in 0..40 {
                for il in 0..2 {
                    kv.store(il, 1, pos, &row(pos), &row(pos + 1));
                }
            }
            let (mut kg, mut vg) = (vec![0f32; 40 * 128], vec![0f32; 40 * 128]);
            kv.gather_f32(1, 1, 40, &mut kg, &mut vg);
            for pos in 0..40 {
                for (got, src, ty) in [(&kg, row(pos), k), (&vg, row(pos + 1), v)] {
                    let got = &got[pos * 128..(pos + 1) * 128];
                    for h in 0..2 {
                        let src = &src[h * 64..(h + 1) * 64];
                        let mut want = vec![0f32; 64];
                        let mut bytes = vec![0u8; ty.row_bytes(64).unwrap()];
                        ty.quantize_row(src, &mut bytes);
                        dino_kernels::quant::dequantize_row(ty.ggml_type(), &bytes, &mut want)
                            .unwrap();
                        assert_eq!(&got[h * 64..(h + 1) * 64], &want[..], "{types} pos {pos}");
                        let amax = src.iter().fold(0f32, |m, x| m.max(x.abs()));
                        let tol = if ty == KvType::Q4_0 {
                            amax / 7.0
                        } else {
                            amax / 127.0
                        };
                        for (g, x) in got[h * 64..(h + 1) * 64].iter().zip(src) {
                            assert!((g - x).abs() <= tol, "{types}: {g} vs {x}");
                        }
                    }
                }
            }
            // A copied block reads as its source; releasing it leaves the others intact.
            let b0 = kv.table(1)[0];
            let spare = kv.table(0)[0];
            kv.copy_block(b0, spare);
            let (mut k0, mut v0) = (vec![0f32; 16 * 128], vec![0f32; 16 * 128]);
            kv.gather_f32(0, 0, 16, &mut k0, &mut v0);
            assert_eq!(&k0[..], &kg[..16 * 128]);
            assert_eq!(&v0[..], &vg[..16 * 128]);
            kv.release_blocks(&[spare]);
            let (mut k1, mut v1) = (vec![0f32; 40 * 128], vec![0f32; 40 * 128]);
            kv.gather_f32(1, 1, 40, &mut k1, &mut v1);
            assert!(k1 == kg && v1 == vg, "{types}");
        }
        // Rows encoded apart and stored as bytes are the rows `store` writes.
        let types = KvTypes {
            k: KvType::Q4_0,
            v: KvType::F16,
        };
        let (mut a, mut b) = (
            KvCache::with_types(shape, types, 32, 1).unwrap(),
            KvCache::with_types(shape, types, 32, 1).unwrap(),
        );
        let (rk, rv) = types.row_bytes(shape).unwrap();
        for pos in 0..20 {
            a.store(1, 0, pos, &row(pos), &row(pos + 7));
            let (mut ke, mut ve) = (vec![0u8; 2 * rk], vec![0u8; 2 * rv]);
            KvCache::encode(types.k, 64, &row(pos), &mut ke);
            KvCache::encode(types.v, 64, &row(pos + 7), &mut ve);
            b.store_encoded(1, 0, pos, &ke, &ve);
        }
        assert!(a.k == b.k && a.v == b.v);
        // Head size 80: not a whole number of 32-value blocks.
        let odd = KvShape {
            n_layer: 1,
            n_kv_dim: 160,
            head_dim: 80,
        };
        let types = KvTypes {
            k: KvType::F16,
            v: KvType::Q4_0,
        };
        let e = KvCache::with_types(odd, types, 64, 1)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("q4_0") && e.contains("80"), "{e}");
        assert!(KvCache::block_bytes(odd, types).is_err());
        assert!(KvCache::with_types(odd, KvTypes::F16, 64, 1).is_ok());
        // llama.cpp's rotations: K by the largest power of two in the head size, V by 64.
        let q8 = KvTypes {
            k: KvType::Q8_0,
            v: KvType::Q4_0,
        };
        assert_eq!(q8.rotations(64), (Some(64), Some(64)));
        assert_eq!(q8.rotations(128), (Some(128), Some(64)));
        assert_eq!(q8.rotations(192), (Some(64), Some(64)));
        assert_eq!(q8.rotations(96), (None, None));
        assert_eq!(KvTypes::F16.rotations(128), (None, None));
        assert_eq!(types.rotations(128), (None, Some(64)));
    }
}
