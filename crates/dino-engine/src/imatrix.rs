//! Importance matrices: per-input-channel activation statistics of every weight matrix, as
//! llama.cpp's `llama-imatrix` collects them, and the files that carry them.
//!
//! For a matrix `W` multiplying inputs `x`, the entry holds `Σ x_j²` over every calibration
//! token (per input channel `j`) and the token count; `sums / count` is the importance weight
//! the quantizers give channel `j` (an error in a column whose input is large costs more).
//!
//! Files: llama.cpp's GGUF format (`general.type = "imatrix"`, tensors `<name>.in_sum2`
//! `[ne0, n_mat]` and `<name>.counts` `[1, n_mat]`, keys `imatrix.datasets`,
//! `imatrix.chunk_count`, `imatrix.chunk_size`), read and written; and its older `.dat` format,
//! read only.

use crate::perplexity::{perplexity_observed, PerplexityOptions, PerplexityResult};
use crate::Engine;
use dino_core::{Error, GgmlType, Result};
use dino_formats::gguf::{Array, GgufFile, GgufWriter, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// One matrix's statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct ImatrixEntry {
    /// `Σ x_j²`, `[n_mat][ne0]` (one block per expert; `n_mat = 1` for dense matrices).
    pub sums: Vec<f32>,
    /// Tokens summed, one per matrix.
    pub counts: Vec<f32>,
}

/// An importance matrix.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Imatrix {
    /// The calibration texts.
    pub datasets: Vec<String>,
    /// Chunks of `chunk_size` tokens the statistics cover.
    pub chunk_count: u32,
    pub chunk_size: u32,
    /// By weight name (`blk.0.attn_q.weight`, ...).
    pub entries: BTreeMap<String, ImatrixEntry>,
    /// Read from the old `.dat` format, whose sums are already means times the call count
    /// (`counts` then holds the call count).
    pub legacy: bool,
}

const GGUF_MAGIC: &[u8; 4] = b"GGUF";

impl Imatrix {
    /// Reads a GGUF imatrix or a legacy `.dat` one. Errors name the problem; sizes are checked
    /// against the file before anything is allocated.
    pub fn load(path: impl AsRef<Path>) -> Result<Imatrix> {
        let path = path.as_ref();
        let mut head = [0u8; 4];
        {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(|e| Error::io(path.display(), e))?;
            f.read_exact(&mut head)
                .map_err(|_| Error::format(path.display(), "too short for an imatrix file"))?;
        }
        if &head == GGUF_MAGIC {
            Self::load_gguf(path)
        } else {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
            Self::parse_legacy(&bytes).map_err(|m| Error::format(path.display(), m))
        }
    }

