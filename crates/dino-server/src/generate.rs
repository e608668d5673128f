//! From validated parameters to backend generations and back to OpenAI response shapes,
//! buffered (`stream: false`) or as server-sent events.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::backend::{GenEvent, GenRequest, SubmitError, TokenLogprob};
use crate::error::ApiError;
use crate::request::{Endpoint, Params, Prompt};
use crate::server::AppState;

/// A request ready to submit: tokenized, checked against the context.
pub struct Prepared {
    pub params: Params,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn new_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let c = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:08x}{nanos:08x}{c:08x}", unix_now() as u32)
}

/// Check the model, render and tokenize the prompt, fit `max_tokens` into the context.
pub fn prepare(state: &AppState, params: Params) -> Result<Prepared, ApiError> {
    let backend = &state.backend;
    if params.model != backend.model_id() {
        return Err(ApiError::model_not_found(&params.model));
    }
    let (prompt, param) = match &params.prompt {
        Prompt::Chat(messages) => {
            let text = backend
                .render_chat(messages, true)
                .map_err(|e| ApiError::invalid("messages", e))?;
            let ids = backend
                .tokenize(&text)
                .map_err(|e| ApiError::invalid("messages", e))?;
            (ids, "messages")
        }
        Prompt::Text(text) => (
            backend
                .tokenize(text)
                .map_err(|e| ApiError::invalid("prompt", e))?,
            "prompt",
        ),
        Prompt::Tokens(ids) => (ids.clone(), "prompt"),
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid(
            param,
            format!("'{param}' produced no tokens."),
        ));
    }
    let n_ctx = backend.n_ctx();
    if prompt.len() >= n_ctx {
        return Err(ApiError::context_length_exceeded(
            param,
            prompt.len(),
            n_ctx,
        ));
    }
    // Asking for more than the context leaves is not an error: generation ends with
    // `finish_reason: "length"` when the context is full.
    let room = n_ctx - prompt.len();
    let max_tokens = params.max_tokens.unwrap_or(room).min(room);
    Ok(Prepared {
        params,
        prompt,
        max_tokens,
    })
}

fn submit_error(e: SubmitError, endpoint: Endpoint) -> ApiError {
    let param = match endpoint {
        Endpoint::Chat => "messages",
        Endpoint::Completions => "prompt",
    };
    match e {
        SubmitError::QueueFull { retry_after_s } => ApiError::overloaded(retry_after_s),
        SubmitError::PromptTooLong { n_prompt, n_ctx } => {
            ApiError::context_length_exceeded(param, n_prompt, n_ctx)
        }
        SubmitError::Invalid(m) => ApiError::invalid(param, m),
    }
}

/// Submit the `n` generations and merge their events into one channel tagged with the
/// choice index. Each forwarder stops (dropping its backend receiver, which cancels the
/// generation) as soon as the merged receiver is dropped.
fn start(
    state: &AppState,
    prep: &Prepared,
    endpoint: Endpoint,
) -> Result<mpsc::UnboundedReceiver<(usize, GenEvent)>, ApiError> {
    let p = &prep.params;
    let mut receivers = Vec::with_capacity(p.n);
    for i in 0..p.n {
        let req = GenRequest {
            prompt: prep.prompt.clone(),
            max_tokens: prep.max_tokens,
            temperature: p.temperature,
            top_p: p.top_p,
            seed: p.seed.map(|s| s.wrapping_add(i as u64)),
            presence_penalty: p.presence_penalty,
            frequency_penalty: p.frequency_penalty,
            stop: p.stop.clone(),
            logprobs: p.logprobs,
        };
        // On failure the receivers already made are dropped here, cancelling them.
        receivers.push(
            state
                .backend
                .submit(req)
                .map_err(|e| submit_error(e, endpoint))?,
        );
    }
    let (tx, rx) = mpsc::unbounded_channel();
    for (i, mut brx) in receivers.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = brx.recv() => {
                        let Some(ev) = ev else {
                            let _ = tx.send((i, GenEvent::Error(
                                "the generation ended without a result".into())));
                            break;
                        };
                        let last = matches!(ev, GenEvent::Done { .. } | GenEvent::Error(_));
                        if tx.send((i, ev)).is_err() || last {
                            break;
                        }
                    }
                    _ = tx.closed() => break,
                }
            }
        });
    }
    Ok(rx)
}

