//! Throughput benchmarks measured as llama.cpp's `llama-bench` measures them, and its output
//! formats (markdown, JSON, JSONL, CSV) with its field names and types, so tooling written for
//! `llama-bench` reads Dino's results unchanged. Dino's own fields carry a `dino_` prefix.
//!
//! A test is `pp<N>` (N random prompt tokens in batches into an empty KV cache), `tg<N>` (N
//! tokens decoded one at a time from an empty cache, each fed back as the next input) or
//! `pp<N>+tg<M>` (both, timed together). Each test gets one untimed warm-up run (the whole
//! prompt, then one generated token) and `reps` timed repetitions, each from an empty cache,
//! or with a depth (`pp512 @ d2048`) from a cache already holding that many tokens (filled
//! once, untimed, as llama-bench restores its saved state). The KV cache's element types
//! (`type_k`, `type_v`) are part of the test.

use crate::energy::EnergyMeter;
use crate::{metrics, Batch, Engine, KvTypes, Logits};
use dino_core::{Error, GgmlType, Result};
use dino_formats::gguf::GgufFile;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// `llama-bench`'s fields in its order (`test::get_fields()`); JSON objects add `samples_ns`
/// and `samples_ts` after them, and Dino's `dino_*` fields after those.
pub const LLAMA_BENCH_FIELDS: [&str; 42] = [
    "build_commit",
    "build_number",
    "cpu_info",
    "gpu_info",
    "backends",
    "model_filename",
    "model_type",
    "model_size",
    "model_n_params",
    "n_batch",
    "n_ubatch",
    "n_threads",
    "cpu_mask",
    "cpu_strict",
    "poll",
    "type_k",
    "type_v",
    "n_gpu_layers",
    "n_cpu_moe",
    "split_mode",
    "main_gpu",
    "no_kv_offload",
    "flash_attn",
    "devices",
    "tensor_split",
    "tensor_buft_overrides",
    "load_mode",
    "lazy_mode",
    "embeddings",
    "no_op_offload",
    "no_host",
    "repack",
    "fit_target",
    "fit_min_ctx",
    "n_prompt",
    "n_gen",
    "n_depth",
    "test_time",
    "avg_ns",
    "stddev_ns",
    "avg_ts",
    "stddev_ts",
];

/// The JSON type (`"int"`, `"bool"`, `"float"` or `"string"`) llama-bench gives each of
/// [`LLAMA_BENCH_FIELDS`] (`test::get_field_type`), for tools and tests that check the output.
pub fn llama_bench_field_type(field: &str) -> &'static str {
    const INT: [&str; 19] = [
        "build_number",
        "n_batch",
        "n_ubatch",
        "n_threads",
        "poll",
        "model_size",
        "model_n_params",
        "n_gpu_layers",
        "main_gpu",
        "n_prompt",
        "n_gen",
        "n_depth",
        "avg_ns",
        "stddev_ns",
        "no_op_offload",
        "n_cpu_moe",
        "fit_target",
        "fit_min_ctx",
        "flash_attn",
    ];
    const BOOL: [&str; 5] = [
        "no_kv_offload",
        "cpu_strict",
        "embeddings",
        "no_host",
        "repack",
    ];
    if INT.contains(&field) {
        "int"
    } else if BOOL.contains(&field) {
        "bool"
    } else if field == "avg_ts" || field == "stddev_ts" {
        "float"
    } else {
        "string"
    }
}

/// Dino's fields, after `samples_ns` and `samples_ts`.
pub const DINO_FIELDS: [&str; 6] = [
    "dino_peak_rss_bytes",
    "dino_energy_j_per_token",
    "dino_isa",
    "dino_kv_cache_bytes",
    "dino_sparsity",
    "dino_measured_sparsity",
];

/// `llama-bench`'s defaults for `-b` and `-ub`.
pub const DEFAULT_N_BATCH: usize = 2048;
pub const DEFAULT_N_UBATCH: usize = 512;

/// One test: what it feeds the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestSpec {
    /// Prompt tokens, processed in batches (0: none).
    pub n_prompt: usize,
    /// Tokens generated one at a time after the prompt (0: none).
    pub n_gen: usize,
    /// Logical batch (`-b`) and physical batch (`-ub`): prompt tokens go through the model
    /// `min(n_batch, n_ubatch)` at a time, as llama.cpp splits a batch into micro-batches.
    pub n_batch: usize,
    pub n_ubatch: usize,
    /// Tokens already in the cache when the test starts (`-d`; 0: an empty cache).
    pub n_depth: usize,
    /// The KV cache's element types (`-ctk`, `-ctv`).
    pub kv_types: KvTypes,
}

