//! Happy paths and engine-side failures over a real TCP listener, against the mock backend.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{
    build_request, chat_body, completion_body, config, get, post_json, request, spawn, Mock, MODEL,
};
use dino_server::ServerConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CHAT: &str = "/v1/chat/completions";
const CMPL: &str = "/v1/completions";

fn chunks(resp: &common::Resp) -> (Vec<Value>, bool) {
    let data = resp.sse();
    let done = data.last().map(String::as_str) == Some("[DONE]");
    let json = data
        .iter()
        .filter(|d| d.as_str() != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    (json, done)
}

#[tokio::test]
async fn chat_non_streaming_shape() {
    let mock = Mock::new();
    let addr = spawn(mock.clone(), config()).await;
    let r = post_json(addr, CHAT, &chat_body("hello world")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], MODEL);
    let c = &v["choices"][0];
    assert_eq!(c["index"], 0);
    assert_eq!(c["message"]["role"], "assistant");
    assert_eq!(c["message"]["content"], "user: hello world assistant:");
    assert_eq!(c["finish_reason"], "stop");
    assert!(c["logprobs"].is_null());
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8})
    );
    assert_eq!(mock.finished.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn max_tokens_stop_and_parameters_reach_the_backend() {
    let mock = Mock::new();
    let addr = spawn(mock.clone(), config()).await;
    let mut b = chat_body("hello world");
    b["max_tokens"] = json!(2);
    b["temperature"] = json!(0.5);
    b["top_p"] = json!(0.9);
    b["presence_penalty"] = json!(-1.5);
    b["frequency_penalty"] = json!(1);
    b["seed"] = json!(-1);
    let v = post_json(addr, CHAT, &b).await.json();
    assert_eq!(v["choices"][0]["message"]["content"], "user: hello");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 2);
    {
        let sub = mock.submitted.lock().unwrap();
        let g = &sub[0];
        assert_eq!(g.max_tokens, 2);
        assert_eq!(g.temperature, 0.5);
        assert_eq!(g.top_p, 0.9);
        assert_eq!(g.presence_penalty, -1.5);
        assert_eq!(g.frequency_penalty, 1.0);
        assert_eq!(g.seed, Some(u64::MAX));
        assert_eq!(g.logprobs, None);
    }

    // max_completion_tokens wins over max_tokens; stop cuts the text.
    let mut b = chat_body("hello world");
    b["max_tokens"] = json!(1);
    b["max_completion_tokens"] = json!(10);
    b["stop"] = json!("world");
    let v = post_json(addr, CHAT, &b).await.json();
    assert_eq!(v["choices"][0]["message"]["content"], "user: hello ");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(mock.submitted.lock().unwrap()[1].stop, vec!["world"]);

    // A max_tokens beyond the context is clamped to what is left, not refused.
    let mut b = completion_body("a b c");
    b["max_tokens"] = json!(1_000_000);
    let r = post_json(addr, CMPL, &b).await;
    assert_eq!(r.status, 200);
    assert_eq!(mock.submitted.lock().unwrap()[2].max_tokens, 64 - 3);
}

#[tokio::test]
async fn completions_non_streaming_and_prompt_forms() {
    let mock = Mock::new();
    let addr = spawn(mock.clone(), config()).await;
    let v = post_json(addr, CMPL, &completion_body("one two three"))
        .await
        .json();
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "one two three");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["total_tokens"], 6);

    let v = post_json(addr, CMPL, &json!({"model": MODEL, "prompt": ["one two"]}))
        .await
        .json();
    assert_eq!(v["choices"][0]["text"], "one two");
    // Token ids: ids 0 and 1 are "one" and "two" in the mock's vocabulary.
    let v = post_json(addr, CMPL, &json!({"model": MODEL, "prompt": [1, 0]}))
        .await
        .json();
    assert_eq!(v["choices"][0]["text"], "two one");
    let v = post_json(addr, CMPL, &json!({"model": MODEL, "prompt": [[0]]}))
        .await
        .json();
    assert_eq!(v["choices"][0]["text"], "one");
}

