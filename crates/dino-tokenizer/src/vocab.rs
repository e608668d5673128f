//! The vocabulary as llama.cpp's `llama_vocab::impl::load` sees it: token texts, scores and
//! attributes, special ids with their defaults, the end-of-generation set, the special-token
//! cache used to partition text, and the per-token pieces used for decoding.

use std::borrow::Cow;
use std::collections::HashSet;

use dino_core::{Error, Result};

use crate::arena::{Pieces, TokenIndex, TokenTexts};
use crate::bpe::{self, PreConfig};
use crate::SpecRef;

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
pub mod token_type {
    pub const UNDEFINED: i32 = 0;
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// Token attribute bits (llama.cpp's `llama_token_attr`).
pub mod attr {
    pub const UNDEFINED: u32 = 0;
    pub const UNKNOWN: u32 = 1 << 0;
    pub const UNUSED: u32 = 1 << 1;
    pub const NORMAL: u32 = 1 << 2;
    pub const CONTROL: u32 = 1 << 3;
    pub const USER_DEFINED: u32 = 1 << 4;
    pub const BYTE: u32 = 1 << 5;
    pub const LSTRIP: u32 = 1 << 7;
    pub const RSTRIP: u32 = 1 << 8;
}

const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_TYPES: &str = "tokenizer.ggml.token_type";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_MODEL: &str = "tokenizer.ggml.model";

/// Token texts llama.cpp treats as end of generation (besides EOS/EOT/EOM and FIM pad/rep/sep).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "[e~[",
];

/// Texts llama.cpp takes as the EOT token when `eot_token_id` is absent.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "<end_of_utterance>",
];

/// FIM pad / repo / file-separator texts: end of generation too.
const FIM_EOG_TEXTS: &[&[&str]] = &[
    &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    &[
        "<|fim_repo|>",
        "<|repo_name|>",
        "<fim-repo>",
        "<REPO>",
        "<reponame>",
    ],
    &["<|file_sep|>"],
];

/// Other FIM texts llama.cpp promotes to control tokens.
const FIM_CONTROL_TEXTS: &[&[&str]] = &[
    &[
        "<|fim_prefix|>",
        "<fim-prefix>",
        "<fim_prefix>",
        "<\u{ff5c}fim\u{2581}begin\u{ff5c}>",
        "<PRE>",
        "\u{2581}<PRE>",
        "<|code_prefix|>",
        "<|prefix|>",
    ],
    &[
        "<|fim_suffix|>",
        "<fim-suffix>",
        "<fim_suffix>",
        "<\u{ff5c}fim\u{2581}hole\u{ff5c}>",
        "<SUF>",
        "\u{2581}<SUF>",
        "<|code_suffix|>",
        "<|suffix|>",
    ],
    &[
        "<|fim_middle|>",
        "<fim-middle>",
        "<fim_middle>",
        "<\u{ff5c}fim\u{2581}end\u{ff5c}>",
        "<MID>",
        "\u{2581}<MID>",
        "<|code_middle|>",
        "<|middle|>",
    ],
];

pub(crate) enum Kind {
    Spm,
    Bpe(PreConfig),
}

/// A piece of the input after special-token partitioning: a byte range of raw text, or a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    Text(usize, usize),
    Token(u32),
}

pub(crate) struct Vocab {
    pub kind: Kind,
    pub model_name: String,
    pub pre_name: Option<String>,
    /// [n_vocab] the token texts.
    pub texts: TokenTexts,
    /// [n_vocab] SentencePiece merge scores; empty (all 0) when not given, and for BPE, which
    /// does not use them.
    scores: Vec<f32>,
    /// [n_vocab] `attr::*` bits
    pub attrs: Vec<u32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
    pub clean_spaces: bool,
    pub eog: HashSet<u32>,
    /// Control, user-defined and unknown tokens, longest text first.
    pub special_cache: Vec<u32>,
    /// [n_vocab] what each token renders as with `special = true` (see
    /// [`Vocab::render_pieces`]).
    pieces: Pieces,
}

