//! `dino bench`: llama-bench's command line, tests and output formats on Dino's engine.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use dino_engine::bench::{
    cpu_info, default_threads, isa_name, rfc3339_utc, run_test, BenchRecord, MarkdownTable,
    ModelFacts, OptionalColumns, Phase, RunOptions, TestSpec, DEFAULT_N_BATCH, DEFAULT_N_UBATCH,
};
use dino_engine::energy::EnergyMeter;
use dino_engine::{Engine, EngineOptions, KvType, KvTypes};
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Markdown table (llama-bench's default).
    Md,
    /// One JSON array of result objects.
    Json,
    /// One JSON object per line.
    Jsonl,
    /// A header line, then one quoted row per test.
    Csv,
}

#[derive(Args)]
#[command(
    after_help = "Measure prompt processing and generation speed the way llama.cpp's llama-bench does, \
        with its flags and its output formats and field names, so tools written for llama-bench read the results.\n\n\
        Tests: pp<N> processes N random prompt tokens (in batches of min(-b, -ub)) into an empty KV cache; \
        tg<N> generates N tokens one at a time from an empty cache, feeding random tokens; -pg gives a \
        prompt followed by generation, timed together. Each test runs once untimed (warm-up), then -r timed \
        repetitions; t/s is the mean over repetitions of tokens / time, ± the sample standard deviation.\n\n\
        Every list flag takes comma-separated values or ranges (first-last, first-last+step, \
        first-last*mult) and may be repeated; every combination of model, -b, -ub and -t runs every test.\n\n\
        Dino adds two measurements, and the kernel level in use (JSON fields dino_peak_rss_bytes, \
        dino_energy_j_per_token, dino_isa):\n  \
        peak RSS   the process's peak resident memory while loading the model and running the test \
        (Linux; the high-water mark is reset before each load and each test, the load's peak is kept, and \
        the mmap'd weights count once paged in). A single-test run's figure is the whole process's peak, \
        what /usr/bin/time -v reports\n  \
        J/token    CPU package energy over the timed repetitions divided by the tokens processed, from the \
        RAPL counters under /sys/class/powercap (usually root-only; it counts everything the package did, \
        so keep the machine otherwise idle); n/a (JSON null) when no counter is readable.\n\n\
        Results go to stdout, progress to stderr."
)]
pub struct BenchArgs {
    /// Model(s): GGUF files, Hugging Face checkpoint directories or catalog names (see `dino pull --list`), comma-separated or
    /// repeated. Default: SmolLM2-135M-Instruct Q4_1.
    #[arg(short = 'm', long = "model", value_name = "FILE")]
    model: Vec<String>,
    /// Prompt lengths of the pp tests (default: 512; 0 = no pp test).
    #[arg(short = 'p', long = "n-prompt", value_name = "N")]
    n_prompt: Vec<String>,
    /// Generation lengths of the tg tests (default: 128; 0 = no tg test).
    #[arg(short = 'n', long = "n-gen", value_name = "N")]
    n_gen: Vec<String>,
    /// A prompt of PP tokens then TG generated tokens, timed together (`-pg 512,128`); repeatable.
    #[arg(long = "pg", visible_alias = "n-pg", value_name = "PP,TG")]
    pg: Vec<String>,
    /// Depths: tokens already in the KV cache when each test starts (default: 0), filled once
    /// untimed; the test is named `tg128 @ d2048`.
    #[arg(short = 'd', long = "n-depth", value_name = "N")]
    n_depth: Vec<String>,
    /// KV cache types of the keys (`-ctk`): f16, q8_0, q4_0, comma-separated (default: f16).
    #[arg(long = "cache-type-k", value_name = "TYPE")]
    cache_type_k: Vec<String>,
    /// KV cache types of the values (`-ctv`): f16, q8_0, q4_0, comma-separated (default: f16).
    #[arg(long = "cache-type-v", value_name = "TYPE")]
    cache_type_v: Vec<String>,
    /// Logical batch size: prompt tokens submitted at once (default: 2048).
    #[arg(short = 'b', long = "batch-size", value_name = "N")]
    n_batch: Vec<String>,
    /// Physical batch size (`-ub`): prompt tokens per forward pass are min(-b, -ub) (default: 512).
    #[arg(long = "ubatch-size", value_name = "N")]
    n_ubatch: Vec<String>,
    /// Repack weights at load into the kernels' faster interleaved layouts, 0 or 1 (default: 1;
    /// 0 keeps the file's layout and llama.cpp's summation order).
    #[arg(long = "repack", value_name = "0|1")]
    repack: Vec<String>,
    /// Activation sparsity levels, comma-separated (e.g. 0,0.25,0.4,0.5; 0 = dense), with the
    /// thresholds of --thresholds (see `dino run --help`).
    #[arg(long = "sparsity", value_name = "P")]
    sparsity: Vec<String>,
    /// Activation thresholds for --sparsity, from `dino calibrate --save-thresholds FILE`.
    #[arg(long = "thresholds", value_name = "FILE")]
    thresholds: Option<PathBuf>,
    /// Thread counts (default: all cores).
    #[arg(short = 't', long = "threads", value_name = "N")]
    threads: Vec<String>,
    /// Timed repetitions of each test.
    #[arg(
        short = 'r',
        long = "repetitions",
        default_value_t = 5,
        value_name = "N"
    )]
    reps: usize,
    /// Output format on stdout.
    #[arg(short = 'o', long = "output", value_enum, default_value = "md")]
    output: OutputFormat,
    /// Skip the untimed warm-up run before each test.
    #[arg(long = "no-warmup")]
    no_warmup: bool,
    /// Seed of the random token ids.
    #[arg(long = "seed", default_value_t = 1)]
    seed: u64,
    /// Quantize Hugging Face checkpoint directories to this type at load (see `dino run --help`).
    #[arg(long = "quant", value_name = "TYPE", value_parser = crate::parse_ggml_type)]
    quant: Option<dino_core::GgmlType>,
}

