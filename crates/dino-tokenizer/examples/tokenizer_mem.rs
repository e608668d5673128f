//! Heap held by a tokenizer built from a GGUF, and how fast it encodes a text.
//!
//! `cargo run --release -p dino-tokenizer --example tokenizer_mem -- MODEL.gguf [TEXT [RUNS]]`
//!
//! Counts the bytes the global allocator hands out: "peak" is the most held at once while
//! `Tokenizer::from_gguf` runs and "steady" what it still holds afterwards (both above what the
//! parsed GGUF metadata already holds); then encodes TEXT once cold and RUNS more times, and
//! prints the median CPU time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use dino_formats::gguf::GgufFile;
use dino_tokenizer::Tokenizer;

/// `System`, counting the bytes currently allocated and their high-water mark.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = CURRENT.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call goes to `System` with the caller's arguments unchanged; the wrapper only
// updates two counters, so `System`'s guarantees carry over.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract, which is `System.alloc`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds the rest.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            CURRENT.fetch_sub(layout.size(), Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// This thread's CPU time, so that other load on the machine does not count (shared with the
// kernel benchmarks).
#[path = "../../dino-kernels/examples/common/cpu_time.rs"]
mod cpu_time;
use cpu_time::thread_cpu_time;

/// Milliseconds of CPU time `f` takes on this thread.
fn cpu_ms<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = thread_cpu_time();
    let r = f();
    (r, (thread_cpu_time() - t) * 1e3)
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(model) = args.first() else {
        eprintln!("usage: tokenizer_mem MODEL.gguf [TEXT [RUNS]]");
        std::process::exit(2);
    };
    let file = GgufFile::open(model).expect("open gguf");

    let base = CURRENT.load(Relaxed);
    PEAK.store(base, Relaxed);
    let (tok, build) = cpu_ms(|| Tokenizer::from_gguf(file.metadata()).expect("tokenizer"));
    let peak = PEAK.load(Relaxed) - base;
    let steady = CURRENT.load(Relaxed) - base;
    println!(
        "{model}: n_vocab {} build {:.1} ms CPU, heap peak {:.2} MiB, steady {:.2} MiB",
        tok.n_vocab(),
        build,
        mib(peak),
        mib(steady)
    );

    let Some(text_path) = args.get(1) else {
        return;
    };
    let runs: usize = args.get(2).map_or(9, |r| r.parse().expect("RUNS")).max(1);
    let text = std::fs::read_to_string(text_path).expect("read text");
    let text_heap = text.capacity();
    let encode = || tok.encode(&text, true, false).expect("encode");
    let (ids, cold) = cpu_ms(encode);
    let n = ids.len();
    drop(ids);
    let mut times: Vec<f64> = (0..runs).map(|_| cpu_ms(encode).1).collect();
    times.sort_by(f64::total_cmp);
    println!(
        "  encode {} bytes -> {n} tokens (CPU time): cold {cold:.1} ms, median of {runs} {:.1} ms; tokenizer heap after {:.2} MiB",
        text.len(),
        times[runs / 2],
        mib(CURRENT.load(Relaxed) - base - text_heap)
    );
}