impl TestSpec {
    /// `llama-bench`'s test name: `pp512`, `tg128`, `pp512+tg128`, with ` @ d<N>` at a depth.
    pub fn name(&self) -> String {
        let name = match (self.n_prompt, self.n_gen) {
            (p, 0) => format!("pp{p}"),
            (0, g) => format!("tg{g}"),
            (p, g) => format!("pp{p}+tg{g}"),
        };
        match self.n_depth {
            0 => name,
            d => format!("{name} @ d{d}"),
        }
    }
    /// Tokens per repetition (the numerator of tokens/s).
    pub fn n_tokens(&self) -> usize {
        self.n_prompt + self.n_gen
    }
    fn step(&self) -> usize {
        self.n_batch.min(self.n_ubatch).max(1)
    }
}

/// How to run a test.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Timed repetitions (at least 1).
    pub reps: usize,
    /// Run the test once untimed first.
    pub warmup: bool,
    /// Seed of the random token ids.
    pub seed: u64,
}

/// What one test measured.
#[derive(Clone, Debug, Default)]
pub struct Measurement {
    /// Wall time of each timed repetition.
    pub samples_ns: Vec<u64>,
    /// Peak resident memory during the test (warm-up included); `None` where unknown.
    pub peak_rss_bytes: Option<u64>,
    /// Package energy over the timed repetitions; `None` without a meter or on a bad reading.
    pub energy_j: Option<f64>,
    /// Bytes of the test's KV cache (depth, prompt and generated positions).
    pub kv_cache_bytes: u64,
}

/// Progress of [`run_test`], for the caller to report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Warmup,
    /// Repetition `i` (0-based) of `n`.
    Rep(usize, usize),
}

/// A small, seeded random source for token ids (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn token(&mut self, n_vocab: usize) -> u32 {
        (self.next() % n_vocab.max(1) as u64) as u32
    }
}

/// Reset this process's peak-RSS mark (`VmHWM`) to the current RSS, so the next
/// [`metrics::peak_rss_bytes`] covers only what follows. Linux only; `false` where it failed.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Run one test on `engine` with the thread counts it holds: a warm-up (unless disabled), then
/// `opts.reps` timed repetitions, each from an empty KV cache. Token ids are uniform over the
/// vocabulary, except that the prompt (or, without one, the first generated input) starts with
/// BOS when the tokenizer adds BOS, as `llama-bench` does.
pub fn run_test(
    engine: &Engine,
    spec: &TestSpec,
    opts: &RunOptions,
    energy: Option<&EnergyMeter>,
    mut progress: impl FnMut(Phase),
) -> Result<Measurement> {
    if spec.n_tokens() == 0 {
        return Err(Error::invalid("a test needs prompt or generated tokens"));
    }
    if opts.reps == 0 {
        return Err(Error::invalid("repetitions must be at least 1"));
    }
    let peak_known = reset_peak_rss();
    // Positions restart at the depth every repetition: the cache holds the depth's tokens
    // only again, as after llama_memory_clear and a restored state.
    let mut kv = engine.new_kv_typed(spec.n_depth + spec.n_tokens(), 1, spec.kv_types)?;
    let n_vocab = engine.tokenizer.n_vocab();
    let bos = if engine.tokenizer.add_bos() {
        engine.tokenizer.bos()
    } else {
        None
    };
    let mut rng = Rng(opts.seed);
    let mut logits = Logits::default();
    let mut batch = Batch::default();
    // [n_prompt] and [n_gen] token ids, drawn before the clock starts.
    let mut prompt = vec![0u32; spec.n_prompt];
    let mut gen = vec![0u32; spec.n_gen];
    let draw = |prompt: &mut [u32], gen: &mut [u32], rng: &mut Rng| {
        for (i, t) in prompt.iter_mut().enumerate() {
            *t = match bos {
                Some(b) if i == 0 => b,
                _ => rng.token(n_vocab),
            };
        }
        for (i, t) in gen.iter_mut().enumerate() {
            *t = match bos {
                Some(b) if i == 0 && prompt.is_empty() => b,
                _ => rng.token(n_vocab),
            };
        }
    };
    // `prompt` at positions from `at` (a prompt, or the depth), then `gen` one at a time.
    let mut run = |at: usize, prompt: &[u32], gen: &[u32], logits: &mut Logits| -> Result<()> {
        let step = spec.step();
        for (i, chunk) in prompt.chunks(step).enumerate() {
            batch.clear();
            for (j, &t) in chunk.iter().enumerate() {
                batch.push(t, (at + i * step + j) as u32, 0, j + 1 == chunk.len());
            }
            engine.forward(&batch, &mut kv, logits)?;
        }
        for (j, &t) in gen.iter().enumerate() {
            batch.clear();
            batch.push(t, (at + prompt.len() + j) as u32, 0, true);
            engine.forward(&batch, &mut kv, logits)?;
        }
        Ok(())
    };
    if opts.warmup {
        progress(Phase::Warmup);
        draw(&mut prompt, &mut gen, &mut rng);
        let warm_gen = &gen[..gen.len().min(1)];
        run(0, &prompt, warm_gen, &mut logits)?;
    }
    if spec.n_depth > 0 {
        // The depth's tokens, once: each repetition writes its own positions after them.
        let mut depth = vec![0u32; spec.n_depth];
        draw(&mut depth, &mut [], &mut rng);
        run(0, &depth, &[], &mut logits)?;
    }
    let mut m = Measurement::default();
    let mut joules = energy.map(|_| 0.0);
    for i in 0..opts.reps {
        progress(Phase::Rep(i, opts.reps));
        draw(&mut prompt, &mut gen, &mut rng);
        let e0 = energy.and_then(|e| e.read());
        let t0 = Instant::now();
        run(spec.n_depth, &prompt, &gen, &mut logits)?;
        let ns = t0.elapsed().as_nanos().max(1);
        let e1 = energy.and_then(|e| e.read());
        m.samples_ns.push(u64::try_from(ns).unwrap_or(u64::MAX));
        joules = match (joules, energy, e0, e1) {
            (Some(j), Some(meter), Some(a), Some(b)) => meter.joules_between(&a, &b).map(|d| j + d),
            _ => None,
        };
    }
    m.energy_j = joules;
    m.kv_cache_bytes = kv.bytes();
    m.peak_rss_bytes = if peak_known {
        metrics::peak_rss_bytes()
    } else {
        None
    };
    Ok(m)
}