/// Accept llama-bench's two-letter flags (`-pg`, `-ub`) after `dino bench`.
pub fn llama_bench_args(mut args: Vec<OsString>) -> Vec<OsString> {
    if args.get(1).and_then(|a| a.to_str()) != Some("bench") {
        return args;
    }
    for a in args.iter_mut().skip(2) {
        match a.to_str() {
            Some("-pg") => *a = "--pg".into(),
            Some("-ub") => *a = "--ubatch-size".into(),
            _ => {}
        }
    }
    args
}

/// Parse llama-bench's list syntax: values separated by commas, each a number or a range
/// `first-last`, `first-last+step` or `first-last*mult`; values below `min` are errors.
pub fn parse_list(flag: &str, values: &[String], min: usize) -> Result<Vec<usize>> {
    let num = |s: &str| -> Result<usize> {
        s.trim().parse::<usize>().with_context(|| {
            format!("{flag}: {s:?} is not a whole number (expected a list like 1,2,4 or a range like 1-8*2)")
        })
    };
    let mut out = Vec::new();
    for item in values.iter().flat_map(|v| v.split(',')) {
        let item = item.trim();
        if item.is_empty() {
            bail!("{flag}: empty value in the list");
        }
        match item.split_once('-') {
            None => out.push(num(item)?),
            Some((first, rest)) => {
                let (last, step, mul) = if let Some((l, s)) = rest.split_once('+') {
                    (l, num(s)?, false)
                } else if let Some((l, m)) = rest.split_once('*') {
                    (l, num(m)?, true)
                } else {
                    (rest, 1, false)
                };
                let (first, last) = (num(first)?, num(last)?);
                if first > last {
                    bail!("{flag}: range {item:?} runs backwards");
                }
                if step == 0 || (mul && (step < 2 || first == 0)) {
                    bail!("{flag}: range {item:?} never advances");
                }
                let mut x = first;
                while x <= last {
                    out.push(x);
                    x = if mul { x * step } else { x + step };
                }
            }
        }
    }
    if let Some(bad) = out.iter().find(|&&x| x < min) {
        bail!("{flag}: {bad} is too small (at least {min})");
    }
    Ok(out)
}

