//! What skipping parts of a weight matrix saves when the matrix is read from memory: the limit
//! activation sparsity meets on a CPU. A 1 GiB buffer is cut into runs of RUN bytes; a random
//! share of the runs is skipped and the rest read front to back by THREADS threads (each its
//! half). Prints the time against reading everything, and the bandwidth over the bytes read.
//!
//! Skipping pays as much as it skips only when the runs are long: the hardware prefetchers
//! stream a front-to-back read, and every hole breaks the stream. On this machine (Zen, 2
//! threads) a random 20 % of 4 KB runs skipped takes longer than reading them all; even
//! 17.9 KB runs (one input's weights to all of a gate/up pair's outputs) save 8 % of the 20 %.
//!
//! `cargo run --release -p dino-kernels --example skip_reads [THREADS]`
use std::time::Instant;

/// One 4 KiB page, aligned, so runs of whole pages start on page boundaries.
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Page([u64; 512]);

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .map_or(2, |s| s.parse().expect("THREADS"));
    let bytes = 1usize << 30;
    let buf: Vec<Page> = (0..bytes / 4096).map(|p| Page([p as u64; 512])).collect();
    // SAFETY: `Page` is 4096 plain bytes with no padding; the slice covers the same memory.
    let words: &[u64] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), bytes / 8) };
    let runs = [64usize, 256, 1024, 1536, 4096, 4480, 8960, 17920, 65536];
    let zeros = [0.0f64, 0.2, 0.35, 0.5, 0.75];
    // `kept`: the indices of the runs read, increasing (a list, so the loop has no
    // unpredictable branch).
    let read = |run: usize, kept: &[u32]| -> f64 {
        let n = kept.len();
        let t = Instant::now();
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|k| {
                    let part = &kept[n * k / threads..n * (k + 1) / threads];
                    s.spawn(move || {
                        let mut acc = [0u64; 8];
                        for i in part.iter().map(|&i| i as usize) {
                            for c in words[i * run / 8..(i + 1) * run / 8].chunks_exact(8) {
                                for (a, &w) in acc.iter_mut().zip(c) {
                                    *a = a.wrapping_add(w);
                                }
                            }
                        }
                        std::hint::black_box(acc)
                    })
                })
                .collect();
            for h in hs {
                h.join().expect("reader");
            }
        });
        t.elapsed().as_secs_f64()
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "{threads} threads, 1 GiB; time against reading every run, and GB/s over the bytes read"
    );
    print!("| run bytes |");
    for z in zeros {
        print!(" {:.0} % skipped |", z * 100.0);
    }
    println!();
    println!("|---:|{}", "---:|".repeat(zeros.len()));
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for run in runs {
        let n = bytes / run;
        let mut full = 0.0;
        print!("| {run} |");
        for z in zeros {
            let keep: Vec<u32> = (0..n as u32)
                .filter(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 11) as f64 / (1u64 << 53) as f64 >= z
                })
                .collect();
            let kept = keep.len() * run;
            read(run, &keep);
            let t = median((0..5).map(|_| read(run, &keep)).collect());
            if z == 0.0 {
                full = t;
            }
            print!(" {:.2} ({:.1} GB/s) |", t / full, kept as f64 / t / 1e9);
        }
        println!();
    }
}
