//! The seam between HTTP and the engine. The server only ever talks to a [`Backend`]; the
//! engine (or a test mock) implements it. Nothing here names a tensor, a tokenizer type or a
//! KV cache.

use tokio::sync::mpsc::UnboundedReceiver;

/// What the server needs from an engine.
pub trait Backend: Send + Sync + 'static {
    /// The model id listed by `/v1/models` and accepted in the `model` field.
    fn model_id(&self) -> String;
    /// Context length per sequence, in tokens (prompt + completion).
    fn n_ctx(&self) -> usize;
    /// Tokenize a raw prompt with the model's special-token rules (BOS etc.).
    fn tokenize(&self, text: &str) -> Result<Vec<u32>, String>;
    /// Render chat messages through the model's chat template.
    fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, String>;
    /// Start a generation. Events arrive on the receiver, ending with exactly one
    /// [`GenEvent::Done`] or [`GenEvent::Error`]; dropping the receiver cancels the generation.
    /// Called from within a tokio runtime.
    fn submit(&self, req: GenRequest) -> Result<UnboundedReceiver<GenEvent>, SubmitError>;
    /// `/health`: true once the model is loaded and warmed up.
    fn ready(&self) -> bool;
    /// Scheduler gauges for `/metrics`.
    fn metrics(&self) -> BackendMetrics;
}

/// One chat message (content already flattened to text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// One generation (the server submits `n` of these for `n > 1`).
#[derive(Clone, Debug, PartialEq)]
pub struct GenRequest {
    /// Prompt tokens; never empty, and shorter than `n_ctx`.
    pub prompt: Vec<u32>,
    /// At least 1; the server clamps it so that `prompt.len() + max_tokens <= n_ctx`.
    pub max_tokens: usize,
    /// 0 = greedy; 0..=2.
    pub temperature: f32,
    /// (0, 1].
    pub top_p: f32,
    /// `None`: the engine picks a seed.
    pub seed: Option<u64>,
    /// -2..=2 (OpenAI semantics: subtracted once per present token / per occurrence).
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// At most 4 non-empty strings. The engine stops when one appears and never emits it.
    pub stop: Vec<String>,
    /// `None`: no logprobs. `Some(k)`: the chosen token's logprob plus the top `k` alternatives
    /// (`Some(0)` = chosen token only).
    pub logprobs: Option<usize>,
}

/// What a generation sends back.
#[derive(Clone, Debug, PartialEq)]
pub enum GenEvent {
    /// One sampled token. `text` is the new text it makes visible (may be empty while a
    /// multi-byte character or a possible stop string is held back).
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// The generation finished.
    Done {
        finish_reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    /// The generation failed; no more events follow.
    Error(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    /// The top alternatives, best first.
    pub top: Vec<(String, f32)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// End of sequence or a stop string.
    Stop,
    /// `max_tokens` or the context was reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Why a generation could not be started.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the server is at capacity; retry in {retry_after_s} s")]
    QueueFull { retry_after_s: u64 },
    #[error("the prompt has {n_prompt} tokens but the context is {n_ctx} tokens")]
    PromptTooLong { n_prompt: usize, n_ctx: usize },
    #[error("{0}")]
    Invalid(String),
}

/// Scheduler gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendMetrics {
    pub queue_depth: usize,
    pub running: usize,
    pub kv_blocks_used: usize,
    /// Blocks kept only for prefix reuse (given back when needed).
    pub kv_blocks_cached: usize,
    pub kv_blocks_total: usize,
    /// Bytes of one KV block (every layer's keys and values; depends on the cache types).
    pub kv_block_bytes: u64,
    /// Prompt tokens found in the prefix cache instead of computed, since start.
    pub prefix_tokens_reused: u64,
    /// Sequences preempted for want of KV blocks, since start.
    pub preemptions: u64,
}