    fn load_gguf(path: &Path) -> Result<Imatrix> {
        let file = GgufFile::open(path)?;
        let bad = |m: String| Error::format(path.display(), m);
        let md = file.metadata();
        if let Some(t) = md.opt_str("general.type")? {
            if t != "imatrix" {
                return Err(bad(format!(
                    "general.type is '{t}', not 'imatrix': is this a model file?"
                )));
            }
        }
        let mut im = Imatrix {
            chunk_count: md.opt_u32("imatrix.chunk_count")?.unwrap_or(0),
            chunk_size: md.opt_u32("imatrix.chunk_size")?.unwrap_or(0),
            ..Imatrix::default()
        };
        if let Some(Value::Array(Array::String(v))) = md.get("imatrix.datasets") {
            im.datasets = v.clone();
        }
        let f32s = |name: &str| -> Result<Vec<f32>> {
            let (info, data) = file.tensor(name)?;
            if info.ty != GgmlType::F32 {
                return Err(bad(format!("tensor '{name}' is {}, not F32", info.ty)));
            }
            Ok(data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        for t in file.tensors() {
            let Some(base) = t.name.strip_suffix(".in_sum2") else {
                if !t.name.ends_with(".counts") {
                    return Err(bad(format!(
                        "unexpected tensor '{}' (an imatrix has <name>.in_sum2 and <name>.counts)",
                        t.name
                    )));
                }
                continue;
            };
            let counts_name = format!("{base}.counts");
            if file.tensor_info(&counts_name).is_none() {
                return Err(bad(format!("'{}' has no '{counts_name}'", t.name)));
            }
            let sums = f32s(&t.name)?;
            let counts = f32s(&counts_name)?;
            if counts.is_empty() || sums.is_empty() || !sums.len().is_multiple_of(counts.len()) {
                return Err(bad(format!(
                    "'{base}': {} sums do not split into {} matrices",
                    sums.len(),
                    counts.len()
                )));
            }
            im.entries
                .insert(base.to_string(), ImatrixEntry { sums, counts });
        }
        for t in file.tensors() {
            if let Some(base) = t.name.strip_suffix(".counts") {
                if !im.entries.contains_key(base) {
                    return Err(bad(format!("'{}' has no '{base}.in_sum2'", t.name)));
                }
            }
        }
        if im.entries.is_empty() {
            return Err(bad("no entries".into()));
        }
        Ok(im)
    }

    /// llama.cpp's `.dat` format: `i32 n_entries`, then per entry `i32 len, name, i32 ncall,
    /// i32 nval, f32 × nval`; optionally `i32 chunks, i32 len, dataset name`.
    fn parse_legacy(bytes: &[u8]) -> std::result::Result<Imatrix, String> {
        struct R<'a>(&'a [u8]);
        impl<'a> R<'a> {
            fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
                if self.0.len() < n {
                    return Err(format!(
                        "truncated: {what} needs {n} bytes, {} left",
                        self.0.len()
                    ));
                }
                let (a, b) = self.0.split_at(n);
                self.0 = b;
                Ok(a)
            }
            fn i32(&mut self, what: &str) -> std::result::Result<i32, String> {
                let b = self.take(4, what)?;
                Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            fn len(&mut self, what: &str, elem: usize) -> std::result::Result<usize, String> {
                let v = self.i32(what)?;
                if v < 0 || (v as usize).saturating_mul(elem) > self.0.len() {
                    return Err(format!(
                        "{what} {v} does not fit in the {} bytes left",
                        self.0.len()
                    ));
                }
                Ok(v as usize)
            }
        }
        let mut r = R(bytes);
        let n = r.i32("entry count")?;
        if n < 1 || n as usize > bytes.len() / 16 {
            return Err(format!("bad entry count {n}: not an imatrix file"));
        }
        let mut im = Imatrix {
            legacy: true,
            ..Imatrix::default()
        };
        for i in 0..n {
            let len = r.len("name length", 1)?;
            let name = String::from_utf8(r.take(len, "name")?.to_vec())
                .map_err(|_| format!("entry {i}: name is not UTF-8"))?;
            let ncall = r.i32("call count")?;
            let nval = r.len("value count", 4)?;
            if nval == 0 {
                return Err(format!("entry '{name}' has no values"));
            }
            let sums = r
                .take(4 * nval, "values")?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            im.entries.insert(
                name,
                ImatrixEntry {
                    sums,
                    counts: vec![ncall as f32],
                },
            );
        }
        if !r.0.is_empty() {
            im.chunk_count = r.i32("chunk count")?.max(0) as u32;
            if !r.0.is_empty() {
                let len = r.len("dataset name length", 1)?;
                im.datasets
                    .push(String::from_utf8_lossy(r.take(len, "dataset name")?).into_owned());
            }
        }
        Ok(im)
    }

    /// Writes llama.cpp's GGUF imatrix format (entries in name order, as llama-imatrix does).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut w = GgufWriter::new();
        w.set("general.type", Value::String("imatrix".into()))?;
        w.set(
            "imatrix.datasets",
            Value::Array(Array::String(self.datasets.clone())),
        )?;
        w.set("imatrix.chunk_count", Value::U32(self.chunk_count))?;
        w.set("imatrix.chunk_size", Value::U32(self.chunk_size))?;
        let mut data: Vec<&[f32]> = Vec::new();
        for (name, e) in &self.entries {
            let n_mat = e.counts.len() as u64;
            if n_mat == 0 || !(e.sums.len() as u64).is_multiple_of(n_mat) {
                return Err(Error::invalid(format!(
                    "imatrix entry '{name}' is malformed"
                )));
            }
            w.add_tensor(
                format!("{name}.in_sum2"),
                &[e.sums.len() as u64 / n_mat, n_mat],
                GgmlType::F32,
            )?;
            w.add_tensor(format!("{name}.counts"), &[1, n_mat], GgmlType::F32)?;
            data.push(&e.sums);
            data.push(&e.counts);
        }
        let path = path.as_ref();
        w.write_to_path(path, |i, _, out| {
            let bytes: Vec<u8> = data[i].iter().flat_map(|v| v.to_le_bytes()).collect();
            out.write_all(&bytes)
                .map_err(|e| Error::io(path.display(), e))
        })
    }

