//! Dino's OpenAI-compatible HTTP server.
//!
//! The server is independent of the engine: it speaks to a [`Backend`] (implemented by the
//! engine, or by a mock in the tests) and never touches a tensor or a tokenizer.
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`,
//! `GET /v1/models/{id}`, `GET /health` (200 only when [`Backend::ready`], else 503),
//! `GET /metrics` (Prometheus text).
//!
//! Request policy (see [`request`]):
//! - bodies must be `Content-Type: application/json` (415 otherwise), valid UTF-8 and JSON
//!   (400), at most [`ServerConfig::max_body`] bytes (413);
//! - unknown fields are ignored, as OpenAI does for forward compatibility (`tools`,
//!   `response_format`, `logit_bias`… are accepted and have no effect); `null` counts as absent;
//! - every error is an OpenAI error object `{"error": {"message", "type", "param", "code"}}`
//!   naming the field at fault (`param` such as `messages[1].role` or `stop[2]`);
//! - a prompt of `n_ctx` tokens or more is 400 `context_length_exceeded`; a `max_tokens` larger
//!   than the context leaves is clamped (the choice then ends with `finish_reason: "length"`);
//! - `n` generations get seeds `seed`, `seed + 1`, …; usage counts the prompt once;
//! - a full queue is 503 `server_overloaded` with `Retry-After`; the per-request timeout is 504
//!   `timeout` (or an error event in a stream); errors after a stream started are sent as a
//!   `data: {"error": …}` event followed by `data: [DONE]`;
//! - a client that disconnects (mid-stream or while waiting) drops the backend receivers,
//!   which cancels the generations.
//!
//! Security defaults ([`ServerConfig::default`]): bind 127.0.0.1, no API key, no CORS. With an
//! API key every route but `/health` needs `Authorization: Bearer <key>` (401 otherwise); CORS
//! preflights are answered before the key check.

pub mod backend;
pub mod error;
mod generate;
mod metrics;
pub mod request;
mod server;

pub use backend::{
    Backend, BackendMetrics, ChatMessage, FinishReason, GenEvent, GenRequest, SubmitError,
    TokenLogprob,
};
pub use error::ApiError;
pub use server::{Server, ServerConfig};
