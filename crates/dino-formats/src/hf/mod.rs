//! Hugging Face checkpoint directories (`config.json`, `tokenizer.json`,
//! `tokenizer_config.json`, one or many `*.safetensors`) seen as GGUF.
//!
//! [`HfModel::open`] maps every shard and plans each GGUF tensor: its GGUF name and dims, the
//! checkpoint rows it is made of and the changes llama.cpp's converter makes (Llama's Q/K row
//! permutation, Gemma's `+1` on norms, experts stacked into `[n_in, n_out, n_expert]`, norms and
//! other 1-D tensors as F32). The GGUF metadata is built from config.json and the tokenizer
//! files. Then either:
//! - [`HfModel::into_gguf`] assembles a [`GgufFile`] in memory: tensors usable as they are stay
//!   views into the safetensors maps (zero copy), the others are computed one at a time into
//!   owned buffers (optionally quantized), releasing the source pages as they go, so two
//!   full-precision copies never coexist;
//! - [`HfModel::write_gguf`] streams the same tensors into a GGUF file, one at a time.
//!
//! Quantizing needs dino-kernels' quantizers, which this crate does not depend on: callers pass
//! them as an [`Encoder`].

mod config;
mod names;
mod safetensors;
mod tokenizer;

pub use self::safetensors::{write_safetensors, StDtype, StWrite};
pub use config::Arch;

use self::safetensors::Shard;
use crate::gguf::{GgufFile, GgufWriter, Metadata, PlacedTensor, Storage, Value};
use ::safetensors::Dtype;
use config::HfConfig;
use dino_core::{Error, GgmlType, Result};
use names::{Part, PermuteHeads, Target};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Quantizes (or converts) one row of f32 into `dst` of exactly `ty.row_size(src.len())` bytes:
/// dino-kernels' `quant::quantize_row`.
pub type Encoder = fn(GgmlType, &[f32], &mut [u8]) -> Result<()>;

/// The tensor types of weight matrices in what is loaded or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutType {
    /// The checkpoint's own type (F32, F16 or BF16): zero copy where nothing else changes.
    Keep,
    /// BF16 from BF16 checkpoints, F16 from F16 and F32 ones (`dino convert`'s default).
    Auto,
    /// This type (F32, F16, BF16 or a quantized type); rows that are not a whole number of its
    /// blocks fall back as llama.cpp's quantizer does (Q4_K→Q5_0, Q5_K→Q5_1, Q6_K→Q8_0,
    /// Q2_K/Q3_K→Q4_0, then F16).
    Type(GgmlType),
}

/// Types `--quant`/`--type` accept, by their llama.cpp names.
pub const QUANT_TYPES: [GgmlType; 13] = {
    use GgmlType::*;
    [
        F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
    ]
};

/// A type name as `--quant`/`--type` take it (`q8_0`, `Q4_K`, `f16`, ...).
pub fn parse_type(s: &str) -> Result<GgmlType> {
    QUANT_TYPES
        .iter()
        .copied()
        .find(|t| t.name().eq_ignore_ascii_case(s))
        .ok_or_else(|| {
            Error::invalid(format!(
                "unknown tensor type '{s}' (one of: {})",
                QUANT_TYPES
                    .iter()
                    .map(|t| t.name().to_ascii_lowercase())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// How to load or write: matrix type, its encoder, threads, progress.
pub struct Conversion<'a> {
    pub out: OutType,
    /// Required when `out` asks for a quantized type.
    pub encoder: Option<Encoder>,
    /// Threads used to quantize (0 = all cores).
    pub threads: usize,
    /// Called after each tensor with (bytes done, bytes total) of the tensors computed.
    pub progress: Option<&'a mut dyn FnMut(u64, u64)>,
}

impl Default for Conversion<'_> {
    fn default() -> Self {
        Conversion {
            out: OutType::Keep,
            encoder: None,
            threads: 0,
            progress: None,
        }
    }
}

/// Element type of checkpoint data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Src {
    F32,
    F16,
    BF16,
}

impl Src {
    fn ggml(self) -> GgmlType {
        match self {
            Src::F32 => GgmlType::F32,
            Src::F16 => GgmlType::F16,
            Src::BF16 => GgmlType::BF16,
        }
    }
    fn size(self) -> usize {
        match self {
            Src::F32 => 4,
            Src::F16 | Src::BF16 => 2,
        }
    }
    fn decode(self, b: &[u8], out: &mut [f32]) {
        match self {
            Src::F32 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Src::F16 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                    *o = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
            Src::BF16 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                    *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
                }
            }
        }
    }
}

