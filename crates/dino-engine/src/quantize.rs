//! `dino quantize`: a model rewritten as a GGUF file with quantized weights, tensor by tensor,
//! choosing each tensor's type by the rules of llama.cpp's `llama-quantize` (so a Dino Q4_K_M and
//! a llama.cpp Q4_K_M hold the same types, tensor for tensor, and their sizes and quality
//! compare one to one).
//!
//! The rules (`llama-quant.cpp`, `llama_tensor_get_type`), for the non-IQ file types:
//! - Only 2-D+ tensors whose name ends in `weight` are quantized, never norms
//!   (`*_norm.weight`) or MoE routers (`ffn_gate_inp.weight`); the rest keep their type.
//! - The output head (or the token embedding when it doubles as the head) becomes Q6_K, unless
//!   the file type is Q8_0 or its rows are not whole blocks (then Q8_0).
//! - Mixes raise the sensitive tensors: `attn_v` and `ffn_down` of some layers (the first and
//!   last eighth, and every third in between: `use_more_bits`), `attn_output`, `attn_qkv`, per
//!   file type; MoE models with 8 experts keep `attn_k`/`attn_v` at Q8_0.
//! - A row length that is not a whole number of the type's blocks falls back (Q4_K → Q5_0,
//!   Q5_K → Q5_1, Q6_K → Q8_0, Q2_K/Q3_K → Q4_0, then F16).
//!
//! Tensors are visited in llama.cpp's order (layer number, then name), which is the order its
//! per-layer counters see them in. Memory: the output tensor being written and one slab of rows
//! as floats; the source is read through its mmap.

use crate::imatrix::Imatrix;
use crate::mixed::{Allocation, Budget};
use crate::stderr_progress;
use dino_core::{Error, GgmlType, Result};
pub use dino_formats::gguf::Ftype;
use dino_formats::gguf::{fallback_type, GgufFile, GgufWriter, Value};
use dino_formats::hf::{Conversion, HfModel, OutType};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// What [`quantize`] does.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    pub ftype: Ftype,
    /// Every quantizable tensor at the file type's own type (`llama-quantize --pure`): no mix
    /// rules, no Q6_K head.
    pub pure: bool,
    /// Importance weights (`--imatrix`): block scales minimise the importance-weighted error.
    pub imatrix: Option<Imatrix>,
    /// Where the importance matrix came from (recorded in the output's metadata).
    pub imatrix_path: Option<std::path::PathBuf>,
    /// Layer-wise mixed precision under a byte budget instead of the file type's mix rules
    /// (`--target-bpw` / `--target-size`; see [`crate::mixed`]).
    pub mix: Option<MixOptions>,
    /// Threads (0 = all cores).
    pub threads: usize,
    /// A progress bar on stderr.
    pub progress: bool,
}

/// `--target-bpw` / `--target-size`: where the sensitivities come from and the budget.
#[derive(Clone, Debug)]
pub struct MixOptions {
    pub budget: Budget,
    /// Calibration text (its first `calib_tokens` tokens are used).
    pub calib_text: String,
    pub calib_tokens: usize,
    /// Read the sensitivities from this file if it holds this model's, else measure and write
    /// them there.
    pub sensitivity_file: Option<std::path::PathBuf>,
}

/// What [`quantize`] wrote.
#[derive(Clone, Debug, Default)]
pub struct QuantizeReport {
    pub n_tensors: usize,
    /// Elements of all tensors.
    pub n_elements: u64,
    /// Tensor bytes in and out.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Output tensors per type.
    pub types: BTreeMap<String, usize>,
    /// Tensors that were already quantized and were quantized again to another block type
    /// (their rounding adds to the source's).
    pub requantized: usize,
    /// With `--imatrix`: quantized tensors that used its weights, and those it has no entry for
    /// (quantized without, as llama-quantize does: the token embedding, the output head).
    pub with_imatrix: usize,
    pub without_imatrix: Vec<String>,
    /// With a budget: what the allocation predicted.
    pub mix: Option<Allocation>,
}

