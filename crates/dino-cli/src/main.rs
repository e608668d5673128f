//! `dino`: run, inspect, score and fetch GGUF language models on the CPU.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use dino_core::GgmlType;
use dino_engine::metrics::{fmt_bytes, peak_rss_bytes};
use dino_engine::{
    generate, perplexity, ConvertOptions, Engine, EngineOptions, GenerateParams, PerplexityOptions,
    SamplerConfig,
};
use dino_formats::gguf::GgufFile;
use dino_formats::hf::OutType;
use dino_hub as pull;
use std::io::{IsTerminal, Read, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;

mod bench;
mod chat;
mod serve;

#[derive(Parser)]
#[command(
    name = "dino",
    version,
    about = "Dino: a lightweight LLM inference engine for the CPU",
    long_about = "Dino runs GGUF language models on ordinary CPUs.\n\n\
        Quick start:\n  dino run -p \"Once upon a time\"      (fetches the default model, SmolLM2-135M-Instruct Q4_1)\n  \
        dino pull --list                      (models Dino can fetch)\n  dino inspect model.gguf               (metadata and tensors)\n  \
        dino perplexity -m model.gguf -f text.txt\n  \
        dino run -m ./hf-dir --quant q8_0 -p \"...\"  (a Hugging Face checkpoint, quantized at load)\n  \
        dino convert ./hf-dir out.gguf --type q8_0\n  \
        dino quantize model-f16.gguf model-q4_k_m.gguf --type q4_k_m"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate text from a prompt, streaming it to stdout; timings and memory go to stderr.
    Run(RunArgs),
    /// Download a model into the cache ($DINO_HOME, else ~/.cache/dino), verifying its sha256.
    Pull(PullArgs),
    /// Print a GGUF file's metadata and tensor table.
    Inspect(InspectArgs),
    /// Perplexity of a text file, computed as llama.cpp's llama-perplexity does.
    Perplexity(PplArgs),
    /// Benchmark prompt and generation speed as llama.cpp's llama-bench does, with its flags
    /// and output formats (md, json, jsonl, csv); adds peak RSS and energy per token.
    Bench(bench::BenchArgs),
    /// Convert a Hugging Face checkpoint directory to a GGUF file that llama.cpp and Dino load.
    #[command(
        long_about = "Convert a Hugging Face checkpoint directory (config.json, tokenizer.json, \
            tokenizer_config.json, model.safetensors or model.safetensors.index.json with its shards; \
            F32, F16 or BF16) to one GGUF file, as llama.cpp's convert_hf_to_gguf.py does: the same \
            metadata keys, tensor names and transforms (Llama Q/K permutation, Gemma norm +1, stacked \
            experts), so llama.cpp loads the result.\n\n\
            Architectures: LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM (llama), \
            Qwen2ForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM, Gemma3ForCausalLM, Phi3ForCausalLM.\n\n\
            --type (default auto): auto keeps BF16 checkpoints in BF16 and writes F16 and F32 ones as \
            F16 (lossless for F16/BF16 sources, like convert_hf_to_gguf.py --outtype auto); f16, bf16 \
            and f32 convert; q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k and q6_k quantize every \
            weight matrix to that one type (as llama-quantize --pure; rows that are not a whole number \
            of blocks fall back to Q5_0/Q5_1/Q8_0/Q4_0 or F16, as llama.cpp does). Norms, biases, the \
            MoE router and RoPE factor tables are always F32.\n\n\
            Tensors are streamed one at a time, so memory stays near one tensor's size."
    )]
    Convert(ConvertArgs),
    /// Quantize a GGUF file or a Hugging Face directory to a GGUF file, with llama-quantize's
    /// types and mixes (Q4_K_M, Q3_K_M, ...).
    #[command(
        long_about = "Quantize a model to a GGUF file that llama.cpp and Dino load. IN is a GGUF file \
            (best F32, F16 or BF16; a quantized one works, with a warning: its weights are rounded a \
            second time) or a Hugging Face checkpoint directory.\n\n\
            --type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q6_k, and the mixes llama.cpp users \
            know: q2_k, q2_k_s, q3_k_s, q3_k_m (q3_k), q3_k_l, q4_k_s, q4_k_m (q4_k), q5_k_s, q5_k_m \
            (q5_k). Each tensor's type follows llama-quantize's rules, so a Dino Q4_K_M holds the same \
            types as llama.cpp's, tensor for tensor: the output head (or the tied token embedding) at \
            Q6_K, attn_v and ffn_down of the first and last eighth of the layers and every third one \
            between raised in the _M mixes, norms and biases kept, rows that are not whole blocks \
            falling back to a 32-element type or F16. --pure uses the type for every weight matrix.\n\n\
            --imatrix FILE (from dino calibrate or llama-imatrix): block scales minimise the \
            importance-weighted rounding error, byte for byte as llama-quantize --imatrix.\n\n\
            --target-bpw BPW or --target-size SIZE: layer-wise mixed precision. Each weight matrix \
            alone is quantized at each candidate type inside the --type mix, the KL divergence of \
            the next-token distributions from the source's over --calib-tokens tokens of \
            --calib-file is its cost, and the types that lose least within the budget are chosen \
            (--sensitivity FILE keeps the measurements for other budgets).\n\n\
            Tensors are converted one at a time on all threads and streamed to OUT.part, renamed when \
            complete: memory stays near the largest output tensor."
    )]
    Quantize(QuantizeArgs),
    /// Collect an importance matrix (per-channel activation statistics) over a calibration
    /// text, for `dino quantize --imatrix`; llama.cpp's imatrix GGUF format.
    #[command(
        long_about = "Run the model over a calibration text in chunks of --ctx-size tokens (as \
            llama-imatrix does) and record, for every weight matrix of every layer, the sum of the \
            squares of its inputs per input channel and the number of tokens: an importance matrix. \
            `dino quantize --imatrix FILE` then weights each channel's rounding error by it when \
            choosing block scales, so the channels that carry large activations are kept more \
            exactly.\n\n\
            The file is llama.cpp's GGUF imatrix format: llama-quantize --imatrix reads Dino's \
            files and dino quantize --imatrix reads llama-imatrix's (and its older .dat files). \
            The text's perplexity is printed as the chunks go, as llama-imatrix does.\n\n\
            Use a text like the model's real inputs; a few hundred thousand tokens are plenty and \
            100 chunks of 512 are typical (--chunks)."
    )]
    Calibrate(CalibrateArgs),
    /// Remove whole layers and/or FFN channels, measured on a calibration text, writing a
    /// smaller GGUF (llama.cpp loads it too).
    #[command(
        long_about = "Run the model over a calibration text (-f, in chunks of --ctx-size tokens) \
            and measure, for every block of consecutive layers, the mean angular distance between \
            the residual stream entering the block and leaving it (arccos of the cosine, in units \
            of pi): a block that barely turns the hidden state does little. --remove-layers N \
            drops the N consecutive layers with the smallest distance (or --layers names them). \
            --ffn-keep F keeps that share of every layer's FFN channels, ranked per layer by \
            sqrt(sum of squares of the channel's activation) times the norm of its down-projection \
            column; gate and up lose rows, down loses inputs (re-encoded in its own type).\n\n\
            The output is a GGUF with the layers renumbered and block_count / \
            feed_forward_length updated. Measure what it costs with `dino perplexity -m OUT -f \
            TEXT --kl-divergence-base IN`."
    )]
    Prune(PruneArgs),
    /// Chat with a model in the terminal through its chat template (one message per line).
    Chat(chat::ChatArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions,
    /// /v1/completions, /v1/models, /health, /metrics), batching concurrent requests.
    Serve(serve::ServeArgs),
}