    /// The importance weights of matrix `name` with `ne0` input channels: `sums / count` per
    /// channel (a matrix no token reached gets all ones, as llama-quantize does). `None` when the
    /// file has no entry; an error when the entry's width is not `ne0` (a different model).
    pub fn weights(&self, name: &str, ne0: usize) -> Result<Option<Vec<f32>>> {
        let Some(e) = self.entries.get(name) else {
            return Ok(None);
        };
        if e.sums.iter().chain(&e.counts).any(|v| !v.is_finite()) {
            return Err(Error::invalid(format!(
                "imatrix entry '{name}' holds non-finite values (llama-quantize refuses them too)"
            )));
        }
        if e.counts.len() != 1 || e.sums.len() != ne0 {
            if name == "token_embd.weight" {
                // llama-quantize skips a mismatched token embedding entry.
                return Ok(None);
            }
            return Err(Error::invalid(format!(
                "imatrix entry '{name}' has {} values in {} matrices, but the tensor's rows have {ne0} \
                 (was the imatrix made for another model?)",
                e.sums.len(),
                e.counts.len()
            )));
        }
        let c = e.counts[0];
        Ok(Some(if c > 0.0 {
            e.sums.iter().map(|s| s / c).collect()
        } else if self.legacy {
            // A legacy entry without calls is used as stored (llama-quantize reads it so).
            e.sums.clone()
        } else {
            vec![1.0; ne0]
        }))
    }
}

/// What [`calibrate`] measured besides the matrix.
#[derive(Clone, Debug)]
pub struct CalibrateReport {
    /// Perplexity over the calibration chunks (as `llama-imatrix` prints it).
    pub perplexity: PerplexityResult,
    /// Matrices with statistics.
    pub n_entries: usize,
    /// Each matrix's input-magnitude quantiles (for `--sparsity`).
    pub thresholds: crate::sparsity::Thresholds,
}

/// Runs `engine` over `text` in chunks of `opts.n_ctx` tokens (llama-imatrix's chunking, which
/// is llama-perplexity's) and collects `Σ x²` per input channel of every layer matrix.
/// `dataset` is recorded in the file. `on_chunk(i, n, running_ppl)` reports progress.
pub fn calibrate(
    engine: &Engine,
    text: &str,
    dataset: &str,
    opts: &PerplexityOptions,
    on_chunk: impl FnMut(usize, usize, f64),
) -> Result<(Imatrix, CalibrateReport)> {
    let mut acc: BTreeMap<String, (Vec<f32>, f64)> = BTreeMap::new();
    let mut bad: Option<String> = None;
    let mut magnitudes = crate::sparsity::MagnitudeStats::default();
    let mut obs = |names: &[&str], rows: &[f32], n: usize| {
        if n == 0 || bad.is_some() || names.iter().any(|m| dino_models::is_layer_input(m)) {
            return;
        }
        magnitudes.add(names, rows);
        let width = rows.len() / n;
        let mut sq = vec![0f32; width];
        for row in rows.chunks_exact(width) {
            for (s, &x) in sq.iter_mut().zip(row) {
                *s += x * x;
            }
        }
        if sq.iter().any(|v| !v.is_finite()) {
            bad = Some(names.join(", "));
            return;
        }
        for name in names {
            let e = acc
                .entry(name.to_string())
                .or_insert_with(|| (vec![0f32; width], 0.0));
            if e.0.len() != width {
                continue;
            }
            for (s, v) in e.0.iter_mut().zip(&sq) {
                *s += v;
            }
            e.1 += n as f64;
        }
    };
    let ppl = perplexity_observed(engine, text, opts, on_chunk, Some(&mut obs))?;
    if let Some(names) = bad {
        return Err(Error::invalid(format!(
            "non-finite activations entering {names}: the model's output is not usable for calibration"
        )));
    }
    let entries: BTreeMap<String, ImatrixEntry> = acc
        .into_iter()
        .map(|(k, (sums, count))| {
            (
                k,
                ImatrixEntry {
                    sums,
                    counts: vec![count as f32],
                },
            )
        })
        .collect();
    let n_entries = entries.len();
    Ok((
        Imatrix {
            datasets: vec![dataset.to_string()],
            chunk_count: ppl.n_chunks as u32,
            chunk_size: opts.n_ctx as u32,
            entries,
            legacy: false,
        },
        CalibrateReport {
            thresholds: magnitudes.thresholds(ppl.n_chunks * opts.n_ctx, dataset),
            perplexity: ppl,
            n_entries,
        },
    ))
}
