//! Prometheus text exposition (format 0.0.4), written by hand: a few counters, two
//! histograms and the backend's gauges.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::backend::BackendMetrics;

/// Bucket upper bounds in seconds.
const TTFT_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const TPOT_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
];

struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative counts per bucket, then one for +Inf.
    counts: Vec<AtomicU64>,
    /// Sum in nanoseconds.
    sum_ns: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    fn observe(&self, seconds: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cum = 0u64;
        for (i, b) in self.bounds.iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cum}");
    }
}

/// The server's own counters.
pub struct ServerMetrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    ttft: Histogram,
    tpot: Histogram,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        ServerMetrics {
            requests: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            ttft: Histogram::new(&TTFT_BUCKETS),
            tpot: Histogram::new(&TPOT_BUCKETS),
        }
    }
}

impl ServerMetrics {
    /// `route` is a matched route template or `"other"`, so clients cannot grow the label set.
    pub fn request(&self, route: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((route.to_string(), status)).or_insert(0) += 1;
    }

    pub fn tokens(&self, prompt: usize, completion: usize) {
        self.prompt_tokens
            .fetch_add(prompt as u64, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion as u64, Ordering::Relaxed);
    }

    pub fn time_to_first_token(&self, seconds: f64) {
        self.ttft.observe(seconds);
    }

    pub fn time_per_output_token(&self, seconds: f64) {
        self.tpot.observe(seconds);
    }

    pub fn render(&self, backend: &BackendMetrics) -> String {
        let mut out = String::new();
        out.push_str("# HELP dino_requests_total HTTP requests answered, by route and status.\n");
        out.push_str("# TYPE dino_requests_total counter\n");
        {
            let m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            for ((route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "dino_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {v}");
        };
        counter(
            &mut out,
            "dino_prompt_tokens_total",
            "Prompt tokens processed.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "dino_completion_tokens_total",
            "Completion tokens generated.",
            self.completion_tokens.load(Ordering::Relaxed),
        );
        self.ttft.write(
            &mut out,
            "dino_time_to_first_token_seconds",
            "Time from request to first generated token.",
        );
        self.tpot.write(
            &mut out,
            "dino_time_per_output_token_seconds",
            "Time between consecutive generated tokens.",
        );
        // (name, help, type, value): the scheduler's gauges, then its counters.
        let series: [(&str, &str, &str, u64); 8] = [
            (
                "dino_queue_depth",
                "Requests waiting to be scheduled.",
                "gauge",
                backend.queue_depth as u64,
            ),
            (
                "dino_running_sequences",
                "Sequences being generated.",
                "gauge",
                backend.running as u64,
            ),
            (
                "dino_kv_blocks_used",
                "KV-cache blocks held by sequences.",
                "gauge",
                backend.kv_blocks_used as u64,
            ),
            (
                "dino_kv_blocks_cached",
                "KV-cache blocks kept only for prefix reuse.",
                "gauge",
                backend.kv_blocks_cached as u64,
            ),
            (
                "dino_kv_blocks_total",
                "KV-cache blocks in total.",
                "gauge",
                backend.kv_blocks_total as u64,
            ),
            (
                "dino_kv_cache_bytes",
                "Memory of the KV cache (all blocks, keys and values).",
                "gauge",
                backend.kv_blocks_total as u64 * backend.kv_block_bytes,
            ),
            (
                "dino_prefix_tokens_reused_total",
                "Prompt tokens found in the prefix cache instead of computed.",
                "counter",
                backend.prefix_tokens_reused,
            ),
            (
                "dino_preemptions_total",
                "Sequences preempted for want of KV-cache blocks.",
                "counter",
                backend.preemptions,
            ),
        ];
        for (name, help, kind, v) in series {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {v}");
        }
        out
    }
}
