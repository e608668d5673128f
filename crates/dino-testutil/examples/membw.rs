//! Memory read bandwidth of this machine: a read-only streaming sum over a large array (default
//! 640 MB, far beyond any cache), split evenly across T threads, best of several passes.
//! Token generation reads every weight once per token, so bandwidth ÷ weight bytes is its ceiling
//! (`bench/compare/run` uses this).
//!
//! ```text
//! cargo run --release -p dino-testutil --example membw -- [-t 1,2] [--mb 640] [--passes 7] [--scalar]
//! ```
//! Prints one JSON object on stdout: `{"isa", "bytes", "passes", "results": [{"threads",
//! "best_gbps", "median_gbps", "samples_gbps"}]}` (GB = 1e9 bytes). AVX2 is detected at run time;
//! without it (or with `--scalar`) a portable loop is used.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::Instant;

struct Args {
    threads: Vec<usize>,
    mb: usize,
    passes: usize,
    scalar: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        threads: vec![1, 2],
        mb: 640,
        passes: 7,
        scalar: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "-t" | "--threads" => {
                let v = value("-t")?;
                a.threads = v
                    .split(',')
                    .map(|s| s.trim().parse::<usize>().ok().filter(|&n| n > 0))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| format!("-t: expected a list like 1,2, got '{v}'"))?;
            }
            "--mb" => {
                let v = value("--mb")?;
                a.mb = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--mb: '{v}'"))?;
            }
            "--passes" => {
                let v = value("--passes")?;
                a.passes = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--passes: '{v}'"))?;
            }
            "--scalar" => a.scalar = true,
            "-h" | "--help" => {
                println!("usage: membw [-t 1,2] [--mb 640] [--passes 7] [--scalar]");
                std::process::exit(0);
            }
            other => return Err(format!("unexpected argument '{other}'")),
        }
    }
    Ok(a)
}

/// Portable twin of [`sum_avx2`]: four independent accumulators so the adds never wait on each
/// other and the loop is limited by loads alone.
fn sum_scalar(data: &[u64]) -> u64 {
    let mut acc = [0u64; 4];
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(x);
        }
    }
    let mut s = acc.iter().fold(0u64, |s, &a| s.wrapping_add(a));
    for &x in tail {
        s = s.wrapping_add(x);
    }
    s
}

/// Sums `data` with 256-bit loads, 128 bytes (4 vectors, 4 accumulators) per iteration.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_avx2(data: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    const LANES: usize = 4; // u64 per __m256i
    const STEP: usize = 4 * LANES;
    let n_main = data.len() / STEP * STEP;
    let p = data.as_ptr();
    let mut a0 = _mm256_setzero_si256();
    let mut a1 = _mm256_setzero_si256();
    let mut a2 = _mm256_setzero_si256();
    let mut a3 = _mm256_setzero_si256();
    let mut i = 0;
    while i < n_main {
        // SAFETY: i + STEP <= n_main <= data.len(), so the four 32-byte loads at p+i,
        // p+i+4, p+i+8, p+i+12 (u64 elements) stay inside `data`; loadu has no alignment need.
        unsafe {
            a0 = _mm256_add_epi64(a0, _mm256_loadu_si256(p.add(i) as *const __m256i));
            a1 = _mm256_add_epi64(a1, _mm256_loadu_si256(p.add(i + LANES) as *const __m256i));
            a2 = _mm256_add_epi64(
                a2,
                _mm256_loadu_si256(p.add(i + 2 * LANES) as *const __m256i),
            );
            a3 = _mm256_add_epi64(
                a3,
                _mm256_loadu_si256(p.add(i + 3 * LANES) as *const __m256i),
            );
        }
        i += STEP;
    }
    let s = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    let mut lanes = [0u64; LANES];
    // SAFETY: `lanes` is 32 bytes, exactly one __m256i; storeu has no alignment need.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, s) };
    lanes
        .iter()
        .fold(sum_scalar(&data[n_main..]), |acc, &x| acc.wrapping_add(x))
}

type SumFn = fn(&[u64]) -> u64;

/// Picks the kernel once: AVX2 when the CPU has it (and `--scalar` is not given).
fn pick(scalar: bool) -> (&'static str, SumFn) {
    #[cfg(target_arch = "x86_64")]
    if !scalar && is_x86_feature_detected!("avx2") {
        fn avx2(d: &[u64]) -> u64 {
            // SAFETY: this function is only selected after is_x86_feature_detected!("avx2").
            unsafe { sum_avx2(d) }
        }
        return ("avx2", avx2);
    }
    let _ = scalar;
    ("scalar", sum_scalar)
}

/// One pass: `threads` threads each sum their slice of `data`, released together by a barrier;
/// returns GB/s over the whole array, timed from the first thread's start to the last one's end.
/// The workers time themselves: a timing thread of its own could be descheduled on a small VM
/// (more threads than cores) and miss the start.
fn pass(data: &[u64], threads: usize, f: SumFn) -> f64 {
    let chunk = data.len().div_ceil(threads);
    let start = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = data
            .chunks(chunk)
            .map(|part| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    let t0 = Instant::now();
                    black_box(f(black_box(part)));
                    (t0, Instant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("membw worker panicked"))
            .collect()
    });
    let first = spans
        .iter()
        .map(|s| s.0)
        .min()
        .expect("at least one thread");
    let last = spans
        .iter()
        .map(|s| s.1)
        .max()
        .expect("at least one thread");
    std::mem::size_of_val(data) as f64 / (last - first).as_secs_f64() / 1e9
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let (isa, f) = pick(args.scalar);
    let n = args.mb * 1_000_000 / 8;
    // [n] u64, every page written so the reads below hit real memory, not the shared zero page.
    let data: Vec<u64> = (0..n as u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    // Warm-up: page tables and frequency.
    black_box(f(&data));
    let mut results = Vec::new();
    for &t in &args.threads {
        let mut samples: Vec<f64> = (0..args.passes).map(|_| pass(&data, t, f)).collect();
        let shown: Vec<String> = samples.iter().map(|g| format!("{g:.2}")).collect();
        samples.sort_by(f64::total_cmp);
        let best = samples[samples.len() - 1];
        let median = samples[samples.len() / 2];
        eprintln!("membw: {t} thread(s), {isa}: best {best:.2} GB/s, median {median:.2} GB/s");
        results.push(format!(
            "{{\"threads\": {t}, \"best_gbps\": {best:.3}, \"median_gbps\": {median:.3}, \"samples_gbps\": [{}]}}",
            shown.join(", ")
        ));
    }
    println!(
        "{{\"isa\": \"{isa}\", \"bytes\": {}, \"passes\": {}, \"results\": [{}]}}",
        n * 8,
        args.passes,
        results.join(", ")
    );
}
