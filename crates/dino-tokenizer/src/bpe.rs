//! GPT-2 style byte-level BPE on the `tokenizers` crate.
//!
//! The pre-tokenizer is a sequence of regex splits chosen by `tokenizer.ggml.pre` — the same
//! expressions, in the same order, as llama.cpp's `llm_tokenizer_bpe` (each applied to the
//! pieces the previous one left, keeping matches and the text between them as separate pieces),
//! followed by the GPT-2 byte-to-unicode mapping. The `tokenizers` `BPE` model then merges each
//! piece by rank; `ignore_merges` (llama3, tekken, ...) takes a piece whole when it is a token.

use std::sync::OnceLock;

use dino_core::{Error, Result};
use tokenizers::models::bpe::{Vocab as BpeVocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{
    Model as _, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer as _,
    SplitDelimiterBehavior,
};

use crate::vocab::Vocab;

/// The GPT-2 pattern (`'s|'t|...| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3 (digits in groups of up to three); contractions spelled case-insensitively.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2: like Llama 3 with single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen3.5: Qwen2 with combining marks kept on their letters.
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const SEED_CODER: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+";
const BAILINGMOE: &str = r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const DEEPSEEK3_MAIN: &str = r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##;
const BLOOM: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";
const CJK: &str = "[一-龥ࠀ-一가-퟿]+";
/// DeepSeek LLM's letter class (from its tokenizer.json), written as code points: several of
/// its characters (U+1FD3, U+2126, U+212A, ...) have singleton canonical decompositions and would
/// silently change if the file were ever NFC-normalized.
const DEEPSEEK_LLM_LETTERS: &str = concat!(
    r"\s?[",
    r"\x{0041}-\x{005A}\x{0061}-\x{007A}\x{00B5}\x{00C0}-\x{00D6}\x{00D8}-\x{00F6}",
    r"\x{00F8}-\x{01BA}\x{01BC}-\x{01BF}\x{01C4}-\x{0293}\x{0295}-\x{02AF}",
    r"\x{0370}-\x{0373}\x{0376}\x{0377}\x{037B}-\x{037D}\x{037F}\x{0386}\x{0388}-\x{038A}",
    r"\x{038C}\x{038E}-\x{03A1}\x{03A3}-\x{03F5}\x{03F7}-\x{0481}\x{048A}-\x{052F}",
    r"\x{0531}-\x{0556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}",
    r"\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}",
    r"\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45}",
    r"\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D}",
    r"\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}",
    r"\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}",
    r"\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}",
    r"\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}",
    r"\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}",
    r"\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}",
    r"\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}",
    r"\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}",
    r"\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}",
    r"\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}",
    "]+"
);

/// What a `tokenizer.ggml.pre` value means.
#[derive(Clone, Debug)]
pub(crate) struct PreConfig {
    /// Split patterns, applied in order.
    pub regexes: Vec<&'static str>,
    /// Take a pre-token whole when it is in the vocabulary.
    pub ignore_merges: bool,
    /// Default for `add_bos` when the GGUF does not say.
    pub add_bos: bool,
    /// llama.cpp's `clean_spaces` decode pass.
    pub clean_spaces: bool,
    /// The vocab has no default BOS (chatglm).
    pub no_bos: bool,
}

/// llama.cpp's table of pre-tokenizer types. `None` for an unknown name.
pub(crate) fn pre_config(name: &str) -> Option<PreConfig> {
    let cfg = |regexes: Vec<&'static str>, clean_spaces: bool| PreConfig {
        regexes,
        ignore_merges: false,
        add_bos: false,
        clean_spaces,
        no_bos: false,
    };
    let c = match name {
        "default" => cfg(
            vec![r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
            true,
        ),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => PreConfig {
            ignore_merges: true,
            add_bos: true,
            ..cfg(vec![LLAMA3], true)
        },
        "dbrx" | "smaug-bpe" => cfg(vec![LLAMA3], true),
        "glm4" | "chatglm-bpe" => PreConfig {
            no_bos: true,
            ..cfg(vec![LLAMA3], true)
        },
        "deepseek-llm" => cfg(
            vec![
                "[\r\n]",
                DEEPSEEK_LLM_LETTERS,
                r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
                r"\s+$",
                CJK,
                r"\p{N}+",
            ],
            false,
        ),
        "deepseek-coder" => cfg(
            vec!["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK, r"\p{N}"],
            false,
        ),
        "deepseek-v3" | "hunyuan-dense" | "joyai-llm" | "hy_v4" => cfg(
            vec![r"\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+", DEEPSEEK3_MAIN],
            false,
        ),
        "falcon" => cfg(
            vec![r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"],
            true,
        ),
        "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
            cfg(vec![r"\p{N}", GPT2], true)
        }
        "command-r" | "smollm" => cfg(vec![r"\p{N}", GPT2], false),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "a.x-4.0" | "mellum" | "modern-bert" | "exaone4" | "mpt" | "olmo" | "jais" => {
            cfg(vec![GPT2], true)
        }
        "trillion" | "granite-docling" => cfg(vec![GPT2], false),
        "stablelm2" | "megrez" => cfg(vec![QWEN2], true),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "solar-open" => {
            cfg(vec![QWEN2], false)
        }
        "qwen35" => cfg(vec![QWEN35], false),
        "poro-chat" => cfg(vec![BLOOM], false),
        "bloom" | "gpt3-finnish" => cfg(vec![BLOOM], true),
        "viking" => cfg(vec![BLOOM, r"\p{N}"], false),
        "tekken" => PreConfig {
            ignore_merges: true,
            add_bos: true,
            ..cfg(vec![TEKKEN], false)
        },
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => cfg(vec![GPT4O], false),
        "seed-coder" => cfg(vec![SEED_CODER], false),
        "bailingmoe" | "bailingmoe2" | "llada-moe" => cfg(vec![BAILINGMOE], false),
        "grok-2" => cfg(vec![QWEN2], false),
        _ => return None,
    };
    Some(c)
}

/// Most pre-tokens whose merges the BPE model remembers: the `tokenizers` default.
const WORD_CACHE_CAPACITY: usize = 10_000;

pub(crate) struct Bpe {
    pre: PreTokenizerWrapper,
    model: BPE,
}

fn tk_err(context: &str, e: impl std::fmt::Display) -> Error {
    Error::format(context, e)
}

impl Bpe {
    /// The model for `vocab` with the pre-tokenizer `pre` and the merges as given in the GGUF
    /// (`tokenizer.ggml.merges`: `"left right"`, highest priority first).
    pub fn new(vocab: &Vocab, pre: &PreConfig, merges: &[String]) -> Result<Bpe> {
        let pre_key = "tokenizer.ggml.pre";
        let mut steps: Vec<PreTokenizerWrapper> = Vec::with_capacity(pre.regexes.len() + 1);
        for re in &pre.regexes {
            let split = Split::new(
                SplitPattern::Regex((*re).to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| tk_err(pre_key, format!("pattern {re:?}: {e}")))?;
            steps.push(split.into());
        }
        steps.push(ByteLevel::new(false, false, false).into());
        let merges = parse_merges(merges)?;
        let bpe_vocab: BpeVocab = (0..)
            .zip(vocab.texts.iter())
            .map(|(id, text)| (text.to_string(), id))
            .collect();
        let mut model = BPE::builder()
            .vocab_and_merges(bpe_vocab, merges)
            .ignore_merges(pre.ignore_merges)
            // The builder sizes the word cache's table for all its entries up front (0.8 MB at
            // the default); start it at one entry and raise the limit, so the table grows as
            // words are cached, to the same size at most.
            .cache_capacity(1)
            .build()
            .map_err(|e| tk_err("tokenizer.ggml.merges", format!("bad merge: {e}")))?;
        model.resize_cache(WORD_CACHE_CAPACITY);
        Ok(Bpe {
            pre: Sequence::new(steps).into(),
            model,
        })
    }

    /// The id whose vocabulary text is exactly `text` (the model keeps its own map).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.model.token_to_id(text)
    }

    /// Appends the ids of a raw text fragment.
    pub fn tokenize(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let mut pts = PreTokenizedString::from(text);
        self.pre
            .pre_tokenize(&mut pts)
            .map_err(|e| Error::invalid(format!("pre-tokenizer: {e}")))?;
        for (piece, _, _) in pts.get_splits(OffsetReferential::Original, OffsetType::None) {
            let toks = self
                .model
                .tokenize(piece)
                .map_err(|e| Error::invalid(format!("BPE: {e}")))?;
            out.extend(toks.iter().map(|t| t.id));
        }
        Ok(())
    }
}

/// `"left right"` merge lines as pairs; llama.cpp splits at the first space after the first
/// byte.
fn parse_merges(lines: &[String]) -> Result<Vec<(String, String)>> {
    let mut merges = Vec::with_capacity(lines.len());
    for (i, m) in lines.iter().enumerate() {
        let pos = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1);
        let Some(pos) = pos else {
            return Err(Error::format(
                "tokenizer.ggml.merges",
                format!("merge {i} {m:?} is not two tokens separated by a space"),
            ));
        };
        merges.push((m[..pos].to_string(), m[pos + 1..].to_string()));
    }
    Ok(merges)
}

/// GPT-2's reversible byte → printable-character table.
fn byte_to_char_table() -> [char; 256] {
    let mut t = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        t[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\0')
        };
    }
    t
}

