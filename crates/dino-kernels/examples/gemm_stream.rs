//! Multi-threaded `matmul` over many matrices visited in turn (so each product finds its
//! weights out of the near caches; `N_MAT=400` for DRAM), at small token counts: GMAC/s and the
//! weight bytes read per second, per token count: what a decode step of `n` batched sequences
//! costs in its products. "by hand" is the floor to compare with: the same tile kernel called
//! directly, each thread on its half of the rows, activations quantized outside the timing.
//!
//! `[N_MAT=48] [N_IN=576] [N_OUT=1536] cargo run --release -p dino-kernels --example gemm_stream [TYPE] [THREADS]`
use dino_core::GgmlType;
use dino_kernels::matmul::{self, MatmulScratch, QMatrix};
use dino_kernels::pool::ThreadPool;
use dino_kernels::quant::quantize_row;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ty: GgmlType = args
        .get(1)
        .map(|s| {
            dino_kernels::quant::SUPPORTED
                .iter()
                .copied()
                .find(|t| t.to_string().eq_ignore_ascii_case(s))
                .expect("a supported type")
        })
        .unwrap_or(GgmlType::Q4_1);
    let threads: usize = args.get(2).map_or(2, |s| s.parse().expect("THREADS"));
    let pool = ThreadPool::new(threads);
    // N_MAT matrices of N_IN x N_OUT (default 48 x 1536: about SmolLM2's feed-forward, 24
    // layers' worth, 26 MB at 4.5 bits).
    let n_mat: usize = std::env::var("N_MAT").map_or(48, |s| s.parse().expect("N_MAT"));
    let n_out: usize = std::env::var("N_OUT").map_or(1536, |s| s.parse().expect("N_OUT"));
    let n_in: usize = std::env::var("N_IN").map_or(576, |s| s.parse().expect("N_IN"));
    let rs = ty.row_size(n_in as u64).expect("row size") as usize;
    let x: Vec<f32> = (0..n_in * n_out)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0)
        .collect();
    let mut raw = vec![0u8; rs * n_out];
    quantize_row(ty, &x, &mut raw).expect("quantize");
    let q = QMatrix::new("w", &raw, ty, n_in, n_out).expect("matrix");
    // REPACK=0: the file layout (llama.cpp's kernels and summation order).
    let repack = std::env::var("REPACK").map_or(true, |v| v != "0");
    let packed: Vec<_> = (0..n_mat)
        .map(|_| repack.then(|| matmul::repack(&pool, &q)).flatten())
        .collect();
    // Unpacked matrices are copies too, so each product reads its own bytes.
    let copies: Vec<Vec<u8>> = packed
        .iter()
        .map(|p| if p.is_none() { raw.clone() } else { Vec::new() })
        .collect();
    let mats: Vec<QMatrix> = packed
        .iter()
        .zip(&copies)
        .map(|(p, c)| match p {
            Some(p) => QMatrix {
                data: p,
                packed: true,
                ..q
            },
            None => QMatrix { data: c, ..q },
        })
        .collect();
    let bytes: usize = mats.iter().map(|m| m.data.len()).sum();
    let mut sc = MatmulScratch::default();
    println!(
        "{ty}, {threads} threads, {n_mat} x ({n_in} x {n_out}), {:.1} MB",
        bytes as f64 / 1e6
    );
    for n in [1usize, 2, 4, 8, 16, 32] {
        let a: Vec<f32> = (0..n * n_in)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 48.0)
            .collect();
        let mut out = vec![0f32; n * n_out];
        let mut best = f64::MAX;
        for _ in 0..7 {
            let t = Instant::now();
            for m in &mats {
                matmul::matmul(&pool, m, &a, n, &mut out, &mut sc);
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        let macs = (n * n_in * n_out * n_mat) as f64;
        let report = || {
            println!(
                "n {n:>2}: {:>7.1} us  {:>6.1} GMAC/s  {:>5.1} GB/s of weights",
                best * 1e6,
                macs / best / 1e9,
                bytes as f64 / best / 1e9
            )
        };
        if !repack {
            report();
            continue;
        }
        // The same products by hand: each thread its half of the rows in 256-row tiles.
        let pk = dino_kernels::dispatch::kernels(ty)
            .and_then(|k| k.packed)
            .expect("packed");
        let ab = pk.layout.act.row_bytes(n_in);
        let mut act = vec![0u8; n * ab];
        for t in 0..n {
            (pk.quantize_act)(&a[t * n_in..(t + 1) * n_in], &mut act[t * ab..(t + 1) * ab]);
        }
        let gb = pk.layout.group_bytes(n_in);
        let mut raw_best = f64::MAX;
        for _ in 0..7 {
            let t = Instant::now();
            for m in &mats {
                pool.run(&|tid, nt| {
                    let mut buf = vec![0f32; 256 * n];
                    let rows = n_out / nt;
                    for r0 in (tid * rows..(tid + 1) * rows).step_by(256) {
                        let r1 = (r0 + 256).min((tid + 1) * rows);
                        (pk.tile)(&mut dino_kernels::dispatch::Tile {
                            n: n_in,
                            w: &m.data[r0 / 16 * gb..r1 / 16 * gb],
                            n_rows: r1 - r0,
                            a: &act,
                            n_tok: n,
                            out: &mut buf[..(r1 - r0) * n],
                        });
                    }
                    std::hint::black_box(&buf);
                });
            }
            raw_best = raw_best.min(t.elapsed().as_secs_f64());
        }
        println!("   by hand: {:>7.1} us", raw_best * 1e6);
        report();
    }
}
