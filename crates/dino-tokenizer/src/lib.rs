//! Tokenizers built from GGUF vocabulary metadata (`tokenizer.ggml.*`), exact to llama.cpp.
//!
//! Two model families:
//! - SentencePiece (`tokenizer.ggml.model = "llama"`): llama.cpp's score-driven bigram merging
//!   with `<0xXX>` byte fallback and `▁` for spaces (implemented in this crate).
//! - GPT-2 byte-level BPE (`"gpt2"`): the pre-tokenizer regexes chosen by `tokenizer.ggml.pre`
//!   and the merges, run on the `tokenizers` crate (its `Split`/`ByteLevel` pre-tokenizers and
//!   its `BPE` model).
//!
//! Before either model runs, the text is partitioned around special tokens the way
//! llama.cpp's `tokenizer_st_partition` does: user-defined tokens (type 4) are always matched,
//! control and unknown tokens (types 3, 2) only when `parse_special` is on.
//!
//! Decoding follows llama.cpp's `token_to_piece`/`detokenize` with `remove_special = false`:
//! control tokens render empty unless asked, byte tokens render their byte, SPM `▁` becomes a
//! space, the first token loses one leading space when the vocab adds a space prefix, and the
//! BPE vocabularies that ask for it get llama.cpp's `clean_spaces` pass. [`StreamDecoder`]
//! renders one id at a time (as llama.cpp prints generated tokens, or exactly as `decode` with
//! [`StreamOptions::sequence_start`]) and never emits half a UTF-8 character.

mod arena;
mod bpe;
pub mod chat;
mod decode;
mod gguf;
mod spm;
mod vocab;

use std::borrow::Cow;

use dino_core::{Error, Result};

pub use decode::{DecodeOptions, StreamDecoder, StreamOptions};
pub use vocab::{attr, token_type};

/// The tokenizer-relevant metadata of a model, as read from `tokenizer.ggml.*` (see
/// [`Tokenizer::from_gguf`]) or built by hand. Unset options take llama.cpp's defaults for the
/// model type (SentencePiece: BOS 1, EOS 2, UNK 0, add BOS; BPE: BOS = EOS = 11 when that id
/// exists, add BOS only for the llama3/tekken pre-tokenizers). A special id of `u32::MAX`
/// means "not set"; any other id outside the vocabulary is an error, except the padding id,
/// which is then ignored. Build with `VocabSpec { model, tokens, ..Default::default() }`.
#[derive(Clone, Debug, Default)]
pub struct VocabSpec {
    /// `tokenizer.ggml.model`: `"llama"` (SentencePiece) or `"gpt2"` (byte-level BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`: the BPE pre-tokenizer (`"llama-bpe"`, `"qwen2"`, ...); `None` means
    /// `"default"`. Ignored for SentencePiece.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, indexed by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores` (SentencePiece merge priorities); `None` means all 0.
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
    /// 6 byte); `None` means all normal.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`, `"left right"` per line, highest priority first (BPE only).
    pub merges: Option<Vec<String>>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// End-of-turn token (`tokenizer.ggml.eot_token_id`); auto-detected by text when absent.
    pub eot: Option<u32>,
    /// End-of-message token (`tokenizer.ggml.eom_token_id`); auto-detected by text when absent.
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece default: true; BPE default: false).
    pub add_space_prefix: Option<bool>,
    /// `general.name`: llama.cpp keys a few per-model token attributes on it (phi-3's
    /// right-stripping special tokens).
    pub name: Option<String>,
}

/// A [`VocabSpec`] borrowed: what building a tokenizer reads, so that [`Tokenizer::from_gguf`]
/// need not copy the metadata's token and merge arrays.
pub(crate) struct SpecRef<'a> {
    pub model: &'a str,
    pub pre: Option<&'a str>,
    pub tokens: &'a [String],
    pub scores: Option<Cow<'a, [f32]>>,
    pub token_types: Option<&'a [i32]>,
    pub merges: Option<&'a [String]>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    pub name: Option<&'a str>,
}

