//! Parsing and validating request bodies by hand from a `serde_json::Value`, so every error
//! names the field at fault and no input can panic.
//!
//! Policy: unknown fields are ignored (OpenAI does the same for forward compatibility, and
//! clients routinely send fields such as `tools` or `response_format` that a plain text model
//! cannot honour). A field set to `null` counts as absent.

use serde_json::{Map, Value};

use crate::backend::ChatMessage;
use crate::error::ApiError;

/// Roles accepted in `messages`.
pub const ROLES: [&str; 5] = ["system", "user", "assistant", "tool", "developer"];
pub const MAX_N: u64 = 8;
pub const MAX_STOP: usize = 4;
pub const MAX_TOP_LOGPROBS_CHAT: u64 = 20;
pub const MAX_LOGPROBS_COMPLETIONS: u64 = 5;

/// The prompt of a request, before tokenizing.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    Chat(Vec<ChatMessage>),
    Text(String),
    Tokens(Vec<u32>),
}

/// Everything a generation request asks for, common to both endpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    pub model: String,
    pub prompt: Prompt,
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u64>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub stop: Vec<String>,
    pub n: usize,
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
}

/// Which endpoint a body came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// Parse a whole body. `body` is the raw bytes (already size-limited).
pub fn parse(body: &[u8], endpoint: Endpoint) -> Result<Params, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_body(
            "The request body is empty; expected a JSON object.",
        ));
    }
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ApiError::bad_body(format!(
            "The request body is not valid UTF-8 (at byte {}).",
            e.valid_up_to()
        )));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_body(format!("The request body is not valid JSON: {e}.")))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::bad_body(
            "The request body must be a JSON object.",
        ));
    };
    let o = Fields(&obj);

    let model = o
        .string("model")?
        .ok_or_else(|| ApiError::invalid("model", "Missing required parameter: 'model'."))?;
    let prompt = match endpoint {
        Endpoint::Chat => Prompt::Chat(parse_messages(obj.get("messages"))?),
        Endpoint::Completions => parse_prompt(obj.get("prompt"))?,
    };
    let max_tokens = match o.uint("max_completion_tokens")? {
        Some(v) => Some(v),
        None => o.uint("max_tokens")?,
    };
    let max_param = if obj
        .get("max_completion_tokens")
        .is_some_and(|v| !v.is_null())
    {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    if max_tokens == Some(0) {
        return Err(ApiError::invalid(
            max_param,
            format!("'{max_param}' must be at least 1."),
        ));
    }
    let temperature = o.number("temperature", 0.0, 2.0, true)?.unwrap_or(1.0);
    let top_p = o.number("top_p", 0.0, 1.0, false)?.unwrap_or(1.0);
    let presence_penalty = o
        .number("presence_penalty", -2.0, 2.0, true)?
        .unwrap_or(0.0);
    let frequency_penalty = o
        .number("frequency_penalty", -2.0, 2.0, true)?
        .unwrap_or(0.0);
    let seed = o.seed("seed")?;
    let stop = parse_stop(obj.get("stop"))?;
    let n = match o.uint("n")? {
        None => 1,
        Some(n) if (1..=MAX_N).contains(&n) => n,
        Some(n) => {
            return Err(ApiError::invalid(
                "n",
                format!("'n' must be between 1 and {MAX_N}; got {n}."),
            ))
        }
    } as usize;
    let logprobs = match endpoint {
        Endpoint::Chat => {
            let on = o.boolean("logprobs")?.unwrap_or(false);
            let top = o.uint("top_logprobs")?;
            if let Some(t) = top {
                if t > MAX_TOP_LOGPROBS_CHAT {
                    return Err(ApiError::invalid(
                        "top_logprobs",
                        format!(
                            "'top_logprobs' must be between 0 and {MAX_TOP_LOGPROBS_CHAT}; got {t}."
                        ),
                    ));
                }
                if !on {
                    return Err(ApiError::invalid(
                        "top_logprobs",
                        "'top_logprobs' requires 'logprobs' to be true.",
                    ));
                }
            }
            on.then(|| top.unwrap_or(0) as usize)
        }
        Endpoint::Completions => match o.uint("logprobs")? {
            None => None,
            Some(k) if k <= MAX_LOGPROBS_COMPLETIONS => Some(k as usize),
            Some(k) => {
                return Err(ApiError::invalid(
                    "logprobs",
                    format!(
                        "'logprobs' must be between 0 and {MAX_LOGPROBS_COMPLETIONS}; got {k}."
                    ),
                ))
            }
        },
    };
    let stream = o.boolean("stream")?.unwrap_or(false);
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(so)) => {
            if !stream {
                return Err(ApiError::invalid(
                    "stream_options",
                    "'stream_options' is only allowed when 'stream' is true.",
                ));
            }
            Fields(so)
                .boolean("include_usage")
                .map_err(|e| rename(e, "stream_options.include_usage"))?
                .unwrap_or(false)
        }
        Some(v) => return Err(wrong_type("stream_options", "an object", v)),
    };
    // `user` is accepted and ignored, but must be a string when present.
    o.string("user")?;

    Ok(Params {
        model,
        prompt,
        max_tokens: max_tokens.map(|v| usize::try_from(v).unwrap_or(usize::MAX)),
        temperature,
        top_p,
        seed,
        presence_penalty,
        frequency_penalty,
        stop,
        n,
        logprobs,
        stream,
        include_usage,
    })
}