#[tokio::test]
async fn unknown_fields_are_ignored_and_content_parts_accepted() {
    let mock = Mock::new();
    let addr = spawn(mock, config()).await;
    let b = json!({
        "model": MODEL,
        "messages": [
            {"role": "developer", "content": "be brief", "name": "x"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": null, "tool_calls": []},
            {"role": "tool", "content": "42", "tool_call_id": "t"}
        ],
        "tools": [], "response_format": {"type": "text"}, "some_future_field": 1,
        "user": "me", "stop": null, "seed": null,
    });
    let r = post_json(addr, CHAT, &b).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "developer: be brief user: hi assistant: tool: 42 assistant:"
    );
}

#[tokio::test]
async fn chat_streaming_with_usage() {
    let mock = Mock::new();
    let addr = spawn(mock, config()).await;
    let mut b = chat_body("hello world");
    b["stream"] = json!(true);
    b["stream_options"] = json!({"include_usage": true});
    let r = post_json(addr, CHAT, &b).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert!(r.text().ends_with("data: [DONE]\n\n"));
    let (chunks, done) = chunks(&r);
    assert!(done);
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], id);
        assert_eq!(c["model"], MODEL);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let n = chunks.len();
    let mut text = String::new();
    for c in &chunks[1..n - 2] {
        assert!(c["usage"].is_null() && c.as_object().unwrap().contains_key("usage"));
        assert!(c["choices"][0]["finish_reason"].is_null());
        text.push_str(c["choices"][0]["delta"]["content"].as_str().unwrap());
    }
    assert_eq!(text, "user: hello world assistant:");
    assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[n - 2]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[n - 1]["choices"], json!([]));
    assert_eq!(
        chunks[n - 1]["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8})
    );
}

#[tokio::test]
async fn completions_streaming_without_usage() {
    let mock = Mock::new();
    let addr = spawn(mock, config()).await;
    let mut b = completion_body("a b c d");
    b["stream"] = json!(true);
    b["max_tokens"] = json!(3);
    let r = post_json(addr, CMPL, &b).await;
    let (chunks, done) = chunks(&r);
    assert!(done);
    let text: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "a b c");
    for c in &chunks {
        assert_eq!(c["object"], "text_completion");
        assert!(!c.as_object().unwrap().contains_key("usage"));
    }
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
}

#[tokio::test]
async fn n_two_derives_seeds_and_sums_usage() {
    let mock = Mock::new();
    let addr = spawn(mock.clone(), config()).await;
    let mut b = chat_body("x y");
    b["n"] = json!(2);
    b["seed"] = json!(5);
    let v = post_json(addr, CHAT, &b).await.json();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["message"]["content"], "user: x y assistant:");
    }
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 8, "total_tokens": 12})
    );
    let seeds: Vec<_> = mock
        .submitted
        .lock()
        .unwrap()
        .iter()
        .map(|g| g.seed)
        .collect();
    assert_eq!(seeds, vec![Some(5), Some(6)]);

    // Streaming: both indices appear, each with its role chunk and finish chunk.
    b["stream"] = json!(true);
    let r = post_json(addr, CHAT, &b).await;
    let (chunks, done) = chunks(&r);
    assert!(done);
    for i in 0..2 {
        let mine: Vec<&Value> = chunks
            .iter()
            .filter(|c| c["choices"][0]["index"] == i)
            .collect();
        assert_eq!(mine[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(mine.last().unwrap()["choices"][0]["finish_reason"], "stop");
    }
}

#[tokio::test]
async fn logprobs_shapes() {
    let mock = Mock::new();
    let addr = spawn(mock.clone(), config()).await;
    let mut b = chat_body("hi");
    b["logprobs"] = json!(true);
    b["top_logprobs"] = json!(2);
    let v = post_json(addr, CHAT, &b).await.json();
    assert_eq!(mock.submitted.lock().unwrap()[0].logprobs, Some(2));
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 3);
    let e = &content[1];
    assert_eq!(e["token"], " hi");
    assert_eq!(e["logprob"], -0.25);
    assert_eq!(e["bytes"], json!([32, 104, 105]));
    let top = e["top_logprobs"].as_array().unwrap();
    assert_eq!(top.len(), 2);
    assert_eq!(top[0]["token"], "alt0");
    assert_eq!(top[0]["logprob"], -1.0);
    assert!(top[0]["bytes"].is_array());

    // logprobs: true alone = the chosen token only.
    let mut b = chat_body("hi");
    b["logprobs"] = json!(true);
    post_json(addr, CHAT, &b).await;
    assert_eq!(mock.submitted.lock().unwrap()[1].logprobs, Some(0));

    let mut b = completion_body("p q");
    b["logprobs"] = json!(3);
    let v = post_json(addr, CMPL, &b).await.json();
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"], json!(["p", " q"]));
    assert_eq!(lp["token_logprobs"], json!([-0.25, -0.25]));
    assert_eq!(lp["text_offset"], json!([0, 1]));
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 3);

    // Streaming chat logprobs ride on each content chunk.
    let mut b = chat_body("hi");
    b["logprobs"] = json!(true);
    b["stream"] = json!(true);
    let r = post_json(addr, CHAT, &b).await;
    let (chunks, _) = chunks(&r);
    assert_eq!(
        chunks[1]["choices"][0]["logprobs"]["content"][0]["token"],
        "user:"
    );
}

