//! `dino serve` end to end on SmolLM2-135M-Instruct: the real binary, a real socket, the
//! batched engine behind the OpenAI routes. (The HTTP layer's own corpus of malformed requests
//! runs against a mock backend in dino-server's tests.)

use std::io::{Read, Write};
use std::net::TcpStream;

mod common;
use common::{serve as start, Served};

fn serve(extra: &[&str]) -> Served {
    start("dino-serve-test-home", extra)
}

/// One HTTP/1.1 request; returns (status, body).
fn http(addr: &str, method: &str, path: &str, body: &str, headers: &[&str]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return (status, body.to_string());
    }
    // Chunked (streams): size line in hex, data, CRLF, until a 0-size chunk.
    let (mut rest, mut data) = (body, String::new());
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        data.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    (status, data)
}

const JSON: &str = "Content-Type: application/json";

#[test]
fn serves_chat_and_completions_from_the_batched_engine() {
    let s = serve(&["--parallel", "2"]);
    assert_eq!(http(&s.addr, "GET", "/health", "", &[]).0, 200);
    let (st, body) = http(&s.addr, "GET", "/v1/models", "", &[]);
    assert_eq!(st, 200);
    assert!(body.contains("SmolLM2"), "{body}");
    // Greedy completions are reproducible and stop at max_tokens.
    let req =
        r#"{"model":"x","prompt":"The capital of France is","max_tokens":12,"temperature":0}"#;
    let req = req.replace("\"x\"", "\"SmolLM2-135M-Instruct.Q4_1\"");
    let (st, a) = http(&s.addr, "POST", "/v1/completions", &req, &[JSON]);
    assert_eq!(st, 200, "{a}");
    assert!(a.contains("\"finish_reason\":\"length\""), "{a}");
    assert!(a.contains("\"completion_tokens\":12"), "{a}");
    let (_, b) = http(&s.addr, "POST", "/v1/completions", &req, &[JSON]);
    let text = |r: &str| {
        r.split("\"text\":")
            .nth(1)
            .unwrap()
            .split("}")
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(text(&a), text(&b));
    // A chat through the model's template, streamed as server-sent events.
    let chat = r#"{"model":"SmolLM2-135M-Instruct.Q4_1","messages":[{"role":"user","content":"Say hello."}],"max_tokens":8,"stream":true,"stream_options":{"include_usage":true}}"#;
    let (st, sse) = http(&s.addr, "POST", "/v1/chat/completions", chat, &[JSON]);
    assert_eq!(st, 200, "{sse}");
    assert!(sse.contains("\"role\":\"assistant\""), "{sse}");
    assert!(sse.contains("\"usage\":{"), "{sse}");
    assert!(sse.trim_end().ends_with("data: [DONE]"), "{sse}");
    // Errors are OpenAI error objects; the server stays up.
    let long = format!(
        r#"{{"model":"SmolLM2-135M-Instruct.Q4_1","prompt":"{}"}}"#,
        "hello ".repeat(5000)
    );
    let (st, e) = http(&s.addr, "POST", "/v1/completions", &long, &[JSON]);
    assert_eq!(st, 400, "{e}");
    assert!(e.contains("context_length_exceeded"), "{e}");
    let (st, _) = http(&s.addr, "POST", "/v1/completions", "{not json", &[JSON]);
    assert_eq!(st, 400);
    assert_eq!(http(&s.addr, "GET", "/health", "", &[]).0, 200);
    let (_, m) = http(&s.addr, "GET", "/metrics", "", &[]);
    assert!(m.contains("dino_kv_blocks_total"), "{m}");
}

#[test]
fn an_api_key_guards_every_route_but_health() {
    let s = serve(&["--api-key", "sekret", "-c", "256"]);
    assert_eq!(http(&s.addr, "GET", "/health", "", &[]).0, 200);
    assert_eq!(http(&s.addr, "GET", "/v1/models", "", &[]).0, 401);
    let auth = "Authorization: Bearer sekret";
    assert_eq!(http(&s.addr, "GET", "/v1/models", "", &[auth]).0, 200);
}