fn rename(mut e: ApiError, param: &str) -> ApiError {
    e.param = Some(param.to_string());
    e
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(param: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::invalid(
        param,
        format!(
            "Invalid type for '{param}': expected {expected}, but got {}.",
            type_name(got)
        ),
    )
    .with_code("invalid_type")
}

/// Typed getters over the top-level object; `null` = absent.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn string(&self, key: &str) -> Result<Option<String>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(wrong_type(key, "a string", v)),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(wrong_type(key, "a boolean", v)),
        }
    }

    /// A non-negative integer (`3.0` is not accepted, as in OpenAI's API).
    fn uint(&self, key: &str) -> Result<Option<u64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) => Ok(Some(v)),
                None if n.as_i64().is_some() => Err(ApiError::invalid(
                    key,
                    format!("'{key}' must not be negative; got {n}."),
                )),
                None => Err(ApiError::invalid(
                    key,
                    format!("'{key}' must be an integer; got {n}."),
                )
                .with_code("invalid_type")),
            },
            Some(v) => Err(wrong_type(key, "an integer", v)),
        }
    }

    /// Any 64-bit integer; negative seeds are taken by their two's-complement bits.
    fn seed(&self, key: &str) -> Result<Option<u64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                if let Some(v) = n.as_u64() {
                    Ok(Some(v))
                } else if let Some(v) = n.as_i64() {
                    Ok(Some(v as u64))
                } else {
                    Err(ApiError::invalid(
                        key,
                        format!("'{key}' must be a 64-bit integer; got {n}."),
                    )
                    .with_code("invalid_type"))
                }
            }
            Some(v) => Err(wrong_type(key, "an integer", v)),
        }
    }

    /// A finite number in `[lo, hi]` (`lo` excluded unless `lo_inclusive`).
    fn number(
        &self,
        key: &str,
        lo: f64,
        hi: f64,
        lo_inclusive: bool,
    ) -> Result<Option<f32>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                let lo_ok = if lo_inclusive { x >= lo } else { x > lo };
                if x.is_finite() && lo_ok && x <= hi {
                    Ok(Some(x as f32))
                } else {
                    let open = if lo_inclusive { "[" } else { "(" };
                    Err(ApiError::invalid(
                        key,
                        format!("'{key}' must be in {open}{lo}, {hi}]; got {n}."),
                    ))
                }
            }
            Some(v) => Err(wrong_type(key, "a number", v)),
        }
    }
}

fn parse_messages(v: Option<&Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let list = match v {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                "messages",
                "Missing required parameter: 'messages'.",
            ))
        }
        Some(Value::Array(a)) => a,
        Some(v) => return Err(wrong_type("messages", "an array", v)),
    };
    if list.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "'messages' must contain at least one message.",
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(wrong_type(&format!("messages[{i}]"), "an object", m));
        };
        let role = match m.get("role") {
            Some(Value::String(r)) => r,
            None | Some(Value::Null) => {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].role"),
                    format!("Missing required parameter: 'messages[{i}].role'."),
                ))
            }
            Some(v) => return Err(wrong_type(&format!("messages[{i}].role"), "a string", v)),
        };
        if !ROLES.contains(&role.as_str()) {
            return Err(ApiError::invalid(
                &format!("messages[{i}].role"),
                format!(
                    "Invalid role '{role}' in 'messages[{i}].role'; expected one of {}.",
                    ROLES.join(", ")
                ),
            ));
        }
        let param = format!("messages[{i}].content");
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            // An assistant turn that only called tools has no content.
            None | Some(Value::Null) if role == "assistant" => String::new(),
            None | Some(Value::Null) => {
                return Err(ApiError::invalid(
                    &param,
                    format!("Missing required parameter: '{param}'."),
                ))
            }
            Some(Value::Array(parts)) => content_parts(parts, &param)?,
            Some(v) => return Err(wrong_type(&param, "a string or an array of parts", v)),
        };
        out.push(ChatMessage {
            role: role.clone(),
            content,
        });
    }
    Ok(out)
}

