//! A light closed-loop load generator for OpenAI-compatible streaming servers, for
//! `bench/serve`: `clients` threads, each sending the next request of the list as soon as its
//! previous one is done, over plain blocking sockets (one connection per request, as
//! llama-server closes kept-alive connections after a stream).
//!
//! Why not the Python client: on a 2-core machine the load generator shares the CPUs with the
//! server it measures. aiohttp parsing every streamed event cost ~0.1 CPU at 8 clients, taken
//! from the server's two compute threads (which wait for each other at every barrier, so a
//! preempted thread stalls both). This client reads each chunk with one system call and parses
//! only the event it needs.
//!
//! Input (stdin, JSON): `{"url": "http://127.0.0.1:PORT", "path": "/v1/completions",
//! "clients": C, "timeout_s": T, "bodies": [request body, ...]}`.
//! Output (stdout, JSON): `{"wall_s", "requests": [{"t_start", "t_end", "ttft_ms", "gaps_ms",
//! "chunks", "completion_tokens", "tokens_from_usage", "prompt_tokens", "finish_reason",
//! "text_head"}], "errors": [..]}`, times in seconds from the start of the level; the same
//! records `bench/serve/serve_bench.py` makes with aiohttp.
//!
//! `cargo run --release -p dino-server --example loadgen < level.json`
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn main() {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        fail(&format!("reading stdin: {e}"));
    }
    let cfg: Value = serde_json::from_str(&input).unwrap_or_else(|e| fail(&format!("input: {e}")));
    let url = cfg["url"]
        .as_str()
        .unwrap_or_else(|| fail("input: no \"url\""));
    let Some(addr) = url.strip_prefix("http://") else {
        fail("input: \"url\" must be http://HOST:PORT");
    };
    let addr = addr.trim_end_matches('/').to_string();
    let path = cfg["path"]
        .as_str()
        .unwrap_or("/v1/completions")
        .to_string();
    let clients = cfg["clients"].as_u64().unwrap_or(1).max(1) as usize;
    let timeout = Duration::from_secs_f64(cfg["timeout_s"].as_f64().unwrap_or(600.0));
    let bodies: Vec<String> = cfg["bodies"]
        .as_array()
        .unwrap_or_else(|| fail("input: no \"bodies\" list"))
        .iter()
        .map(Value::to_string)
        .collect();

    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let errors = Mutex::new(Vec::new());
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                match one_request(&addr, &path, body, timeout, t0) {
                    Ok(r) => results.lock().expect("results").push(r),
                    Err(e) => errors.lock().expect("errors").push(e),
                }
            });
        }
    });
    let wall = t0.elapsed().as_secs_f64();
    let out = json!({
        "wall_s": wall,
        "requests": results.into_inner().expect("results"),
        "errors": errors.into_inner().expect("errors"),
    });
    println!("{out}");
}

fn fail(msg: &str) -> ! {
    eprintln!("loadgen: {msg}");
    std::process::exit(2);
}

/// One streaming request: its timings and what the stream reported.
fn one_request(
    addr: &str,
    path: &str,
    body: &str,
    timeout: Duration,
    t0: Instant,
) -> Result<Value, String> {
    let since = |t: Instant| (t - t0).as_secs_f64();
    let start = Instant::now();
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Accept: text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut w = &stream;
    w.write_all(head.as_bytes())
        .and_then(|()| w.write_all(body.as_bytes()))
        .map_err(|e| format!("send: {e}"))?;
    let mut r = BufReader::with_capacity(1 << 16, &stream);

    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| format!("status: {e}"))?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let mut chunked = false;
    let mut length: Option<usize> = None;
    loop {
        line.clear();
        r.read_line(&mut line)
            .map_err(|e| format!("headers: {e}"))?;
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':').unwrap_or((h, ""));
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if name == "content-length" {
            length = value.parse().ok();
        }
    }

    let mut sse = Sse::default();
    let mut raw = Vec::new();
    let mut feed = |bytes: &[u8], now: Instant| -> Result<(), String> {
        if status == 200 {
            sse.feed(bytes, now)
        } else {
            if raw.len() < 4096 {
                raw.extend_from_slice(bytes);
            }
            Ok(())
        }
    };
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)
                .map_err(|e| format!("chunk size: {e}"))?;
            let size_hex = line.trim_end().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_hex.trim(), 16)
                .map_err(|_| format!("bad chunk size line {line:?}"))?;
            if size == 0 {
                break;
            }
            let mut chunk = vec![0u8; size];
            r.read_exact(&mut chunk)
                .map_err(|e| format!("chunk: {e}"))?;
            feed(&chunk, Instant::now())?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)
                .map_err(|e| format!("chunk end: {e}"))?;
        }
    } else {
        let mut buf = vec![0u8; 1 << 16];
        let mut left = length.unwrap_or(usize::MAX);
        while left > 0 {
            let n = r
                .read(&mut buf[..left.min(1 << 16)])
                .map_err(|e| format!("body: {e}"))?;
            if n == 0 {
                break;
            }
            left -= n;
            feed(&buf[..n], Instant::now())?;
        }
    }
    let end = Instant::now();
    if status != 200 {
        let text = String::from_utf8_lossy(&raw);
        return Err(format!("HTTP {status}: {}", &text[..text.len().min(300)]));
    }
    let ttft = sse.times.first().map(|&t| (t - start).as_secs_f64() * 1e3);
    let gaps: Vec<f64> = sse
        .times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)
        .collect();
    let n_tok = sse
        .usage
        .as_ref()
        .and_then(|u| u["completion_tokens"].as_u64());
    let head: String = sse.text.chars().take(60).collect();
    Ok(json!({
        "t_start": since(start),
        "t_end": since(end),
        "ttft_ms": ttft,
        "gaps_ms": gaps,
        "chunks": sse.times.len(),
        "completion_tokens": n_tok.unwrap_or(sse.times.len() as u64),
        "tokens_from_usage": n_tok.is_some(),
        "prompt_tokens": sse.usage.as_ref().and_then(|u| u["prompt_tokens"].as_u64()),
        "finish_reason": sse.finish,
        "text_head": head,
    }))
}

/// Server-sent events, fed as they arrive: the arrival time of every event with text.
#[derive(Default)]
struct Sse {
    buf: Vec<u8>,
    times: Vec<Instant>,
    usage: Option<Value>,
    finish: Option<String>,
    text: String,
}

impl Sse {
    fn feed(&mut self, bytes: &[u8], now: Instant) -> Result<(), String> {
        self.buf.extend_from_slice(bytes);
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = line.trim_ascii();
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let data = data.trim_ascii();
            if data == b"[DONE]" {
                continue;
            }
            let ev: Value =
                serde_json::from_slice(data).map_err(|e| format!("event is not JSON: {e}"))?;
            if ev.get("usage").is_some_and(|u| !u.is_null()) {
                self.usage = Some(ev["usage"].clone());
            }
            for c in ev["choices"].as_array().into_iter().flatten() {
                if let Some(t) = c["text"].as_str().filter(|t| !t.is_empty()) {
                    self.times.push(now);
                    if self.text.len() < 240 {
                        self.text.push_str(t);
                    }
                }
                if let Some(f) = c["finish_reason"].as_str() {
                    self.finish = Some(f.to_string());
                }
            }
        }
        Ok(())
    }
}
