use super::value::{Array, Metadata, Value, ValueType};
use super::{DEFAULT_ALIGNMENT, MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS};
use dino_core::{Error, GgmlType, Result};
use memmap2::Mmap;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Where a tensor lives in the file and what it is.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (contiguous), `dims[1]` the number of rows, ...
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset from the start of the data section (checked: aligned and inside the file).
    pub offset: u64,
    /// Bytes of data (checked against the file).
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Row length (`dims[0]`).
    pub fn ne0(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }
    /// Rows: product of all dims but the first.
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }
}

enum Backing {
    Mmap(Mmap),
    Owned(Vec<u8>),
    /// Anonymous memory holding tensors computed at load: its pages can be given back to the
    /// OS (they read as zeros afterwards).
    Anon(Mmap),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) | Backing::Anon(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// Tensor data of a file assembled in memory ([`GgufFile::assemble`]): a mapped file whose
/// tensor data starts at byte `start` (a safetensors shard), or an owned buffer (tensors
/// transformed or quantized at load).
pub struct Storage {
    name: String,
    backing: Backing,
    start: usize,
}

impl Storage {
    /// A mapped file, `name` shown in errors; tensor offsets count from byte `start` of it.
    pub fn mapped(name: impl Into<String>, map: Mmap, start: usize) -> Storage {
        Storage {
            name: name.into(),
            backing: Backing::Mmap(map),
            start,
        }
    }

    /// Bytes owned in memory; tensor offsets count from their first byte.
    pub fn owned(name: impl Into<String>, bytes: Vec<u8>) -> Storage {
        Storage {
            name: name.into(),
            backing: Backing::Owned(bytes),
            start: 0,
        }
    }

    /// Tensors computed at load, in anonymous memory (`MmapMut::map_anon`, made read-only):
    /// unlike [`Storage::owned`] bytes, their pages can be released, after which they read as
    /// zeros (see [`GgufFile::release_range`]).
    pub fn converted(name: impl Into<String>, map: Mmap) -> Storage {
        Storage {
            name: name.into(),
            backing: Backing::Anon(map),
            start: 0,
        }
    }

    /// The tensor data: the bytes from `start` on.
    pub fn data(&self) -> &[u8] {
        let b = self.backing.bytes();
        &b[self.start.min(b.len())..]
    }

    /// Let the OS drop this process's resident pages of `offset..offset+len` (relative to the
    /// data start): a mapped file's pages are read again if touched; a converted storage's
    /// are discarded and read as zeros. A no-op for owned bytes. Best effort.
    pub fn release_range(&self, offset: u64, len: u64) -> Result<()> {
        match &self.backing {
            Backing::Mmap(m) => release_mapped(m, self.start as u64 + offset, len),
            Backing::Anon(m) => discard_anon(m, self.start as u64 + offset, len),
            Backing::Owned(_) => Ok(()),
        }
        .map_err(|e| Error::io(&self.name, e))
    }
}

/// Discard the pages of a private anonymous map inside `start..start+len`: the memory goes back
/// to the OS and the range reads as zeros afterwards.
fn discard_anon(m: &Mmap, start: u64, len: u64) -> std::io::Result<()> {
    // SAFETY (of the advice): the bytes become zeros. `GgufFile::release_range`'s contract is
    // that released tensor data is not read again (its only caller releases a weight's source
    // after copying it into the repacked layout, and no borrow of the range outlives that copy).
    dont_need(m, start, len)
}

/// Release the pages of a private read-only file map inside `start..start+len`. No data is
/// lost: the pages are re-read from the file if accessed again, and no reference into the range
/// is invalidated (the bytes do not change).
pub(crate) fn release_mapped(m: &Mmap, start: u64, len: u64) -> std::io::Result<()> {
    dont_need(m, start, len)
}

/// `madvise(MADV_DONTNEED)` on the whole pages inside `start..start+len` (clamped to the map).
/// What happens to the bytes depends on the map: see the two callers.
fn dont_need(m: &Mmap, start: u64, len: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let page = 4096u64;
        let first = start.div_ceil(page) * page;
        let end = (start.saturating_add(len) / page * page).min(m.len() as u64);
        if end > first {
            // SAFETY: the range lies inside the map (clamped); each caller states why changing
            // or dropping those pages is sound for its kind of map.
            unsafe {
                m.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    first as usize,
                    (end - first) as usize,
                )
            }?;
        }
    }
    #[cfg(not(unix))]
    let _ = (m, start, len);
    Ok(())
}

