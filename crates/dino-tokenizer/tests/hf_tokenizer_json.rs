//! A SentencePiece vocabulary that reaches Dino as a Hugging Face tokenizer.json (byte-fallback
//! BPE, as Llama 2, Mistral and Gemma ship it) must tokenize as the SentencePiece original.
//!
//! Gemma-3-270M's vocabulary (262,144 pieces) is written as tokenizer.json the way transformers
//! converts SentencePiece models (every split of a piece into two pieces is a merge, ordered by
//! the piece's score; control and user-defined pieces as added tokens), then read back by
//! `dino_formats::hf` (scores from merge ranks). Three tokenizers must agree on every text:
//! Dino on the original GGUF, Dino on the converted metadata, and the `tokenizers` crate on
//! the tokenizer.json itself.

use dino_tokenizer::Tokenizer;

#[test]
fn gemma_vocab_via_tokenizer_json_tokenizes_as_the_gguf() {
    let gguf = dino_testutil::model("gemma3");
    let dir = std::env::temp_dir().join(format!("dino-hf-tok-{}", std::process::id()));
    dino_testutil::hf_dir::write_spm_tokenizer_dir(&gguf, &dir, "Gemma3ForCausalLM").unwrap();
    let md = dino_formats::hf::tokenizer_metadata(&dir).unwrap();
    assert_eq!(md.get_str("tokenizer.ggml.model").unwrap(), "llama");
    assert_eq!(
        md.opt_bool("tokenizer.ggml.add_space_prefix").unwrap(),
        Some(false)
    );
    let orig_file = dino_formats::gguf::GgufFile::open(&gguf).unwrap();
    let orig = Tokenizer::from_gguf(orig_file.metadata()).unwrap();
    let conv = Tokenizer::from_gguf(&md).unwrap();
    let hf = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let texts = [
        "The capital of France is Paris.",
        "Hello world",
        " leading space and  double  spaces   and trailing ",
        "Numbers 1234567 and 3.14159, dates 2024-11-24",
        "Ünïcödé — 日本語のテキスト 🙂 emoji, Ελληνικά, русский",
        "code:\n\tfn main() { println!(\"{}\", 42); }\n\n\nend",
        "antidisestablishmentarianism supercalifragilisticexpialidocious",
        "a\u{1F9EC}b \u{E000} private use and rare ꙮ",
    ];
    for t in texts {
        let a = orig.encode(t, false, false).unwrap();
        let b = conv.encode(t, false, false).unwrap();
        let c: Vec<u32> = hf.encode(t, false).unwrap().get_ids().to_vec();
        assert_eq!(b, a, "converted vs GGUF on {t:?}");
        assert_eq!(c, a, "tokenizers crate vs GGUF on {t:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same with a dummy-prefix vocabulary (Llama 2 style: tokenizer.json's normalizer prepends
/// `▁`): llama2.c's stories260K, when it is present beside the repository.
#[test]
fn llama2_style_vocab_via_tokenizer_json_tokenizes_as_the_gguf() {
    let Some(gguf) = dino_testutil::stories260k() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("dino-hf-tok-l2-{}", std::process::id()));
    dino_testutil::hf_dir::write_spm_tokenizer_dir(&gguf, &dir, "LlamaForCausalLM").unwrap();
    let md = dino_formats::hf::tokenizer_metadata(&dir).unwrap();
    assert_eq!(
        md.opt_bool("tokenizer.ggml.add_space_prefix").unwrap(),
        Some(true)
    );
    let orig_file = dino_formats::gguf::GgufFile::open(&gguf).unwrap();
    let orig = Tokenizer::from_gguf(orig_file.metadata()).unwrap();
    let conv = Tokenizer::from_gguf(&md).unwrap();
    let hf = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    for t in [
        "Once upon a time, there was a little girl named Lily.",
        "She liked to play outside  in the park\nwith her dog.",
        " leading space",
        "Ünïcödé 日本 🙂",
    ] {
        let a = orig.encode(t, false, false).unwrap();
        assert_eq!(
            conv.encode(t, false, false).unwrap(),
            a,
            "converted vs GGUF on {t:?}"
        );
        let c: Vec<u32> = hf.encode(t, false).unwrap().get_ids().to_vec();
        assert_eq!(c, a, "tokenizers crate vs GGUF on {t:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