/// Mean of integer samples, truncated, as `llama-bench`'s `avg<uint64_t>` (0 when empty).
pub fn avg_u64(v: &[u64]) -> u64 {
    if v.is_empty() {
        return 0;
    }
    (v.iter().map(|&x| x as u128).sum::<u128>() / v.len() as u128) as u64
}

/// Sample standard deviation (n - 1), truncated to an integer (0 for fewer than two samples).
pub fn stddev_u64(v: &[u64]) -> u64 {
    stddev(&v.iter().map(|&x| x as f64).collect::<Vec<_>>()) as u64
}

/// Mean (0 when empty).
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

/// Sample standard deviation (n - 1), as `llama-bench`'s `stdev` (0 for fewer than two).
pub fn stddev(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    let ss: f64 = v.iter().map(|x| (x - m) * (x - m)).sum();
    (ss / (v.len() - 1) as f64).sqrt()
}

/// What `llama-bench` reports about a model file.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFacts {
    /// `"{arch} {size} {file type}"`, as `llama_model_desc` (e.g. `llama 135M Q4_1`); the size
    /// comes from the parameter count where llama.cpp uses a per-architecture table.
    pub model_type: String,
    /// Bytes of tensor data.
    pub model_size: u64,
    /// Elements of all tensors.
    pub model_n_params: u64,
}

impl ModelFacts {
    pub fn from_gguf(file: &GgufFile, arch: &str) -> ModelFacts {
        let model_size = file.tensors().iter().map(|t| t.size).sum();
        let model_n_params = file.tensors().iter().map(|t| t.n_elements()).sum();
        let ftype = match file
            .metadata()
            .get("general.file_type")
            .and_then(|v| v.as_int())
        {
            Some(id) => ftype_name(id as i64).map_or_else(|| format!("ftype {id}"), str::to_string),
            None => guess_ftype(file),
        };
        ModelFacts {
            model_type: format!("{arch} {} {ftype}", size_label(model_n_params)),
            model_size,
            model_n_params,
        }
    }
}

/// `llama_model_ftype_name` for `general.file_type` values.
pub fn ftype_name(id: i64) -> Option<&'static str> {
    Some(match id {
        0 => "all F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K - Medium",
        11 => "Q3_K - Small",
        12 => "Q3_K - Medium",
        13 => "Q3_K - Large",
        14 => "Q4_K - Small",
        15 => "Q4_K - Medium",
        16 => "Q5_K - Small",
        17 => "Q5_K - Medium",
        18 => "Q6_K",
        19 => "IQ2_XXS - 2.0625 bpw",
        20 => "IQ2_XS - 2.3125 bpw",
        21 => "Q2_K - Small",
        22 => "IQ3_XS - 3.3 bpw",
        23 => "IQ3_XXS - 3.0625 bpw",
        24 => "IQ1_S - 1.5625 bpw",
        25 => "IQ4_NL - 4.5 bpw",
        26 => "IQ3_S - 3.4375 bpw",
        27 => "IQ3_S mix - 3.66 bpw",
        28 => "IQ2_S - 2.5 bpw",
        29 => "IQ2_M - 2.7 bpw",
        30 => "IQ4_XS - 4.25 bpw",
        31 => "IQ1_M - 1.75 bpw",
        32 => "BF16",
        36 => "TQ1_0 - 1.69 bpw ternary",
        37 => "TQ2_0 - 2.06 bpw ternary",
        38 => "MXFP4 MoE",
        _ => return None,
    })
}