/// `-pg PP,TG` values.
pub fn parse_pairs(flag: &str, values: &[String]) -> Result<Vec<(usize, usize)>> {
    values
        .iter()
        .map(|v| {
            let n = parse_list(flag, std::slice::from_ref(v), 0)?;
            match n[..] {
                [pp, tg] if v.split(',').count() == 2 => Ok((pp, tg)),
                _ => bail!("{flag}: expected two numbers PP,TG (like 512,128), got {v:?}"),
            }
        })
        .collect()
}

/// KV cache type lists (`-ctk q8_0,f16`, repeatable).
pub fn parse_kv_types(flag: &str, values: &[String]) -> Result<Vec<KvType>> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(|t| {
            t.parse::<KvType>()
                .map_err(|e| anyhow::anyhow!("{flag}: {e}"))
        })
        .collect()
}

/// The models of `-m`: split on commas unless the whole value names an existing file.
fn model_names(values: &[String]) -> Vec<Option<String>> {
    if values.is_empty() {
        return vec![None];
    }
    values
        .iter()
        .flat_map(|v| {
            if Path::new(v).exists() {
                vec![Some(v.clone())]
            } else {
                v.split(',')
                    .map(|s| Some(s.trim().to_string()))
                    .collect::<Vec<_>>()
            }
        })
        .collect()
}

struct Plan {
    models: Vec<PathBuf>,
    n_batch: Vec<usize>,
    n_ubatch: Vec<usize>,
    threads: Vec<usize>,
    repack: Vec<bool>,
    /// Activation sparsity levels (0: dense) and their thresholds.
    sparsity: Vec<f32>,
    thresholds: Option<dino_engine::sparsity::Thresholds>,
    type_k: Vec<KvType>,
    type_v: Vec<KvType>,
    n_depth: Vec<usize>,
    quant: Option<dino_core::GgmlType>,
    /// (n_prompt, n_gen) in llama-bench's order: pp tests, tg tests, pg tests.
    tests: Vec<(usize, usize)>,
}

