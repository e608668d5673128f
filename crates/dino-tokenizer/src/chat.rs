//! Chat templates: a model's Jinja template (`tokenizer.chat_template`) rendered as Hugging Face
//! transformers renders it, with `minijinja`.
//!
//! transformers compiles the template in a sandboxed Jinja2 environment with `trim_blocks` and
//! `lstrip_blocks` on, the loop controls extension (`{% break %}`, `{% continue %}`), the globals
//! `raise_exception(msg)` and `strftime_now(format)`, and its own `tojson` filter (Python's
//! `json.dumps(x, ensure_ascii=False)`, no HTML escaping). It renders with `messages`, `tools`
//! (`none` unless given), `add_generation_prompt` and the special tokens (`bos_token`,
//! `eos_token`). [`ChatTemplate`] sets up the same: templates also call Python string and dict
//! methods (`.strip()`, `.startswith()`, `.split()`, `.title()`, `.items()`, ...), which
//! `minijinja-contrib`'s `pycompat` supplies.
//!
//! A model without a template gets [`CHATML_TEMPLATE`] (see [`ChatTemplate::for_model`]), the
//! fallback llama.cpp uses too.
//!
//! Hugging Face checkpoints need nothing extra: `dino-formats` copies their
//! `tokenizer_config.json` `chat_template` (or `chat_template.jinja`) into the same
//! `tokenizer.chat_template` metadata key, so [`ChatTemplate::from_gguf`] reads both.

use std::fmt::Write as _;

use dino_core::{Error, Result};
use dino_formats::gguf::{Metadata, Value as GgufValue};
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use serde::{Deserialize, Serialize};

/// The metadata key holding a model's chat template.
pub const CHAT_TEMPLATE_KEY: &str = "tokenizer.chat_template";

/// The template used for a model that has none: ChatML (`<|im_start|>role\ncontent<|im_end|>\n`
/// per message, then `<|im_start|>assistant\n` when a reply is asked for), as llama.cpp does.
pub const CHATML_TEMPLATE: &str = "{%- for message in messages -%}\n\
    {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}\n\
    {%- endfor -%}\n\
    {%- if add_generation_prompt -%}\n\
    {{- '<|im_start|>assistant\\n' -}}\n\
    {%- endif -%}\n";

/// One message of a conversation, as the OpenAI chat API and the templates see it. The optional
/// fields are left out of what the template sees when `None` (a template's
/// `message.tool_calls is defined` is then false).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, ... Any role is passed through: the template
    /// decides what to do with it (many raise an error).
    pub role: String,
    pub content: String,
    /// The name of the participant or tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An assistant's tool calls, as the OpenAI API gives them (a JSON array).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// The call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            ..Default::default()
        }
    }
}

/// A compiled chat template with the special-token texts it renders with.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// What errors call the template: `tokenizer.chat_template of MODEL`, or the given name.
    name: String,
    source: String,
    bos_token: String,
    eos_token: String,
    fallback: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("name", &self.name)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("fallback", &self.fallback)
            .finish()
    }
}

// The server shares one template between request threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChatTemplate>();
};

/// The source of an error raised by the template's own `raise_exception(msg)`.
#[derive(Debug)]
struct Raised;

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("raise_exception")
    }
}

impl std::error::Error for Raised {}

