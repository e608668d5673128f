use super::value::{Array, Metadata, Value};
use super::{DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS};
use dino_core::{Error, GgmlType, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// A tensor to be written: name, ggml-order dims and type. Its bytes come from the data callback.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorSpec {
    /// Bytes of data this tensor occupies.
    pub fn size(&self) -> Result<u64> {
        let n: u64 = self
            .dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::invalid(format!("tensor '{}': size overflows", self.name)))?;
        if !self.dims[0].is_multiple_of(self.ty.block_size() as u64) {
            return Err(Error::invalid(format!(
                "tensor '{}': row length {} is not a multiple of the {} block size {}",
                self.name,
                self.dims[0],
                self.ty,
                self.ty.block_size()
            )));
        }
        self.ty
            .row_size(n)
            .ok_or_else(|| Error::invalid(format!("tensor '{}': size overflows", self.name)))
    }
}

/// Writes GGUF v3. Metadata and tensor specs are collected first; tensor bytes are then streamed
/// one tensor at a time from a callback, so a multi-gigabyte file never sits in memory.
#[derive(Debug)]
pub struct GgufWriter {
    metadata: Metadata,
    tensors: Vec<TensorSpec>,
    alignment: u64,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter {
            metadata: Metadata::new(""),
            tensors: Vec::new(),
            alignment: DEFAULT_ALIGNMENT,
        }
    }

    /// Set a metadata key (replacing any earlier value). `general.alignment` also sets the
    /// data alignment.
    pub fn set(&mut self, key: impl Into<String>, value: Value) -> Result<()> {
        let key = key.into();
        if key == "general.alignment" {
            match value {
                Value::U32(a) if a != 0 && a.is_power_of_two() => self.alignment = a as u64,
                _ => {
                    return Err(Error::invalid(
                        "general.alignment must be a non-zero power-of-two u32",
                    ))
                }
            }
        }
        self.metadata.insert(key, value);
        Ok(())
    }

    /// Copy every metadata entry of `md` (e.g. from a source GGUF).
    pub fn set_all(&mut self, md: &Metadata) -> Result<()> {
        for (k, v) in md.iter() {
            self.set(k, v.clone())?;
        }
        Ok(())
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Declare a tensor; names must be unique, dims 1..=4 and non-zero.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
    ) -> Result<()> {
        let name = name.into();
        if dims.is_empty() || dims.len() > MAX_DIMS || dims.contains(&0) {
            return Err(Error::invalid(format!(
                "tensor '{name}': invalid dims {dims:?}"
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(Error::invalid(format!("duplicate tensor '{name}'")));
        }
        let spec = TensorSpec {
            name,
            dims: dims.to_vec(),
            ty,
        };
        spec.size()?;
        self.tensors.push(spec);
        Ok(())
    }

    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }

    /// Write the file to `w`. `data(i, spec, out)` must write exactly `spec.size()` bytes of
    /// tensor `i`; padding is added here.
    pub fn write<W: Write>(
        &self,
        w: W,
        mut data: impl FnMut(usize, &TensorSpec, &mut dyn Write) -> Result<()>,
    ) -> Result<()> {
        let mut w = Counting { inner: w, n: 0 };
        let io = |e: std::io::Error| Error::io("gguf output", e);
        w.write_all(&MAGIC.to_le_bytes()).map_err(io)?;
        w.write_all(&3u32.to_le_bytes()).map_err(io)?;
        w.write_all(&(self.tensors.len() as u64).to_le_bytes())
            .map_err(io)?;
        w.write_all(&(self.metadata.len() as u64).to_le_bytes())
            .map_err(io)?;
        for (k, v) in self.metadata.iter() {
            write_str(&mut w, k).map_err(io)?;
            w.write_all(&(v.value_type() as u32).to_le_bytes())
                .map_err(io)?;
            write_value(&mut w, v).map_err(io)?;
        }
        let mut offset = 0u64;
        let mut sizes = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            write_str(&mut w, &t.name).map_err(io)?;
            w.write_all(&(t.dims.len() as u32).to_le_bytes())
                .map_err(io)?;
            for d in &t.dims {
                w.write_all(&d.to_le_bytes()).map_err(io)?;
            }
            w.write_all(&t.ty.id().to_le_bytes()).map_err(io)?;
            w.write_all(&offset.to_le_bytes()).map_err(io)?;
            let size = t.size()?;
            sizes.push(size);
            offset += size.div_ceil(self.alignment) * self.alignment;
        }
        pad(&mut w, self.alignment).map_err(io)?;
        for (i, t) in self.tensors.iter().enumerate() {
            let start = w.n;
            data(i, t, &mut w)?;
            let written = w.n - start;
            if written != sizes[i] {
                return Err(Error::invalid(format!(
                    "tensor '{}': data callback wrote {written} bytes, expected {}",
                    t.name, sizes[i]
                )));
            }
            pad(&mut w, self.alignment).map_err(io)?;
        }
        w.flush().map_err(io)?;
        Ok(())
    }

    /// Write to `path` through a `.part` file that is renamed into place only when complete.
    pub fn write_to_path(
        &self,
        path: impl AsRef<Path>,
        data: impl FnMut(usize, &TensorSpec, &mut dyn Write) -> Result<()>,
    ) -> Result<()> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let mut part = path.as_os_str().to_owned();
        part.push(".part");
        let part = std::path::PathBuf::from(part);
        let result = (|| {
            let f = File::create(&part).map_err(|e| Error::io(&shown, e))?;
            let mut bw = BufWriter::with_capacity(1 << 20, f);
            self.write(&mut bw, data)?;
            let f = bw
                .into_inner()
                .map_err(|e| Error::io(&shown, e.into_error()))?;
            f.sync_all().map_err(|e| Error::io(&shown, e))?;
            std::fs::rename(&part, path).map_err(|e| Error::io(&shown, e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&part);
        }
        result
    }
}

struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn pad<W: Write>(w: &mut Counting<W>, align: u64) -> std::io::Result<()> {
    let rem = w.n % align;
    if rem != 0 {
        let zeros = vec![0u8; (align - rem) as usize];
        w.write_all(&zeros)?;
    }
    Ok(())
}

fn write_str(w: &mut dyn Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn write_value(w: &mut dyn Write, v: &Value) -> std::io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&[*x]),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[*x as u8]),
        Value::String(s) => write_str(w, s),
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
        Value::Array(a) => write_array(w, a),
    }
}

fn write_array(w: &mut dyn Write, a: &Array) -> std::io::Result<()> {
    w.write_all(&(a.elem_type() as u32).to_le_bytes())?;
    w.write_all(&(a.len() as u64).to_le_bytes())?;
    macro_rules! each {
        ($v:expr) => {{
            for x in $v {
                w.write_all(&x.to_le_bytes())?;
            }
            Ok(())
        }};
    }
    match a {
        Array::U8(v) => w.write_all(v),
        Array::I8(v) => each!(v),
        Array::U16(v) => each!(v),
        Array::I16(v) => each!(v),
        Array::U32(v) => each!(v),
        Array::I32(v) => each!(v),
        Array::F32(v) => each!(v),
        Array::U64(v) => each!(v),
        Array::I64(v) => each!(v),
        Array::F64(v) => each!(v),
        Array::Bool(v) => {
            for x in v {
                w.write_all(&[*x as u8])?;
            }
            Ok(())
        }
        Array::String(v) => {
            for s in v {
                write_str(w, s)?;
            }
            Ok(())
        }
        Array::Array(v) => {
            for x in v {
                write_array(w, x)?;
            }
            Ok(())
        }
    }
}