/// Inverse of [`byte_to_char_table`], indexed by code point (all are below 324).
fn char_to_byte(c: char) -> Option<u8> {
    static TABLE: OnceLock<Vec<i16>> = OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut inv = vec![-1i16; 324];
        for (b, c) in byte_to_char_table().iter().enumerate() {
            inv[*c as usize] = b as i16;
        }
        inv
    });
    t.get(c as usize).and_then(|&b| u8::try_from(b).ok())
}

/// Appends a byte-level token text as bytes (llama.cpp's `llama_decode_text`): a character
/// outside the table renders as `[UNK_BYTE_0x..<text>]`.
pub(crate) fn byte_level_decode(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection() {
        let t = byte_to_char_table();
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(t[b as usize]), Some(b));
        }
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
    }

    #[test]
    fn every_pre_regex_compiles() {
        for name in [
            "default",
            "llama-bpe",
            "dbrx",
            "chatglm-bpe",
            "deepseek-llm",
            "deepseek-coder",
            "deepseek-v3",
            "falcon",
            "starcoder",
            "smollm",
            "gpt-2",
            "trillion",
            "stablelm2",
            "qwen2",
            "qwen35",
            "poro-chat",
            "bloom",
            "viking",
            "tekken",
            "gpt-4o",
            "seed-coder",
            "bailingmoe",
            "grok-2",
        ] {
            let cfg = pre_config(name).unwrap();
            for re in cfg.regexes {
                Split::new(
                    SplitPattern::Regex(re.to_string()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .unwrap_or_else(|e| panic!("{name}: {re}: {e}"));
            }
        }
        assert!(pre_config("no-such-pre").is_none());
    }
}
