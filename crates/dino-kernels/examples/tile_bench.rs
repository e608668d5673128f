//! Single-thread throughput of the tile kernels against the per-output dot products they
//! replace, over a 2048 × 5632 weight matrix cut into matmul's work items (32-row chunks ×
//! 64-token blocks).
//!
//! Runs of under 16 tokens (decode) cycle through copies of the matrix larger than the L3 cache, so the
//! weights stream from DRAM as in a real model; 64-token runs reuse one copy.
//!
//! `cargo run --release -p dino-kernels --example tile_bench [TYPE ...] [-- reps]`
//! (types as `Q4_K F16 ...`; default: every type whose table has a tile; `TOKS=1,64` picks the
//! batch sizes). Prints the median
//! GFLOPS (thread CPU time) of several runs per (type, level, tokens) and the tile / dot ratio.
//! On a shared machine, compare ratios, not absolute numbers.

use dino_core::GgmlType;
use dino_kernels::dispatch::{kernels_for, DotFn, Isa, Tile, TileFn};
use dino_kernels::quant::{quantize_row, SUPPORTED};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[path = "common/cpu_time.rs"]
mod cpu_time;
use cpu_time::thread_cpu_time;

const N_IN: usize = 2048;
const N_OUT: usize = 5632;
const ROW_CHUNK: usize = 32;
const TOKEN_BLOCK: usize = 64;
/// One-token runs cycle through this many bytes of weight copies (more than the L3 holds).
const COLD_BYTES: usize = 96 << 20;

/// Random weights: quantized from random floats for the float types, random bytes with sane
/// f16 scales for the quant types (quantizing 11.5M elements would dominate the run).
fn weights(rng: &mut StdRng, t: GgmlType) -> Vec<u8> {
    let rs = t.row_size(N_IN as u64).unwrap() as usize;
    if t.block_size() == 1 {
        let x: Vec<f32> = (0..N_IN * N_OUT)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let mut w = vec![0u8; rs * N_OUT];
        quantize_row(t, &x, &mut w).unwrap();
        return w;
    }
    // One properly quantized row repeated with random bytes elsewhere would skew caches; use
    // random bytes everywhere and patch each block's f16 scales.
    let mut w: Vec<u8> = (0..rs * N_OUT).map(|_| rng.random()).collect();
    let fields: &[usize] = match t {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[],
    };
    for blk in w.chunks_exact_mut(t.type_size()) {
        for &off in fields {
            let v = half::f16::from_f32(rng.random_range(0.001f32..0.01));
            blk[off..off + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    w
}

/// Runs every (row chunk, token block) item of the matrix once; returns CPU seconds.
fn run(
    t: GgmlType,
    w: &[u8],
    a: &[u8],
    n_tok: usize,
    f: &dyn Fn(&mut Tile),
    out: &mut [f32],
) -> f64 {
    let rs = t.row_size(N_IN as u64).unwrap() as usize;
    let ab = a.len() / n_tok;
    let start = thread_cpu_time();
    for t0 in (0..n_tok).step_by(TOKEN_BLOCK) {
        let t1 = (t0 + TOKEN_BLOCK).min(n_tok);
        for r0 in (0..N_OUT).step_by(ROW_CHUNK) {
            let r1 = (r0 + ROW_CHUNK).min(N_OUT);
            let (nr, nt) = (r1 - r0, t1 - t0);
            let mut tile = Tile {
                n: N_IN,
                w: &w[r0 * rs..r1 * rs],
                n_rows: nr,
                a: &a[t0 * ab..t1 * ab],
                n_tok: nt,
                out: &mut out[..nr * nt],
            };
            f(&mut tile);
        }
    }
    thread_cpu_time() - start
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let reps: usize = args
        .iter()
        .skip_while(|a| *a != "--")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let wanted: Vec<GgmlType> = args
        .iter()
        .take_while(|a| *a != "--")
        .filter_map(|s| {
            SUPPORTED
                .iter()
                .copied()
                .find(|t| t.to_string().eq_ignore_ascii_case(s))
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(7);
    let mut out = vec![0f32; ROW_CHUNK * TOKEN_BLOCK];
    println!("single thread, {N_IN} x {N_OUT}, median of {reps} runs (GFLOPS)");
    println!(
        "{:<6} {:<7} {:>4} {:>10} {:>10} {:>7}",
        "type", "level", "tok", "dot", "tile", "ratio"
    );
    for t in SUPPORTED {
        if !wanted.is_empty() && !wanted.contains(&t) {
            continue;
        }
        let levels: Vec<Isa> = [Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| i.available())
            .collect();
        let has_tile = levels.iter().any(|&i| {
            let k = kernels_for(i, t).unwrap();
            k.tile.is_some() || k.batch.is_some_and(|b| b.tile.is_some())
        });
        if !has_tile {
            continue;
        }
        let w1 = weights(&mut rng, t);
        let toks: Vec<usize> = std::env::var("TOKS")
            .ok()
            .map(|v| v.split(',').filter_map(|s| s.parse().ok()).collect())
            .unwrap_or(vec![1, 64]);
        for &n_tok in &toks {
            // Decode streams the weights from DRAM: cycle through copies larger than the L3.
            let copies = if n_tok < 16 {
                (COLD_BYTES / w1.len()).max(1)
            } else {
                1
            };
            let ws: Vec<Vec<u8>> = (0..copies).map(|_| w1.clone()).collect();
            let x: Vec<f32> = (0..n_tok * N_IN)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect();
            for &isa in &levels {
                let k = kernels_for(isa, t).unwrap();
                let act_row = k.act_type.row_size(N_IN as u64).unwrap() as usize;
                let mut a = vec![0u8; act_row * n_tok];
                for (xr, ar) in x.chunks_exact(N_IN).zip(a.chunks_exact_mut(act_row)) {
                    (k.quantize_act)(xr, ar);
                }
                // The kernel matmul would use for this many tokens.
                let (dot, tile): (DotFn, Option<TileFn>) = match k.batch {
                    Some(b) if b.rule.tokens(n_tok) == n_tok => (b.dot, b.tile),
                    _ => (k.vec_dot, k.tile),
                };
                let Some(tile) = tile else { continue };
                let by_dot = |tl: &mut Tile| tl.by_dot(dot);
                // Interleave the two so drift in machine load hits both alike.
                let inner = if n_tok < 16 { 4 * copies / n_tok } else { 1 };
                let (mut td, mut tt) = (Vec::new(), Vec::new());
                for rep in 0..=reps {
                    let d: f64 = (0..inner)
                        .map(|c| run(t, &ws[c % copies], &a, n_tok, &by_dot, &mut out))
                        .sum();
                    let s: f64 = (0..inner)
                        .map(|c| run(t, &ws[c % copies], &a, n_tok, &tile, &mut out))
                        .sum();
                    if rep > 0 {
                        td.push(d / inner as f64);
                        tt.push(s / inner as f64);
                    }
                }
                let flop = 2.0 * (N_IN * N_OUT * n_tok) as f64;
                let (gd, gt) = (flop / median(td) / 1e9, flop / median(tt) / 1e9);
                println!(
                    "{:<6} {:<7} {:>4} {:>10.2} {:>10.2} {:>7.2}",
                    t.to_string(),
                    isa.name(),
                    n_tok,
                    gd,
                    gt,
                    gt / gd
                );
            }
        }
    }
}