/// `[{"type": "text", "text": "..."}, ...]` → the texts joined. Other part types (images,
/// audio) are rejected: a text model cannot read them.
fn content_parts(parts: &[Value], param: &str) -> Result<String, ApiError> {
    let mut text = String::new();
    for (j, p) in parts.iter().enumerate() {
        let pp = format!("{param}[{j}]");
        let Value::Object(p) = p else {
            return Err(wrong_type(&pp, "an object", p));
        };
        match p.get("type") {
            Some(Value::String(t)) if t == "text" => {}
            Some(Value::String(t)) => {
                return Err(ApiError::invalid(
                    &format!("{pp}.type"),
                    format!("Unsupported content part type '{t}'; only 'text' is supported."),
                ))
            }
            Some(v) => return Err(wrong_type(&format!("{pp}.type"), "a string", v)),
            None => {
                return Err(ApiError::invalid(
                    &format!("{pp}.type"),
                    format!("Missing required parameter: '{pp}.type'."),
                ))
            }
        }
        match p.get("text") {
            Some(Value::String(s)) => text.push_str(s),
            Some(v) => return Err(wrong_type(&format!("{pp}.text"), "a string", v)),
            None => {
                return Err(ApiError::invalid(
                    &format!("{pp}.text"),
                    format!("Missing required parameter: '{pp}.text'."),
                ))
            }
        }
    }
    Ok(text)
}

/// `prompt`: a string, an array of one string, an array of token ids, or an array of one
/// array of token ids. Batches of several prompts are not supported (use `n` or several
/// requests).
fn parse_prompt(v: Option<&Value>) -> Result<Prompt, ApiError> {
    let v = match v {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                "prompt",
                "Missing required parameter: 'prompt'.",
            ))
        }
        Some(v) => v,
    };
    match v {
        Value::String(s) => Ok(Prompt::Text(s.clone())),
        Value::Array(a) if a.is_empty() => {
            Err(ApiError::invalid("prompt", "'prompt' must not be empty."))
        }
        Value::Array(a) => match &a[0] {
            Value::String(s) if a.len() == 1 => Ok(Prompt::Text(s.clone())),
            Value::Array(inner) if a.len() == 1 => token_ids(inner, "prompt[0]"),
            Value::Number(_) => token_ids(a, "prompt"),
            Value::String(_) | Value::Array(_) => Err(ApiError::invalid(
                "prompt",
                "Only one prompt per request is supported; send several requests or use 'n'.",
            )),
            other => Err(wrong_type(
                "prompt",
                "a string, an array of one string or an array of token ids",
                other,
            )),
        },
        other => Err(wrong_type(
            "prompt",
            "a string, an array of one string or an array of token ids",
            other,
        )),
    }
}

fn token_ids(a: &[Value], param: &str) -> Result<Prompt, ApiError> {
    if a.is_empty() {
        return Err(ApiError::invalid(
            param,
            format!("'{param}' must not be empty."),
        ));
    }
    let mut ids = Vec::with_capacity(a.len());
    for (i, t) in a.iter().enumerate() {
        match t.as_u64().and_then(|x| u32::try_from(x).ok()) {
            Some(id) => ids.push(id),
            None => {
                return Err(ApiError::invalid(
                    &format!("{param}[{i}]"),
                    format!("'{param}[{i}]' must be a token id (an integer in 0..2^32)."),
                ))
            }
        }
    }
    Ok(Prompt::Tokens(ids))
}

fn parse_stop(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let list: Vec<String> = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            if a.len() > MAX_STOP {
                return Err(ApiError::invalid(
                    "stop",
                    format!(
                        "'stop' may hold at most {MAX_STOP} sequences; got {}.",
                        a.len()
                    ),
                ));
            }
            let mut out = Vec::with_capacity(a.len());
            for (i, s) in a.iter().enumerate() {
                match s {
                    Value::String(s) => out.push(s.clone()),
                    v => return Err(wrong_type(&format!("stop[{i}]"), "a string", v)),
                }
            }
            out
        }
        Some(v) => return Err(wrong_type("stop", "a string or an array of strings", v)),
    };
    if list.iter().any(|s| s.is_empty()) {
        return Err(ApiError::invalid(
            "stop",
            "'stop' sequences must not be empty strings.",
        ));
    }
    Ok(list)
}