/// The sampler chain's flags, shared by `run` and `chat`.
#[derive(Args)]
struct SamplingArgs {
    /// Sampling temperature; 0 = greedy.
    #[arg(long = "temp", default_value_t = 0.8)]
    temp: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long = "top-k", default_value_t = 40)]
    top_k: usize,
    /// Nucleus sampling: keep the smallest set with this total probability (1 = off).
    #[arg(long = "top-p", default_value_t = 0.95)]
    top_p: f32,
    /// Drop tokens less likely than min-p × the top token's probability (0 = off).
    #[arg(long = "min-p", default_value_t = 0.05)]
    min_p: f32,
    /// Penalize repeated tokens (1 = off).
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    repeat_penalty: f32,
    /// How many recent tokens the penalties consider.
    #[arg(long = "repeat-last-n", default_value_t = 64)]
    repeat_last_n: usize,
    /// Subtract this × count of each recent token from its logit.
    #[arg(long = "frequency-penalty", default_value_t = 0.0)]
    frequency_penalty: f32,
    /// Subtract this from the logit of every recent token.
    #[arg(long = "presence-penalty", default_value_t = 0.0)]
    presence_penalty: f32,
    /// Random seed (default: random); the same seed and input reproduce the same text.
    #[arg(short = 's', long = "seed")]
    seed: Option<u64>,
}

impl SamplingArgs {
    /// The sampler configuration; without --seed, a seed from the clock.
    fn config(&self) -> SamplerConfig {
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
        SamplerConfig {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            penalty_last_n: self.repeat_last_n,
            seed,
        }
    }
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Model: a GGUF file, a Hugging Face checkpoint directory (config.json, tokenizer.json,
    /// *.safetensors) or a catalog name (see `dino pull --list`). Default: SmolLM2-135M-Instruct Q4_1.
    #[arg(short = 'm', long = "model")]
    model: Option<String>,
    /// Quantize a Hugging Face checkpoint's weight matrices to this type while loading
    /// (q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, f16, bf16, f32); norms and
    /// biases stay F32. Tensor by tensor from the mmap: no second full-precision copy.
    #[arg(long = "quant", value_name = "TYPE", value_parser = parse_ggml_type)]
    quant: Option<GgmlType>,
    /// Threads for generation (default: all cores).
    #[arg(short = 't', long = "threads", default_value_t = 0)]
    threads: usize,
    /// Threads for prompt processing (default: same as --threads).
    #[arg(long = "threads-batch", visible_alias = "tb", default_value_t = 0)]
    threads_batch: usize,
    /// Lock the model's weights in RAM (mlock) so they are never paged out.
    #[arg(long = "mlock")]
    mlock: bool,
    /// Keep weights in the file's layout instead of repacking them at load into the faster
    /// interleaved layout of this CPU's kernels (Q4_0 with AVX-512 VNNI), e.g. to compare.
    #[arg(long = "no-repack")]
    no_repack: bool,
    /// Context size in tokens (default: the model's trained context, capped by free memory).
    #[arg(short = 'c', long = "ctx-size")]
    ctx_size: Option<usize>,
    /// KV cache type of the keys: f16, q8_0 or q4_0 (llama.cpp's -ctk). q8_0 takes 34/64 of
    /// f16's memory, q4_0 18/64; the quantized types need a head size that is a multiple of 32.
    #[arg(
        long = "cache-type-k",
        visible_alias = "ctk",
        value_name = "TYPE",
        default_value = "f16"
    )]
    cache_type_k: dino_engine::KvType,
    /// KV cache type of the values: f16, q8_0 or q4_0 (llama.cpp's -ctv).
    #[arg(
        long = "cache-type-v",
        visible_alias = "ctv",
        value_name = "TYPE",
        default_value = "f16"
    )]
    cache_type_v: dino_engine::KvType,
    /// Activation sparsity: zero this share of each layer matrix's smallest inputs (0..0.99,
    /// e.g. 0.4), by the per-matrix thresholds of --thresholds (TEAL; training-free).
    #[arg(long = "sparsity", value_name = "P", requires = "thresholds")]
    sparsity: Option<f32>,
    /// Activation thresholds for --sparsity, from `dino calibrate --save-thresholds FILE`.
    #[arg(long = "thresholds", value_name = "FILE")]
    thresholds: Option<PathBuf>,
}