impl ChatTemplate {
    /// Compiles `source`. `name` is what errors call the template; `bos_token`/`eos_token` are
    /// the texts of the model's BOS/EOS tokens (empty when it has none). A syntax error is an
    /// error naming the template and line.
    pub fn new(
        name: impl Into<String>,
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<ChatTemplate> {
        let name = name.into();
        let source = source.into();
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // Jinja2's default `Undefined`: printing or testing an absent attribute is fine,
        // using it in an operation is an error.
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(name.clone(), source.clone())
            .map_err(|e| template_error(&name, &e))?;
        Ok(ChatTemplate {
            env,
            name,
            source,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            fallback: false,
        })
    }

    /// The template stored in a model's metadata (`tokenizer.chat_template`), with the texts of
    /// its BOS and EOS tokens from `tokenizer.ggml.tokens`. `Ok(None)` when the model has no
    /// template; an error when the key is not a string or the template does not compile.
    pub fn from_gguf(md: &Metadata) -> Result<Option<ChatTemplate>> {
        let source = match md.get(CHAT_TEMPLATE_KEY) {
            None => return Ok(None),
            Some(GgufValue::String(s)) => s.clone(),
            Some(_) => {
                return Err(Error::format(CHAT_TEMPLATE_KEY, "expected a string"));
            }
        };
        let (bos, eos) = special_texts(md);
        let name = match md.get_str("general.name") {
            Ok(model) => format!("{CHAT_TEMPLATE_KEY} of {model}"),
            Err(_) => CHAT_TEMPLATE_KEY.to_string(),
        };
        ChatTemplate::new(name, source, bos, eos).map(Some)
    }

    /// The model's template, or [`CHATML_TEMPLATE`] when it has none (see
    /// [`ChatTemplate::is_fallback`]).
    pub fn for_model(md: &Metadata) -> Result<ChatTemplate> {
        if let Some(t) = ChatTemplate::from_gguf(md)? {
            return Ok(t);
        }
        let (bos, eos) = special_texts(md);
        let mut t = ChatTemplate::new("ChatML (fallback)", CHATML_TEMPLATE, bos, eos)?;
        t.fallback = true;
        Ok(t)
    }

    /// Renders a conversation. `add_generation_prompt` appends the start of an assistant turn
    /// for the model to complete. Errors (the template's `raise_exception`, an operation on
    /// an undefined value, a bad filter argument) name the template and line.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template(&self.name)
            .map_err(|e| template_error(&self.name, &e))?;
        let ctx = minijinja::context! {
            messages => Value::from_serialize(messages),
            tools => Value::from(()),
            documents => Value::from(()),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        tmpl.render(ctx).map_err(|e| template_error(&self.name, &e))
    }

    /// What errors call the template.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }
    /// Whether this is the ChatML fallback for a model without a template.
    pub fn is_fallback(&self) -> bool {
        self.fallback
    }
}

/// The texts of the BOS and EOS tokens (`""` when unset or out of range).
fn special_texts(md: &Metadata) -> (String, String) {
    let tokens = md.get_str_array("tokenizer.ggml.tokens").unwrap_or(&[]);
    let text = |key: &str| {
        md.get_u32(key)
            .ok()
            .and_then(|id| tokens.get(id as usize))
            .cloned()
            .unwrap_or_default()
    };
    (
        text("tokenizer.ggml.bos_token_id"),
        text("tokenizer.ggml.eos_token_id"),
    )
}

/// A minijinja error as a Dino error naming the template and line.
fn template_error(name: &str, e: &minijinja::Error) -> Error {
    let line = e.line().map(|l| format!(", line {l}")).unwrap_or_default();
    let raised = std::error::Error::source(e).is_some_and(|s| s.is::<Raised>());
    let detail = e.detail().unwrap_or("");
    let msg = if raised {
        format!("the template raised an exception: {detail}")
    } else if detail.is_empty() {
        e.kind().to_string()
    } else {
        format!("{}: {detail}", e.kind())
    };
    Error::format(format!("chat template '{name}'{line}"), msg)
}

/// Prints values as Jinja2 does where minijinja differs: `True`/`False`, `None`.
fn python_formatter(
    out: &mut minijinja::Output,
    state: &minijinja::State,
    value: &Value,
) -> std::result::Result<(), minijinja::Error> {
    let text = match value.kind() {
        ValueKind::Bool if value.is_true() => "True",
        ValueKind::Bool => "False",
        ValueKind::None => "None",
        _ => return minijinja::escape_formatter(out, state, value),
    };
    out.write_str(text)
        .map_err(|e| minijinja::Error::new(ErrorKind::WriteFailure, e.to_string()))
}

/// `raise_exception(msg)`: the template rejects the conversation.
fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg).with_source(Raised))
}