impl Vocab {
    /// Validates `spec` and builds the vocabulary, all but its pieces ([`Vocab::render_pieces`]);
    /// also returns the lookup of ids by text. The BPE merges are read by [`bpe::Bpe::new`];
    /// here only their presence is checked.
    pub fn build(spec: &SpecRef<'_>) -> Result<(Vocab, TokenIndex)> {
        let n = spec.tokens.len();
        if n == 0 {
            return Err(Error::format(KEY_TOKENS, "the vocabulary is empty"));
        }
        if n > i32::MAX as usize {
            return Err(Error::format(KEY_TOKENS, format!("{n} tokens is too many")));
        }

        // Model type and its defaults (llama.cpp `load`).
        let is_spm;
        let (mut bos, mut eos, mut unk): (Option<u32>, Option<u32>, Option<u32>);
        let mut add_bos;
        let mut add_space_prefix;
        let clean_spaces;
        let kind;
        let pre_name;
        match spec.model {
            "llama" => {
                is_spm = true;
                (bos, eos, unk) = (Some(1), Some(2), Some(0));
                add_bos = true;
                add_space_prefix = true;
                clean_spaces = false;
                kind = Kind::Spm;
                pre_name = None;
            }
            "gpt2" => {
                is_spm = false;
                // llama.cpp's (Falcon-era) BPE defaults.
                (bos, eos, unk) = (Some(11), Some(11), None);
                let name = spec.pre.unwrap_or("default").to_string();
                let pre = bpe::pre_config(&name).ok_or_else(|| {
                    Error::Unsupported(format!(
                        "tokenizer.ggml.pre: unsupported pre-tokenizer type '{name}'"
                    ))
                })?;
                add_bos = pre.add_bos;
                if pre.no_bos {
                    bos = None;
                }
                add_space_prefix = false;
                clean_spaces = pre.clean_spaces;
                kind = Kind::Bpe(pre);
                pre_name = Some(name);
            }
            other => {
                return Err(Error::Unsupported(format!(
                    "{KEY_MODEL}: unsupported tokenizer model '{other}' (supported: llama, gpt2)"
                )));
            }
        }
        let mut add_eos = false;
        if let Some(v) = spec.add_space_prefix {
            add_space_prefix = v;
        }

        // Scores and types: llama.cpp accepts longer arrays and ignores the tail.
        if let Some(s) = &spec.scores {
            if s.len() < n {
                return Err(Error::format(
                    KEY_SCORES,
                    format!("{} scores for {n} tokens", s.len()),
                ));
            }
        }
        if let Some(t) = &spec.token_types {
            if t.len() < n {
                return Err(Error::format(
                    KEY_TYPES,
                    format!("{} token types for {n} tokens", t.len()),
                ));
            }
        }

        let bytes = (spec.tokens.iter().enumerate())
            .map(|(i, t)| token_text(i, t).len())
            .sum();
        let mut texts = TokenTexts::with_capacity(n, bytes);
        let mut index = TokenIndex::with_capacity(n);
        let mut attrs = Vec::with_capacity(n);
        for (i, word) in spec.tokens.iter().enumerate() {
            let word = token_text(i, word);
            let id = texts
                .push(&word)
                .ok_or_else(|| Error::format(KEY_TOKENS, "the token texts exceed 4 GiB"))?;
            if let Err(prev) = index.insert(&texts, id) {
                return Err(Error::format(
                    KEY_TOKENS,
                    format!("duplicate token {word:?} at ids {prev} and {i}"),
                ));
            }
            attrs.push(match spec.token_types.map(|t| t[i]) {
                None | Some(token_type::NORMAL) => attr::NORMAL,
                Some(token_type::UNKNOWN) => attr::UNKNOWN,
                Some(token_type::UNUSED) => attr::UNUSED,
                Some(token_type::CONTROL) => attr::CONTROL,
                Some(token_type::USER_DEFINED) => attr::USER_DEFINED,
                Some(token_type::BYTE) => attr::BYTE,
                Some(_) => attr::UNDEFINED,
            });
        }

        // Only SentencePiece reads the scores.
        let scores = match &spec.scores {
            Some(s) if is_spm => s[..n].to_vec(),
            _ => Vec::new(),
        };

        // Merges (BPE only), parsed by `bpe::Bpe::new`.
        if !is_spm && spec.merges.is_none() {
            return Err(Error::MissingKey {
                context: "tokenizer (model gpt2)".into(),
                key: KEY_MERGES.into(),
            });
        }

        // Special ids: defaults out of range are dropped; given ids must be in range.
        let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        (bos, eos, unk) = (in_range(bos), in_range(eos), in_range(unk));
        // u32::MAX is the usual "not set" (stories260K's padding id); the padding id is never
        // used to tokenize, so an out-of-range one is dropped like llama.cpp does.
        let check = |key: &str, id: Option<u32>| -> Result<Option<u32>> {
            match id {
                Some(u32::MAX) => Ok(None),
                Some(i) if i as usize >= n && key == "padding_token_id" => Ok(None),
                Some(i) if i as usize >= n => Err(Error::format(
                    format!("tokenizer.ggml.{key}"),
                    format!("token id {i} out of range for {n} tokens"),
                )),
                other => Ok(other),
            }
        };
        if let Some(id) = check("bos_token_id", spec.bos)? {
            bos = Some(id);
        }
        if let Some(id) = check("eos_token_id", spec.eos)? {
            eos = Some(id);
        }
        if let Some(id) = check("unknown_token_id", spec.unk)? {
            unk = Some(id);
        }
        let mut eot = check("eot_token_id", spec.eot)?;
        let mut eom = check("eom_token_id", spec.eom)?;
        let pad = check("padding_token_id", spec.pad)?;

        if let Some(v) = spec.add_bos {
            add_bos = v;
        }
        if let Some(v) = spec.add_eos {
            add_eos = v;
        }
        if add_bos && bos.is_none() {
            return Err(Error::format(
                "tokenizer.ggml.add_bos_token",
                "is true, but tokenizer.ggml.bos_token_id is not set",
            ));
        }
        if add_eos && eos.is_none() {
            return Err(Error::format(
                "tokenizer.ggml.add_eos_token",
                "is true, but tokenizer.ggml.eos_token_id is not set",
            ));
        }

        // Auto-detect EOT / EOM / FIM tokens by text; they become control tokens.
        let lookup = |t: &str| index.id(&texts, t);
        let first_of = |names: &[&str]| names.iter().find_map(|t| lookup(t));
        let mut promote = Vec::new();
        if eot.is_none() {
            eot = first_of(EOT_TEXTS);
            promote.extend(eot);
        }
        if eom.is_none() {
            eom = lookup("<|eom_id|>");
            promote.extend(eom);
        }
        let mut eog = HashSet::new();
        for names in FIM_EOG_TEXTS {
            if let Some(id) = first_of(names) {
                promote.push(id);
                eog.insert(id);
            }
        }
        for names in FIM_CONTROL_TEXTS {
            promote.extend(first_of(names));
        }
        for t in EOG_TEXTS {
            if let Some(id) = lookup(t) {
                promote.push(id);
                eog.insert(id);
            }
        }
        for id in promote {
            attrs[id as usize] |= attr::CONTROL;
        }
        // gpt-oss: these always render.
        for t in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(id) = lookup(t) {
                attrs[id as usize] = attr::USER_DEFINED;
            }
        }
        eog.extend(eos);
        eog.extend(eot);
        eog.extend(eom);
        // o200k_harmony / solar-open: "<|end|>" is not end of generation there.
        let has = |eog: &HashSet<u32>, t: &str| lookup(t).is_some_and(|id| eog.contains(&id));
        if let Some(end) = lookup("<|end|>").filter(|id| eog.contains(id)) {
            let call = has(&eog, "<|call|>") || has(&eog, "<|calls|>");
            if call && (has(&eog, "<|return|>") || has(&eog, "<|flush|>")) {
                eog.remove(&end);
                attrs[end as usize] = attr::USER_DEFINED;
            }
        }
        // gemma4 / paddleocr: "</s>" is not end of generation when "<|tool_response>" is.
        if let Some(s) = lookup("</s>").filter(|id| eog.contains(id)) {
            if has(&eog, "<|tool_response>") {
                eog.remove(&s);
                attrs[s as usize] = attr::NORMAL;
            }
        }