#[tokio::test]
async fn models_and_health() {
    let mock = Mock::new();
    let addr = spawn(mock.clone(), config()).await;
    let v = get(addr, "/v1/models").await.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], MODEL);
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(get(addr, "/v1/models/mock-model").await.status, 200);
    assert_eq!(get(addr, "/health").await.status, 200);

    mock.ready.store(false, Ordering::SeqCst);
    let r = get(addr, "/health").await;
    assert_eq!(r.status, 503);
    assert!(r.json()["error"]["message"].is_string());
    assert_eq!(post_json(addr, CHAT, &chat_body("hi")).await.status, 503);
}

#[tokio::test]
async fn auth_on_and_off() {
    let mock = Mock::new();
    let open = spawn(mock.clone(), config()).await;
    assert_eq!(get(open, "/v1/models").await.status, 200);

    let cfg = ServerConfig {
        api_key: Some("s3cret".into()),
        ..config()
    };
    let addr = spawn(mock, cfg).await;
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("Authorization", "s3cret")],
        vec![("Authorization", "Basic s3cret")],
    ] {
        for path in ["/v1/models", "/metrics", "/nope"] {
            let r = request(addr, "GET", path, &headers, b"").await;
            assert_eq!(r.status, 401, "{path} {headers:?}");
            assert_eq!(r.json()["error"]["code"], "invalid_api_key");
        }
        let mut h = headers.clone();
        h.push(("Content-Type", "application/json"));
        let body = chat_body("hi").to_string();
        let r = request(addr, "POST", CHAT, &h, body.as_bytes()).await;
        assert_eq!(r.status, 401);
    }
    assert_eq!(get(addr, "/health").await.status, 200);
    let ok = [("Authorization", "Bearer s3cret")];
    assert_eq!(
        request(addr, "GET", "/v1/models", &ok, b"").await.status,
        200
    );
    let h = [ok[0], ("Content-Type", "application/json")];
    let body = chat_body("hi").to_string();
    assert_eq!(
        request(addr, "POST", CHAT, &h, body.as_bytes())
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn cors_only_when_enabled() {
    let mock = Mock::new();
    let off = spawn(mock.clone(), config()).await;
    let on = spawn(
        mock,
        ServerConfig {
            cors_origins: vec!["*".into()],
            api_key: Some("k".into()),
            ..config()
        },
    )
    .await;
    let origin = [("Origin", "http://example.com")];
    let r = request(off, "GET", "/v1/models", &origin, b"").await;
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-origin").is_none());

    let r = request(on, "GET", "/health", &origin, b"").await;
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    // Preflight is answered without the API key.
    let pre = [
        ("Origin", "http://example.com"),
        ("Access-Control-Request-Method", "POST"),
        (
            "Access-Control-Request-Headers",
            "authorization,content-type",
        ),
    ];
    let r = request(on, "OPTIONS", CHAT, &pre, b"").await;
    assert!(r.status < 300, "{}", r.status);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let r = request(off, "OPTIONS", CHAT, &pre, b"").await;
    assert!(r.header("access-control-allow-origin").is_none());
}

/// Parse the exposition: every sample line is `name{labels} value` with a float value.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            assert!(
                line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE "),
                "{line}"
            );
            continue;
        }
        let (key, value) = line.rsplit_once(' ').expect(line);
        let name_end = key.find('{').unwrap_or(key.len());
        assert!(key[..name_end]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_'));
        if name_end < key.len() {
            assert!(key.ends_with('}'), "{line}");
        }
        out.insert(key.to_string(), value.parse::<f64>().expect(line));
    }
    out
}