/// Contiguous rows of a checkpoint tensor: `rows` rows of the tensor's row length, starting at
/// byte `offset` of shard `shard`'s data.
#[derive(Clone, Debug)]
struct Piece {
    shard: usize,
    offset: u64,
    rows: usize,
}

#[derive(Clone, Debug)]
enum Source {
    Rows {
        src: Src,
        pieces: Vec<Piece>,
    },
    /// Computed from config.json (RoPE factor tables).
    F32(Vec<f32>),
}

/// One GGUF tensor and how to make it.
#[derive(Clone, Debug)]
struct Planned {
    name: String,
    /// ggml order.
    dims: Vec<u64>,
    source: Source,
    /// Llama's Q/K permutation over this many heads (rows are elements for a 1-D bias).
    permute_heads: Option<usize>,
    add_one: bool,
    /// Checkpoint names it comes from (for errors).
    from: String,
}

impl Planned {
    /// (row length, rows) as the data is walked: a permuted 1-D bias is `n` rows of 1.
    fn rows(&self) -> (usize, usize) {
        let n0 = self.dims[0] as usize;
        let rest: u64 = self.dims[1..].iter().product();
        if self.dims.len() == 1 && self.permute_heads.is_some() {
            (1, n0)
        } else {
            (n0, rest as usize)
        }
    }
}

/// A checkpoint directory planned as GGUF tensors and metadata.
pub struct HfModel {
    dir: PathBuf,
    arch: Arch,
    metadata: Metadata,
    shards: Vec<Shard>,
    tensors: Vec<Planned>,
}

pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let shown = path.display().to_string();
    let text = std::fs::read(path).map_err(|e| Error::io(&shown, e))?;
    serde_json::from_slice(&text).map_err(|e| Error::format(&shown, format!("invalid JSON: {e}")))
}

/// The `tokenizer.ggml.*` (and `tokenizer.chat_template`) metadata of a checkpoint directory,
/// without reading its weights: config.json names the family and vocabulary size,
/// tokenizer.json and tokenizer_config.json give the rest.
pub fn tokenizer_metadata(dir: impl AsRef<Path>) -> Result<Metadata> {
    let dir = dir.as_ref();
    let cfg = HfConfig::load(dir)?;
    let mut md = Metadata::new(dir.display().to_string());
    for (k, v) in tokenizer::metadata(dir, &cfg)?.entries {
        md.insert(k, v);
    }
    Ok(md)
}

