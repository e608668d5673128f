//! Shared test support: a deterministic mock backend, a raw HTTP/1.1 client over TCP (so
//! tests can send any bytes at all), and a helper that starts a server on 127.0.0.1:0.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dino_server::{
    Backend, BackendMetrics, ChatMessage, FinishReason, GenEvent, GenRequest, Server, ServerConfig,
    SubmitError, TokenLogprob,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub const MODEL: &str = "mock-model";

/// Tokens are whitespace-separated words (interned); a generation echoes the prompt's words
/// back, one per token, and ends with `stop` when it runs out of words (like EOS), with
/// `length` at `max_tokens`. Words in the prompt steer it: `QUEUEFULL` → `QueueFull`,
/// `TOOLONG` → `PromptTooLong`, `FAIL` → an error event after the first token,
/// `PANIC` → `tokenize` panics, `BADTOKENS` → `tokenize` fails.
pub struct Mock {
    vocab: Mutex<Vec<String>>,
    pub n_ctx: usize,
    pub ready: AtomicBool,
    /// Delay before each token, in ms.
    pub token_delay_ms: AtomicU64,
    /// Keep cycling through the prompt's words instead of stopping at its end.
    pub endless: AtomicBool,
    pub submitted: Mutex<Vec<GenRequest>>,
    /// Generations whose receiver was dropped before they finished.
    pub cancelled: Arc<AtomicUsize>,
    pub finished: Arc<AtomicUsize>,
}

