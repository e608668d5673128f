//! safetensors shards over mmap: the header is parsed and validated by the `safetensors` crate
//! (header at most 100 MB, offsets contiguous, sizes matching dtype × shape, data exactly filling
//! the file); the data stays in the map.

use dino_core::{Error, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A tensor of a shard: dtype, shape (row-major, outermost first) and where its bytes are,
/// relative to the shard's data start.
#[derive(Clone, Debug)]
pub(crate) struct StTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub offset: u64,
}

/// One `.safetensors` file, mapped.
pub(crate) struct Shard {
    pub path: String,
    pub map: Mmap,
    /// Byte index of the data section (8 + header length).
    pub data_start: usize,
    pub tensors: HashMap<String, StTensor>,
}

impl Shard {
    pub fn open(path: &Path) -> Result<Shard> {
        let shown = path.display().to_string();
        let file = File::open(path).map_err(|e| Error::io(&shown, e))?;
        // SAFETY: the map is read-only and lives as long as the model built from it. Like every
        // mmap reader we rely on the file not being truncated or rewritten while mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&shown, e))?;
        let (n, meta) = SafeTensors::read_metadata(&map).map_err(|e| {
            Error::format(
                &shown,
                format!("not a valid safetensors file ({e}; {} bytes)", map.len()),
            )
        })?;
        let tensors = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let t = StTensor {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    offset: info.data_offsets.0 as u64,
                };
                (name, t)
            })
            .collect();
        Ok(Shard {
            path: shown,
            map,
            data_start: 8 + n,
            tensors,
        })
    }

    /// `len` bytes at `offset` of the data section (callers check bounds at plan time).
    pub fn bytes_at(&self, offset: usize, len: usize) -> &[u8] {
        let s = self.data_start + offset;
        &self.map[s..s + len]
    }

    /// Let the OS drop the resident pages of `offset..offset+len` of the data section.
    pub fn release(&self, offset: u64, len: u64) -> Result<()> {
        crate::gguf::release_mapped_range(&self.map, self.data_start as u64 + offset, len)
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// The safetensors files of a checkpoint directory: the shards named by
/// `model.safetensors.index.json`, else `model.safetensors`, else every `*.safetensors` file.
/// Also returns the index's tensor → file map (empty without an index).
pub(crate) fn shard_paths(dir: &Path) -> Result<(Vec<PathBuf>, HashMap<String, String>)> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let shown = index.display().to_string();
        let json = super::read_json(&index)?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::format(&shown, "missing object field 'weight_map'"))?;
        let mut files = BTreeSet::new();
        let mut weight_map = HashMap::with_capacity(map.len());
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| {
                Error::format(&shown, format!("weight_map['{tensor}'] is not a file name"))
            })?;
            if file.contains(['/', '\\']) || file == ".." {
                return Err(Error::format(
                    &shown,
                    format!("weight_map['{tensor}']: '{file}' is not a file in this directory"),
                ));
            }
            files.insert(file.to_string());
            weight_map.insert(tensor.clone(), file.to_string());
        }
        if files.is_empty() {
            return Err(Error::format(&shown, "weight_map is empty"));
        }
        return Ok((files.into_iter().map(|f| dir.join(f)).collect(), weight_map));
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok((vec![single], HashMap::new()));
    }
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir.display(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    all.sort();
    if all.is_empty() {
        return Err(Error::format(
            dir.display(),
            "no model.safetensors, model.safetensors.index.json or *.safetensors file",
        ));
    }
    Ok((all, HashMap::new()))
}

/// Element dtype of a tensor written by [`write_safetensors`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StDtype {
    F32,
    F16,
    BF16,
}

impl StDtype {
    fn name(self) -> &'static str {
        match self {
            StDtype::F32 => "F32",
            StDtype::F16 => "F16",
            StDtype::BF16 => "BF16",
        }
    }
    fn size(self) -> usize {
        match self {
            StDtype::F32 => 4,
            StDtype::F16 | StDtype::BF16 => 2,
        }
    }
}

/// A tensor for [`write_safetensors`]: name, dtype, shape (outermost first) and little-endian data.
pub struct StWrite<'a> {
    pub name: &'a str,
    pub dtype: StDtype,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

/// Write a safetensors file (header padded to 8 bytes with spaces, tensors in the given order).
/// For tests and tools that make Hugging Face checkpoints.
pub fn write_safetensors(path: &Path, tensors: &[StWrite<'_>]) -> Result<()> {
    let shown = path.display().to_string();
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for t in tensors {
        let n: usize = t.shape.iter().product();
        if n * t.dtype.size() != t.data.len() {
            return Err(Error::invalid(format!(
                "{shown}: tensor '{}': {} bytes for shape {:?} of {}",
                t.name,
                t.data.len(),
                t.shape,
                t.dtype.name()
            )));
        }
        header.insert(
            t.name.to_string(),
            serde_json::json!({
                "dtype": t.dtype.name(),
                "shape": t.shape,
                "data_offsets": [offset, offset + t.data.len()],
            }),
        );
        offset += t.data.len();
    }
    let mut text = serde_json::Value::Object(header).to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut f = std::io::BufWriter::new(File::create(path).map_err(|e| Error::io(&shown, e))?);
    let io = |e| Error::io(&shown, e);
    f.write_all(&(text.len() as u64).to_le_bytes())
        .map_err(io)?;
    f.write_all(&text).map_err(io)?;
    for t in tensors {
        f.write_all(t.data).map_err(io)?;
    }
    f.flush().map_err(io)
}