impl ModelArgs {
    /// The `--sparsity` thresholds (`None`: dense).
    fn sparsity(&self) -> Result<Option<dino_engine::sparsity::Sparsity>> {
        let (Some(level), Some(path)) = (self.sparsity, &self.thresholds) else {
            if self.thresholds.is_some() {
                bail!("--thresholds is read with --sparsity P: give the share of inputs to zero");
            }
            return Ok(None);
        };
        let t = dino_engine::sparsity::Thresholds::load(path)?;
        Ok(Some(t.sparsity(level)?))
    }

    fn kv_types(&self) -> dino_engine::KvTypes {
        dino_engine::KvTypes {
            k: self.cache_type_k,
            v: self.cache_type_v,
        }
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text (read from stdin when omitted and stdin is not a terminal).
    #[arg(short = 'p', long = "prompt")]
    prompt: Option<String>,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 256)]
    n_predict: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Keep generating past end-of-generation tokens.
    #[arg(long = "ignore-eos")]
    ignore_eos: bool,
    /// Don't print the prompt before the generated text.
    #[arg(long = "no-display-prompt")]
    no_display_prompt: bool,
    /// Print the statistics as one JSON line on stderr too.
    #[arg(long = "json-stats")]
    json_stats: bool,
}

#[derive(Args)]
struct ConvertArgs {
    /// Hugging Face checkpoint directory.
    src: PathBuf,
    /// Output GGUF file (written through OUT.part, renamed when complete).
    out: PathBuf,
    /// Weight matrix type: auto, f16, bf16, f32, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k,
    /// q5_k, q6_k.
    #[arg(
        long = "type",
        visible_alias = "outtype",
        value_name = "TYPE",
        default_value = "auto"
    )]
    ty: String,
    /// Threads for quantizing (default: all cores).
    #[arg(short = 't', long = "threads", default_value_t = 0)]
    threads: usize,
    /// No progress output.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args)]
struct QuantizeArgs {
    /// Input: a GGUF file or a Hugging Face checkpoint directory.
    src: PathBuf,
    /// Output GGUF file (written through OUT.part, renamed when complete).
    out: PathBuf,
    /// File type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q2_k_s, q3_k_s, q3_k_m,
    /// q3_k_l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k (q3_k, q4_k, q5_k: the _m mixes).
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_ftype)]
    ty: dino_engine::quantize::Ftype,
    /// Every weight matrix at the type itself: no mix rules, no Q6_K output head.
    #[arg(long)]
    pure: bool,
    /// Importance matrix (from `dino calibrate` or llama-imatrix, GGUF or .dat): block scales
    /// minimise the importance-weighted rounding error, as llama-quantize --imatrix does.
    #[arg(long, value_name = "FILE")]
    imatrix: Option<PathBuf>,
    /// Layer-wise mixed precision: choose each weight matrix's type (Q3_K..Q6_K, Q8_0; Q4_0..Q5_1
    /// for rows that are not whole 256-blocks) to lose the least under this many bits per weight
    /// overall, from each matrix's measured sensitivity (needs --calib-file).
    #[arg(long, value_name = "BPW", conflicts_with = "target_size")]
    target_bpw: Option<f64>,
    /// As --target-bpw, with a budget for the output file's size in bytes (suffixes K, M, G:
    /// powers of 1024), e.g. the size of a Q4_K_M file to beat it at its own size.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    target_size: Option<u64>,
    /// Calibration text for --target-bpw/--target-size: each matrix alone is quantized at each
    /// candidate type and the KL divergence of the model's next-token distributions from a Q8_0
    /// base over this text's first --calib-tokens tokens is its cost.
    #[arg(long, value_name = "FILE")]
    calib_file: Option<PathBuf>,
    /// Tokens of --calib-file to measure on.
    #[arg(long, default_value_t = 256)]
    calib_tokens: usize,
    /// Keep the measured sensitivities in FILE (read back when they match the model and
    /// --calib-tokens, so other budgets need no new measurement).
    #[arg(long, value_name = "FILE")]
    sensitivity: Option<PathBuf>,
    /// Threads (default: all cores).
    #[arg(short = 't', long = "threads", default_value_t = 0)]
    threads: usize,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
}

fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("'{s}': size suffixes are K, M and G")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 1100M, 1.05G, 1117320768)"))?;
    if !(v > 0.0 && v.is_finite()) {
        return Err(format!("'{s}': the size must be positive"));
    }
    Ok((v * mult as f64) as u64)
}

fn parse_ftype(s: &str) -> std::result::Result<dino_engine::quantize::Ftype, String> {
    use dino_engine::quantize::Ftype;
    Ftype::parse(s).ok_or_else(|| {
        let names: Vec<String> = Ftype::ALL
            .iter()
            .map(|f| f.name().to_ascii_lowercase())
            .collect();
        format!("unknown file type '{s}' (one of: {})", names.join(", "))
    })
}

#[derive(Args)]
struct CalibrateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Calibration text file.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Output importance matrix (GGUF).
    #[arg(short = 'o', long = "output", default_value = "imatrix.gguf")]
    output: PathBuf,
    /// Use only the first N chunks of --ctx-size tokens (default: the whole text).
    #[arg(long = "chunks")]
    chunks: Option<usize>,
    /// Tokens per forward batch.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    batch: usize,
    /// Also write each layer matrix's input-magnitude quantiles here: the thresholds of
    /// `--sparsity P --thresholds FILE`.
    #[arg(long = "save-thresholds", value_name = "FILE")]
    save_thresholds: Option<PathBuf>,
    /// With --save-thresholds: choose each input's level for rising overall sparsity by
    /// measured KL divergence on this many tokens of the text (TEAL's greedy allocation; 0: one
    /// level for every matrix).
    #[arg(long = "sparsity-tokens", value_name = "N", default_value_t = 256)]
    sparsity_tokens: usize,
}

#[derive(Args)]
struct PruneArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Calibration text file.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Output GGUF.
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// Remove this many consecutive layers: the block whose input and output are closest.
    #[arg(long = "remove-layers", value_name = "N", default_value_t = 0)]
    remove_layers: usize,
    /// Remove these layers (comma-separated indices) instead of measuring.
    #[arg(long = "layers", value_delimiter = ',', value_name = "L,L,...")]
    layers: Vec<usize>,
    /// Keep this share of each layer's FFN channels (0 < F <= 1; 1: no narrowing).
    #[arg(long = "ffn-keep", value_name = "F", default_value_t = 1.0)]
    ffn_keep: f64,
    /// Use only the first N chunks of --ctx-size tokens of the text.
    #[arg(long = "chunks", default_value_t = 8)]
    chunks: usize,
    /// Tokens per forward batch.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    batch: usize,
}

#[derive(Args)]
struct PullArgs {
    /// Catalog name (default: the default model).
    name: Option<String>,
    /// List the models Dino can fetch.
    #[arg(long)]
    list: bool,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args)]
struct InspectArgs {
    /// GGUF file, Hugging Face checkpoint directory or catalog name.
    file: String,
    /// Print every array element in full instead of a preview.
    #[arg(long)]
    full: bool,
}

#[derive(Args)]
struct PplArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text file to score.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Evaluate only the first N chunks.
    #[arg(long = "chunks")]
    chunks: Option<usize>,
    /// Tokens per forward batch.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    batch: usize,
    /// KL divergence against a base model (the F16/F32 original of a quantized -m; a file,
    /// directory or catalog name): both run on the same chunks, and the KL divergence of the
    /// next-token distributions, the share of positions whose top token agrees and the PPL
    /// ratio are printed, as llama-perplexity --kl-divergence prints them (no logits file).
    #[arg(long = "kl-divergence-base", value_name = "BASE")]
    kl_base: Option<String>,
}