impl<'a> From<&'a VocabSpec> for SpecRef<'a> {
    fn from(s: &'a VocabSpec) -> SpecRef<'a> {
        SpecRef {
            model: &s.model,
            pre: s.pre.as_deref(),
            tokens: &s.tokens,
            scores: s.scores.as_deref().map(Cow::Borrowed),
            token_types: s.token_types.as_deref(),
            merges: s.merges.as_deref(),
            bos: s.bos,
            eos: s.eos,
            eot: s.eot,
            eom: s.eom,
            unk: s.unk,
            pad: s.pad,
            add_bos: s.add_bos,
            add_eos: s.add_eos,
            add_space_prefix: s.add_space_prefix,
            name: s.name.as_deref(),
        }
    }
}

/// Which algorithm turns a text fragment into ids.
enum Model {
    /// SentencePiece, with the lookup of ids by text it merges by.
    Spm(arena::TokenIndex),
    /// BPE; its model has its own map from text to id.
    Bpe(Box<bpe::Bpe>),
}

/// A tokenizer for one vocabulary. Cheap to share: `&Tokenizer` is `Send + Sync`.
pub struct Tokenizer {
    model: Model,
    vocab: vocab::Vocab,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("model", &self.vocab.model_name)
            .field("pre", &self.vocab.pre_name)
            .field("n_vocab", &self.n_vocab())
            .field("bos", &self.vocab.bos)
            .field("eos", &self.vocab.eos)
            .finish()
    }
}

impl Tokenizer {
    /// Builds a tokenizer from vocabulary metadata. Errors name the `tokenizer.ggml.*` key at
    /// fault (mismatched array lengths, duplicate tokens, out-of-range ids, bad merges,
    /// unsupported model or pre-tokenizer).
    pub fn from_spec(mut spec: VocabSpec) -> Result<Tokenizer> {
        let (vocab, index) = vocab::Vocab::build(&SpecRef::from(&spec))?;
        // The vocabulary keeps its own copy of the texts: free these before the BPE model is
        // built, the peak of the build.
        spec.tokens = Vec::new();
        Tokenizer::with_model(vocab, index, spec.merges.as_deref())
    }

    /// Reads the `tokenizer.ggml.*` keys (and `general.name`) as a [`VocabSpec`] does and
    /// builds the tokenizer from them, without copying the token and merge arrays.
    pub fn from_gguf(md: &dino_formats::gguf::Metadata) -> Result<Tokenizer> {
        let spec = gguf::spec_from_metadata(md)?;
        let (vocab, index) = vocab::Vocab::build(&spec)?;
        Tokenizer::with_model(vocab, index, spec.merges)
    }

    /// Adds the model that tokenizes text fragments to a built vocabulary, then its pieces.
    fn with_model(
        mut vocab: vocab::Vocab,
        index: arena::TokenIndex,
        merges: Option<&[String]>,
    ) -> Result<Tokenizer> {
        let model = match vocab.kind {
            vocab::Kind::Spm => Model::Spm(index),
            vocab::Kind::Bpe(ref pre) => {
                // The BPE model's own map serves lookups by text.
                drop(index);
                let merges = merges.unwrap_or_default();
                Model::Bpe(Box::new(bpe::Bpe::new(&vocab, pre, merges)?))
            }
        };
        vocab.render_pieces()?;
        Ok(Tokenizer { model, vocab })
    }

