//! `tokenizer.json` + `tokenizer_config.json` → `tokenizer.ggml.*`, as llama.cpp's converter
//! writes them (`get_vocab_base` for byte-level BPE, `SpecialVocab` for special ids, flags,
//! merges and the chat template).
//!
//! Two kinds of `tokenizer.json` are read:
//! - byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM): `tokenizer.ggml.model = "gpt2"`, with merges
//!   and a `pre` recognised from the pre-tokenizer's structure and regexes (llama.cpp hashes
//!   the encoding of a probe text instead; the pre-tokenizers recognised here are the ones whose
//!   regexes Dino's tokenizer implements);
//! - SentencePiece-style BPE with byte fallback (Llama 2, Mistral, Gemma): `"llama"` with
//!   scores that order the pieces as the merges do (score = −rank of the merge that makes the
//!   piece), so llama.cpp's SentencePiece merge loop picks the merges HF's BPE would.

use super::config::{Arch, HfConfig};
use crate::gguf::{Array, Value};
use dino_core::{Error, Result};
use serde_json::{Map, Value as Json};
use std::collections::HashMap;
use std::path::Path;

const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// GPT-2's regex, implied by `ByteLevel { use_regex: true }`.
const GPT2_RE: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// One step of a byte-level pre-tokenizer, reduced to what decides llama.cpp's `pre`.
#[derive(Debug, PartialEq)]
enum PreStep {
    Split(String),
    Digits { individual: bool },
    ByteLevel { use_regex: bool },
}

/// Known pre-tokenizers: steps → `tokenizer.ggml.pre`.
fn known_pre(steps: &[PreStep]) -> Option<&'static str> {
    use PreStep::*;
    let bl = |r: bool| ByteLevel { use_regex: r };
    let split = |s: &str| Split(s.to_string());
    let table: Vec<(Vec<PreStep>, &'static str)> = vec![
        (vec![bl(true)], "gpt-2"),
        (vec![split(GPT2_RE), bl(false)], "gpt-2"),
        (vec![Digits { individual: true }, bl(true)], "smollm"),
        (vec![split(LLAMA3_RE), bl(false)], "llama-bpe"),
        (vec![split(QWEN2_RE), bl(false)], "qwen2"),
    ];
    table
        .into_iter()
        .find(|(s, _)| s.as_slice() == steps)
        .map(|(_, n)| n)
}

fn pre_steps(v: &Json, out: &mut Vec<PreStep>) -> std::result::Result<(), String> {
    let ty = v.get("type").and_then(|t| t.as_str()).unwrap_or("");
    match ty {
        "Sequence" => {
            for p in v
                .get("pretokenizers")
                .and_then(|p| p.as_array())
                .ok_or("Sequence without 'pretokenizers'")?
            {
                pre_steps(p, out)?;
            }
        }
        "Split" => {
            let re = v
                .get("pattern")
                .and_then(|p| p.get("Regex").or_else(|| p.get("String")))
                .and_then(|p| p.as_str())
                .ok_or("Split without a pattern")?;
            out.push(PreStep::Split(re.to_string()));
        }
        "Digits" => out.push(PreStep::Digits {
            individual: v
                .get("individual_digits")
                .and_then(|b| b.as_bool())
                .unwrap_or(false),
        }),
        "ByteLevel" => out.push(PreStep::ByteLevel {
            use_regex: v.get("use_regex").and_then(|b| b.as_bool()).unwrap_or(true),
        }),
        other => return Err(format!("pre-tokenizer type '{other}'")),
    }
    Ok(())
}

/// A special token entry of tokenizer_config.json: a string or `{"content": ...}`.
fn token_content(v: Option<&Json>) -> Option<&str> {
    match v? {
        Json::String(s) => Some(s),
        Json::Object(o) => o.get("content")?.as_str(),
        _ => None,
    }
}

/// Token id of `content`: among the added tokens, else the base vocabulary.
fn lookup(added: &[Added], vocab: &HashMap<String, u32>, content: &str) -> Option<u32> {
    added
        .iter()
        .find(|a| a.content == content)
        .map(|a| a.id)
        .or_else(|| vocab.get(content).copied())
}

struct Added {
    id: u32,
    content: String,
    special: bool,
}

/// What the tokenizer contributes: its metadata and the number of tokens (the embedding rows
/// the model must have).
pub(crate) struct TokenizerMeta {
    pub entries: Vec<(String, Value)>,
    pub n_tokens: usize,
}

