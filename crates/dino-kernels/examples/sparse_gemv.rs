//! The column-layout product (activation sparsity) against the dense Q8_0 product on the same
//! matrices, out of the caches: N_MAT matrices of N_IN x N_OUT visited in turn (default: 8 of
//! Qwen2.5-1.5B's stacked gate/up, 1536 x 17920, 220 MB), one token, at input sparsities
//! 0 .. 0.75 (random inputs zeroed). Prints ms per product and the weight bytes each read per
//! second (dense: the whole matrix; sparse: the scale lines and the active columns).
//!
//! `[N_MAT=8] [N_IN=1536] [N_OUT=17920] cargo run --release -p dino-kernels --example sparse_gemv [THREADS]`
use dino_core::GgmlType;
use dino_kernels::matmul::{self, MatmulScratch, QMatrix};
use dino_kernels::pool::ThreadPool;
use dino_kernels::quant::quantize_row;
use dino_kernels::sparse::{ColumnMatrix, SparsePlan};
use std::time::Instant;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).map_or(default, |s| s.parse().expect(name))
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .map_or(2, |s| s.parse().expect("THREADS"));
    let pool = ThreadPool::new(threads);
    let (n_mat, n_in, n_out) = (env("N_MAT", 8), env("N_IN", 1536), env("N_OUT", 17920));
    let ty = GgmlType::Q8_0;
    let rs = ty.row_size(n_in as u64).expect("row size") as usize;
    let w: Vec<f32> = (0..n_in * n_out)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0)
        .collect();
    let mut raw = vec![0u8; rs * n_out];
    quantize_row(ty, &w, &mut raw).expect("quantize");
    let q = QMatrix::new("w", &raw, ty, n_in, n_out).expect("matrix");
    let packed: Vec<_> = (0..n_mat).map(|_| matmul::repack(&pool, &q)).collect();
    let dense: Vec<QMatrix> = packed
        .iter()
        .map(|p| match p {
            Some(p) => QMatrix {
                data: p,
                packed: true,
                ..q
            },
            None => q,
        })
        .collect();
    let cols: Vec<ColumnMatrix> = (0..n_mat)
        .map(|_| ColumnMatrix::from_matrices(&pool, &[&q]).expect("columns"))
        .collect();
    println!(
        "{threads} threads, {n_mat} x ({n_in} x {n_out}): dense {:.0} MB, columns {:.0} MB",
        (n_mat * rs * n_out) as f64 / 1e6,
        cols.iter().map(|c| c.bytes()).sum::<usize>() as f64 / 1e6
    );
    let mut y = vec![0f32; n_out];
    let mut sc = MatmulScratch::default();
    let reps = 5;
    let time = |f: &mut dyn FnMut()| {
        f();
        let mut ts: Vec<f64> = (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() / n_mat as f64
            })
            .collect();
        ts.sort_by(f64::total_cmp);
        ts[reps / 2]
    };
    let x: Vec<f32> = (0..n_in)
        .map(|i| ((i * 31 % 97) as f32 - 48.0) / 48.0 + 0.01)
        .collect();
    let t_dense = time(&mut || {
        for m in &dense {
            matmul::matmul(&pool, m, &x, 1, &mut y, &mut sc);
        }
    });
    let dense_bytes = (rs * n_out) as f64;
    println!(
        "dense Q8_0      {:7.3} ms  {:6.1} GB/s",
        1e3 * t_dense,
        dense_bytes / t_dense / 1e9
    );
    let mut plan = SparsePlan::default();
    let clustered = std::env::var("CLUSTERED").is_ok();
    for sparsity in [0.0, 0.25, 0.4, 0.5, 0.6, 0.65, 0.7, 0.75, 0.85] {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let xs: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let zero = if clustered {
                    (i % 32) as f64 >= 32.0 * (1.0 - sparsity)
                } else {
                    ((s >> 11) as f64 / (1u64 << 53) as f64) < sparsity
                };
                if zero {
                    0.0
                } else {
                    v
                }
            })
            .collect();
        let t = time(&mut || {
            for c in &cols {
                c.gemv(&pool, &xs, &mut y, &mut plan);
            }
        });
        let active = xs.iter().filter(|v| **v != 0.0).count();
        let read =
            (n_out.div_ceil(64) * (n_in / 32) * 128 + active * n_out.div_ceil(64) * 64) as f64;
        println!(
            "columns {:4.2}    {:7.3} ms  {:6.1} GB/s  ({:.2}x dense)",
            sparsity,
            1e3 * t,
            read / t / 1e9,
            t_dense / t
        );
    }
}