    /// Encodes `text`. `add_special` adds BOS/EOS as the vocabulary asks (`add_bos`/`add_eos`);
    /// `parse_special` lets control tokens written in the text (`<|im_start|>`, `<s>`) be
    /// recognised as single tokens. User-defined tokens are always recognised.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        let v = &self.vocab;
        let fragments = v.partition(text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && v.add_bos {
            out.push(
                v.bos
                    .ok_or_else(|| Error::invalid("add_bos is set but the vocab has no BOS"))?,
            );
        }
        match &self.model {
            Model::Spm(index) => {
                // llama.cpp prefixes a space to a text fragment that starts the text or follows a
                // special token.
                let mut prev_special = true;
                let mut buf = String::new();
                for frag in &fragments {
                    match *frag {
                        vocab::Fragment::Text(a, b) => {
                            buf.clear();
                            if v.add_space_prefix && prev_special {
                                buf.push(' ');
                            }
                            buf.push_str(&text[a..b]);
                            let escaped = buf.replace(' ', "\u{2581}");
                            spm::tokenize(v, index, &escaped, &mut out)?;
                            prev_special = false;
                        }
                        vocab::Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
            Model::Bpe(bpe) => {
                for frag in &fragments {
                    match *frag {
                        vocab::Fragment::Text(a, b) => bpe.tokenize(&text[a..b], &mut out)?,
                        vocab::Fragment::Token(id) => out.push(id),
                    }
                }
            }
        }
        if add_special && v.add_eos {
            out.push(
                v.eos
                    .ok_or_else(|| Error::invalid("add_eos is set but the vocab has no EOS"))?,
            );
        }
        Ok(out)
    }

    /// Decodes ids to text like llama.cpp's `llama_detokenize(remove_special = false,
    /// unparse_special = false)`: control tokens render empty. Ids outside the vocabulary render
    /// nothing. Invalid UTF-8 (a byte sequence cut short) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.decode_with(ids, DecodeOptions::default())
    }

    /// [`Tokenizer::decode`] with llama.cpp's `remove_special` / `unparse_special` options.
    pub fn decode_with(&self, ids: &[u32], opts: DecodeOptions) -> String {
        decode::decode(&self.vocab, ids, opts)
    }

    /// An incremental detokenizer for generated text: push ids one at a time, get back the text
    /// they complete, never half a UTF-8 character. Each token renders as llama.cpp's
    /// `token_to_piece` (control tokens empty, no first-token space strip, no `clean_spaces`),
    /// which is what llama.cpp prints while generating after a prompt.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(&self.vocab, StreamOptions::default())
    }

    /// A streaming detokenizer with options; with `sequence_start` its output concatenates to
    /// exactly [`Tokenizer::decode_with`] of the same ids.
    pub fn stream_decoder_with(&self, opts: StreamOptions) -> StreamDecoder<'_> {
        StreamDecoder::new(&self.vocab, opts)
    }

    /// The bytes token `id` renders as (llama.cpp's `token_to_piece` with `lstrip = 0`), control
    /// tokens included only when `special`. `None` for an id outside the vocabulary.
    pub fn token_piece(&self, id: u32, special: bool) -> Option<&[u8]> {
        self.vocab.piece(id, special)
    }

    pub fn n_vocab(&self) -> usize {
        self.vocab.n_vocab()
    }
    pub fn bos(&self) -> Option<u32> {
        self.vocab.bos
    }
    pub fn eos(&self) -> Option<u32> {
        self.vocab.eos
    }
    pub fn eot(&self) -> Option<u32> {
        self.vocab.eot
    }
    pub fn unk(&self) -> Option<u32> {
        self.vocab.unk
    }
    pub fn pad(&self) -> Option<u32> {
        self.vocab.pad
    }
    /// Whether `encode(.., add_special = true, ..)` starts with BOS.
    pub fn add_bos(&self) -> bool {
        self.vocab.add_bos
    }
    /// Whether `encode(.., add_special = true, ..)` ends with EOS.
    pub fn add_eos(&self) -> bool {
        self.vocab.add_eos
    }

    /// End of generation: EOS, EOT, EOM and the tokens llama.cpp recognises by text
    /// (`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, `<|end|>`, `<end_of_turn>`, ...).
    pub fn is_eog(&self, id: u32) -> bool {
        self.vocab.eog.contains(&id)
    }

    /// All end-of-generation ids, ascending.
    pub fn eog_ids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.vocab.eog.iter().copied().collect();
        v.sort_unstable();
        v
    }

    /// Whether `id` is a control token (type 3, or promoted to control by llama.cpp's rules).
    pub fn is_control(&self, id: u32) -> bool {
        self.vocab.attr(id) & attr::CONTROL != 0
    }

    /// The vocabulary text of `id` (SPM `▁` and byte-level characters as stored).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.texts.get(id)
    }

    /// The id whose vocabulary text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        match &self.model {
            Model::Spm(index) => index.id(&self.vocab.texts, text),
            Model::Bpe(bpe) => bpe.token_id(text),
        }
    }

    /// `tokenizer.ggml.model` as given.
    pub fn model_name(&self) -> &str {
        &self.vocab.model_name
    }

    /// `tokenizer.ggml.pre` as resolved (`None` for SentencePiece).
    pub fn pre_name(&self) -> Option<&str> {
        self.vocab.pre_name.as_deref()
    }
}

// Compile-time check that the tokenizer can be shared across the engine's threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
};