pub(crate) fn metadata(dir: &Path, cfg: &HfConfig) -> Result<TokenizerMeta> {
    let tj_path = dir.join("tokenizer.json");
    let shown = tj_path.display().to_string();
    if !tj_path.is_file() {
        let also = if dir.join("tokenizer.model").is_file() {
            " (a SentencePiece tokenizer.model alone is not supported yet)"
        } else {
            ""
        };
        return Err(Error::format(
            dir.display(),
            format!("missing tokenizer.json{also}"),
        ));
    }
    let tj = super::read_json(&tj_path)?;
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.is_file() {
        match super::read_json(&tc_path)? {
            Json::Object(o) => o,
            _ => return Err(Error::format(tc_path.display(), "expected a JSON object")),
        }
    } else {
        Map::new()
    };
    let bad = |msg: String| Error::format(&shown, msg);
    let model = tj
        .get("model")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("missing object field 'model'".into()))?;
    let mtype = model.get("type").and_then(|t| t.as_str()).unwrap_or("");
    if mtype != "BPE" {
        return Err(Error::Unsupported(format!(
            "{shown}: tokenizer model type '{mtype}' is not supported (supported: BPE)"
        )));
    }
    let spm = model
        .get("byte_fallback")
        .and_then(|b| b.as_bool())
        .unwrap_or(false);
    let vocab_json = model
        .get("vocab")
        .and_then(|v| v.as_object())
        .ok_or_else(|| bad("missing object field 'model.vocab'".into()))?;
    let mut vocab: HashMap<String, u32> = HashMap::with_capacity(vocab_json.len());
    for (tok, id) in vocab_json {
        let id = id
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| bad(format!("model.vocab['{tok}']: not a token id")))?;
        vocab.insert(tok.clone(), id);
    }
    let mut added = Vec::new();
    for a in tj
        .get("added_tokens")
        .and_then(|a| a.as_array())
        .map(|a| a.as_slice())
        .unwrap_or(&[])
    {
        let id = a
            .get("id")
            .and_then(|i| i.as_u64())
            .and_then(|i| u32::try_from(i).ok());
        let content = a.get("content").and_then(|c| c.as_str());
        let (Some(id), Some(content)) = (id, content) else {
            return Err(bad(format!("added_tokens: bad entry {a}")));
        };
        added.push(Added {
            id,
            content: content.to_string(),
            special: a.get("special").and_then(|s| s.as_bool()).unwrap_or(false),
        });
    }
    let max_id = vocab
        .values()
        .copied()
        .chain(added.iter().map(|a| a.id))
        .max()
        .ok_or_else(|| bad("the vocabulary is empty".into()))? as usize;
    // The converter sizes the token list by config.json's vocab_size (padding with [PAD{i}]);
    // Gemma truncates the embeddings to the tokenizer instead.
    let n_tokens = match (cfg.arch, cfg.opt_u64("vocab_size")?) {
        (Arch::Gemma3, _) | (_, None) => max_id + 1,
        (_, Some(n)) => {
            if max_id as u64 >= n {
                return Err(Error::format(
                    &cfg.path,
                    format!("vocab_size {n} is smaller than tokenizer.json's largest id {max_id}"),
                ));
            }
            n as usize
        }
    };
    if n_tokens > 4 << 20 {
        return Err(bad(format!(
            "{n_tokens} tokens is not a plausible vocabulary"
        )));
    }
    let mut tokens: Vec<Option<String>> = vec![None; n_tokens];
    let mut types = vec![UNUSED; n_tokens];
    for (tok, &id) in &vocab {
        tokens[id as usize] = Some(tok.clone());
        types[id as usize] = NORMAL;
    }
    let mut scores = vec![0f32; if spm { n_tokens } else { 0 }];

    let mut entries: Vec<(String, Value)> = Vec::new();
    let mut put = |k: &str, v: Value| entries.push((format!("tokenizer.ggml.{k}"), v));
    if spm {
        // Scores: −rank of the merge producing the piece; pieces no merge makes come after.
        let merges = merge_pairs(model, &shown, false)?;
        let n_merges = merges.len() as f32;
        for (i, s) in scores.iter_mut().enumerate() {
            *s = -(n_merges + i as f32);
        }
        for (rank, (a, b)) in merges.iter().enumerate().rev() {
            if let Some(&id) = vocab.get(&format!("{a}{b}")) {
                scores[id as usize] = -(rank as f32);
            }
        }
        let unk = model.get("unk_token").and_then(|u| u.as_str());
        for (id, tok) in tokens.iter().enumerate() {
            let Some(tok) = tok else { continue };
            if tok.len() == 6 && tok.starts_with("<0x") && tok.ends_with('>') {
                types[id] = BYTE;
            } else if Some(tok.as_str()) == unk {
                types[id] = UNKNOWN;
            }
        }
        for a in &added {
            let id = a.id as usize;
            scores[id] = -1000.0;
            if a.special || looks_special(&a.content) {
                if types[id] != UNKNOWN {
                    types[id] = CONTROL;
                }
                tokens[id] = Some(a.content.clone());
            } else {
                types[id] = USER_DEFINED;
                tokens[id] = Some(a.content.replace('\u{2581}', " "));
            }
        }
        put("model", Value::String("llama".into()));
        put("pre", Value::String("default".into()));
    } else {
        for a in &added {
            let id = a.id as usize;
            if a.special || looks_special(&a.content) {
                types[id] = CONTROL;
                tokens[id] = Some(a.content.clone());
            } else {
                types[id] = USER_DEFINED;
                tokens[id] = Some(a.content.replace('\u{2581}', " "));
            }
        }
        let mut steps = Vec::new();
        let pre = match tj.get("pre_tokenizer") {
            Some(p) if !p.is_null() => pre_steps(p, &mut steps)
                .ok()
                .and_then(|_| known_pre(&steps)),
            _ => None,
        };
        let pre = pre.ok_or_else(|| {
            Error::Unsupported(format!(
                "{shown}: pre_tokenizer {} is not one Dino recognises (known: GPT-2, SmolLM, Llama 3, Qwen2 byte-level BPE)",
                tj.get("pre_tokenizer").map(|p| p.to_string()).unwrap_or_default()
            ))
        })?;
        put("model", Value::String("gpt2".into()));
        put("pre", Value::String(pre.into()));
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]")))
        .collect();
    put("tokens", Value::Array(Array::String(tokens)));
    if spm {
        put("scores", Value::Array(Array::F32(scores)));
    }
    put("token_type", Value::Array(Array::I32(types)));
    if !spm {
        let merges: Vec<String> = merge_pairs(model, &shown, true)?
            .into_iter()
            .map(|(a, b)| format!("{a} {b}"))
            .collect();
        put("merges", Value::Array(Array::String(merges)));
    }

    // Special ids: tokenizer_config's `*_token` contents first, then config.json's ids.
    let mut add_bos = None;
    let mut add_eos = None;
    let bos_content = token_content(tc.get("bos_token"));
    let eos_content = token_content(tc.get("eos_token"));
    if let Some(pp) = tj.get("post_processor").filter(|p| !p.is_null()) {
        let list = pp
            .get("processors")
            .and_then(|p| p.as_array())
            .cloned()
            .unwrap_or_else(|| vec![pp.clone()]);
        for p in &list {
            match p.get("type").and_then(|t| t.as_str()) {
                Some("ByteLevel") => {
                    add_bos.get_or_insert(false);
                    add_eos.get_or_insert(false);
                }
                Some("TemplateProcessing") => {
                    let single = p.get("single").and_then(|s| s.as_array());
                    if let Some(single) = single.filter(|s| s.len() > 1) {
                        let special = |e: &Json| {
                            e.get("SpecialToken")
                                .and_then(|s| s.get("id"))
                                .and_then(|i| i.as_str())
                                .map(str::to_string)
                        };
                        if let Some(first) = special(&single[0]) {
                            add_bos = Some(bos_content.is_none_or(|b| b == first));
                        }
                        if let Some(last) = special(&single[single.len() - 1]) {
                            add_eos = Some(eos_content == Some(last.as_str()));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    if add_bos.is_none() {
        add_bos = tc.get("add_bos_token").and_then(|b| b.as_bool());
    }
    if add_eos.is_none() {
        add_eos = tc.get("add_eos_token").and_then(|b| b.as_bool());
    }
    let kinds = [
        ("bos", "bos_token_id"),
        ("eos", "eos_token_id"),
        ("unk", "unknown_token_id"),
        ("sep", "seperator_token_id"),
        ("pad", "padding_token_id"),
    ];
    for (typ, key) in kinds {
        let from_tc =
            token_content(tc.get(&format!("{typ}_token"))).and_then(|c| lookup(&added, &vocab, c));
        let from_cfg = cfg
            .root
            .get(&format!("{typ}_token_id"))
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok());
        if let Some(id) = from_tc.or(from_cfg).filter(|&id| (id as usize) < n_tokens) {
            put(key, Value::U32(id));
        }
    }
    if let Some(b) = add_bos {
        put("add_bos_token", Value::Bool(b));
    }
    if let Some(b) = add_eos {
        put("add_eos_token", Value::Bool(b));
    }
    if spm {
        put(
            "add_space_prefix",
            Value::Bool(
                prepends_space(tj.get("normalizer")) || prepends_space(tj.get("pre_tokenizer")),
            ),
        );
    }
    if let Some(t) = chat_template(dir, &tc)? {
        entries.push(("tokenizer.chat_template".into(), Value::String(t)));
    }
    Ok(TokenizerMeta { entries, n_tokens })
}

/// The merges as pairs, from either form: `"a b"` or `["a", "b"]` (for byte-level BPE, spaces
/// inside a part of the pair form are written as U+0120, as the converter does).
fn merge_pairs(
    model: &Map<String, Json>,
    shown: &str,
    byte_level: bool,
) -> Result<Vec<(String, String)>> {
    let space = |s: &str| {
        if byte_level {
            s.replace(' ', "\u{120}")
        } else {
            s.to_string()
        }
    };
    let Some(list) = model.get("merges").and_then(|m| m.as_array()) else {
        return Ok(Vec::new());
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| match m {
            Json::String(s) => s
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    Error::format(shown, format!("model.merges[{i}]: '{s}' has no space"))
                }),
            Json::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str()) {
                (Some(a), Some(b)) => Ok((space(a), space(b))),
                _ => Err(Error::format(
                    shown,
                    format!("model.merges[{i}]: not two strings"),
                )),
            },
            _ => Err(Error::format(
                shown,
                format!("model.merges[{i}]: unknown merge form"),
            )),
        })
        .collect()
}

/// Whether a normalizer or pre-tokenizer prepends `▁` (SentencePiece's `add_dummy_prefix`).
fn prepends_space(v: Option<&Json>) -> bool {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return false;
    };
    match v.get("type").and_then(|t| t.as_str()) {
        Some("Prepend") => true,
        Some("Metaspace") => {
            v.get("prepend_scheme")
                .and_then(|p| p.as_str())
                .unwrap_or("always")
                != "never"
                && v.get("add_prefix_space").and_then(|b| b.as_bool()) != Some(false)
        }
        Some("Sequence") => ["normalizers", "pretokenizers"].iter().any(|k| {
            v.get(*k)
                .and_then(|l| l.as_array())
                .is_some_and(|l| l.iter().any(|x| prepends_space(Some(x))))
        }),
        _ => false,
    }
}