/// Where a tensor of an assembled file lives: storage `storage`, at `offset` from its data start.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacedTensor {
    pub name: String,
    /// ggml order, as [`TensorInfo::dims`].
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub storage: usize,
    pub offset: u64,
}

/// A run of tensor data: a storage placed at virtual offset `base`. A GGUF file has one (its
/// data section, base 0); an assembled file one per shard or owned buffer.
/// [`TensorInfo::offset`] is virtual: the segment's `base` plus the offset inside it.
struct Segment {
    storage: Storage,
    base: u64,
}

/// A GGUF file opened over mmap. Parsing validates the header completely; tensor data is
/// only touched when asked for.
pub struct GgufFile {
    path: PathBuf,
    /// Sorted by `base`, bases strictly increasing.
    segments: Vec<Segment>,
    version: u32,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Open and validate `path`; tensor data stays on disk until read through the mmap.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let file = File::open(path).map_err(|e| Error::io(&shown, e))?;
        let len = file.metadata().map_err(|e| Error::io(&shown, e))?.len();
        if len == 0 {
            return Err(Error::format(&shown, "file is empty, not a GGUF file"));
        }
        // SAFETY: the map is read-only and lives as long as `GgufFile`. Like every mmap reader we
        // rely on the file not being truncated or rewritten by another process while mapped.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&shown, e))?;
        Self::parse(path.to_path_buf(), Backing::Mmap(mmap))
    }

    /// Ask the kernel to read the whole mapping ahead (`madvise(MADV_WILLNEED)`), so the first
    /// forward pass does not stall on page faults. A no-op for in-memory images.
    pub fn advise_willneed(&self) -> Result<()> {
        for s in &self.segments {
            if let Backing::Mmap(m) = &s.storage.backing {
                #[cfg(unix)]
                m.advise(memmap2::Advice::WillNeed)
                    .map_err(|e| Error::io(&s.storage.name, e))?;
                #[cfg(not(unix))]
                let _ = m;
            }
        }
        Ok(())
    }

    /// Let the OS drop this process's resident pages of tensor data at `offset..offset+len`
    /// (relative to the data section), after a repacked copy replaced them. Only release data
    /// that will not be read again: file pages would be read again from the page cache, but
    /// tensors computed at load (a checkpoint's converted or `--quant`ized tensors, held in
    /// anonymous memory) are discarded and read as zeros. Best effort.
    pub fn release_range(&self, offset: u64, len: u64) -> Result<()> {
        let Some(seg) = self.segment(offset) else {
            return Ok(());
        };
        seg.storage.release_range(offset - seg.base, len)
    }

    /// The segment holding virtual offset `offset`.
    fn segment(&self, offset: u64) -> Option<&Segment> {
        let i = self.segments.partition_point(|s| s.base <= offset);
        i.checked_sub(1).map(|i| &self.segments[i])
    }

    /// Lock the mapping in RAM (`mlock`), so weights are never paged out. Fails with the OS
    /// error (typically `RLIMIT_MEMLOCK`) when the lock is not allowed.
    pub fn lock_in_memory(&self) -> Result<()> {
        for s in &self.segments {
            if let Backing::Mmap(m) = &s.storage.backing {
                #[cfg(unix)]
                m.lock()
                    .map_err(|e| Error::io(format!("mlock {}", s.storage.name), e))?;
                #[cfg(not(unix))]
                let _ = m;
            }
        }
        Ok(())
    }

    /// Parse a GGUF image held in memory (tests, fuzzing, small embedded files).
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<GgufFile> {
        Self::parse(name.into(), Backing::Owned(bytes))
    }

    /// A file assembled in memory: `metadata` plus tensors whose bytes live in `storages`
    /// (e.g. a Hugging Face checkpoint's safetensors maps and the tensors converted at load).
    /// Every tensor is checked as [`GgufFile::open`] checks a file's: dims, type geometry,
    /// unique names, and bytes inside their storage. [`TensorInfo::offset`] of the result is a
    /// virtual offset (see [`GgufFile::tensor_data`]); `path` names the source in errors.
    pub fn assemble(
        path: impl Into<PathBuf>,
        metadata: Metadata,
        storages: Vec<Storage>,
        placed: Vec<PlacedTensor>,
    ) -> Result<GgufFile> {
        let path = path.into();
        let shown = path.display().to_string();
        let mut segments = Vec::with_capacity(storages.len());
        let mut base = 0u64;
        for storage in storages {
            let len = storage.data().len() as u64;
            segments.push(Segment { storage, base });
            base = (base + len.max(1)).div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
        }
        let mut tensors = Vec::with_capacity(placed.len());
        let mut tensor_index = HashMap::with_capacity(placed.len());
        for t in placed {
            let ctx = format!("tensor '{}'", t.name);
            let seg = segments
                .get(t.storage)
                .ok_or_else(|| Error::format(&shown, format!("{ctx}: no storage {}", t.storage)))?;
            if t.dims.is_empty() || t.dims.len() > MAX_DIMS || t.dims.contains(&0) {
                return Err(Error::format(
                    &shown,
                    format!("{ctx}: invalid dims {:?}", t.dims),
                ));
            }
            let size = t
                .dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .filter(|_| t.dims[0] % t.ty.block_size() as u64 == 0)
                .and_then(|n| t.ty.row_size(n))
                .ok_or_else(|| {
                    Error::format(
                        &shown,
                        format!("{ctx}: dims {:?} do not fit type {}", t.dims, t.ty),
                    )
                })?;
            let room = seg.storage.data().len() as u64;
            if t.offset.checked_add(size).is_none_or(|end| end > room) {
                return Err(Error::format(
                    &shown,
                    format!(
                        "{ctx}: data [{}, {size} bytes] lies outside {} ({room} bytes)",
                        t.offset, seg.storage.name
                    ),
                ));
            }
            if tensor_index.insert(t.name.clone(), tensors.len()).is_some() {
                return Err(Error::format(&shown, format!("duplicate {ctx}")));
            }
            tensors.push(TensorInfo {
                name: t.name,
                dims: t.dims,
                ty: t.ty,
                offset: seg.base + t.offset,
                size,
            });
        }
        Ok(GgufFile {
            path,
            segments,
            version: 3,
            metadata,
            tensors,
            tensor_index,
            alignment: DEFAULT_ALIGNMENT,
            data_offset: 0,
        })
    }

    fn parse(path: PathBuf, data: Backing) -> Result<GgufFile> {
        let shown = path.display().to_string();
        let bytes = data.bytes();
        let mut r = Cursor {
            buf: bytes,
            pos: 0,
            file: &shown,
        };
        let magic = r.u32("magic")?;
        if magic != MAGIC {
            return Err(Error::format(
                &shown,
                format!("not a GGUF file (magic {magic:#010x}, expected \"GGUF\")"),
            ));
        }
        let version = r.u32("version")?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(Error::format(
                    &shown,
                    "GGUF version 1 is not supported (convert it to v3 with current tools)",
                ))
            }
            v if v.swap_bytes() <= 3 => {
                return Err(Error::format(
                    &shown,
                    "big-endian GGUF files are not supported",
                ))
            }
            v => {
                return Err(Error::format(
                    &shown,
                    format!("unsupported GGUF version {v}"),
                ))
            }
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // Each key/value takes at least 8 (key len) + 4 (type) + 1 bytes; each tensor info at
        // least 8 + 4 + 4 + 8. Bound the counts by what the file can hold before allocating.
        r.check_count(n_kv, 13, "metadata count")?;
        r.check_count(n_tensors, 24, "tensor count")?;

        let mut metadata = Metadata::new(&shown);
        for i in 0..n_kv {
            let key = r.string(&format!("metadata entry {i} key"))?;
            let ctx = format!("metadata key '{key}'");
            if metadata.contains(&key) {
                return Err(Error::format(&shown, format!("duplicate {ctx}")));
            }
            let ty_id = r.u32(&ctx)?;
            let ty = ValueType::from_id(ty_id).ok_or_else(|| {
                Error::format(&shown, format!("{ctx}: unknown value type {ty_id}"))
            })?;
            let value = r.value(ty, &ctx, 0)?;
            metadata.insert(key, value);
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) if *a != 0 && a.is_power_of_two() => *a as u64,
            Some(v) => {
                return Err(Error::format(
                    &shown,
                    format!(
                        "metadata key 'general.alignment': must be a non-zero power of two u32, found {v}"
                    ),
                ))
            }
        };

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = r.string(&format!("tensor {i} name"))?;
            let ctx = format!("tensor '{name}'");
            let n_dims = r.u32(&ctx)? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(Error::format(
                    &shown,
                    format!("{ctx}: {n_dims} dimensions (1 to {MAX_DIMS} allowed)"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                let d = r.u64(&ctx)?;
                if d == 0 || d > i64::MAX as u64 {
                    return Err(Error::format(
                        &shown,
                        format!("{ctx}: invalid dimension {d}"),
                    ));
                }
                dims.push(d);
            }
            let ty_id = r.u32(&ctx)?;
            let ty = GgmlType::from_id(ty_id).ok_or_else(|| {
                Error::format(&shown, format!("{ctx}: unknown tensor type id {ty_id}"))
            })?;
            let offset = r.u64(&ctx)?;
            if offset % alignment != 0 {
                return Err(Error::format(
                    &shown,
                    format!("{ctx}: data offset {offset} is not a multiple of the alignment {alignment}"),
                ));
            }
            let n_elem = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| Error::format(&shown, format!("{ctx}: element count overflows")))?;
            if dims[0] % ty.block_size() as u64 != 0 {
                return Err(Error::format(
                    &shown,
                    format!(
                        "{ctx}: row length {} is not a multiple of the {} block size {}",
                        dims[0],
                        ty,
                        ty.block_size()
                    ),
                ));
            }
            let size = ty
                .row_size(n_elem)
                .ok_or_else(|| Error::format(&shown, format!("{ctx}: byte size overflows")))?;
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(Error::format(&shown, format!("duplicate {ctx}")));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
                size,
            });
        }

        let header_end = r.pos as u64;
        let data_offset = header_end.div_ceil(alignment) * alignment;
        let file_len = bytes.len() as u64;
        if !tensors.is_empty() && data_offset > file_len {
            return Err(Error::format(
                &shown,
                format!("file truncated: data section would start at {data_offset}, file has {file_len} bytes"),
            ));
        }
        for t in &tensors {
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.size));
            match end {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(Error::format(
                        &shown,
                        format!(
                            "tensor '{}': data [{}+{}, {} bytes] lies outside the file ({} bytes); the file is truncated or corrupt",
                            t.name, data_offset, t.offset, t.size, file_len
                        ),
                    ))
                }
            }
        }

        let storage = Storage {
            name: shown,
            backing: data,
            start: data_offset.min(file_len) as usize,
        };
        Ok(GgufFile {
            path,
            segments: vec![Segment { storage, base: 0 }],
            version,
            metadata,
            tensors,
            tensor_index,
            alignment,
            data_offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    pub fn alignment(&self) -> u64 {
        self.alignment
    }
    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }
    /// Size of the whole file image (of an assembled file: the sum of its storages).
    pub fn file_size(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.storage.backing.bytes().len() as u64)
            .sum()
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor's bytes, straight from the map (bounds were checked at open).
    ///
    /// `info.offset` is virtual: a GGUF file's offset in its data section, or, in an assembled
    /// file, the storage's place plus the offset inside it.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let seg = self
            .segment(info.offset)
            .expect("tensor offsets were checked at open");
        let start = (info.offset - seg.base) as usize;
        &seg.storage.data()[start..start + info.size as usize]
    }

    /// Look a tensor up by name: its info and bytes.
    pub fn tensor(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        Ok((info, self.tensor_data(info)))
    }

    /// The whole mapped image (for `madvise`-style prefetching by callers); of an assembled
    /// file, its first storage.
    pub fn bytes(&self) -> &[u8] {
        self.segments
            .first()
            .map_or(&[][..], |s| s.storage.backing.bytes())
    }
}