fn main() {
    let cli = Cli::parse_from(bench::llama_bench_args(llama_style_args(
        std::env::args_os(),
    )));
    let r = match cli.cmd {
        Cmd::Run(a) => cmd_run(a),
        Cmd::Pull(a) => cmd_pull(a),
        Cmd::Inspect(a) => cmd_inspect(a),
        Cmd::Perplexity(a) => cmd_ppl(a),
        Cmd::Bench(a) => bench::cmd_bench(a),
        Cmd::Convert(a) => cmd_convert(a),
        Cmd::Quantize(a) => cmd_quantize(a),
        Cmd::Calibrate(a) => cmd_calibrate(a),
        Cmd::Prune(a) => cmd_prune(a),
        Cmd::Chat(a) => chat::cmd_chat(a),
        Cmd::Serve(a) => serve::cmd_serve(a),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Accept llama.cpp's two- and three-letter single-dash flags (`-tb 2`, `-ctk q8_0`) as their
/// long forms.
fn llama_style_args(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    args.map(|a| match a.to_str() {
        Some("-tb") => "--threads-batch".into(),
        Some("-ctk") => "--cache-type-k".into(),
        Some("-ctv") => "--cache-type-v".into(),
        _ => a,
    })
    .collect()
}

fn pull_opts(quiet: bool) -> pull::PullOptions {
    pull::PullOptions {
        quiet,
        ..Default::default()
    }
}

fn load_engine(m: &ModelArgs) -> Result<Engine> {
    let path = pull::resolve_model(m.model.as_deref(), &pull_opts(false))?;
    let engine = Engine::load(
        &path,
        &EngineOptions {
            threads: m.threads,
            threads_batch: m.threads_batch,
            warm_up: true,
            mlock: m.mlock,
            no_repack: m.no_repack,
            quant: m.quant,
            progress: true,
            kv_types: m.kv_types(),
            sparsity: m.sparsity()?,
        },
    )
    .with_context(|| format!("loading {}", path.display()))?;
    let info = engine.model.info();
    eprintln!(
        "model: {} ({}, {} layers, {} embd, vocab {}) from {}",
        info.name.as_deref().unwrap_or("?"),
        info.arch,
        info.hparams.n_layer,
        info.hparams.n_embd,
        info.hparams.n_vocab,
        path.display()
    );
    Ok(engine)
}

fn cmd_run(a: RunArgs) -> Result<()> {
    let prompt = match a.prompt {
        Some(p) => p,
        None if !std::io::stdin().is_terminal() => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the prompt from stdin")?;
            s
        }
        None => bail!("give a prompt with -p \"...\" (or pipe it on stdin)"),
    };
    let engine = load_engine(&a.model)?;
    let ctx = engine.choose_ctx(a.model.ctx_size)?;
    if let Some(trained) = ctx.capped_from {
        eprintln!(
            "note: context capped at {} tokens (trained: {trained}) to fit the memory available; use --ctx-size to choose",
            ctx.n_ctx
        );
    }
    let mut kv = engine.new_kv(ctx.n_ctx)?;
    let sampler = a.sampling.config();
    let seed = sampler.seed;
    let params = GenerateParams {
        max_tokens: a.n_predict,
        sampler,
        n_batch: 512,
        stop_at_eog: !a.ignore_eos,
    };
    let tokens = engine.tokenizer.encode(&prompt, true, true)?;
    let mut out = std::io::stdout().lock();
    if !a.no_display_prompt {
        write!(out, "{prompt}")?;
        out.flush()?;
    }
    let stats = generate(&engine, &mut kv, &tokens, &params, |_, text| {
        if write!(out, "{text}").and_then(|_| out.flush()).is_err() {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })?;
    writeln!(out)?;
    let peak = peak_rss_bytes();
    eprintln!();
    eprintln!(
        "load time        {:>9.1} ms",
        engine.load_time.as_secs_f64() * 1e3
    );
    eprintln!(
        "prompt           {:>9} tokens  {:>9.2} tokens/s  ({:.1} ms)",
        stats.prompt_tokens,
        stats.prompt_tps(),
        stats.prompt_time.as_secs_f64() * 1e3
    );
    eprintln!(
        "first token      {:>9.1} ms",
        stats.time_to_first_token.as_secs_f64() * 1e3
    );
    eprintln!(
        "generated        {:>9} tokens  {:>9.2} tokens/s  ({:.2} ms/token)",
        stats.generated_tokens,
        stats.gen_tps(),
        if stats.gen_tps() > 0.0 {
            1e3 / stats.gen_tps()
        } else {
            0.0
        }
    );
    eprintln!(
        "peak RSS         {:>9}",
        peak.map(fmt_bytes).unwrap_or_else(|| "unavailable".into())
    );
    eprintln!(
        "context          {:>9} tokens  KV cache {} ({})   threads {}   seed {seed}",
        ctx.n_ctx,
        fmt_bytes(kv.bytes()),
        kv.types(),
        engine.pool.n_threads()
    );
    report_sparsity(&engine);
    if a.json_stats {
        eprintln!(
            "{{\"load_ms\":{:.3},\"prompt_tokens\":{},\"prompt_tps\":{:.3},\"ttft_ms\":{:.3},\"gen_tokens\":{},\"gen_tps\":{:.3},\"peak_rss_bytes\":{},\"kv_cache_bytes\":{},\"type_k\":\"{}\",\"type_v\":\"{}\",\"seed\":{seed},\"tokens\":{:?}}}",
            engine.load_time.as_secs_f64() * 1e3,
            stats.prompt_tokens,
            stats.prompt_tps(),
            stats.time_to_first_token.as_secs_f64() * 1e3,
            stats.generated_tokens,
            stats.gen_tps(),
            peak.unwrap_or(0),
            kv.bytes(),
            kv.types().k,
            kv.types().v,
            stats.tokens
        );
    }
    Ok(())
}

/// `--quant`/`--type` values: llama.cpp's type names, any case.
pub(crate) fn parse_ggml_type(s: &str) -> std::result::Result<GgmlType, String> {
    dino_formats::hf::parse_type(s).map_err(|e| e.to_string())
}

fn cmd_convert(a: ConvertArgs) -> Result<()> {
    let out = if a.ty.eq_ignore_ascii_case("auto") {
        OutType::Auto
    } else {
        OutType::Type(parse_ggml_type(&a.ty).map_err(anyhow::Error::msg)?)
    };
    let t0 = std::time::Instant::now();
    let bytes = dino_engine::convert(
        &a.src,
        &a.out,
        &ConvertOptions {
            out,
            threads: a.threads,
            progress: !a.quiet,
        },
    )
    .with_context(|| format!("converting {}", a.src.display()))?;
    eprintln!(
        "wrote {} ({} of tensor data) in {:.1} s, peak RSS {}",
        a.out.display(),
        fmt_bytes(bytes),
        t0.elapsed().as_secs_f64(),
        peak_rss_bytes()
            .map(fmt_bytes)
            .unwrap_or_else(|| "unavailable".into())
    );
    Ok(())
}

fn cmd_quantize(a: QuantizeArgs) -> Result<()> {
    use dino_engine::mixed::Budget;
    use dino_engine::quantize::{quantize, MixOptions, QuantizeOptions};
    let t0 = std::time::Instant::now();
    let r = quantize(
        &a.src,
        &a.out,
        &QuantizeOptions {
            ftype: a.ty,
            pure: a.pure,
            imatrix: a
                .imatrix
                .as_ref()
                .map(|p| {
                    dino_engine::imatrix::Imatrix::load(p)
                        .with_context(|| format!("reading the importance matrix {}", p.display()))
                })
                .transpose()?,
            imatrix_path: a.imatrix.clone(),
            mix: match (a.target_bpw, a.target_size) {
                (None, None) => None,
                (bpw, size) => {
                    let budget = match (bpw, size) {
                        (Some(b), _) if b > 0.5 && b < 33.0 => Budget::Bpw(b),
                        (Some(b), _) => bail!("--target-bpw {b}: use a value between 0.5 and 33"),
                        (None, Some(n)) => Budget::Bytes(n),
                        (None, None) => unreachable!(),
                    };
                    let Some(f) = &a.calib_file else {
                        bail!(
                            "--target-bpw/--target-size measure each matrix's sensitivity on a \
                             calibration text: pass --calib-file FILE"
                        )
                    };
                    let text = std::fs::read_to_string(f)
                        .with_context(|| format!("reading {}", f.display()))?;
                    Some(MixOptions {
                        budget,
                        calib_text: text,
                        calib_tokens: a.calib_tokens,
                        sensitivity_file: a.sensitivity.clone(),
                    })
                }
            },
            threads: a.threads,
            progress: !a.quiet,
        },
    )
    .with_context(|| format!("quantizing {}", a.src.display()))?;
    if let Some(m) = &r.mix {
        eprintln!(
            "mixed precision: {} of tensor data ({} in the chosen matrices); on the calibration \
             tokens the {} mix has KL divergence {:.5} from the source, predicted change {:+.5}",
            fmt_bytes(m.bytes),
            fmt_bytes(m.bytes - m.fixed_bytes),
            a.ty.name(),
            m.point_kld,
            m.predicted_kld
        );
    }
    if a.imatrix.is_some() {
        eprintln!(
            "imatrix: weights for {} tensors; {} quantized without (no entry: {})",
            r.with_imatrix,
            r.without_imatrix.len(),
            if r.without_imatrix.is_empty() {
                "-".to_string()
            } else {
                r.without_imatrix.join(", ")
            }
        );
    }
    let types: Vec<String> = r.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    eprintln!(
        "wrote {} ({}): {} tensors ({}), {} -> {} of tensor data ({:.2} bits per weight \
         overall) in {:.1} s, peak RSS {}",
        a.out.display(),
        a.ty.name(),
        r.n_tensors,
        types.join(", "),
        fmt_bytes(r.bytes_in),
        fmt_bytes(r.bytes_out),
        8.0 * r.bytes_out as f64 / r.n_elements.max(1) as f64,
        t0.elapsed().as_secs_f64(),
        peak_rss_bytes()
            .map(fmt_bytes)
            .unwrap_or_else(|| "unavailable".into())
    );
    Ok(())
}

fn cmd_pull(a: PullArgs) -> Result<()> {
    if a.list {
        for e in pull::catalog() {
            println!("{e}");
        }
        return Ok(());
    }
    let name = a.name.as_deref().unwrap_or("default");
    let path = pull::pull(name, &pull_opts(a.quiet))?;
    println!("{}", path.display());
    Ok(())
}

fn cmd_inspect(a: InspectArgs) -> Result<()> {
    let path = pull::resolve_model(Some(&a.file), &pull_opts(false))?;
    let f = if path.is_dir() {
        // A Hugging Face checkpoint: what it loads as (offsets are into its storages).
        dino_formats::hf::HfModel::open(&path)?.into_gguf(Default::default())?
    } else {
        GgufFile::open(&path)?
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}: GGUF v{}, {} metadata keys, {} tensors, alignment {}, data at {}, {} bytes",
        path.display(),
        f.version(),
        f.metadata().len(),
        f.tensors().len(),
        f.alignment(),
        f.data_offset(),
        f.file_size()
    )?;
    writeln!(out, "\nmetadata:")?;
    for (k, v) in f.metadata().iter() {
        if a.full {
            writeln!(out, "  {k:<48} {v:?}")?;
        } else {
            writeln!(out, "  {k:<48} {v}")?;
        }
    }
    writeln!(out, "\ntensors:")?;
    writeln!(
        out,
        "  {:<4} {:<40} {:<8} {:<24} {:>14} {:>12}",
        "#", "name", "type", "dims", "bytes", "offset"
    )?;
    let mut total = 0u64;
    for (i, t) in f.tensors().iter().enumerate() {
        let dims = t
            .dims
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(" x ");
        writeln!(
            out,
            "  {:<4} {:<40} {:<8} {:<24} {:>14} {:>12}",
            i,
            t.name,
            t.ty.name(),
            dims,
            t.size,
            t.offset
        )?;
        total += t.size;
    }
    let n_params: u64 = f.tensors().iter().map(|t| t.n_elements()).sum();
    writeln!(
        out,
        "\n{} parameters, {} of tensor data ({:.2} bits per weight)",
        n_params,
        fmt_bytes(total),
        total as f64 * 8.0 / n_params.max(1) as f64
    )?;
    Ok(())
}

/// The text of `-f FILE` for perplexity and calibration: as llama.cpp's `-f`, one trailing
/// newline is dropped.
fn read_eval_text(file: &std::path::Path) -> Result<String> {
    let mut text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    if text.ends_with('\n') {
        text.pop();
    }
    Ok(text)
}

/// The context (`-c`, default 512 as llama-perplexity) and chunking of perplexity and calibration.
fn eval_options(
    model: &ModelArgs,
    chunks: Option<usize>,
    batch: usize,
) -> (usize, PerplexityOptions) {
    let n_ctx = model.ctx_size.unwrap_or(512);
    let opts = PerplexityOptions {
        n_ctx,
        max_chunks: chunks,
        n_batch: batch.min(n_ctx),
    };
    (n_ctx, opts)
}

/// Prints `[i/n]running_ppl,` on stderr after each chunk of a calibration pass (as
/// llama-imatrix does), ending the line after the last.
fn chunk_progress() -> impl FnMut(usize, usize, f64) {
    let mut err = std::io::stderr();
    move |i, n, running| {
        let _ = write!(err, "[{}/{n}]{:.4},", i + 1, running);
        if i + 1 == n {
            let _ = writeln!(err);
        }
        let _ = err.flush();
    }
}

fn cmd_calibrate(a: CalibrateArgs) -> Result<()> {
    if a.model.sparsity.is_some() {
        bail!("calibrate measures the dense model: drop --sparsity");
    }
    let text = read_eval_text(&a.file)?;
    let text = text.as_str();
    let engine = load_engine(&a.model)?;
    let (n_ctx, opts) = eval_options(&a.model, a.chunks, a.batch);
    eprintln!("calibrate: n_ctx = {n_ctx}, collecting activation statistics");
    let (im, r) = dino_engine::imatrix::calibrate(
        &engine,
        text,
        &a.file.display().to_string(),
        &opts,
        chunk_progress(),
    )?;
    im.save(&a.output)
        .with_context(|| format!("writing {}", a.output.display()))?;
    if let Some(t) = &a.save_thresholds {
        let mut th = r.thresholds.clone();
        if a.sparsity_tokens > 0 {
            let mut tokens = engine.tokenizer.encode(text, true, false)?;
            if tokens.len() < a.sparsity_tokens {
                bail!(
                    "--sparsity-tokens {}: the text has {} tokens",
                    a.sparsity_tokens,
                    tokens.len()
                );
            }
            tokens.truncate(a.sparsity_tokens);
            eprintln!(
                "sparsity schedule: raising the input ({}) whose next 10 % costs the least KL \
                 divergence per skipped weight, on {} tokens",
                dino_engine::sparsity::SITES.join(", "),
                tokens.len()
            );
            th.schedule =
                dino_engine::sparsity::schedule(&engine, &th, &tokens, 0.1, 0.8, |o, lv, k| {
                    eprintln!(
                        "  overall {:.3}: levels {:.1} {:.1} {:.1} {:.1}, KLD {k:.5}",
                        o, lv[0], lv[1], lv[2], lv[3]
                    )
                })?;
        }
        th.save(t)
            .with_context(|| format!("writing {}", t.display()))?;
        eprintln!(
            "wrote {}: input thresholds of {} matrices",
            t.display(),
            th.table.len()
        );
    }
    let p = &r.perplexity;
    eprintln!(
        "wrote {}: {} matrices, {} chunks of {n_ctx} tokens; PPL = {:.4} +/- {:.5}; {:.1} s, \
         peak RSS {}",
        a.output.display(),
        r.n_entries,
        p.n_chunks,
        p.ppl,
        p.ppl_err,
        p.elapsed.as_secs_f64(),
        peak_rss_bytes()
            .map(fmt_bytes)
            .unwrap_or_else(|| "unavailable".into())
    );
    Ok(())
}

fn cmd_prune(a: PruneArgs) -> Result<()> {
    use dino_engine::prune::{ffn_channels, measure, prune, PrunePlan};
    if a.model.sparsity.is_some() {
        bail!("prune measures the dense model: drop --sparsity");
    }
    if a.remove_layers == 0 && a.layers.is_empty() && a.ffn_keep >= 1.0 {
        bail!("nothing to prune: pass --remove-layers N, --layers L,... or --ffn-keep F (< 1)");
    }
    if a.remove_layers > 0 && !a.layers.is_empty() {
        bail!("--remove-layers and --layers both choose layers: pass one");
    }
    if !(a.ffn_keep > 0.0 && a.ffn_keep <= 1.0) {
        bail!(
            "--ffn-keep {}: the share kept must be in (0, 1]",
            a.ffn_keep
        );
    }
    let path = pull::resolve_model(a.model.model.as_deref(), &pull_opts(false))?;
    let file = dino_formats::gguf::GgufFile::open(&path)
        .with_context(|| format!("opening {} (dino prune reads GGUF files)", path.display()))?;
    let mut plan = PrunePlan {
        layers: a.layers.clone(),
        ffn_keep: None,
    };
    plan.layers.sort_unstable();
    plan.layers.dedup();
    if a.remove_layers > 0 || a.ffn_keep < 1.0 {
        let text = read_eval_text(&a.file)?;
        let engine = load_engine(&a.model)?;
        let (n_ctx, opts) = eval_options(&a.model, Some(a.chunks), a.batch);
        eprintln!("prune: n_ctx = {n_ctx}, measuring layer distances and FFN channels");
        let stats = measure(
            &engine,
            &text,
            &opts,
            a.remove_layers.max(1),
            chunk_progress(),
        )?;
        eprintln!(
            "angular distance (x pi) between the input of layer l and of layer l + 1, {} tokens:",
            stats.n_tokens
        );
        for (l, d) in stats.dist[0].iter().enumerate() {
            eprintln!("  layer {l:3}: {d:.4}");
        }
        if a.remove_layers > 0 {
            let (start, d) = stats.best_block(a.remove_layers)?;
            eprintln!(
                "removing layers {start}..{} (distance across the block {d:.4})",
                start + a.remove_layers - 1
            );
            plan.layers = (start..start + a.remove_layers).collect();
        }
        if a.ffn_keep < 1.0 {
            plan.ffn_keep = Some(ffn_channels(&file, &stats, a.ffn_keep)?);
        }
    }
    let t0 = std::time::Instant::now();
    let r = prune(&file, &a.output, &plan, true)?;
    eprintln!(
        "wrote {}: {} -> {} layers, FFN {} -> {} channels, {} tensors, {} -> {} of tensor data \
         ({:.1} %) in {:.1} s",
        a.output.display(),
        r.n_layer_in,
        r.n_layer_out,
        r.n_ff_in,
        r.n_ff_out,
        r.n_tensors,
        fmt_bytes(r.bytes_in),
        fmt_bytes(r.bytes_out),
        100.0 * r.bytes_out as f64 / r.bytes_in as f64,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn cmd_ppl(a: PplArgs) -> Result<()> {
    let text = read_eval_text(&a.file)?;
    let text = text.as_str();
    let engine = load_engine(&a.model)?;
    let (n_ctx, opts) = eval_options(&a.model, a.chunks, a.batch);
    if let Some(b) = &a.kl_base {
        let base = load_engine(&ModelArgs {
            model: Some(b.clone()),
            sparsity: None,
            thresholds: None,
            ..a.model.clone()
        })
        .with_context(|| format!("loading the KL-divergence base {b}"))?;
        eprintln!(
            "kl-divergence: n_ctx = {n_ctx}, base {b}, scoring the second half of each chunk"
        );
        let mut err = std::io::stderr();
        let r = dino_engine::kl_divergence(&engine, &base, text, &opts, |i, n, mean| {
            let _ = write!(err, "[{}]{:.6},", i + 1, mean);
            if i + 1 == n {
                let _ = writeln!(err);
            }
            let _ = err.flush();
        })?;
        println!("chunks {}, scored tokens {}", r.n_chunks, r.n_scored);
        println!("Mean PPL(Q)                   : {:10.6}", r.ppl);
        println!("Mean PPL(base)                : {:10.6}", r.ppl_base);
        println!(
            "Mean PPL(Q)/PPL(base)         : {:10.6} ± {:10.6}",
            r.ppl_ratio, r.ppl_ratio_err
        );
        println!("Mean    KLD: {:10.6} ± {:10.6}", r.kld_mean, r.kld_err);
        println!("Maximum KLD: {:10.6}", r.kld_max);
        println!("99.0%   KLD: {:10.6}", r.kld_p99);
        println!("Median  KLD: {:10.6}", r.kld_median);
        println!("RMS Δp    : {:8.3} %", 100.0 * r.dp_rms);
        println!(
            "Same top p: {:6.3} ± {:5.3} %",
            100.0 * r.same_top,
            100.0 * r.same_top_err
        );
        eprintln!(
            "{:.1} s, peak RSS {}",
            r.elapsed.as_secs_f64(),
            peak_rss_bytes()
                .map(fmt_bytes)
                .unwrap_or_else(|| "unavailable".into())
        );
        report_sparsity(&engine);
        return Ok(());
    }
    eprintln!(
        "perplexity: n_ctx = {n_ctx}, KV cache {} ({}), scoring the second half of each chunk",
        dino_engine::KvCache::bytes_for(engine.model.kv_shape(), engine.kv_types, n_ctx, 1)
            .map(fmt_bytes)?,
        engine.kv_types
    );
    let mut err = std::io::stderr();
    let r = perplexity(&engine, text, &opts, |i, n, running| {
        let _ = write!(err, "[{}]{:.4},", i + 1, running);
        if i + 1 == n {
            let _ = writeln!(err);
        }
        let _ = err.flush();
    })?;
    eprintln!(
        "{} tokens, {} chunks of {n_ctx}, {} scored, {:.1} s ({:.1} tokens/s), peak RSS {}",
        r.n_tokens,
        r.n_chunks,
        r.n_scored,
        r.elapsed.as_secs_f64(),
        (r.n_chunks * n_ctx) as f64 / r.elapsed.as_secs_f64(),
        peak_rss_bytes()
            .map(fmt_bytes)
            .unwrap_or_else(|| "unavailable".into())
    );
    println!("Final estimate: PPL = {:.4} +/- {:.5}", r.ppl, r.ppl_err);
    report_sparsity(&engine);
    Ok(())
}

/// With `--sparsity`: the target and the measured share of skipped weights (stderr).
fn report_sparsity(engine: &Engine) {
    if let Some(m) = engine.model.measured_sparsity() {
        eprintln!(
            "activation sparsity: {:.1} % of the sparsified matrices' weights had a zero input",
            100.0 * m
        );
        if let Some(c) = engine.model.column_share() {
            eprintln!(
                "activation sparsity: {:.1} % of the one-token products skipped zero inputs' \
                 weights (column layouts; the rest had too few zeros to pay)",
                100.0 * c
            );
        }
    }
}
