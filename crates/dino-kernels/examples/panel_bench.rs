//! Single-thread throughput of the repacked-layout GEMM (`dispatch::PackedKernels`) over a
//! 2048 × 5632 matrix cut into matmul's prompt work items (32 rows × 64 tokens, or `TOKS`), in GMAC/s of
//! thread CPU time (best run), with the fraction of the `vpdpbusd` peak (2 per cycle × 64 MACs) at the clock
//! given as `GHZ` (default 3.5; F16 runs on FMA, whose peak is 2 × 16 MACs per cycle).
//!
//! `cargo run --release -p dino-kernels --example panel_bench [TYPE ...] [-- reps]`

use dino_core::GgmlType;
use dino_kernels::dispatch::{kernels, Tile};
use dino_kernels::panel::ROWS;
use dino_kernels::quant::{quantize_row, SUPPORTED};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[path = "common/cpu_time.rs"]
mod cpu_time;
use cpu_time::thread_cpu_time;

const N_IN: usize = 2048;
const N_OUT: usize = 5632;
const ROW_CHUNK: usize = 32;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let reps: usize = args
        .iter()
        .skip_while(|a| *a != "--")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
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
    let ghz: f64 = std::env::var("GHZ")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.5);
    // TOKS=1 measures the decode kernel (weights in cache: its compute rate, to set against
    // the memory bandwidth it must keep up with).
    let n_tok: usize = std::env::var("TOKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let mut rng = StdRng::seed_from_u64(7);
    println!("single thread, {N_IN} x {N_OUT}, {n_tok} tokens, best of {reps} runs");
    for t in SUPPORTED {
        if !wanted.is_empty() && !wanted.contains(&t) {
            continue;
        }
        let Some(pk) = kernels(t).and_then(|k| k.packed) else {
            continue;
        };
        let l = pk.layout;
        let rs = t.row_size(N_IN as u64).unwrap() as usize;
        let x: Vec<f32> = (0..N_IN * N_OUT)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let mut w = vec![0u8; rs * N_OUT];
        quantize_row(t, &x, &mut w).unwrap();
        let gb = l.group_bytes(N_IN);
        let mut packed = vec![0u8; N_OUT / ROWS * gb];
        l.pack(&w, N_IN, N_OUT, &mut packed);
        let ab = l.act.row_bytes(N_IN);
        let mut a = vec![0u8; ab * n_tok];
        for ar in a.chunks_exact_mut(ab) {
            let xr: Vec<f32> = (0..N_IN).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            (pk.quantize_act)(&xr, ar);
        }
        let mut out = vec![0f32; ROW_CHUNK * n_tok];
        let mut times = Vec::new();
        for rep in 0..=reps {
            let start = thread_cpu_time();
            for r0 in (0..N_OUT).step_by(ROW_CHUNK) {
                let g0 = r0 / ROWS;
                let ng = ROW_CHUNK / ROWS;
                (pk.tile)(&mut Tile {
                    n: N_IN,
                    w: &packed[g0 * gb..(g0 + ng) * gb],
                    n_rows: ROW_CHUNK,
                    a: &a,
                    n_tok,
                    out: &mut out,
                });
            }
            if rep > 0 {
                times.push(thread_cpu_time() - start);
            }
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let s = times[0]; // the fastest run: on a shared machine noise only slows runs down
        let gmac = (N_IN * N_OUT * n_tok) as f64 / s / 1e9;
        println!(
            "{:<6} {:>8.1} GMAC/s  {:>5.1} % of the VNNI peak at {ghz} GHz, weights read at {:.1} GB/s",
            t.to_string(),
            gmac,
            100.0 * gmac / (128.0 * ghz),
            packed.len() as f64 / s / 1e9
        );
    }
}