/// The converter's `does_token_look_special`.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// tokenizer_config's `chat_template` (a string, or the `default` of a named list), else
/// `chat_template.jinja`, else `chat_template.json`.
fn chat_template(dir: &Path, tc: &Map<String, Json>) -> Result<Option<String>> {
    let pick = |v: &Json| -> Option<String> {
        match v {
            Json::String(s) => Some(s.clone()),
            Json::Array(list) => list
                .iter()
                .find(|e| e.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|e| e.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_string),
            _ => None,
        }
    };
    if let Some(t) = tc.get("chat_template").and_then(pick) {
        return Ok(Some(t));
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|e| Error::io(jinja.display(), e));
    }
    let json = dir.join("chat_template.json");
    if json.is_file() {
        return Ok(super::read_json(&json)?.get("chat_template").and_then(pick));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_detection() {
        let smollm = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]});
        let mut s = Vec::new();
        pre_steps(&smollm, &mut s).unwrap();
        assert_eq!(known_pre(&s), Some("smollm"));
        let qwen = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_RE}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]});
        let mut s = Vec::new();
        pre_steps(&qwen, &mut s).unwrap();
        assert_eq!(known_pre(&s), Some("qwen2"));
        let mut s = Vec::new();
        pre_steps(&serde_json::json!({"type": "Whitespace"}), &mut s).unwrap_err();
    }
}