#[tokio::test]
async fn metrics_exposition_counts() {
    let mock = Mock::new();
    let addr = spawn(mock, config()).await;
    let before = parse_metrics(&get(addr, "/metrics").await.text());
    let r = get(addr, "/metrics").await;
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    post_json(addr, CHAT, &chat_body("a b c")).await;
    let mut b = completion_body("a b");
    b["stream"] = json!(true);
    post_json(addr, CMPL, &b).await;
    post_json(addr, CHAT, &json!({"model": MODEL})).await;
    get(addr, "/nope").await;
    let after = parse_metrics(&get(addr, "/metrics").await.text());
    let k = |s: &str| after.get(s).copied().unwrap_or(0.0);
    let b0 = |s: &str| before.get(s).copied().unwrap_or(0.0);
    let chat_ok = r#"dino_requests_total{route="/v1/chat/completions",status="200"}"#;
    assert_eq!(k(chat_ok), b0(chat_ok) + 1.0);
    assert_eq!(
        k(r#"dino_requests_total{route="/v1/completions",status="200"}"#),
        1.0
    );
    assert_eq!(
        k(r#"dino_requests_total{route="/v1/chat/completions",status="400"}"#),
        1.0
    );
    assert_eq!(k(r#"dino_requests_total{route="other",status="404"}"#), 1.0);
    assert!(k(r#"dino_requests_total{route="/metrics",status="200"}"#) >= 2.0);
    assert_eq!(k("dino_prompt_tokens_total"), 5.0 + 2.0);
    assert_eq!(k("dino_completion_tokens_total"), 5.0 + 2.0);
    assert_eq!(k("dino_time_to_first_token_seconds_count"), 2.0);
    assert_eq!(
        k(r#"dino_time_to_first_token_seconds_bucket{le="+Inf"}"#),
        2.0
    );
    assert_eq!(k("dino_time_per_output_token_seconds_count"), 4.0 + 1.0);
    assert_eq!(k("dino_queue_depth"), 2.0);
    assert_eq!(k("dino_running_sequences"), 3.0);
    assert_eq!(k("dino_kv_blocks_used"), 10.0);
    assert_eq!(k("dino_kv_blocks_total"), 100.0);
    assert_eq!(k("dino_kv_cache_bytes"), 409600.0);
    assert_eq!(k("dino_kv_blocks_cached"), 5.0);
    assert_eq!(k("dino_prefix_tokens_reused_total"), 7.0);
    assert_eq!(k("dino_preemptions_total"), 1.0);
}

async fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    false
}

#[tokio::test]
async fn client_disconnect_mid_stream_cancels() {
    let mock = Mock::new();
    mock.token_delay_ms.store(20, Ordering::SeqCst);
    mock.endless.store(true, Ordering::SeqCst);
    let addr = spawn(mock.clone(), config()).await;
    let mut b = chat_body("tick tock");
    b["stream"] = json!(true);
    b["n"] = json!(2);
    let body = b.to_string();
    let raw = build_request(
        "POST",
        CHAT,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&raw).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&seen)
        .matches("\"content\":\"")
        .count()
        < 6
    {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(s);
    assert!(
        wait_for(|| mock.cancelled.load(Ordering::SeqCst) == 2).await,
        "cancelled = {}",
        mock.cancelled.load(Ordering::SeqCst)
    );
    assert_eq!(mock.finished.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn client_disconnect_while_waiting_cancels() {
    let mock = Mock::new();
    mock.token_delay_ms.store(20, Ordering::SeqCst);
    mock.endless.store(true, Ordering::SeqCst);
    let addr = spawn(mock.clone(), config()).await;
    let body = chat_body("tick").to_string();
    let raw = build_request(
        "POST",
        CHAT,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&raw).await.unwrap();
    assert!(wait_for(|| !mock.submitted.lock().unwrap().is_empty()).await);
    tokio::time::sleep(Duration::from_millis(60)).await;
    drop(s);
    assert!(wait_for(|| mock.cancelled.load(Ordering::SeqCst) == 1).await);
}

#[tokio::test]
async fn backend_refusals_map_to_openai_errors() {
    let mock = Mock::new();
    let addr = spawn(mock, config()).await;
    let r = post_json(addr, CHAT, &chat_body("QUEUEFULL")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.json()["error"]["code"], "server_overloaded");

    let r = post_json(addr, CMPL, &completion_body("TOOLONG")).await;
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert_eq!(v["error"]["param"], "prompt");

    // An error event mid-generation.
    let r = post_json(addr, CHAT, &chat_body("FAIL")).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"]["message"], "mock failure");
    let mut b = chat_body("FAIL");
    b["stream"] = json!(true);
    let r = post_json(addr, CHAT, &b).await;
    assert_eq!(r.status, 200);
    let data = r.sse();
    assert_eq!(data.last().unwrap(), "[DONE]");
    let err: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(err["error"]["message"], "mock failure");
}

#[tokio::test]
async fn request_timeout_ends_with_an_error_and_cancels() {
    let mock = Mock::new();
    mock.token_delay_ms.store(20, Ordering::SeqCst);
    mock.endless.store(true, Ordering::SeqCst);
    let cfg = ServerConfig {
        request_timeout: Some(Duration::from_millis(200)),
        ..config()
    };
    let addr = spawn(mock.clone(), cfg).await;
    let r = post_json(addr, CHAT, &chat_body("slow")).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"]["code"], "timeout");
    assert!(wait_for(|| mock.cancelled.load(Ordering::SeqCst) == 1).await);

    let mut b = completion_body("slow");
    b["stream"] = json!(true);
    let r = post_json(addr, CMPL, &b).await;
    assert_eq!(r.status, 200);
    let data = r.sse();
    assert_eq!(data.last().unwrap(), "[DONE]");
    let err: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(err["error"]["code"], "timeout");
    assert!(data.len() > 3, "some tokens streamed before the timeout");
    assert!(wait_for(|| mock.cancelled.load(Ordering::SeqCst) == 2).await);
}

#[tokio::test]
async fn backend_panic_and_tokenizer_error_are_json_errors() {
    let mock = Mock::new();
    let addr = spawn(mock, config()).await;
    let r = post_json(addr, CHAT, &chat_body("PANIC")).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"]["type"], "server_error");
    let r = post_json(addr, CMPL, &completion_body("BADTOKENS")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "prompt");
    // Still serving.
    assert_eq!(get(addr, "/health").await.status, 200);
    let r = post_json(addr, CHAT, &chat_body("hi")).await;
    assert_eq!(r.status, 200);
    let m = get(addr, "/metrics").await.text();
    assert!(m.contains(r#"dino_requests_total{route="/v1/chat/completions",status="500"} 1"#));
}