/// The tensor roles the rules tell apart (llama.cpp's `tensor_category`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    TokenEmbd,
    AttnQ,
    AttnK,
    AttnV,
    AttnQkv,
    AttnKvB,
    AttnOut,
    FfnUp,
    FfnGate,
    FfnDown,
    Output,
    Other,
}

fn role(name: &str) -> Role {
    if name == "output.weight" {
        Role::Output
    } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        Role::TokenEmbd
    } else if name.contains("attn_qkv.weight") {
        Role::AttnQkv
    } else if name.contains("attn_kv_b.weight") {
        Role::AttnKvB
    } else if name.contains("attn_v.weight") {
        Role::AttnV
    } else if name.contains("attn_k.weight") {
        Role::AttnK
    } else if name.contains("attn_q.weight") {
        Role::AttnQ
    } else if name.contains("attn_output.weight") {
        Role::AttnOut
    } else if name.contains("ffn_up") {
        Role::FfnUp
    } else if name.contains("ffn_gate") {
        Role::FfnGate
    } else if name.contains("ffn_down") {
        Role::FfnDown
    } else {
        Role::Other
    }
}

/// Whether a tensor is quantized at all (`tensor_allows_quantization`, for the tensors of the
/// families Dino runs).
pub(crate) fn quantizable(name: &str, n_dims: usize) -> bool {
    n_dims >= 2
        && name.ends_with("weight")
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
        && !name.contains("altup")
        && !name.contains("laurel")
        && !name.contains("per_layer_model_proj")
        && !name.contains("ssm_conv1d")
        && !name.contains("attn_rel_b.weight")
        && !name.contains(".position_embd")
        && name != "position_embd.weight"
        && name != "token_types.weight"
}

/// The layer number of a `blk.N.` name (`None` for the others), llama.cpp's sort key.
pub(crate) fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// The facts of the model the rules read.
struct ModelFacts {
    n_layer: usize,
    n_gqa: usize,
    n_expert: usize,
    /// llama.cpp's 70B model type (80 layers with grouped-query attention, Llama family).
    is_70b: bool,
    falcon: bool,
    tied: bool,
}

fn facts(file: &GgufFile) -> ModelFacts {
    let md = file.metadata();
    let arch = md
        .get("general.architecture")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let u = |k: &str| {
        md.get(&format!("{arch}.{k}"))
            .and_then(Value::as_int)
            .and_then(|v| usize::try_from(v).ok())
            .unwrap_or(0)
    };
    // head_count_kv may be an array per layer: layer 0's, as `n_gqa()` without an argument.
    let first = |k: &str| -> usize {
        match md.get(&format!("{arch}.{k}")) {
            Some(v) => v
                .as_int()
                .or_else(|| v.as_array().and_then(|a| a.int_at(0)).map(i128::from))
                .and_then(|v| usize::try_from(v).ok())
                .unwrap_or(0),
            None => 0,
        }
    };
    let (n_head, n_head_kv) = (
        first("attention.head_count"),
        first("attention.head_count_kv"),
    );
    let n_head_kv = if n_head_kv == 0 { n_head } else { n_head_kv };
    let n_layer = u("block_count");
    ModelFacts {
        n_layer,
        n_gqa: n_head.checked_div(n_head_kv).unwrap_or(1),
        n_expert: u("expert_count"),
        is_70b: arch == "llama" && n_layer == 80 && n_head != n_head_kv,
        falcon: arch == "falcon",
        tied: file.tensor_info("output.weight").is_none(),
    }
}

/// Block types (F32, F16 and BF16 are per element).
pub(crate) fn is_quantized(t: GgmlType) -> bool {
    t.block_size() > 1
}

