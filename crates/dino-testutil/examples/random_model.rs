//! Write a random-weight GGUF model of a real shape, for benchmarks (`bench/compare/run`).
//!
//! ```text
//! cargo run --release -p dino-testutil --example random_model -- \
//!     --shape tinyllama --type q4_0 -o /path/model.gguf [--seed N]
//! ```
//! Shapes: `tinyllama` (TinyLlama-1.1B), `qwen3moe-a3b-16l` (Qwen3-30B-A3B's layers, 16 of
//! them: 10.6 B weights, 1.2 B per token), `tiny-llama`, `tiny-qwen2` (a few MB, for tests).
//! Types: any ggml type Dino can quantize to (`f32`, `f16`, `bf16`, `q4_0`, `q4_1`, `q5_0`, `q5_1`,
//! `q8_0`, `q2_K` … `q6_K`). Matrices (embeddings and output head included) get that type, norms
//! and biases stay F32. The file appears only when complete (written as `PATH.part`, then renamed).

use dino_core::GgmlType;
use dino_testutil::random_model::{write_random_model, Shape};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str =
    "usage: random_model --shape tinyllama|qwen3moe-a3b-16l|tiny-llama|tiny-qwen2 --type TYPE -o PATH [--seed N]";

struct Args {
    shape: Shape,
    ty: GgmlType,
    out: PathBuf,
    seed: u64,
}

fn shape_by_name(s: &str) -> Option<Shape> {
    match s {
        "tinyllama" | "tinyllama-1.1b" => Some(Shape::tinyllama_1_1b()),
        "qwen3moe-a3b-16l" => Some(Shape::qwen3moe_30b_a3b(16)),
        "tiny-llama" => Some(Shape::tiny("llama")),
        "tiny-qwen2" => Some(Shape::tiny("qwen2")),
        _ => None,
    }
}

fn parse_args() -> Result<Args, String> {
    let mut shape = None;
    let mut ty = None;
    let mut out = None;
    let mut seed = 42u64;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        match a.as_str() {
            "--shape" => {
                let v = value("--shape")?;
                shape = Some(shape_by_name(&v).ok_or_else(|| format!("unknown shape '{v}'"))?);
            }
            "--type" | "-t" => {
                let v = value("--type")?;
                ty = Some(GgmlType::from_name(&v).ok_or_else(|| format!("unknown type '{v}'"))?);
            }
            "-o" | "--output" => out = Some(PathBuf::from(value("-o")?)),
            "--seed" => {
                let v = value("--seed")?;
                seed = v
                    .parse()
                    .map_err(|_| format!("--seed: not a number: '{v}'"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unexpected argument '{other}'")),
        }
    }
    Ok(Args {
        shape: shape.ok_or("--shape is required")?,
        ty: ty.ok_or("--type is required")?,
        out: out.ok_or("-o PATH is required")?,
        seed,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("error: creating {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    }
    let t0 = Instant::now();
    let mut shape = args.shape;
    shape.name = format!("{} {}", shape.name, args.ty.name());
    match write_random_model(&args.out, &shape, args.ty, args.seed) {
        Ok(()) => {
            let size = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
            eprintln!(
                "wrote {} ({}, {}, seed {}, {:.1} MB) in {:.1} s",
                args.out.display(),
                shape.name,
                args.ty.name(),
                args.seed,
                size as f64 / 1e6,
                t0.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: writing {}: {e}", args.out.display());
            ExitCode::FAILURE
        }
    }
}