/// Bounds-checked little-endian reader over the file image.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    file: &'a str,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn truncated(&self, what: &str, need: u64) -> Error {
        Error::format(
            self.file,
            format!(
                "{what}: file truncated (need {need} bytes at offset {}, {} left)",
                self.pos,
                self.remaining()
            ),
        )
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if (n as u64) > self.remaining() {
            return Err(self.truncated(what, n as u64));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }

    /// A count read from the file must fit in what is left of it, at `min_size` bytes an item.
    fn check_count(&self, n: u64, min_size: u64, what: &str) -> Result<()> {
        match n.checked_mul(min_size) {
            Some(b) if b <= self.remaining() => Ok(()),
            _ => Err(Error::format(
                self.file,
                format!(
                    "{what} {n} is impossible: the {} bytes left cannot hold that many",
                    self.remaining()
                ),
            )),
        }
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        if len > self.remaining() {
            return Err(self.truncated(&format!("{what} (string of {len} bytes)"), len));
        }
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Error::format(self.file, format!("{what}: string is not valid UTF-8")))
    }

    fn value(&mut self, ty: ValueType, ctx: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.arr::<1>(ctx)?[0]),
            ValueType::I8 => Value::I8(self.arr::<1>(ctx)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.arr(ctx)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.arr(ctx)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.arr(ctx)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.arr(ctx)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.arr(ctx)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.arr(ctx)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.arr(ctx)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.arr(ctx)?)),
            ValueType::Bool => match self.arr::<1>(ctx)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(Error::format(
                        self.file,
                        format!("{ctx}: invalid bool byte {b}"),
                    ))
                }
            },
            ValueType::String => Value::String(self.string(ctx)?),
            ValueType::Array => Value::Array(self.array(ctx, depth + 1)?),
        })
    }

    fn array(&mut self, ctx: &str, depth: usize) -> Result<Array> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(Error::format(
                self.file,
                format!("{ctx}: arrays nested deeper than {MAX_ARRAY_DEPTH}"),
            ));
        }
        let ty_id = self.u32(ctx)?;
        let ty = ValueType::from_id(ty_id).ok_or_else(|| {
            Error::format(
                self.file,
                format!("{ctx}: unknown array element type {ty_id}"),
            )
        })?;
        let n = self.u64(ctx)?;
        self.check_count(n, ty.min_encoded_size(), &format!("{ctx}: array length"))?;
        let n = n as usize;
        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                const W: usize = std::mem::size_of::<$t>();
                let raw = self.take(n * W, ctx)?;
                Array::$variant(
                    raw.chunks_exact(W)
                        .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk of W bytes")))
                        .collect(),
                )
            }};
        }
        Ok(match ty {
            ValueType::U8 => Array::U8(self.take(n, ctx)?.to_vec()),
            ValueType::I8 => Array::I8(self.take(n, ctx)?.iter().map(|&b| b as i8).collect()),
            ValueType::U16 => fixed!(U16, u16),
            ValueType::I16 => fixed!(I16, i16),
            ValueType::U32 => fixed!(U32, u32),
            ValueType::I32 => fixed!(I32, i32),
            ValueType::F32 => fixed!(F32, f32),
            ValueType::U64 => fixed!(U64, u64),
            ValueType::I64 => fixed!(I64, i64),
            ValueType::F64 => fixed!(F64, f64),
            ValueType::Bool => {
                let raw = self.take(n, ctx)?;
                let mut v = Vec::with_capacity(n);
                for &b in raw {
                    match b {
                        0 => v.push(false),
                        1 => v.push(true),
                        _ => {
                            return Err(Error::format(
                                self.file,
                                format!("{ctx}: invalid bool byte {b} in array"),
                            ))
                        }
                    }
                }
                Array::Bool(v)
            }
            ValueType::String => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.string(&format!("{ctx}[{i}]"))?);
                }
                Array::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.array(&format!("{ctx}[{i}]"), depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }
}