/// Timing and token accounting shared by both modes.
struct Tracker {
    t0: Instant,
    first_token: bool,
    last_token: Vec<Option<Instant>>,
    prompt_tokens: usize,
    completion_tokens: usize,
}

impl Tracker {
    fn new(n: usize, t0: Instant) -> Self {
        Tracker {
            t0,
            first_token: false,
            last_token: vec![None; n],
            prompt_tokens: 0,
            completion_tokens: 0,
        }
    }

    fn token(&mut self, state: &AppState, i: usize) {
        let now = Instant::now();
        if !self.first_token {
            self.first_token = true;
            state
                .metrics
                .time_to_first_token((now - self.t0).as_secs_f64());
        }
        if let Some(prev) = self.last_token[i] {
            state
                .metrics
                .time_per_output_token((now - prev).as_secs_f64());
        }
        self.last_token[i] = Some(now);
    }

    fn done(&mut self, prompt_tokens: usize, completion_tokens: usize) {
        self.prompt_tokens = self.prompt_tokens.max(prompt_tokens);
        self.completion_tokens += completion_tokens;
    }

    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

fn token_bytes(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn chat_logprob_entry(lp: &TokenLogprob) -> Value {
    let top: Vec<Value> = lp
        .top
        .iter()
        .map(|(t, l)| json!({"token": t, "logprob": l, "bytes": token_bytes(t)}))
        .collect();
    json!({
        "token": lp.token,
        "logprob": lp.logprob,
        "bytes": token_bytes(&lp.token),
        "top_logprobs": top,
    })
}

/// Completions-style logprobs, accumulated over a choice (or one token in a stream chunk).
#[derive(Default)]
struct CompletionLogprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<f32>,
    top_logprobs: Vec<Value>,
    text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    fn push(&mut self, lp: &TokenLogprob, offset: usize) {
        self.tokens.push(lp.token.clone());
        self.token_logprobs.push(lp.logprob);
        let mut top = serde_json::Map::new();
        for (t, l) in &lp.top {
            top.insert(t.clone(), json!(l));
        }
        self.top_logprobs.push(Value::Object(top));
        self.text_offset.push(offset);
    }

    fn to_json(&self) -> Value {
        json!({
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        })
    }
}

#[derive(Default)]
struct Choice {
    text: String,
    chat_logprobs: Vec<Value>,
    completion_logprobs: CompletionLogprobs,
    finish_reason: Option<&'static str>,
}

/// Run the request: a JSON response, or an SSE stream.
pub async fn run(
    state: Arc<AppState>,
    params: Params,
    endpoint: Endpoint,
    t0: Instant,
) -> Result<Response, ApiError> {
    // Rendering and tokenizing a prompt of up to `max_body` bytes is CPU work: keep it off
    // the async workers. A panic in the backend becomes a 500 here.
    let st = state.clone();
    let prep = tokio::task::spawn_blocking(move || prepare(&st, params))
        .await
        .map_err(|_| ApiError::internal("internal error while preparing the prompt"))??;
    let rx = start(&state, &prep, endpoint)?;
    if prep.params.stream {
        Ok(stream(state, prep, endpoint, rx, t0))
    } else {
        collect(state, prep, endpoint, rx, t0).await
    }
}

fn deadline(state: &AppState, t0: Instant) -> Option<tokio::time::Instant> {
    state
        .config
        .request_timeout
        .map(|d: Duration| tokio::time::Instant::from_std(t0 + d))
}

async fn next_event(
    rx: &mut mpsc::UnboundedReceiver<(usize, GenEvent)>,
    deadline: Option<tokio::time::Instant>,
) -> Result<Option<(usize, GenEvent)>, ApiError> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, rx.recv())
            .await
            .map_err(|_| ApiError::timeout()),
        None => Ok(rx.recv().await),
    }
}