impl Mock {
    pub fn new() -> Arc<Self> {
        Arc::new(Mock {
            vocab: Mutex::new(Vec::new()),
            n_ctx: 64,
            ready: AtomicBool::new(true),
            token_delay_ms: AtomicU64::new(0),
            endless: AtomicBool::new(false),
            submitted: Mutex::new(Vec::new()),
            cancelled: Arc::new(AtomicUsize::new(0)),
            finished: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn word(&self, id: u32) -> String {
        let v = self.vocab.lock().unwrap();
        v.get(id as usize)
            .cloned()
            .unwrap_or_else(|| format!("<{id}>"))
    }
}

impl Backend for Mock {
    fn model_id(&self) -> String {
        MODEL.to_string()
    }

    fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    fn tokenize(&self, text: &str) -> Result<Vec<u32>, String> {
        if text.contains("PANIC") {
            panic!("mock tokenizer panics on request");
        }
        if text.contains("BADTOKENS") {
            return Err("the mock cannot tokenize BADTOKENS".into());
        }
        let mut v = self.vocab.lock().unwrap();
        Ok(text
            .split_whitespace()
            .map(|w| match v.iter().position(|x| x == w) {
                Some(i) => i as u32,
                None => {
                    v.push(w.to_string());
                    (v.len() - 1) as u32
                }
            })
            .collect())
    }

    fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let mut s = String::new();
        for m in messages {
            s.push_str(&format!("{}: {}\n", m.role, m.content));
        }
        if add_generation_prompt {
            s.push_str("assistant:");
        }
        Ok(s)
    }

    fn submit(&self, req: GenRequest) -> Result<mpsc::UnboundedReceiver<GenEvent>, SubmitError> {
        let words: Vec<String> = req.prompt.iter().map(|&id| self.word(id)).collect();
        if words.iter().any(|w| w == "QUEUEFULL") {
            return Err(SubmitError::QueueFull { retry_after_s: 7 });
        }
        if words.iter().any(|w| w == "TOOLONG") {
            return Err(SubmitError::PromptTooLong {
                n_prompt: 1000,
                n_ctx: self.n_ctx,
            });
        }
        let fail = words.iter().any(|w| w == "FAIL");
        self.submitted.lock().unwrap().push(req.clone());
        let (tx, rx) = mpsc::unbounded_channel();
        let delay = Duration::from_millis(self.token_delay_ms.load(Ordering::Relaxed));
        let endless = self.endless.load(Ordering::Relaxed);
        let ids = req.prompt.clone();
        let cancelled = self.cancelled.clone();
        let finished = self.finished.clone();
        tokio::spawn(async move {
            let mut text = String::new();
            let mut n = 0usize;
            let finish = loop {
                if n == req.max_tokens {
                    break FinishReason::Length;
                }
                if n >= words.len() && !endless {
                    break FinishReason::Stop;
                }
                if !delay.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = tx.closed() => { cancelled.fetch_add(1, Ordering::SeqCst); return; }
                    }
                }
                let w = &words[n % words.len()];
                let piece = if n == 0 { w.clone() } else { format!(" {w}") };
                let before = text.len();
                text.push_str(&piece);
                n += 1;
                let mut out = piece.clone();
                let mut stopped = false;
                if let Some(pos) = req.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                    out = text[before.min(pos)..pos].to_string();
                    stopped = true;
                }
                let logprob = req.logprobs.map(|k| TokenLogprob {
                    token: piece.clone(),
                    logprob: -0.25,
                    top: (0..k)
                        .map(|j| (format!("alt{j}"), -1.0 - j as f32))
                        .collect(),
                });
                let ev = GenEvent::Token {
                    id: ids[(n - 1) % ids.len()],
                    text: out,
                    logprob,
                };
                if tx.send(ev).is_err() {
                    cancelled.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                if fail {
                    let _ = tx.send(GenEvent::Error("mock failure".into()));
                    return;
                }
                if stopped {
                    break FinishReason::Stop;
                }
            };
            let done = GenEvent::Done {
                finish_reason: finish,
                prompt_tokens: ids.len(),
                completion_tokens: n,
            };
            if tx.send(done).is_ok() {
                finished.fetch_add(1, Ordering::SeqCst);
            } else {
                cancelled.fetch_add(1, Ordering::SeqCst);
            }
        });
        Ok(rx)
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn metrics(&self) -> BackendMetrics {
        BackendMetrics {
            queue_depth: 2,
            running: 3,
            kv_blocks_used: 10,
            kv_blocks_cached: 5,
            kv_blocks_total: 100,
            kv_block_bytes: 4096,
            prefix_tokens_reused: 7,
            preemptions: 1,
        }
    }
}

pub async fn spawn(mock: Arc<Mock>, config: ServerConfig) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(mock, config);
    tokio::spawn(async move {
        let _ = server.serve(listener).await;
    });
    addr
}

pub fn config() -> ServerConfig {
    ServerConfig {
        port: 0,
        ..ServerConfig::default()
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// The `data:` payloads of an SSE body.
    pub fn sse(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter_map(|ev| ev.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }
}

pub fn build_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Send raw bytes, read the whole response (the server closes the connection).
pub async fn send_raw(addr: SocketAddr, raw: Vec<u8>) -> Resp {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    // Write concurrently: the server may answer (413) before reading the whole body.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&raw).await;
        let _ = wr.flush().await;
        wr
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), rd.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("timed out reading the response"),
        }
    }
    drop(writer.await);
    parse_response(&buf)
}

pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    send_raw(addr, build_request(method, path, headers, body)).await
}

pub async fn post_json(addr: SocketAddr, path: &str, body: &Value) -> Resp {
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await
}

pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], b"").await
}

pub fn parse_response(buf: &[u8]) -> Resp {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let raw_body = &buf[end + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(raw_body)
    } else {
        raw_body.to_vec()
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size_str = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16).unwrap();
        b = &b[eol + 2..];
        if size == 0 || b.len() < size {
            out.extend_from_slice(&b[..size.min(b.len())]);
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[(size + 2).min(b.len())..];
    }
    out
}

pub fn chat_body(content: &str) -> Value {
    serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": content}]})
}

pub fn completion_body(prompt: &str) -> Value {
    serde_json::json!({"model": MODEL, "prompt": prompt})
}