impl HfModel {
    /// Read config.json and the tokenizer files, map every shard, plan every tensor. Fails with
    /// an error naming the file and field or tensor on anything missing, malformed or
    /// inconsistent.
    pub fn open(dir: impl AsRef<Path>) -> Result<HfModel> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::format(dir.display(), "not a directory"));
        }
        let cfg = HfConfig::load(dir)?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let mut metadata = Metadata::new(dir.display().to_string());
        for (k, v) in config::metadata(&cfg, &name)? {
            metadata.insert(k, v);
        }
        let tok = tokenizer::metadata(dir, &cfg)?;
        for (k, v) in tok.entries {
            metadata.insert(k, v);
        }
        let (paths, weight_map) = self::safetensors::shard_paths(dir)?;
        let mut shards = Vec::with_capacity(paths.len());
        for p in &paths {
            shards.push(Shard::open(p)?);
        }
        for (tensor, file) in &weight_map {
            let found = paths
                .iter()
                .zip(&shards)
                .any(|(p, s)| p.ends_with(file) && s.tensors.contains_key(tensor));
            if !found {
                return Err(Error::format(
                    dir.join("model.safetensors.index.json").display(),
                    format!("tensor '{tensor}' is not in {file}"),
                ));
            }
        }
        let tensors = plan(&cfg, &shards, tok.n_tokens)?;
        Ok(HfModel {
            dir: dir.to_path_buf(),
            arch: cfg.arch,
            metadata,
            shards,
            tensors,
        })
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The GGUF metadata (without `general.file_type`, which depends on the output type).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// GGUF names of the planned tensors, in file order.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|t| t.name.as_str())
    }

    /// The type tensor `t` gets for `out`.
    fn out_type(&self, t: &Planned, out: OutType) -> GgmlType {
        let src = match &t.source {
            Source::Rows { src, .. } => *src,
            Source::F32(_) => return GgmlType::F32,
        };
        if !names::quantizable(&t.name, t.dims.len()) {
            return GgmlType::F32;
        }
        let want = match out {
            OutType::Keep => return src.ggml(),
            OutType::Auto if src == Src::BF16 => GgmlType::BF16,
            OutType::Auto => GgmlType::F16,
            OutType::Type(ty) => ty,
        };
        crate::gguf::fallback_type(want, t.dims[0])
    }

    /// Byte size of tensor `t` as type `ty`.
    fn out_size(t: &Planned, ty: GgmlType) -> u64 {
        let n: u64 = t.dims.iter().product();
        ty.row_size(n).expect("planned dims fit the chosen type")
    }

    /// The checkpoint bytes of `t` when they can be used as they are for type `ty`.
    fn zero_copy(&self, t: &Planned, ty: GgmlType) -> Option<(usize, u64)> {
        match &t.source {
            Source::Rows { src, pieces }
                if pieces.len() == 1
                    && src.ggml() == ty
                    && t.permute_heads.is_none()
                    && !t.add_one =>
            {
                Some((pieces[0].shard, pieces[0].offset))
            }
            _ => None,
        }
    }

    /// Compute tensor `t` as type `ty` into `out` (exactly its size), on up to `threads` threads.
    fn compute(
        &self,
        t: &Planned,
        ty: GgmlType,
        encoder: Option<Encoder>,
        threads: usize,
        out: &mut [u8],
    ) -> Result<()> {
        let (row_len, n_rows) = t.rows();
        let out_row = ty.row_size(row_len as u64).expect("checked at plan") as usize;
        debug_assert_eq!(out.len(), out_row * n_rows);
        let (src, pieces) = match &t.source {
            Source::F32(v) => {
                for (o, x) in out.chunks_exact_mut(4).zip(v) {
                    o.copy_from_slice(&x.to_le_bytes());
                }
                return Ok(());
            }
            Source::Rows { src, pieces } => (*src, pieces),
        };
        let needs_encoder = !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
        if needs_encoder && encoder.is_none() {
            return Err(Error::invalid(format!(
                "tensor '{}': quantizing to {ty} needs an encoder",
                t.name
            )));
        }
        let in_row = row_len * src.size();
        let starts: Vec<usize> = pieces
            .iter()
            .scan(0, |acc, p| {
                let s = *acc;
                *acc += p.rows;
                Some(s)
            })
            .collect();
        let head_rows = t.permute_heads.map(|h| n_rows / h);
        // Source bytes of output row `r`.
        let row_src = |r: usize| -> &[u8] {
            let r = match head_rows {
                // GGUF row h*hd + 2j + s  <-  HF row h*hd + s*hd/2 + j
                Some(hd) => {
                    let (h, i) = (r / hd, r % hd);
                    h * hd + (i % 2) * (hd / 2) + i / 2
                }
                None => r,
            };
            let k = starts.partition_point(|&s| s <= r) - 1;
            let p = &pieces[k];
            let off = p.offset as usize + (r - starts[k]) * in_row;
            self.shards[p.shard].bytes_at(off, in_row)
        };
        let copy = src.ggml() == ty && !t.add_one;
        let add_one = t.add_one;
        let work = |first: usize, chunk: &mut [u8]| -> Result<()> {
            let mut f = vec![0f32; if copy { 0 } else { row_len }];
            for (i, o) in chunk.chunks_exact_mut(out_row).enumerate() {
                let s = row_src(first + i);
                if copy {
                    o.copy_from_slice(s);
                    continue;
                }
                src.decode(s, &mut f);
                if add_one {
                    for x in f.iter_mut() {
                        // The converter adds in the checkpoint's float type: f16 for F16.
                        *x = if src == Src::F16 {
                            half::f16::from_f32(*x + 1.0).to_f32()
                        } else {
                            *x + 1.0
                        };
                    }
                }
                encode(ty, &f, o, encoder)?;
            }
            Ok(())
        };
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        // Threads only pay for quantizing large tensors.
        let threads = if copy || n_rows * row_len < (1 << 20) {
            1
        } else {
            threads.min(n_rows).max(1)
        };
        // Stripes of ~16 MB of source: when rows are read in order, each stripe's source pages
        // are released as soon as it is done, so a large tensor (the embeddings) never has its
        // whole source and its result resident at once.
        let stripe = ((16usize << 20) / in_row.max(1)).clamp(1, n_rows);
        for s0 in (0..n_rows).step_by(stripe) {
            let s1 = (s0 + stripe).min(n_rows);
            let out = &mut out[s0 * out_row..s1 * out_row];
            if threads == 1 {
                work(s0, out)?;
            } else {
                let per = (s1 - s0).div_ceil(threads);
                std::thread::scope(|s| {
                    let handles: Vec<_> = out
                        .chunks_mut(per * out_row)
                        .enumerate()
                        .map(|(i, chunk)| {
                            let work = &work;
                            s.spawn(move || work(s0 + i * per, chunk))
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| {
                            h.join().unwrap_or_else(|_| {
                                Err(Error::invalid("quantizer thread panicked"))
                            })
                        })
                        .collect::<Result<Vec<()>>>()
                })?;
            }
            if head_rows.is_none() {
                self.release_rows(pieces, &starts, in_row, s0..s1);
            }
        }
        Ok(())
    }

    /// Release the source pages of output rows `rows` (rows read in order).
    fn release_rows(
        &self,
        pieces: &[Piece],
        starts: &[usize],
        in_row: usize,
        rows: std::ops::Range<usize>,
    ) {
        for (p, &start) in pieces.iter().zip(starts) {
            let (a, b) = (rows.start.max(start), rows.end.min(start + p.rows));
            if a < b {
                let off = p.offset + ((a - start) * in_row) as u64;
                let _ = self.shards[p.shard].release(off, ((b - a) * in_row) as u64);
            }
        }
    }

    /// Let the OS drop the resident source pages of `t` (after it was computed).
    fn release(&self, t: &Planned) {
        if let Source::Rows { src, pieces } = &t.source {
            let (row_len, _) = t.rows();
            for p in pieces {
                let len = (p.rows * row_len * src.size()) as u64;
                let _ = self.shards[p.shard].release(p.offset, len);
            }
        }
    }

    /// `general.file_type` and `general.quantization_version` for `out`.
    fn file_type_keys(&self, out: OutType) -> Vec<(String, Value)> {
        let main = self
            .tensors
            .iter()
            .find(|t| names::quantizable(&t.name, t.dims.len()))
            .map(|t| self.out_type(t, out))
            .unwrap_or(GgmlType::F32);
        // One type for every matrix: the file type llama-quantize --pure names after it.
        let ftype = crate::gguf::Ftype::of_type(main).map_or(0, crate::gguf::Ftype::id);
        vec![
            ("general.file_type".into(), Value::U32(ftype)),
            ("general.quantization_version".into(), Value::U32(2)),
        ]
    }

    /// Assemble the model as a [`GgufFile`]: unchanged tensors as views into the safetensors
    /// maps, the others computed into owned buffers, one tensor at a time, releasing the
    /// source pages behind them.
    pub fn into_gguf(self, mut conv: Conversion<'_>) -> Result<GgufFile> {
        let types: Vec<GgmlType> = self
            .tensors
            .iter()
            .map(|t| self.out_type(t, conv.out))
            .collect();
        let total: u64 = self
            .tensors
            .iter()
            .zip(&types)
            .filter(|(t, &ty)| self.zero_copy(t, ty).is_none())
            .map(|(t, &ty)| Self::out_size(t, ty))
            .sum();
        let n_shards = self.shards.len();
        let mut owned: Vec<Storage> = Vec::new();
        let mut placed = Vec::with_capacity(self.tensors.len());
        let mut done = 0u64;
        for (t, &ty) in self.tensors.iter().zip(&types) {
            if let Some((shard, offset)) = self.zero_copy(t, ty) {
                placed.push(PlacedTensor {
                    name: t.name.clone(),
                    dims: t.dims.clone(),
                    ty,
                    storage: shard,
                    offset,
                });
                continue;
            }
            let size = Self::out_size(t, ty) as usize;
            // Anonymous memory, so that a repacked weight can give its source pages back.
            let io = |e| Error::io(format!("{} (converted)", t.name), e);
            let mut buf = memmap2::MmapMut::map_anon(size.max(1)).map_err(io)?;
            self.compute(t, ty, conv.encoder, conv.threads, &mut buf[..size])?;
            let buf = buf.make_read_only().map_err(io)?;
            self.release(t);
            placed.push(PlacedTensor {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ty,
                storage: n_shards + owned.len(),
                offset: 0,
            });
            owned.push(Storage::converted(format!("{} (converted)", t.name), buf));
            done += size as u64;
            if let Some(p) = conv.progress.as_mut() {
                p(done, total);
            }
        }
        let keys = self.file_type_keys(conv.out);
        let mut metadata = self.metadata;
        for (k, v) in keys {
            metadata.insert(k, v);
        }
        // Shards no tensor views any more (everything in them was converted) are unmapped.
        let mut used = vec![false; n_shards];
        for p in &placed {
            if p.storage < n_shards {
                used[p.storage] = true;
            }
        }
        let mut new_index = vec![0; n_shards];
        let mut storages: Vec<Storage> = Vec::with_capacity(n_shards + owned.len());
        for (i, s) in self.shards.into_iter().enumerate() {
            if used[i] {
                new_index[i] = storages.len();
                storages.push(Storage::mapped(s.path, s.map, s.data_start));
            }
        }
        let n_mapped = storages.len();
        for p in &mut placed {
            p.storage = if p.storage < n_shards {
                new_index[p.storage]
            } else {
                p.storage - n_shards + n_mapped
            };
        }
        storages.extend(owned);
        GgufFile::assemble(self.dir, metadata, storages, placed)
    }

    /// Write the model as a GGUF file at `path` (through a `.part` file), streaming one tensor
    /// at a time. Returns the number of tensor bytes written.
    pub fn write_gguf(&self, path: impl AsRef<Path>, mut conv: Conversion<'_>) -> Result<u64> {
        let mut w = GgufWriter::new();
        w.set_all(&self.metadata)?;
        for (k, v) in self.file_type_keys(conv.out) {
            w.set(k, v)?;
        }
        let types: Vec<GgmlType> = self
            .tensors
            .iter()
            .map(|t| self.out_type(t, conv.out))
            .collect();
        for (t, &ty) in self.tensors.iter().zip(&types) {
            w.add_tensor(t.name.clone(), &t.dims, ty)?;
        }
        let total: u64 = self
            .tensors
            .iter()
            .zip(&types)
            .map(|(t, &ty)| Self::out_size(t, ty))
            .sum();
        let mut done = 0u64;
        let mut buf = Vec::new();
        w.write_to_path(path, |i, _spec, out: &mut dyn Write| {
            let (t, ty) = (&self.tensors[i], types[i]);
            let size = Self::out_size(t, ty);
            let io = |e| Error::io(self.dir.display(), e);
            if let Some((shard, offset)) = self.zero_copy(t, ty) {
                out.write_all(self.shards[shard].bytes_at(offset as usize, size as usize))
                    .map_err(io)?;
            } else {
                buf.clear();
                buf.resize(size as usize, 0);
                self.compute(t, ty, conv.encoder, conv.threads, &mut buf)?;
                out.write_all(&buf).map_err(io)?;
            }
            self.release(t);
            done += size;
            if let Some(p) = conv.progress.as_mut() {
                p(done, total);
            }
            Ok(())
        })?;
        Ok(total)
    }
}