/// `strftime_now(format)`: the local time formatted as Python's `strftime` would.
fn strftime_now(format: String) -> std::result::Result<Value, minijinja::Error> {
    let now = chrono::Local::now();
    let mut out = String::new();
    // chrono reports an invalid format as a fmt::Error (`to_string` would panic).
    write!(out, "{}", now.format(&format)).map_err(|_| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format {format:?}"),
        )
    })?;
    Ok(Value::from(out))
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`, each a keyword argument.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or("").to_string()),
        Some(v) => {
            let n = v.as_i64().ok_or_else(|| {
                minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: bad indent")
            })?;
            Some(" ".repeat(n.clamp(0, 64) as usize))
        }
    };
    let separators: Option<Value> = kwargs.get("separators")?;
    let (item_sep, key_sep) = match separators {
        Some(s) if !s.is_none() => {
            let a = s.get_item(&Value::from(0))?;
            let b = s.get_item(&Value::from(1))?;
            match (a.as_str(), b.as_str()) {
                (Some(a), Some(b)) => (a.to_string(), b.to_string()),
                _ => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be two strings",
                    ))
                }
            }
        }
        // Python's defaults: ", " without indent, "," with it.
        _ if indent.is_some() => (",".into(), ": ".into()),
        _ => (", ".into(), ": ".into()),
    };
    let opts = JsonOpts {
        indent,
        item_sep,
        key_sep,
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0)?;
    Ok(Value::from(out))
}

struct JsonOpts {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

/// Writes `v` as Python's `json.dumps` does (depth-limited against cyclic values).
fn write_json(
    out: &mut String,
    v: &Value,
    o: &JsonOpts,
    depth: usize,
) -> std::result::Result<(), minijinja::Error> {
    if depth > 256 {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "tojson: value nested too deeply",
        ));
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = &o.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    match v.kind() {
        ValueKind::Undefined => {
            return Err(minijinja::Error::new(
                ErrorKind::UndefinedError,
                "tojson: the value is undefined",
            ))
        }
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                write!(out, "{v}").ok();
            } else {
                let f = f64::try_from(v.clone())?;
                out.push_str(&python_float(f));
            }
        }
        ValueKind::String => write_json_str(out, v.as_str().unwrap_or(""), o.ensure_ascii),
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if o.sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, depth + 1);
                // Python turns non-string keys into strings (numbers, booleans, null).
                match k.kind() {
                    ValueKind::String => {
                        write_json_str(out, k.as_str().unwrap_or(""), o.ensure_ascii)
                    }
                    _ => {
                        let mut s = String::new();
                        write_json(&mut s, k, o, depth + 1)?;
                        write_json_str(out, &s, o.ensure_ascii);
                    }
                }
                out.push_str(&o.key_sep);
                write_json(out, &v.get_item(k)?, o, depth + 1)?;
            }
            newline(out, depth);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, depth + 1);
                write_json(out, item, o, depth + 1)?;
            }
            newline(out, depth);
            out.push(']');
        }
        _ => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize a {} value", v.kind()),
            ))
        }
    }
    Ok(())
}

/// A JSON string as Python writes it: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, other control
/// characters as `\u00XX`; with `ensure_ascii`, every non-ASCII character as `\uXXXX`
/// (surrogate pairs above U+FFFF).
fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                write!(out, "\\u{:04x}", c as u32).ok();
            }
            c if ensure_ascii && !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    write!(out, "\\u{unit:04x}").ok();
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A float as Python's `repr` (and `json.dumps`) writes it: the shortest digits that read back
/// exactly, positional for exponents in [-4, 16), else `d.ddde+XX`.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let e = format!("{f:e}");
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mant) = match mant.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mant),
    };
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let mut s = String::from(sign);
    if (-4..16).contains(&exp) {
        if exp < 0 {
            s.push_str("0.");
            s.push_str(&"0".repeat((-exp - 1) as usize));
            s.push_str(&digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                s.push_str(&digits);
                s.push_str(&"0".repeat(int_len - digits.len()));
                s.push_str(".0");
            } else {
                s.push_str(&digits[..int_len]);
                s.push('.');
                s.push_str(&digits[int_len..]);
            }
        }
    } else {
        s.push_str(&digits[..1]);
        if digits.len() > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        write!(s, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs()).ok();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        for (f, want) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (0.0, "0.0"),
        ] {
            assert_eq!(python_float(f), want, "{f}");
        }
    }

    #[test]
    fn json_strings_like_python() {
        let mut s = String::new();
        write_json_str(&mut s, "a\"b\\c\n\u{1}é😀", false);
        assert_eq!(s, "\"a\\\"b\\\\c\\n\\u0001é😀\"");
        s.clear();
        write_json_str(&mut s, "é😀", true);
        assert_eq!(s, "\"\\u00e9\\ud83d\\ude00\"");
    }
}