        // Special-token cache, longest text first (ties by id, for determinism).
        let mut special_cache: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                attrs[i as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .collect();
        special_cache.sort_by(|&a, &b| {
            let len = |id| texts.text(id).len();
            len(b).cmp(&len(a)).then(a.cmp(&b))
        });

        // Per-model attributes keyed on general.name (llama.cpp does the same).
        let name = spec.name.unwrap_or_default().to_lowercase();
        if name.contains("phi-3") || name.contains("phi3") {
            for &id in &special_cache {
                attrs[id as usize] |= attr::RSTRIP;
            }
            if let Some(id) = lookup("</s>") {
                attrs[id as usize] |= attr::RSTRIP;
            }
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                if let Some(id) = lookup(t) {
                    attrs[id as usize] &= !attr::RSTRIP;
                }
            }
        }

        let vocab = Vocab {
            kind,
            model_name: spec.model.to_string(),
            pre_name,
            texts,
            scores,
            attrs,
            bos,
            eos,
            eot,
            unk,
            pad,
            add_bos,
            add_eos,
            add_space_prefix,
            clean_spaces,
            eog,
            special_cache,
            pieces: Pieces::default(),
        };
        Ok((vocab, index))
    }

    /// Renders the piece of every token. Separate from [`Vocab::build`] so that the pieces
    /// need not be held while the BPE model is built, the peak of building a tokenizer.
    pub fn render_pieces(&mut self) -> Result<()> {
        let n = self.n_vocab();
        // Pieces are rarely longer than their texts (`▁`, `Ġ`, `<0x0A>` become one byte).
        let mut pieces = Pieces::with_capacity(n, self.texts.total_len());
        let mut piece = Vec::new();
        for id in 0..n as u32 {
            piece.clear();
            self.render(id, &mut piece);
            if !pieces.push(&piece) {
                return Err(Error::format(KEY_TOKENS, "the token pieces exceed 4 GiB"));
            }
        }
        pieces.shrink_to_fit();
        self.pieces = pieces;
        Ok(())
    }

    pub fn n_vocab(&self) -> usize {
        self.texts.len()
    }

    /// The SentencePiece score of `id`.
    pub fn score(&self, id: u32) -> f32 {
        self.scores.get(id as usize).copied().unwrap_or(0.0)
    }

    pub fn attr(&self, id: u32) -> u32 {
        self.attrs
            .get(id as usize)
            .copied()
            .unwrap_or(attr::UNDEFINED)
    }

    /// Appends llama.cpp's `token_to_piece(special = true)` before any `lstrip` to `out`.
    fn render(&self, id: u32, out: &mut Vec<u8>) {
        let text = self.texts.text(id);
        let a = self.attrs[id as usize];
        if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
            out.extend_from_slice(text.as_bytes());
        } else if a & attr::NORMAL != 0 {
            match self.kind {
                Kind::Spm => out.extend_from_slice(text.replace('\u{2581}', " ").as_bytes()),
                Kind::Bpe(_) => bpe::byte_level_decode(text, out),
            }
        } else if a & attr::BYTE != 0 {
            match parse_byte_token(text) {
                Some(b) => out.push(b),
                // A "byte" token that is not <0xXX>: llama.cpp would read garbage; render its
                // text.
                None => out.extend_from_slice(text.as_bytes()),
            }
        }
    }

    /// The piece of `id`, empty for control/unknown tokens unless `special`.
    pub fn piece(&self, id: u32, special: bool) -> Option<&[u8]> {
        let a = *self.attrs.get(id as usize)?;
        if !special && a & (attr::UNKNOWN | attr::CONTROL) != 0 {
            return Some(&[]);
        }
        self.pieces.get(id)
    }

    /// llama.cpp's `tokenizer_st_partition`: split `text` around special tokens.
    pub fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text(0, text.len()));
        let bytes = text.as_bytes();
        for &id in &self.special_cache {
            let a = self.attrs[id as usize];
            if !parse_special && a & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            let needle = self.texts.text(id);
            // Cheap skip: most special tokens do not occur at all.
            if !frags
                .iter()
                .any(|f| matches!(*f, Fragment::Text(s, e) if text[s..e].contains(needle)))
            {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Text(mut start, end) = f else {
                    next.push(f);
                    continue;
                };
                while let Some(rel) = text[start..end].find(needle) {
                    let m = start + rel;
                    let mut left_end = m;
                    if a & attr::LSTRIP != 0 {
                        while left_end > start && is_c_space(bytes[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > start {
                        next.push(Fragment::Text(start, left_end));
                    }
                    next.push(Fragment::Token(id));
                    start = m + needle.len();
                    if a & attr::RSTRIP != 0 {
                        while start < end && is_c_space(bytes[start]) {
                            start += 1;
                        }
                    }
                }
                if start < end {
                    next.push(Fragment::Text(start, end));
                }
            }
            frags = next;
        }
        frags
    }

    /// The `<0xXX>` token for byte `b`, else a token whose text is that single byte, else UNK.
    pub fn byte_to_token(&self, index: &TokenIndex, b: u8) -> Option<u32> {
        let name = format!("<0x{b:02X}>");
        if let Some(id) = index.id(&self.texts, &name) {
            return Some(id);
        }
        if b.is_ascii() {
            let s = (b as char).to_string();
            if let Some(id) = index.id(&self.texts, &s) {
                return Some(id);
            }
        }
        self.unk
    }
}

/// The text of token `i`: llama.cpp names empty tokens by id.
fn token_text(i: usize, text: &str) -> Cow<'_, str> {
    match text {
        "" => Cow::Owned(format!("[EMPTY_{i}]")),
        t => Cow::Borrowed(t),
    }
}

/// C `isspace` in the "C" locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// `<0xXX>` → the byte.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}