/// Without `general.file_type`: the most common type of the 2-D tensors, as llama.cpp guesses.
fn guess_ftype(file: &GgufFile) -> String {
    let mut count: HashMap<GgmlType, usize> = HashMap::new();
    for t in file.tensors().iter().filter(|t| t.dims.len() >= 2) {
        *count.entry(t.ty).or_default() += 1;
    }
    let ty = count
        .into_iter()
        .max_by_key(|&(t, n)| (n, std::cmp::Reverse(t.id())))
        .map(|(t, _)| t);
    match ty {
        Some(GgmlType::F32) => "(guessed) all F32".into(),
        Some(t) => format!("(guessed) {}", t.name().to_uppercase()),
        None => "(guessed) unknown".into(),
    }
}

/// `293K`, `135M`, `1.1B`, `14B`.
pub fn size_label(n_params: u64) -> String {
    let n = n_params as f64;
    if n < 1e6 {
        format!("{}K", (n / 1e3).round() as u64)
    } else if n < 1e9 {
        format!("{}M", (n / 1e6).round() as u64)
    } else if n < 1e10 {
        let s = format!("{:.1}", n / 1e9);
        format!("{}B", s.strip_suffix(".0").unwrap_or(&s))
    } else {
        format!("{}B", (n / 1e9).round() as u64)
    }
}

/// The CPU's name (`model name` in `/proc/cpuinfo`), as llama.cpp's CPU backend describes it.
pub fn cpu_info() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name" || k.trim() == "Model").then(|| v.trim().to_string())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// The kernel level in use (`avx2`, `scalar`).
pub fn isa_name() -> &'static str {
    dino_kernels::dispatch::isa().name()
}

/// Threads used when none are given: all cores.
pub fn default_threads() -> usize {
    dino_kernels::pool::default_threads()
}

/// `now` as RFC 3339 UTC to the second (`2025-01-31T12:00:00Z`), as `llama-bench`'s `test_time`.
pub fn rfc3339_utc(now: SystemTime) -> String {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// One result row: everything `llama-bench` prints for a test, plus Dino's measurements.
#[derive(Clone, Debug)]
pub struct BenchRecord {
    pub build_commit: String,
    pub build_number: u64,
    pub cpu_info: String,
    pub model_filename: String,
    pub model: ModelFacts,
    pub n_threads: usize,
    pub spec: TestSpec,
    pub test_time: String,
    pub samples_ns: Vec<u64>,
    pub peak_rss_bytes: Option<u64>,
    pub energy_j: Option<f64>,
    pub isa: String,
    /// Weights repacked at load into the kernels' interleaved layouts (`--repack`).
    pub repack: bool,
    /// Bytes of the test's KV cache.
    pub kv_cache_bytes: u64,
    /// Target activation sparsity (`--sparsity`; 0: dense).
    pub sparsity: f32,
    /// With sparsity: the share of the sparsified matrices' weights whose input was zero, over
    /// the engine's passes so far.
    pub measured_sparsity: Option<f64>,
}

/// A field value with `llama-bench`'s JSON type.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    Str(String),
    Int(i128),
    Bool(bool),
    /// Printed as C's `%f` (6 decimals), as `std::to_string(double)`.
    Float(f64),
    /// Printed with Rust's shortest round-trip form; `null` when `None`.
    OptFloat(Option<f64>),
    OptInt(Option<u64>),
}

impl FieldValue {
    fn json(&self) -> String {
        match self {
            FieldValue::Str(s) => json_string(s),
            FieldValue::Int(i) => i.to_string(),
            FieldValue::Bool(b) => b.to_string(),
            FieldValue::Float(x) => json_float(*x, |x| format!("{x:.6}")),
            FieldValue::OptFloat(x) => {
                x.map_or("null".into(), |x| json_float(x, |x| x.to_string()))
            }
            FieldValue::OptInt(x) => x.map_or("null".into(), |x| x.to_string()),
        }
    }
    /// `llama-bench`'s CSV text (`std::to_string` forms; booleans as 0/1; nothing for null).
    fn text(&self) -> String {
        match self {
            FieldValue::Str(s) => s.clone(),
            FieldValue::Int(i) => i.to_string(),
            FieldValue::Bool(b) => u8::from(*b).to_string(),
            FieldValue::Float(x) => format!("{x:.6}"),
            FieldValue::OptFloat(x) => x.map_or(String::new(), |x| x.to_string()),
            FieldValue::OptInt(x) => x.map_or(String::new(), |x| x.to_string()),
        }
    }
}

fn json_float(x: f64, f: impl Fn(f64) -> String) -> String {
    if x.is_finite() {
        f(x)
    } else {
        "null".into()
    }
}