impl Plan {
    fn from_args(a: &BenchArgs) -> Result<Plan> {
        let or = |v: Vec<usize>, d: usize| if v.is_empty() { vec![d] } else { v };
        let n_prompt = or(parse_list("-p", &a.n_prompt, 0)?, 512);
        let n_gen = or(parse_list("-n", &a.n_gen, 0)?, 128);
        let pg = parse_pairs("-pg", &a.pg)?;
        let n_batch = or(parse_list("-b", &a.n_batch, 1)?, DEFAULT_N_BATCH);
        let n_ubatch = or(parse_list("-ub", &a.n_ubatch, 1)?, DEFAULT_N_UBATCH);
        let threads = or(parse_list("-t", &a.threads, 1)?, default_threads());
        let repack = or(parse_list("--repack", &a.repack, 0)?, 1);
        let n_depth = or(parse_list("-d", &a.n_depth, 0)?, 0);
        let types = |flag: &str, v: &[String]| -> Result<Vec<KvType>> {
            let t = parse_kv_types(flag, v)?;
            Ok(if t.is_empty() { vec![KvType::F16] } else { t })
        };
        let type_k = types("-ctk", &a.cache_type_k)?;
        let type_v = types("-ctv", &a.cache_type_v)?;
        if let Some(bad) = repack.iter().find(|&&r| r > 1) {
            bail!("--repack: {bad} is not 0 or 1");
        }
        let repack = repack.into_iter().map(|r| r == 1).collect();
        let mut sparsity = Vec::new();
        for v in a.sparsity.iter().flat_map(|v| v.split(',')) {
            let p: f32 = v
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("--sparsity: {v:?} is not a number"))?;
            if !(0.0..=0.99).contains(&p) {
                bail!("--sparsity: {p} is not between 0 and 0.99");
            }
            sparsity.push(p);
        }
        if sparsity.is_empty() {
            sparsity.push(0.0);
        }
        let thresholds = match &a.thresholds {
            Some(t) => Some(dino_engine::sparsity::Thresholds::load(t)?),
            None if sparsity.iter().any(|&p| p > 0.0) => {
                bail!(
                    "--sparsity needs --thresholds FILE (from `dino calibrate --save-thresholds`)"
                )
            }
            None => None,
        };
        if a.reps == 0 {
            bail!("-r: at least 1 repetition is needed");
        }
        let tests: Vec<(usize, usize)> = n_prompt
            .iter()
            .map(|&p| (p, 0))
            .chain(n_gen.iter().map(|&g| (0, g)))
            .chain(pg)
            .filter(|&(p, g)| p + g > 0)
            .collect();
        if tests.is_empty() {
            bail!("nothing to run: every -p, -n and -pg value is 0");
        }
        let opts = dino_hub::PullOptions::default();
        let models = model_names(&a.model)
            .into_iter()
            .map(|m| dino_hub::resolve_model(m.as_deref(), &opts))
            .collect::<Result<Vec<_>>>()?;
        Ok(Plan {
            models,
            n_batch,
            n_ubatch,
            threads,
            repack,
            sparsity,
            thresholds,
            type_k,
            type_v,
            n_depth,
            quant: a.quant,
            tests,
        })
    }

    fn n_runs(&self) -> usize {
        self.instances().len() * self.tests.len()
    }

    /// Every combination, in llama-bench's loop order (model, repack, -b, -ub, -ctk, -ctv, -t,
    /// -d); each runs every test.
    fn instances(&self) -> Vec<Instance> {
        let mut v = Vec::new();
        for model in 0..self.models.len() {
            for sparsity in 0..self.sparsity.len() {
                for &repack in &self.repack {
                    for &n_batch in &self.n_batch {
                        for &n_ubatch in &self.n_ubatch {
                            for &k in &self.type_k {
                                for &vt in &self.type_v {
                                    for &threads in &self.threads {
                                        for &n_depth in &self.n_depth {
                                            v.push(Instance {
                                                model,
                                                sparsity,
                                                repack,
                                                n_batch,
                                                n_ubatch,
                                                kv_types: KvTypes { k, v: vt },
                                                threads,
                                                n_depth,
                                            });
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        v
    }
}

/// One combination of the list flags.
#[derive(Clone, Copy, Debug)]
struct Instance {
    /// Index into `Plan::models`.
    model: usize,
    /// Index into `Plan::sparsity`.
    sparsity: usize,
    repack: bool,
    n_batch: usize,
    n_ubatch: usize,
    kv_types: KvTypes,
    threads: usize,
    n_depth: usize,
}

/// What an engine is loaded with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Load {
    model: usize,
    sparsity: usize,
    repack: bool,
    threads: usize,
}

/// Writes results in the chosen format as they arrive.
struct Printer {
    format: OutputFormat,
    table: MarkdownTable,
    n_printed: usize,
}

impl Printer {
    fn header(&self, out: &mut impl Write) -> std::io::Result<()> {
        match self.format {
            OutputFormat::Md => writeln!(out, "{}", self.table.header()),
            OutputFormat::Json => writeln!(out, "["),
            OutputFormat::Jsonl => Ok(()),
            OutputFormat::Csv => writeln!(out, "{}", BenchRecord::csv_header()),
        }?;
        out.flush()
    }
    fn record(&mut self, out: &mut impl Write, r: &BenchRecord) -> std::io::Result<()> {
        match self.format {
            OutputFormat::Md => writeln!(out, "{}", self.table.row(r)),
            OutputFormat::Json => {
                if self.n_printed > 0 {
                    writeln!(out, ",")?;
                }
                write!(out, "{}", r.to_json())
            }
            OutputFormat::Jsonl => writeln!(out, "{}", r.to_jsonl()),
            OutputFormat::Csv => writeln!(out, "{}", r.to_csv()),
        }?;
        self.n_printed += 1;
        out.flush()
    }
    fn footer(&self, out: &mut impl Write, commit: &str, number: u64) -> std::io::Result<()> {
        match self.format {
            OutputFormat::Md => writeln!(out, "{}", MarkdownTable::footer(commit, number)),
            OutputFormat::Json => writeln!(out, "\n]"),
            _ => Ok(()),
        }?;
        out.flush()
    }
}

fn n_threads(n: usize) -> String {
    format!("{n} thread{}", if n == 1 { "" } else { "s" })
}

pub fn cmd_bench(a: BenchArgs) -> Result<()> {
    let plan = Plan::from_args(&a)?;
    let build_commit = env!("DINO_BUILD_COMMIT");
    let build_number: u64 = env!("DINO_BUILD_NUMBER").parse().unwrap_or(0);
    let energy = match EnergyMeter::open() {
        Ok(m) => {
            eprintln!("energy: RAPL {}", m.zone_names().join(" + "));
            Some(m)
        }
        Err(why) => {
            eprintln!("energy: unavailable ({why})");
            None
        }
    };
    let cpu = cpu_info();
    eprintln!("bench: {cpu}, kernels {}", isa_name());
    let show = |v: &[usize], d: usize| v.len() > 1 || v[0] != d;
    let mut printer = Printer {
        format: a.output,
        table: MarkdownTable::new(OptionalColumns {
            n_batch: show(&plan.n_batch, DEFAULT_N_BATCH),
            n_ubatch: show(&plan.n_ubatch, DEFAULT_N_UBATCH),
            type_k: plan.type_k != [KvType::F16],
            type_v: plan.type_v != [KvType::F16],
            repack: plan.repack != [true],
            sparsity: plan.sparsity != [0.0],
        }),
        n_printed: 0,
    };
    let mut out = std::io::stdout().lock();
    printer.header(&mut out)?;
    let opts = RunOptions {
        reps: a.reps,
        warmup: !a.no_warmup,
        seed: a.seed,
    };
    let n_runs = plan.n_runs();
    let mut i_run = 0;
    // The engine for the current (model, repack, threads): one per thread count, so its pool
    // has exactly that many threads, as llama-bench makes a pool of n_threads for each test.
    let mut loaded: Option<(Load, Engine, ModelFacts)> = None;
    // The peak RSS of the current engine's load (when the high-water mark could be reset).
    let mut load_peak: Option<u64> = None;
    for inst in plan.instances() {
        let load = Load {
            model: inst.model,
            sparsity: inst.sparsity,
            repack: inst.repack,
            threads: inst.threads,
        };
        if loaded.as_ref().is_some_and(|(l, _, _)| *l != load) {
            loaded = None; // free the previous engine first
        }
        let (_, engine, facts) = match loaded {
            Some(ref l) => l,
            None => {
                let path = &plan.models[load.model];
                eprintln!(
                    "bench: loading {} with {}{}",
                    path.display(),
                    n_threads(load.threads),
                    if load.repack { "" } else { ", no repacking" }
                );
                let reset = dino_engine::bench::reset_peak_rss();
                let engine = Engine::load(
                    path,
                    &EngineOptions {
                        threads: load.threads,
                        threads_batch: load.threads,
                        warm_up: true,
                        no_repack: !load.repack,
                        quant: plan.quant,
                        sparsity: match (plan.sparsity[load.sparsity], &plan.thresholds) {
                            (p, Some(t)) if p > 0.0 => Some(t.sparsity(p)?),
                            _ => None,
                        },
                        ..Default::default()
                    },
                )
                .with_context(|| format!("loading {}", path.display()))?;
                let facts = ModelFacts::from_gguf(&engine.file, &engine.model.info().arch);
                load_peak = reset.then(dino_engine::metrics::peak_rss_bytes).flatten();
                loaded.insert((load, engine, facts))
            }
        };
        for &(n_prompt, n_gen) in &plan.tests {
            i_run += 1;
            let spec = TestSpec {
                n_prompt,
                n_gen,
                n_batch: inst.n_batch,
                n_ubatch: inst.n_ubatch,
                n_depth: inst.n_depth,
                kv_types: inst.kv_types,
            };
            let what = format!(
                "bench {i_run}/{n_runs}: {} {}, {}, KV cache {}",
                facts.model_type,
                spec.name(),
                n_threads(load.threads),
                spec.kv_types
            );
            eprintln!("{what}");
            let test_time = rfc3339_utc(SystemTime::now());
            let m = run_test(engine, &spec, &opts, energy.as_ref(), |_: Phase| {})
                .with_context(|| what.clone())?;
            let record = BenchRecord {
                build_commit: build_commit.to_string(),
                build_number,
                cpu_info: cpu.clone(),
                model_filename: plan.models[load.model].display().to_string(),
                model: facts.clone(),
                n_threads: load.threads,
                spec,
                test_time,
                samples_ns: m.samples_ns,
                // Loading belongs to the cost of running the test: its transient can be the peak.
                peak_rss_bytes: m.peak_rss_bytes.map(|p| p.max(load_peak.unwrap_or(0))),
                energy_j: m.energy_j,
                isa: isa_name().to_string(),
                repack: load.repack,
                kv_cache_bytes: m.kv_cache_bytes,
                sparsity: plan.sparsity[load.sparsity],
                measured_sparsity: engine.model.measured_sparsity(),
            };
            printer
                .record(&mut out, &record)
                .context("writing the results")?;
        }
    }
    printer
        .footer(&mut out, build_commit, build_number)
        .context("writing the results")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn lists_ranges_and_repeats() {
        assert_eq!(parse_list("-t", &s(&["1,2", "4"]), 1).unwrap(), [1, 2, 4]);
        assert_eq!(parse_list("-p", &s(&["0"]), 0).unwrap(), [0]);
        assert_eq!(parse_list("-p", &s(&["16-64*2"]), 0).unwrap(), [16, 32, 64]);
        assert_eq!(parse_list("-t", &s(&["1-7+3"]), 1).unwrap(), [1, 4, 7]);
        assert_eq!(parse_list("-t", &s(&["2-4"]), 1).unwrap(), [2, 3, 4]);
        assert!(parse_list("-t", &[], 1).unwrap().is_empty());
    }

    #[test]
    fn bad_lists_are_clear_errors() {
        let err = |flag: &str, v: &[&str], min| {
            format!("{:#}", parse_list(flag, &s(v), min).unwrap_err())
        };
        assert!(err("-t", &["0"], 1).contains("-t: 0 is too small"));
        assert!(err("-p", &["abc"], 0).contains("\"abc\" is not a whole number"));
        assert!(err("-p", &["1,,2"], 0).contains("empty value"));
        assert!(err("-p", &["8-2"], 0).contains("backwards"));
        assert!(err("-p", &["1-8*1"], 0).contains("never advances"));
        assert!(err("-p", &["-3"], 0).contains("not a whole number"));
        assert_eq!(
            parse_pairs("-pg", &s(&["512,128", "16,4"])).unwrap(),
            [(512, 128), (16, 4)]
        );
        for bad in ["512", "1,2,3", "a,b"] {
            assert!(parse_pairs("-pg", &s(&[bad])).is_err(), "{bad}");
        }
    }

    #[test]
    fn two_letter_flags_only_after_bench() {
        let v = |x: &[&str]| x.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            llama_bench_args(v(&["dino", "bench", "-pg", "1,2", "-ub", "8"])),
            v(&["dino", "bench", "--pg", "1,2", "--ubatch-size", "8"])
        );
        assert_eq!(
            llama_bench_args(v(&["dino", "run", "-pg"])),
            v(&["dino", "run", "-pg"])
        );
    }

    #[test]
    fn kv_type_lists() {
        assert_eq!(
            parse_kv_types("-ctk", &s(&["q8_0,f16", "Q4_0"])).unwrap(),
            [KvType::Q8_0, KvType::F16, KvType::Q4_0]
        );
        let e = format!("{:#}", parse_kv_types("-ctv", &s(&["q8"])).unwrap_err());
        assert!(e.contains("-ctv") && e.contains("q8_0"), "{e}");
    }

    #[test]
    fn model_lists_split_on_commas() {
        assert_eq!(model_names(&[]), [None]);
        assert_eq!(
            model_names(&s(&["a.gguf,b.gguf", "c"])),
            [
                Some("a.gguf".to_string()),
                Some("b.gguf".to_string()),
                Some("c".to_string())
            ]
        );
    }
}