fn use_more_bits(i: usize, n: usize) -> bool {
    let (i, n) = (i as i64, n as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The output type of every tensor of `file`, in the file's order, by `llama-quantize`'s rules
/// (see the module docs); unquantizable tensors keep their type. `has_imatrix` changes one
/// rule, as in llama.cpp: Q4_0/Q5_0 files then raise the first eighth of ffn_down to Q4_1/Q5_1.
pub fn plan(file: &GgufFile, ftype: Ftype, pure: bool, has_imatrix: bool) -> Vec<GgmlType> {
    let m = facts(file);
    let tensors = file.tensors();
    let order = visit_order(file);
    let n_attn_v = tensors
        .iter()
        .filter(|t| matches!(role(&t.name), Role::AttnV | Role::AttnQkv | Role::AttnKvB))
        .count();
    let (mut i_attn_v, mut i_ffn_down) = (0usize, 0usize);
    let default = ftype.default_type();
    let mut out: Vec<GgmlType> = tensors.iter().map(|t| t.ty).collect();
    for &ti in &order {
        let t = &tensors[ti];
        if !quantizable(&t.name, t.dims.len()) {
            continue;
        }
        let mut ty = default;
        if !is_quantized(default) {
            out[ti] = ty;
            continue;
        }
        let r = role(&t.name);
        if !pure {
            ty = mix_rule(
                &m,
                ftype,
                r,
                ty,
                t.ne0(),
                &t.name,
                (i_attn_v, n_attn_v),
                i_ffn_down,
                has_imatrix,
            );
            if matches!(r, Role::AttnV | Role::AttnQkv | Role::AttnKvB) {
                i_attn_v += 1;
            }
            if r == Role::FfnDown {
                i_ffn_down += 1;
            }
        }
        out[ti] = fallback_type(ty, t.ne0());
    }
    out
}

/// The tensors in llama.cpp's visiting order: by layer number (the rest first), then by name.
fn visit_order(file: &GgufFile) -> Vec<usize> {
    let tensors = file.tensors();
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| {
        let (na, nb) = (&tensors[a].name, &tensors[b].name);
        let key = |n: &str| layer_of(n).map_or(-1, |l| l as i64);
        key(na).cmp(&key(nb)).then_with(|| na.cmp(nb))
    });
    order
}

/// `llama_tensor_get_type_impl` for the non-IQ file types.
#[allow(clippy::too_many_arguments)]
fn mix_rule(
    m: &ModelFacts,
    ftype: Ftype,
    r: Role,
    mut ty: GgmlType,
    ne0: u64,
    name: &str,
    (i_attn_v, n_attn_v): (usize, usize),
    i_ffn_down: usize,
    has_imatrix: bool,
) -> GgmlType {
    use Ftype as F;
    use GgmlType as T;
    if r == Role::Output || (m.tied && r == Role::TokenEmbd) {
        if m.falcon || !ne0.is_multiple_of(ty.block_size() as u64) {
            return T::Q8_0;
        }
        return if ty != T::Q8_0 { T::Q6_K } else { ty };
    }
    match r {
        Role::AttnV | Role::AttnQkv | Role::AttnKvB => {
            match ftype {
                F::Q2_K => ty = if m.n_gqa >= 4 { T::Q4_K } else { T::Q3_K },
                F::Q2_K_S if m.n_gqa >= 4 => ty = T::Q4_K,
                F::Q3_K_M => ty = if i_attn_v < 2 { T::Q5_K } else { T::Q4_K },
                F::Q3_K_L => ty = T::Q5_K,
                F::Q4_K_M | F::Q5_K_M if use_more_bits(i_attn_v, n_attn_v) => ty = T::Q6_K,
                F::Q4_K_S if i_attn_v < 4 => ty = T::Q5_K,
                _ => {}
            }
            if m.is_70b && (ty == T::Q3_K || ty == T::Q4_K) {
                ty = T::Q5_K;
            }
            if m.n_expert == 8 {
                ty = T::Q8_0;
            }
        }
        Role::AttnK if m.n_expert == 8 => ty = T::Q8_0,
        Role::FfnDown => {
            // With experts llama.cpp reads the layer from the name; otherwise it counts.
            let (i, n) = if m.n_expert > 1 {
                (layer_of(name).unwrap_or(0), m.n_layer)
            } else {
                (i_ffn_down, m.n_layer)
            };
            match ftype {
                F::Q2_K => ty = T::Q3_K,
                F::Q2_K_S if i < n / 8 => ty = T::Q4_K,
                F::Q3_K_M => {
                    ty = if i < n / 16 {
                        T::Q5_K
                    } else if !m.falcon || use_more_bits(i, n) {
                        T::Q4_K
                    } else {
                        T::Q3_K
                    }
                }
                F::Q3_K_L => ty = if m.falcon { T::Q4_K } else { T::Q5_K },
                F::Q4_K_M => {
                    if m.falcon {
                        ty = if i < n / 16 {
                            T::Q6_K
                        } else if use_more_bits(i, n) {
                            T::Q5_K
                        } else {
                            T::Q4_K
                        };
                    } else if use_more_bits(i, n) {
                        ty = T::Q6_K;
                    }
                }
                F::Q5_K_M if use_more_bits(i, n) => ty = T::Q6_K,
                F::Q4_K_S if !m.falcon && i < n / 8 => ty = T::Q5_K,
                // Against "craziness in the first few ffn_down layers" (llama.cpp), only with
                // an imatrix so that files without one stay as they were.
                F::Q4_0 if has_imatrix && i < n / 8 => ty = T::Q4_1,
                F::Q5_0 if has_imatrix && i < n / 8 => ty = T::Q5_1,
                _ => {}
            }
        }
        Role::AttnOut => {
            if !m.falcon {
                if m.n_expert == 8 {
                    if matches!(
                        ftype,
                        F::Q2_K | F::Q3_K_S | F::Q3_K_M | F::Q4_K_S | F::Q4_K_M
                    ) {
                        ty = T::Q5_K;
                    }
                } else {
                    match ftype {
                        F::Q2_K => ty = T::Q3_K,
                        F::Q3_K_M => ty = T::Q4_K,
                        F::Q3_K_L => ty = T::Q5_K,
                        _ => {}
                    }
                }
            } else if ftype == F::Q3_K_L {
                ty = T::Q4_K;
            }
        }
        _ => {}
    }
    // Attention QKV (fused) has its own raise on top of the attn_v-like one.
    if r == Role::AttnQkv {
        match ftype {
            F::Q3_K_M | F::Q3_K_L => ty = T::Q4_K,
            F::Q4_K_M => ty = T::Q5_K,
            F::Q5_K_M => ty = T::Q6_K,
            _ => {}
        }
    }
    ty
}

/// Rows converted per step of one tensor (each step's floats are `slab × ne0 × 4` bytes).
const SLAB_ELEMENTS: usize = 1 << 22;

/// Quantize `src` (a GGUF file or a Hugging Face checkpoint directory) into the GGUF file `dst`
/// (written through `dst.part`).
pub fn quantize(src: &Path, dst: &Path, opts: &QuantizeOptions) -> Result<QuantizeReport> {
    if opts.ftype == Ftype::Q2_K_S && !opts.pure && opts.imatrix.is_none() {
        return Err(Error::invalid(
            "Q2_K_S needs an importance matrix, as in llama-quantize: make one with `dino \
             calibrate` and pass --imatrix, or use Q2_K or Q3_K_S",
        ));
    }
    let file = if src.is_dir() {
        let hf = HfModel::open(src)?;
        hf.into_gguf(Conversion {
            out: OutType::Keep,
            encoder: Some(dino_kernels::quant::quantize_row),
            threads: opts.threads,
            progress: None,
        })?
    } else {
        GgufFile::open(src)?
    };
    if src == dst || (dst.exists() && same_file(src, dst)) {
        return Err(Error::invalid(format!(
            "{}: the output would overwrite the input",
            dst.display()
        )));
    }
    quantize_file(&file, dst, opts)
}

/// [`quantize`] of an opened (or assembled) file.
pub(crate) fn quantize_file(
    file: &GgufFile,
    dst: &Path,
    opts: &QuantizeOptions,
) -> Result<QuantizeReport> {
    let src = file.path();
    let mut types = plan(file, opts.ftype, opts.pure, opts.imatrix.is_some());
    let mut mix = None;
    if let Some(m) = &opts.mix {
        let a = mixed_types(file, dst, opts, m, &types)?;
        for (t, ty) in file.tensors().iter().zip(types.iter_mut()) {
            if let Some(&chosen) = a.types.get(&t.name) {
                *ty = chosen;
            }
        }
        mix = Some(a);
    }
    let order = visit_order(file);
    let mut w = GgufWriter::new();
    w.set_all(file.metadata())?;
    w.set("general.file_type", Value::U32(opts.ftype.id()))?;
    w.set("general.quantization_version", Value::U32(2))?;
    if let (Some(im), Some(path)) = (&opts.imatrix, &opts.imatrix_path) {
        // The keys llama-quantize records.
        w.set(
            "quantize.imatrix.file",
            Value::String(path.display().to_string()),
        )?;
        if let Some(d) = im.datasets.first() {
            w.set("quantize.imatrix.dataset", Value::String(d.clone()))?;
        }
        w.set(
            "quantize.imatrix.entries_count",
            Value::I32(im.entries.len() as i32),
        )?;
        if im.chunk_count > 0 {
            w.set(
                "quantize.imatrix.chunks_count",
                Value::I32(im.chunk_count as i32),
            )?;
        }
    }
    let mut report = QuantizeReport {
        mix,
        ..QuantizeReport::default()
    };
    for &i in &order {
        let t = &file.tensors()[i];
        w.add_tensor(t.name.clone(), &t.dims, types[i])?;
        report.n_tensors += 1;
        report.n_elements += t.n_elements();
        report.bytes_in += t.size;
        *report.types.entry(types[i].name().to_string()).or_default() += 1;
        if types[i] != t.ty && is_quantized(t.ty) && is_quantized(types[i]) {
            report.requantized += 1;
        }
    }
    if report.requantized > 0 {
        eprintln!(
            "warning: {}: {} tensors are already quantized ({}); quantizing them again to {} \
             adds the second rounding to the first: a F16/F32/BF16 source gives a better file",
            src.display(),
            report.requantized,
            source_types(file),
            opts.ftype.name()
        );
    }
    let total: u64 = w.tensors().iter().map(|s| s.size()).sum::<Result<u64>>()?;
    report.bytes_out = total;
    let pool = dino_kernels::pool::ThreadPool::new(opts.threads);
    let mut progress = stderr_progress("quantizing");
    let mut done = 0u64;
    let mut buf: Vec<u8> = Vec::new();
    w.write_to_path(dst, |k, spec, out: &mut dyn Write| {
        let t = &file.tensors()[order[k]];
        let data = file.tensor_data(t);
        let io = |e| Error::io(dst.display(), e);
        if spec.ty == t.ty {
            out.write_all(data).map_err(io)?;
        } else {
            buf.clear();
            buf.resize(spec.size()? as usize, 0);
            let ne0 = t.ne0() as usize;
            let qw = match &opts.imatrix {
                Some(im) if is_quantized(spec.ty) && t.dims.len() >= 2 => {
                    let w = im.weights(&t.name, ne0)?;
                    if w.is_none() {
                        report.without_imatrix.push(t.name.clone());
                    } else {
                        report.with_imatrix += 1;
                    }
                    w
                }
                _ => None,
            };
            convert_tensor(&pool, t.ty, data, spec.ty, ne0, qw.as_deref(), &mut buf)
                .map_err(|e| Error::invalid(format!("tensor '{}': {e}", t.name)))?;
            out.write_all(&buf).map_err(io)?;
        }
        // Read once: its pages need not stay resident (file pages are read back from the
        // page cache if ever needed; this tensor is not).
        file.release_range(t.offset, t.size)?;
        done += spec.size()?;
        if opts.progress {
            progress(done, total);
        }
        Ok(())
    })?;
    Ok(report)
}

/// The budgeted types: sensitivities measured (or read back) and allocated.
fn mixed_types(
    file: &GgufFile,
    dst: &Path,
    opts: &QuantizeOptions,
    m: &MixOptions,
    planned: &[GgmlType],
) -> Result<Allocation> {
    use crate::mixed::{allocate, budget_bytes, fixed_bytes, measure, Sensitivity};
    let cached = match &m.sensitivity_file {
        Some(p) if p.exists() => {
            let s = Sensitivity::load(p)?;
            if s.matches(file)
                && s.n_tokens == m.calib_tokens
                && s.point == crate::mixed::point_name(opts)
            {
                eprintln!("{}: using the sensitivities measured before", p.display());
                Some(s)
            } else {
                eprintln!(
                    "{}: sensitivities of another model or calibration; measuring again",
                    p.display()
                );
                None
            }
        }
        _ => None,
    };
    let sens = match cached {
        Some(s) => s,
        None => {
            let scratch = dst
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let s = measure(
                file,
                opts,
                &m.calib_text,
                scratch,
                &crate::mixed::SensitivityOptions {
                    n_tokens: m.calib_tokens,
                    threads: opts.threads,
                    progress: opts.progress,
                    only: None,
                },
            )?;
            if let Some(p) = &m.sensitivity_file {
                s.save(p)?;
            }
            s
        }
    };
    allocate(
        &sens,
        fixed_bytes(file, planned),
        budget_bytes(file, m.budget),
    )
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn source_types(file: &GgufFile) -> String {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for t in file.tensors().iter().filter(|t| is_quantized(t.ty)) {
        *seen.entry(t.ty.name()).or_default() += 1;
    }
    seen.into_iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rows of `from` bytes → rows of `to` bytes, `ne0` elements per row, on the pool: each thread
/// dequantizes a row to floats and quantizes it again, a slab of rows at a time.
pub(crate) fn convert_tensor(
    pool: &dino_kernels::pool::ThreadPool,
    from: GgmlType,
    src: &[u8],
    to: GgmlType,
    ne0: usize,
    qw: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<()> {
    let row_in = from
        .row_size(ne0 as u64)
        .ok_or_else(|| Error::invalid(format!("{ne0} elements are not whole {from} blocks")))?
        as usize;
    let row_out = to
        .row_size(ne0 as u64)
        .ok_or_else(|| Error::invalid(format!("{ne0} elements are not whole {to} blocks")))?
        as usize;
    let n_rows = dst.len() / row_out;
    if src.len() < n_rows * row_in {
        return Err(Error::invalid(format!(
            "{} bytes of data for {n_rows} rows of {ne0} {from} elements",
            src.len()
        )));
    }
    let rows_per_chunk = (SLAB_ELEMENTS / ne0.max(1) / pool.n_threads().max(1)).clamp(1, 256);
    let failed = std::sync::Mutex::new(None);
    let pd = dino_kernels::pool::SharedMut::new(dst);
    pool.for_chunks(n_rows, rows_per_chunk, &|rows| {
        let mut f = vec![0f32; ne0];
        for r in rows {
            // SAFETY: row r's output bytes are written by this chunk only.
            let o = unsafe { pd.slice(r * row_out, row_out) };
            let res =
                dino_kernels::quant::dequantize_row(from, &src[r * row_in..][..row_in], &mut f)
                    .and_then(|()| dino_kernels::quant::quantize_row_weighted(to, &f, qw, o));
            if let Err(e) = res {
                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                return;
            }
        }
    });
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_bits_layers_are_llamas() {
        // 24 layers: the first 3, the last 3, and every third in between.
        let picked: Vec<usize> = (0..24).filter(|&i| use_more_bits(i, 24)).collect();
        assert_eq!(picked, vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23]);
    }

    #[test]
    fn fallbacks_follow_the_row_length() {
        assert_eq!(fallback_type(GgmlType::Q4_K, 896), GgmlType::Q5_0);
        assert_eq!(fallback_type(GgmlType::Q6_K, 576), GgmlType::Q8_0);
        assert_eq!(fallback_type(GgmlType::Q3_K, 1536), GgmlType::Q3_K);
        assert_eq!(fallback_type(GgmlType::Q4_0, 72), GgmlType::F16);
    }
}