fn json_string(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// C++ `ostream << double` with the default precision: `%g` with 6 significant digits.
fn fmt_g6(x: f64) -> String {
    if !x.is_finite() {
        return "null".into();
    }
    if x == 0.0 {
        return "0".into();
    }
    let exp = x.abs().log10().floor() as i32;
    let trim = |s: String| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if (-4..6).contains(&exp) {
        let decimals = (5 - exp).max(0) as usize;
        let s = trim(format!("{x:.decimals$}"));
        // Rounding may have carried into a seventh digit (999999.5 -> 1000000): use %e then.
        if s.trim_start_matches('-')
            .split('.')
            .next()
            .unwrap_or("")
            .len()
            <= 6
        {
            return s;
        }
    }
    let s = format!("{x:.5e}");
    let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
    let e: i32 = e.parse().unwrap_or(0);
    format!(
        "{}e{}{:02}",
        trim(m.to_string()),
        if e < 0 { '-' } else { '+' },
        e.abs()
    )
}

impl BenchRecord {
    /// Tokens/s of each repetition.
    pub fn samples_ts(&self) -> Vec<f64> {
        let n = self.spec.n_tokens() as f64;
        self.samples_ns
            .iter()
            .map(|&ns| 1e9 * n / ns.max(1) as f64)
            .collect()
    }
    pub fn avg_ts(&self) -> f64 {
        mean(&self.samples_ts())
    }
    pub fn stddev_ts(&self) -> f64 {
        stddev(&self.samples_ts())
    }
    /// Joules per processed token over the timed repetitions.
    pub fn energy_j_per_token(&self) -> Option<f64> {
        let tokens = (self.spec.n_tokens() * self.samples_ns.len()) as f64;
        self.energy_j.filter(|_| tokens > 0.0).map(|j| j / tokens)
    }

    /// The `llama-bench` fields in its order. Settings Dino does not have carry the value that
    /// describes what Dino does (no GPU: 0 layers offloaded, devices `none`; always the
    /// flash-attention path; weights mmap'd), or `llama-bench`'s default.
    pub fn llama_fields(&self) -> Vec<(&'static str, FieldValue)> {
        use FieldValue::*;
        let s = |v: &str| Str(v.to_string());
        let i = |v: u64| Int(v as i128);
        let samples_ns = &self.samples_ns;
        let values = vec![
            Str(self.build_commit.clone()),
            i(self.build_number),
            Str(self.cpu_info.clone()),
            s(""),
            s("CPU"),
            Str(self.model_filename.clone()),
            Str(self.model.model_type.clone()),
            i(self.model.model_size),
            i(self.model.model_n_params),
            i(self.spec.n_batch as u64),
            i(self.spec.n_ubatch as u64),
            i(self.n_threads as u64),
            s("0x0"),
            Bool(false),
            Int(50),
            s(self.spec.kv_types.k.name()),
            s(self.spec.kv_types.v.name()),
            Int(0),
            Int(0),
            s("none"),
            Int(0),
            Bool(false),
            Int(1),
            s("none"),
            s("0.00"),
            s("none"),
            s("mmap"),
            s("off"),
            Bool(false),
            Int(0),
            Bool(false),
            Bool(self.repack),
            Int(0),
            Int(0),
            i(self.spec.n_prompt as u64),
            i(self.spec.n_gen as u64),
            i(self.spec.n_depth as u64),
            Str(self.test_time.clone()),
            i(avg_u64(samples_ns)),
            i(stddev_u64(samples_ns)),
            Float(self.avg_ts()),
            Float(self.stddev_ts()),
        ];
        LLAMA_BENCH_FIELDS.into_iter().zip(values).collect()
    }

    /// Dino's fields.
    pub fn dino_fields(&self) -> Vec<(&'static str, FieldValue)> {
        let values = vec![
            FieldValue::OptInt(self.peak_rss_bytes),
            FieldValue::OptFloat(self.energy_j_per_token()),
            FieldValue::Str(self.isa.clone()),
            FieldValue::Int(self.kv_cache_bytes as i128),
            FieldValue::Float(self.sparsity as f64),
            FieldValue::OptFloat(self.measured_sparsity),
        ];
        DINO_FIELDS.into_iter().zip(values).collect()
    }

    fn samples_json(&self) -> (String, String) {
        let ns: Vec<String> = self.samples_ns.iter().map(|x| x.to_string()).collect();
        let ts: Vec<String> = self.samples_ts().into_iter().map(fmt_g6).collect();
        (ns.join(", "), ts.join(", "))
    }

    /// One JSON object laid out as `llama-bench -o json` prints it (two-space indent, no
    /// trailing newline).
    pub fn to_json(&self) -> String {
        let mut o = String::from("  {\n");
        for (k, v) in self.llama_fields() {
            let _ = writeln!(o, "    \"{k}\": {},", v.json());
        }
        let (ns, ts) = self.samples_json();
        let _ = writeln!(o, "    \"samples_ns\": [ {ns} ],");
        let _ = writeln!(o, "    \"samples_ts\": [ {ts} ],");
        let dino = self.dino_fields();
        for (n, (k, v)) in dino.iter().enumerate() {
            let sep = if n + 1 == dino.len() { "" } else { "," };
            let _ = writeln!(o, "    \"{k}\": {}{sep}", v.json());
        }
        o.push_str("  }");
        o
    }

    /// One JSON object on one line, as `llama-bench -o jsonl`.
    pub fn to_jsonl(&self) -> String {
        let mut o = String::from("{");
        for (k, v) in self.llama_fields() {
            let _ = write!(o, "\"{k}\": {}, ", v.json());
        }
        let (ns, ts) = self.samples_json();
        let _ = write!(o, "\"samples_ns\": [ {ns} ], \"samples_ts\": [ {ts} ]");
        for (k, v) in self.dino_fields() {
            let _ = write!(o, ", \"{k}\": {}", v.json());
        }
        o.push('}');
        o
    }

    /// The CSV header matching [`to_csv`](Self::to_csv): `llama-bench`'s fields, then Dino's.
    pub fn csv_header() -> String {
        LLAMA_BENCH_FIELDS
            .iter()
            .chain(DINO_FIELDS.iter())
            .copied()
            .collect::<Vec<_>>()
            .join(",")
    }

    /// One CSV row, every value quoted as `llama-bench -o csv` does.
    pub fn to_csv(&self) -> String {
        self.llama_fields()
            .into_iter()
            .chain(self.dino_fields())
            .map(|(_, v)| format!("\"{}\"", v.text().replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `llama-bench`'s markdown table with Dino's columns (peak RSS, KV cache, J/token) at the
/// end.
#[derive(Clone, Debug)]
pub struct MarkdownTable {
    columns: Vec<&'static str>,
}

/// The optional columns of a [`MarkdownTable`]: as in `llama-bench`, each appears when its
/// setting varies or differs from the default.
#[derive(Clone, Copy, Debug, Default)]
pub struct OptionalColumns {
    pub n_batch: bool,
    pub n_ubatch: bool,
    pub type_k: bool,
    pub type_v: bool,
    pub repack: bool,
    pub sparsity: bool,
}

impl MarkdownTable {
    pub fn new(show: OptionalColumns) -> MarkdownTable {
        let mut columns = vec!["model", "size", "params", "backend", "n_threads"];
        for (on, col) in [
            (show.n_batch, "n_batch"),
            (show.n_ubatch, "n_ubatch"),
            (show.type_k, "type_k"),
            (show.type_v, "type_v"),
            (show.repack, "repack"),
            (show.sparsity, "sparsity"),
        ] {
            if on {
                columns.push(col);
            }
        }
        columns.extend(["test", "t/s", "peak RSS", "KV cache", "J/token"]);
        MarkdownTable { columns }
    }

    /// Width as `llama-bench` (negative: left-aligned).
    fn width(col: &str) -> i32 {
        match col {
            "model" => -30,
            "t/s" => 20,
            "size" | "params" | "peak RSS" | "KV cache" => 10,
            "type_k" | "type_v" => 6,
            "n_threads" | "n_batch" => 7,
            "n_ubatch" => 8,
            "repack" => 3,
            "sparsity" => 8,
            "test" => 15,
            "backend" => -10,
            "J/token" => 9,
            _ => 10,
        }
    }

    fn display_name(col: &str) -> &str {
        match col {
            "n_threads" => "threads",
            "repack" => "rpk",
            _ => col,
        }
    }

    fn line(cells: impl Iterator<Item = (i32, String)>) -> String {
        let mut o = String::from("|");
        for (w, v) in cells {
            let n = w.unsigned_abs() as usize;
            if w < 0 {
                let _ = write!(o, " {v:<n$} |");
            } else {
                let _ = write!(o, " {v:>n$} |");
            }
        }
        o
    }

    /// The header and separator lines.
    pub fn header(&self) -> String {
        let names = Self::line(
            self.columns
                .iter()
                .map(|c| (Self::width(c), Self::display_name(c).to_string())),
        );
        let mut sep = String::from("|");
        for c in &self.columns {
            let w = Self::width(c);
            let _ = write!(
                sep,
                " {}{} |",
                "-".repeat(w.unsigned_abs() as usize - 1),
                if w > 0 { ':' } else { '-' }
            );
        }
        format!("{names}\n{sep}")
    }

    /// One result line.
    pub fn row(&self, r: &BenchRecord) -> String {
        Self::line(self.columns.iter().map(|&c| {
            let v = match c {
                "model" => r.model.model_type.clone(),
                "size" => {
                    let b = r.model.model_size as f64;
                    if r.model.model_size < 1 << 30 {
                        format!("{:.2} MiB", b / 1024.0 / 1024.0)
                    } else {
                        format!("{:.2} GiB", b / 1024.0 / 1024.0 / 1024.0)
                    }
                }
                "params" => {
                    let p = r.model.model_n_params as f64;
                    if p < 1e9 {
                        format!("{:.2} M", p / 1e6)
                    } else {
                        format!("{:.2} B", p / 1e9)
                    }
                }
                "backend" => "CPU".into(),
                "n_threads" => r.n_threads.to_string(),
                "n_batch" => r.spec.n_batch.to_string(),
                "n_ubatch" => r.spec.n_ubatch.to_string(),
                "repack" => u8::from(r.repack).to_string(),
                "sparsity" => format!("{:.2}", r.sparsity),
                "type_k" => r.spec.kv_types.k.name().to_string(),
                "type_v" => r.spec.kv_types.v.name().to_string(),
                "KV cache" => format!("{:.1} MiB", r.kv_cache_bytes as f64 / 1048576.0),
                "test" => r.spec.name(),
                "t/s" => format!("{:.2} ± {:.2}", r.avg_ts(), r.stddev_ts()),
                "peak RSS" => r
                    .peak_rss_bytes
                    .map_or("n/a".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
                "J/token" => r
                    .energy_j_per_token()
                    .map_or("n/a".into(), |j| format!("{j:.4}")),
                _ => String::new(),
            };
            (Self::width(c), v)
        }))
    }

    /// The closing line, as `llama-bench`'s.
    pub fn footer(build_commit: &str, build_number: u64) -> String {
        format!("\nbuild: {build_commit} ({build_number})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> BenchRecord {
        BenchRecord {
            build_commit: "abc1234".into(),
            build_number: 12,
            cpu_info: "Test \"CPU\"".into(),
            model_filename: "/m/x.gguf".into(),
            model: ModelFacts {
                model_type: "llama 135M Q4_1".into(),
                model_size: 96_576_768,
                model_n_params: 134_515_008,
            },
            n_threads: 2,
            spec: TestSpec {
                n_prompt: 32,
                n_gen: 0,
                n_batch: 2048,
                n_ubatch: 512,
                n_depth: 0,
                kv_types: KvTypes::default(),
            },
            test_time: "2025-01-01T00:00:00Z".into(),
            samples_ns: vec![100_000_000, 200_000_000],
            peak_rss_bytes: Some(123 << 20),
            energy_j: None,
            isa: "avx2".into(),
            repack: true,
            kv_cache_bytes: 3 << 20,
            sparsity: 0.0,
            measured_sparsity: None,
        }
    }

    #[test]
    fn stats_match_llama_bench() {
        assert_eq!(avg_u64(&[]), 0);
        assert_eq!(avg_u64(&[1, 2]), 1); // truncated, as integer division
        assert_eq!(avg_u64(&[u64::MAX, u64::MAX]), u64::MAX);
        assert_eq!(stddev_u64(&[5]), 0);
        // llama-bench printed stddev_ns 674378978 for these two samples.
        assert_eq!(stddev_u64(&[1_033_056_945, 79_341_047]), 674_378_978);
        assert_eq!(mean(&[]), 0.0);
        assert!((mean(&[1.0, 2.0, 6.0]) - 3.0).abs() < 1e-12);
        assert!((stddev(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]) - 2.138_089_935).abs() < 1e-8);
        assert_eq!(stddev(&[3.0]), 0.0);
        let r = record();
        // 32 tokens in 0.1 s and 0.2 s: 320 and 160 t/s.
        assert_eq!(r.samples_ts(), vec![320.0, 160.0]);
        assert!((r.avg_ts() - 240.0).abs() < 1e-9);
        assert!((r.stddev_ts() - 113.137_084_99).abs() < 1e-6);
    }

    #[test]
    fn test_names() {
        let t = |p, g| TestSpec {
            n_prompt: p,
            n_gen: g,
            n_batch: 512,
            n_ubatch: 512,
            n_depth: 0,
            kv_types: KvTypes::default(),
        };
        assert_eq!(t(512, 0).name(), "pp512");
        assert_eq!(t(0, 128).name(), "tg128");
        assert_eq!(t(16, 4).name(), "pp16+tg4");
        assert_eq!(t(16, 4).n_tokens(), 20);
        let d = TestSpec {
            n_depth: 2048,
            ..t(0, 128)
        };
        assert_eq!(d.name(), "tg128 @ d2048");
        assert_eq!(d.n_tokens(), 128);
    }

    fn check_object(o: &serde_json::Map<String, serde_json::Value>) {
        let mut want: Vec<&str> = LLAMA_BENCH_FIELDS.to_vec();
        want.extend(["samples_ns", "samples_ts"]);
        want.extend(DINO_FIELDS);
        let keys: Vec<&str> = o.keys().map(|k| k.as_str()).collect();
        let mut sorted = want.clone();
        sorted.sort();
        let mut got = keys.clone();
        got.sort();
        assert_eq!(got, sorted);
        for f in LLAMA_BENCH_FIELDS {
            let v = &o[f];
            let ok = match llama_bench_field_type(f) {
                "int" => v.is_i64() || v.is_u64(),
                "bool" => v.is_boolean(),
                "float" => v.is_number(),
                _ => v.is_string(),
            };
            assert!(ok, "{f} = {v} is not a {}", llama_bench_field_type(f));
        }
        assert!(o["samples_ns"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x.is_u64()));
        assert!(o["samples_ts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x.is_number()));
        assert!(o["dino_peak_rss_bytes"].is_u64() || o["dino_peak_rss_bytes"].is_null());
        assert!(o["dino_energy_j_per_token"].is_number() || o["dino_energy_j_per_token"].is_null());
        assert!(o["dino_isa"].is_string());
        assert!(o["dino_kv_cache_bytes"].is_u64());
    }

    #[test]
    fn json_has_llama_bench_fields_and_types() {
        let mut r = record();
        let v: serde_json::Value = serde_json::from_str(&format!("[\n{}\n]", r.to_json())).unwrap();
        let o = v[0].as_object().unwrap();
        check_object(o);
        assert_eq!(o["cpu_info"], "Test \"CPU\"");
        assert_eq!(o["avg_ns"], 150_000_000);
        assert_eq!(o["samples_ts"], serde_json::json!([320, 160]));
        assert!(o["dino_energy_j_per_token"].is_null());
        // The order of llama-bench's fields is kept.
        let text = r.to_json();
        let pos: Vec<usize> = LLAMA_BENCH_FIELDS
            .iter()
            .map(|f| text.find(&format!("\"{f}\":")).unwrap())
            .collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]));

        r.energy_j = Some(6.4);
        let line = r.to_jsonl();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        check_object(v.as_object().unwrap());
        // 6.4 J over 2 reps of 32 tokens.
        assert!((v["dino_energy_j_per_token"].as_f64().unwrap() - 0.1).abs() < 1e-12);
    }

    #[test]
    fn csv_quotes_every_value() {
        let r = record();
        let header = BenchRecord::csv_header();
        let row = r.to_csv();
        assert_eq!(header.split(',').count(), 48);
        assert!(
            row.starts_with("\"abc1234\",\"12\",\"Test \"\"CPU\"\"\","),
            "{row}"
        );
        assert!(
            row.ends_with(",\"avx2\",\"3145728\",\"0.000000\",\"\""),
            "{row}"
        );
    }

    #[test]
    fn markdown_matches_llama_bench_layout() {
        let t = MarkdownTable::new(OptionalColumns::default());
        let h = t.header();
        assert!(h.starts_with(
            "| model                          |       size |     params | backend    | threads |            test |                  t/s |"
        ), "{h}");
        assert!(h.contains("\n| ------------------------------ | ---------: | ---------: | ---------- | ------: | --------------: | -------------------: |"), "{h}");
        let row = t.row(&record());
        assert!(row.starts_with(
            "| llama 135M Q4_1                |  92.10 MiB |   134.52 M | CPU        |       2 |            pp32 |      240.00 ± 113.14 |"
        ), "{row}");
        assert!(
            row.ends_with("  123.0 MiB |    3.0 MiB |       n/a |"),
            "{row}"
        );
        assert_eq!(MarkdownTable::footer("abc", 3), "\nbuild: abc (3)");
        let t = MarkdownTable::new(OptionalColumns {
            n_batch: true,
            n_ubatch: true,
            type_k: true,
            type_v: true,
            repack: true,
            sparsity: true,
        });
        assert!(
            t.header()
                .contains("| n_batch | n_ubatch | type_k | type_v | rpk | sparsity |"),
            "{}",
            t.header()
        );
        let mut r = record();
        r.spec.kv_types.k = crate::KvType::Q8_0;
        r.sparsity = 0.4;
        assert!(t
            .row(&r)
            .contains("|    2048 |      512 |   q8_0 |    f16 |   1 |     0.40 |"));
    }

    #[test]
    fn number_formats() {
        assert_eq!(fmt_g6(30.976_123), "30.9761");
        assert_eq!(fmt_g6(403.322_4), "403.322");
        assert_eq!(fmt_g6(160.0), "160");
        assert_eq!(fmt_g6(1_234_567.0), "1.23457e+06");
        assert_eq!(fmt_g6(0.000_012_345_67), "1.23457e-05");
        assert_eq!(fmt_g6(0.5), "0.5");
        assert_eq!(size_label(292_800), "293K");
        assert_eq!(size_label(134_515_008), "135M");
        assert_eq!(size_label(1_100_048_384), "1.1B");
        assert_eq!(size_label(7_000_000_000), "7B");
        assert_eq!(size_label(14_770_033_664), "15B");
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_709_210_096);
        assert_eq!(rfc3339_utc(t), "2024-02-29T12:34:56Z");
        assert_eq!(ftype_name(15), Some("Q4_K - Medium"));
        assert_eq!(ftype_name(4), None);
    }
}