/// Row-major f32 → `ty` bytes.
fn encode(ty: GgmlType, f: &[f32], out: &mut [u8], encoder: Option<Encoder>) -> Result<()> {
    match ty {
        GgmlType::F32 => {
            for (o, x) in out.chunks_exact_mut(4).zip(f) {
                o.copy_from_slice(&x.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for (o, x) in out.chunks_exact_mut(2).zip(f) {
                o.copy_from_slice(&half::f16::from_f32(*x).to_bits().to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for (o, x) in out.chunks_exact_mut(2).zip(f) {
                o.copy_from_slice(&half::bf16::from_f32(*x).to_bits().to_le_bytes());
            }
        }
        _ => (encoder.expect("checked by the caller"))(ty, f, out)?,
    }
    Ok(())
}

/// Plan every GGUF tensor from the shards' tensors.
fn plan(cfg: &HfConfig, shards: &[Shard], n_tokens: usize) -> Result<Vec<Planned>> {
    let arch = cfg.arch;
    let n_head = cfg.req_u64("num_attention_heads")? as usize;
    let n_head_kv = cfg
        .opt_u64("num_key_value_heads")?
        .map_or(n_head, |v| v as usize);
    let n_expert = match cfg.opt_u64("num_local_experts")? {
        Some(n) => n,
        None => cfg.opt_u64("num_experts")?.unwrap_or(0),
    } as usize;
    // GGUF name → the checkpoint tensors it is made of.
    struct Item<'a> {
        target: Target,
        hf: &'a str,
        shard: usize,
        t: &'a self::safetensors::StTensor,
    }
    let mut groups: BTreeMap<String, Vec<Item>> = BTreeMap::new();
    for (si, shard) in shards.iter().enumerate() {
        for (hf, t) in &shard.tensors {
            let targets = match names::map_name(arch, hf) {
                Ok(Some(target)) => vec![target],
                Ok(None) => continue,
                Err(()) => names::map_fused_experts(hf).ok_or_else(|| {
                    Error::format(
                        &shard.path,
                        format!(
                            "tensor '{hf}': no GGUF name for it in architecture {}",
                            cfg.hf_arch
                        ),
                    )
                })?,
            };
            for target in targets {
                groups.entry(target.gguf.clone()).or_default().push(Item {
                    target,
                    hf,
                    shard: si,
                    t,
                });
            }
        }
    }
    let mut out = Vec::with_capacity(groups.len());
    for (gguf, mut items) in groups {
        // Experts in index order (the other parts are single).
        let at = |it: &Item, msg: String| {
            Error::format(&shards[it.shard].path, format!("tensor '{}': {msg}", it.hf))
        };
        for it in &items {
            if !matches!(it.t.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                return Err(at(
                    it,
                    format!("dtype {:?} is not supported (F32, F16 or BF16)", it.t.dtype),
                ));
            }
            if it.t.shape.is_empty() || it.t.shape.len() > 3 || it.t.shape.contains(&0) {
                return Err(at(it, format!("unsupported shape {:?}", it.t.shape)));
            }
        }
        items.sort_by_key(|it| match it.target.part {
            Part::Expert(e) => e,
            _ => 0,
        });
        let first = &items[0];
        let src = match first.t.dtype {
            Dtype::F32 => Src::F32,
            Dtype::F16 => Src::F16,
            _ => Src::BF16,
        };
        if items.iter().any(|it| it.t.dtype != first.t.dtype) {
            return Err(at(first, format!("{gguf}: parts differ in dtype")));
        }
        let row_bytes_of = |it: &Item| {
            let n0 = *it.t.shape.last().unwrap();
            (n0 * src.size()) as u64
        };
        let (dims, pieces, from) = match first.target.part {
            Part::Whole if items.len() == 1 => {
                let shape = &first.t.shape;
                let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
                let rows: usize = shape[..shape.len() - 1].iter().product();
                let piece = Piece {
                    shard: first.shard,
                    offset: first.t.offset,
                    rows: rows.max(1),
                };
                (dims, vec![piece], first.hf.to_string())
            }
            Part::Expert(_) => {
                let want = if n_expert > 0 { n_expert } else { items.len() };
                for (e, it) in items.iter().enumerate() {
                    if it.target.part != Part::Expert(e) || it.t.shape != first.t.shape {
                        return Err(at(
                            it,
                            format!("{gguf}: experts must be 0..{want} with one shape"),
                        ));
                    }
                }
                if items.len() != want || first.t.shape.len() != 2 {
                    return Err(at(
                        first,
                        format!(
                            "{gguf}: found {} 2-D experts, config.json says {want}",
                            items.len()
                        ),
                    ));
                }
                let (n_out, n_in) = (first.t.shape[0], first.t.shape[1]);
                let pieces = items
                    .iter()
                    .map(|it| Piece {
                        shard: it.shard,
                        offset: it.t.offset,
                        rows: n_out,
                    })
                    .collect();
                (
                    vec![n_in as u64, n_out as u64, want as u64],
                    pieces,
                    format!("{} (+{} experts)", first.hf, want - 1),
                )
            }
            Part::FusedHalf(half) if items.len() == 1 => {
                let s = &first.t.shape;
                if s.len() != 3 || s[1] % 2 != 0 {
                    return Err(at(
                        first,
                        format!("expected [n_expert, 2*n_ff, n_embd], found {s:?}"),
                    ));
                }
                let (ne, n_out, n_in) = (s[0], s[1] / 2, s[2]);
                let rb = row_bytes_of(first);
                let pieces = (0..ne)
                    .map(|e| Piece {
                        shard: first.shard,
                        offset: first.t.offset + ((e * 2 * n_out + half * n_out) as u64) * rb,
                        rows: n_out,
                    })
                    .collect();
                (
                    vec![n_in as u64, n_out as u64, ne as u64],
                    pieces,
                    first.hf.to_string(),
                )
            }
            _ => {
                return Err(at(
                    first,
                    format!("{gguf}: {} checkpoint tensors map to it", items.len()),
                ))
            }
        };
        let mut dims = dims;
        let mut pieces = pieces;
        // The embeddings (and an untied head) must have exactly one row per token.
        if gguf == "token_embd.weight" || gguf == "output.weight" {
            let rows = dims[1] as usize;
            if rows < n_tokens || (rows > n_tokens && arch != Arch::Gemma3) {
                return Err(at(
                    first,
                    format!("{rows} rows, but the vocabulary has {n_tokens} tokens"),
                ));
            }
            dims[1] = n_tokens as u64;
            pieces[0].rows = n_tokens;
        }
        let permute_heads = match first.target.permute {
            Some(PermuteHeads::Q) => Some(n_head),
            Some(PermuteHeads::K) => Some(n_head_kv),
            None => None,
        };
        let planned = Planned {
            name: gguf,
            dims,
            source: Source::Rows { src, pieces },
            permute_heads,
            add_one: first.target.add_one,
            from,
        };
        if let Some(h) = permute_heads {
            let (_, n_rows) = planned.rows();
            if h == 0 || n_rows % (2 * h) != 0 {
                return Err(at(
                    first,
                    format!("{n_rows} rows do not split into {h} heads of pairs"),
                ));
            }
        }
        check_rows(&planned, shards)?;
        out.push(planned);
    }
    for (name, f) in config::rope_factor_tensors(cfg)? {
        out.push(Planned {
            dims: vec![f.len() as u64],
            name,
            source: Source::F32(f),
            permute_heads: None,
            add_one: false,
            from: "config.json".into(),
        });
    }
    if !out.iter().any(|t| t.name == "token_embd.weight") {
        return Err(Error::MissingTensor(format!(
            "token_embd.weight (model.embed_tokens.weight in {})",
            cfg.path.trim_end_matches("config.json")
        )));
    }
    out.sort_by_key(|t| file_order(&t.name));
    Ok(out)
}

/// Every piece lies inside its shard (the safetensors header was validated, but pieces are
/// computed from shapes here).
fn check_rows(t: &Planned, shards: &[Shard]) -> Result<()> {
    let Source::Rows { src, pieces } = &t.source else {
        return Ok(());
    };
    let (row_len, n_rows) = t.rows();
    let total: usize = pieces.iter().map(|p| p.rows).sum();
    let data_len = |s: usize| (shards[s].map.len() - shards[s].data_start) as u64;
    let in_bounds = pieces.iter().all(|p| {
        (p.rows as u64)
            .checked_mul((row_len * src.size()) as u64)
            .and_then(|b| b.checked_add(p.offset))
            .is_some_and(|end| end <= data_len(p.shard))
    });
    if total != n_rows || !in_bounds {
        return Err(Error::format(
            &t.from,
            format!("its rows do not make GGUF tensor '{}' {:?}", t.name, t.dims),
        ));
    }
    Ok(())
}

/// File order: token_embd, then the blocks in order, then the rest (norm, output, RoPE tables).
fn file_order(name: &str) -> (usize, usize, String) {
    if name == "token_embd.weight" {
        return (0, 0, String::new());
    }
    if let Some(rest) = name.strip_prefix("blk.") {
        if let Some((il, tail)) = rest.split_once('.') {
            if let Ok(il) = il.parse::<usize>() {
                return (1, il, tail.to_string());
            }
        }
    }
    (2, 0, name.to_string())
}