async fn collect(
    state: Arc<AppState>,
    prep: Prepared,
    endpoint: Endpoint,
    mut rx: mpsc::UnboundedReceiver<(usize, GenEvent)>,
    t0: Instant,
) -> Result<Response, ApiError> {
    let n = prep.params.n;
    let mut choices: Vec<Choice> = (0..n).map(|_| Choice::default()).collect();
    let mut tracker = Tracker::new(n, t0);
    let deadline = deadline(&state, t0);
    let mut finished = 0;
    while finished < n {
        let Some((i, ev)) = next_event(&mut rx, deadline).await? else {
            return Err(ApiError::internal("the generation ended without a result"));
        };
        let c = &mut choices[i];
        match ev {
            GenEvent::Token { text, logprob, .. } => {
                tracker.token(&state, i);
                if let Some(lp) = &logprob {
                    c.chat_logprobs.push(chat_logprob_entry(lp));
                    c.completion_logprobs.push(lp, c.text.len());
                }
                c.text.push_str(&text);
            }
            GenEvent::Done {
                finish_reason,
                prompt_tokens,
                completion_tokens,
            } => {
                tracker.done(prompt_tokens, completion_tokens);
                c.finish_reason = Some(finish_reason.as_str());
                finished += 1;
            }
            GenEvent::Error(m) => return Err(ApiError::internal(m)),
        }
    }
    state
        .metrics
        .tokens(tracker.prompt_tokens, tracker.completion_tokens);
    let want_lp = prep.params.logprobs.is_some();
    let model = prep.params.model.clone();
    let body = match endpoint {
        Endpoint::Chat => {
            let choices: Vec<Value> = choices
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    json!({
                        "index": i,
                        "message": {"role": "assistant", "content": c.text, "refusal": null},
                        "logprobs": if want_lp { json!({"content": c.chat_logprobs, "refusal": null}) } else { Value::Null },
                        "finish_reason": c.finish_reason,
                    })
                })
                .collect();
            json!({
                "id": new_id("chatcmpl"),
                "object": "chat.completion",
                "created": unix_now(),
                "model": model,
                "choices": choices,
                "usage": tracker.usage(),
            })
        }
        Endpoint::Completions => {
            let choices: Vec<Value> = choices
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    json!({
                        "index": i,
                        "text": c.text,
                        "logprobs": if want_lp { c.completion_logprobs.to_json() } else { Value::Null },
                        "finish_reason": c.finish_reason,
                    })
                })
                .collect();
            json!({
                "id": new_id("cmpl"),
                "object": "text_completion",
                "created": unix_now(),
                "model": model,
                "choices": choices,
                "usage": tracker.usage(),
            })
        }
    };
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response())
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// The SSE producer: a task turns events into `data:` chunks on a channel the response body
/// reads. When the client goes away hyper drops the body, the producer sees its channel
/// closed and returns, which drops the merged receiver and so cancels every generation.
fn stream(
    state: Arc<AppState>,
    prep: Prepared,
    endpoint: Endpoint,
    mut rx: mpsc::UnboundedReceiver<(usize, GenEvent)>,
    t0: Instant,
) -> Response {
    let (tx, body_rx) = mpsc::channel::<Result<Bytes, Infallible>>(16);
    let deadline = deadline(&state, t0);
    tokio::spawn(async move {
        let p = &prep.params;
        let n = p.n;
        let (id, object) = match endpoint {
            Endpoint::Chat => (new_id("chatcmpl"), "chat.completion.chunk"),
            Endpoint::Completions => (new_id("cmpl"), "text_completion"),
        };
        let created = unix_now();
        let want_lp = p.logprobs.is_some();
        let chunk = |choice: Value| -> Value {
            let mut c = json!({
                "id": id,
                "object": object,
                "created": created,
                "model": p.model,
                "choices": [choice],
            });
            if p.include_usage {
                c["usage"] = Value::Null;
            }
            c
        };
        let send = |v: Bytes| {
            let tx = tx.clone();
            async move { tx.send(Ok(v)).await.is_ok() }
        };
        if endpoint == Endpoint::Chat {
            for i in 0..n {
                let c = chunk(json!({
                    "index": i,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": null,
                    "finish_reason": null,
                }));
                if !send(sse(&c)).await {
                    return;
                }
            }
        }
        let mut tracker = Tracker::new(n, t0);
        let mut offsets = vec![0usize; n];
        let mut finished = 0;
        while finished < n {
            let ev = tokio::select! {
                ev = next_event(&mut rx, deadline) => ev,
                _ = tx.closed() => return,
            };
            let (i, ev) = match ev {
                Ok(Some(x)) => x,
                Ok(None) => {
                    let e = ApiError::internal("the generation ended without a result");
                    let _ = send(sse(&e.to_json())).await;
                    break;
                }
                Err(e) => {
                    let _ = send(sse(&e.to_json())).await;
                    break;
                }
            };
            let c = match ev {
                GenEvent::Token { text, logprob, .. } => {
                    tracker.token(&state, i);
                    if text.is_empty() && logprob.is_none() {
                        continue;
                    }
                    let offset = offsets[i];
                    offsets[i] += text.len();
                    match endpoint {
                        Endpoint::Chat => {
                            let lp = match (&logprob, want_lp) {
                                (Some(lp), true) => {
                                    json!({"content": [chat_logprob_entry(lp)], "refusal": null})
                                }
                                _ => Value::Null,
                            };
                            chunk(json!({
                                "index": i,
                                "delta": {"content": text},
                                "logprobs": lp,
                                "finish_reason": null,
                            }))
                        }
                        Endpoint::Completions => {
                            let lp = match (&logprob, want_lp) {
                                (Some(lp), true) => {
                                    let mut c = CompletionLogprobs::default();
                                    c.push(lp, offset);
                                    c.to_json()
                                }
                                _ => Value::Null,
                            };
                            chunk(json!({
                                "index": i,
                                "text": text,
                                "logprobs": lp,
                                "finish_reason": null,
                            }))
                        }
                    }
                }
                GenEvent::Done {
                    finish_reason,
                    prompt_tokens,
                    completion_tokens,
                } => {
                    tracker.done(prompt_tokens, completion_tokens);
                    finished += 1;
                    match endpoint {
                        Endpoint::Chat => chunk(json!({
                            "index": i,
                            "delta": {},
                            "logprobs": null,
                            "finish_reason": finish_reason.as_str(),
                        })),
                        Endpoint::Completions => chunk(json!({
                            "index": i,
                            "text": "",
                            "logprobs": null,
                            "finish_reason": finish_reason.as_str(),
                        })),
                    }
                }
                GenEvent::Error(m) => {
                    let _ = send(sse(&ApiError::internal(m).to_json())).await;
                    break;
                }
            };
            if !send(sse(&c)).await {
                return;
            }
        }
        drop(rx);
        state
            .metrics
            .tokens(tracker.prompt_tokens, tracker.completion_tokens);
        if finished == n && p.include_usage {
            let mut c = chunk(Value::Null);
            c["choices"] = json!([]);
            c["usage"] = tracker.usage();
            if !send(sse(&c)).await {
                return;
            }
        }
        let _ = send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    let body_stream = futures_util::stream::unfold(body_rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body_stream),
    )
        .into_response()
}
