//! Hand-made vocabularies: the SentencePiece algorithm on a vocab small enough to reason about,
//! and malformed metadata, which must give errors naming the key at fault (never a panic).

use dino_core::Error;
use dino_formats::gguf::{Array, Metadata, Value};
use dino_tokenizer::{token_type, Tokenizer, VocabSpec};

/// A tiny SentencePiece vocab: <unk> <s> </s>, the 256 byte tokens, then pieces with scores.
fn spm_spec(pieces: &[(&str, f32)]) -> VocabSpec {
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut scores = vec![0.0, 0.0, 0.0];
    let mut types = vec![
        token_type::UNKNOWN,
        token_type::CONTROL,
        token_type::CONTROL,
    ];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        scores.push(0.0);
        types.push(token_type::BYTE);
    }
    for (p, s) in pieces {
        tokens.push(p.to_string());
        scores.push(*s);
        types.push(token_type::NORMAL);
    }
    VocabSpec {
        model: "llama".into(),
        tokens,
        scores: Some(scores),
        token_types: Some(types),
        ..Default::default()
    }
}

fn texts(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter()
        .map(|&i| tok.token_text(i).unwrap().to_string())
        .collect()
}

#[test]
fn spm_merges_by_score() {
    // "▁ab" can form as ▁a+b or ▁+ab; scores decide which bigram merges first.
    let tok = Tokenizer::from_spec(spm_spec(&[
        ("▁", -1.0),
        ("a", -1.0),
        ("b", -1.0),
        ("▁a", -3.0),
        ("ab", -2.0),
        ("▁ab", -5.0),
        ("c", -1.0),
    ]))
    .unwrap();
    // Best pair first: "ab" (-2) beats "▁a" (-3); then "▁"+"ab" -> "▁ab".
    let ids = tok.encode("ab", false, false).unwrap();
    assert_eq!(texts(&tok, &ids), ["▁ab"]);
    // "abc": ab merges, "abc" not a token, c stays.
    let ids = tok.encode("abc", false, false).unwrap();
    assert_eq!(texts(&tok, &ids), ["▁ab", "c"]);
    assert_eq!(tok.decode(&ids), "abc");
    // Unknown characters fall back to bytes.
    let ids = tok.encode("aé", false, false).unwrap();
    assert_eq!(texts(&tok, &ids), ["▁a", "<0xC3>", "<0xA9>"]);
    assert_eq!(tok.decode(&ids), "aé");
    // BOS by default for SentencePiece; no EOS.
    assert_eq!(tok.encode("a", true, false).unwrap()[0], 1);
    assert!(tok.add_bos());
    assert_eq!(tok.encode("", true, false).unwrap(), vec![1]);
    assert_eq!(tok.encode("", false, false).unwrap(), Vec::<u32>::new());
}

#[test]
fn spm_ties_go_to_the_leftmost_pair() {
    let tok = Tokenizer::from_spec(spm_spec(&[("▁", -1.0), ("a", -1.0), ("aa", -1.0)])).unwrap();
    let ids = tok.encode("aaa", false, false).unwrap();
    // ▁ a a a: only "aa" merges (no "▁a"): leftmost first gives ▁ aa a.
    assert_eq!(texts(&tok, &ids), ["▁", "aa", "a"]);
}

#[test]
fn spm_options() {
    let mut spec = spm_spec(&[("▁", -1.0), ("a", -1.0), ("▁a", -0.5)]);
    spec.add_space_prefix = Some(false);
    spec.add_bos = Some(false);
    spec.add_eos = Some(true);
    let tok = Tokenizer::from_spec(spec).unwrap();
    assert_eq!(
        texts(&tok, &tok.encode("a a", true, false).unwrap()),
        ["a", "▁a", "</s>"]
    );
    assert_eq!(tok.decode(&tok.encode(" a", false, false).unwrap()), " a");
    assert!(tok.is_eog(2));
}

#[test]
fn empty_tokens_are_named_by_id() {
    // llama.cpp names an empty token "[EMPTY_<id>]"; it is looked up by that name.
    let spm = Tokenizer::from_spec(spm_spec(&[("▁a", -1.0), ("", -2.0)])).unwrap();
    assert_eq!(spm.token_text(260), Some("[EMPTY_260]"));
    assert_eq!(spm.token_id("[EMPTY_260]"), Some(260));
    assert_eq!(spm.token_id(""), None);
    assert_eq!(spm.token_piece(260, false), Some(&b"[EMPTY_260]"[..]));

    let mut spec = bpe_spec();
    spec.tokens.push(String::new());
    spec.token_types = None;
    let bpe = Tokenizer::from_spec(spec).unwrap();
    assert_eq!(bpe.token_text(6), Some("[EMPTY_6]"));
    assert_eq!(bpe.token_id("[EMPTY_6]"), Some(6));
    assert_eq!(bpe.token_id("ab"), Some(3));
    assert_eq!(bpe.token_id(""), None);
    assert_eq!(bpe.token_piece(4, false), Some(&b" ab"[..]));
}

fn bpe_spec() -> VocabSpec {
    // Byte-level alphabet for "ab" + space ("Ġ"), with merges a+b and Ġ+ab.
    VocabSpec {
        model: "gpt2".into(),
        pre: Some("gpt-2".into()),
        tokens: ["a", "b", "Ġ", "ab", "Ġab", "<|endoftext|>"]
            .map(String::from)
            .to_vec(),
        token_types: Some(vec![1, 1, 1, 1, 1, 3]),
        merges: Some(vec!["a b".into(), "Ġ ab".into()]),
        bos: Some(5),
        eos: Some(5),
        ..Default::default()
    }
}

#[test]
fn small_bpe() {
    let tok = Tokenizer::from_spec(bpe_spec()).unwrap();
    let ids = tok.encode("ab ab", false, false).unwrap();
    assert_eq!(texts(&tok, &ids), ["ab", "Ġab"]);
    assert_eq!(tok.decode(&ids), "ab ab");
    assert!(!tok.add_bos());
    assert!(tok.is_eog(5));
    assert_eq!(
        tok.encode("ab<|endoftext|>", false, true).unwrap(),
        vec![3, 5]
    );
}

fn err(spec: VocabSpec) -> String {
    match Tokenizer::from_spec(spec) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn malformed_specs_are_errors() {
    let base = || spm_spec(&[("▁", -1.0), ("a", -1.0)]);

    let e = err(VocabSpec {
        tokens: vec![],
        ..base()
    });
    assert!(e.contains("tokenizer.ggml.tokens"), "{e}");

    let mut s = base();
    s.scores.as_mut().unwrap().truncate(10);
    assert!(err(s).contains("tokenizer.ggml.scores"));

    let mut s = base();
    s.token_types.as_mut().unwrap().pop();
    assert!(err(s).contains("tokenizer.ggml.token_type"));

    let mut s = base();
    s.tokens[5] = "a".into();
    let e = err(s);
    assert!(
        e.contains("tokenizer.ggml.tokens") && e.contains("duplicate"),
        "{e}"
    );

    let e = err(VocabSpec {
        bos: Some(100_000),
        ..base()
    });
    assert!(e.contains("tokenizer.ggml.bos_token_id"), "{e}");
    let e = err(VocabSpec {
        eos: Some(259 + 2),
        ..base()
    });
    assert!(e.contains("tokenizer.ggml.eos_token_id"), "{e}");
    let e = err(VocabSpec {
        eot: Some(1 << 20),
        ..base()
    });
    assert!(e.contains("tokenizer.ggml.eot_token_id"), "{e}");
    // u32::MAX means "not set" (the default stays); an out-of-range padding id is ignored.
    let tok = Tokenizer::from_spec(VocabSpec {
        pad: Some(300_000),
        eos: Some(u32::MAX),
        ..base()
    })
    .unwrap();
    assert_eq!((tok.pad(), tok.eos()), (None, Some(2)));

    let e = err(VocabSpec {
        model: "t5".into(),
        ..base()
    });
    assert!(e.contains("tokenizer.ggml.model"), "{e}");

    let e = err(VocabSpec {
        pre: Some("no-such-pre".into()),
        ..bpe_spec()
    });
    assert!(e.contains("tokenizer.ggml.pre"), "{e}");

    let e = err(VocabSpec {
        merges: None,
        ..bpe_spec()
    });
    assert!(e.contains("tokenizer.ggml.merges"), "{e}");
    let e = err(VocabSpec {
        merges: Some(vec!["ab".into()]),
        ..bpe_spec()
    });
    assert!(
        e.contains("tokenizer.ggml.merges") && e.contains("merge 0"),
        "{e}"
    );
    let e = err(VocabSpec {
        merges: Some(vec!["a b".into(), "x y".into()]),
        ..bpe_spec()
    });
    assert!(
        e.contains("tokenizer.ggml.merges") && e.contains("`x`"),
        "{e}"
    );
    let e = err(VocabSpec {
        merges: Some(vec![String::new()]),
        ..bpe_spec()
    });
    assert!(e.contains("tokenizer.ggml.merges"), "{e}");

    // add_bos without a BOS token.
    let e = err(VocabSpec {
        bos: None,
        eos: None,
        add_bos: Some(true),
        tokens: ["a", "b", "Ġ", "ab", "Ġab"].map(String::from).to_vec(),
        token_types: None,
        ..bpe_spec()
    });
    assert!(e.contains("add_bos_token"), "{e}");

    // Odd but legal: unknown token types, empty token texts, no scores/types.
    let mut s = base();
    s.token_types.as_mut().unwrap()[3] = 99;
    s.tokens[4] = String::new();
    Tokenizer::from_spec(s).unwrap();
    let mut s = base();
    s.scores = None;
    s.token_types = None;
    Tokenizer::from_spec(s).unwrap();
}

fn md_from(spec: &VocabSpec) -> Metadata {
    let mut md = Metadata::new("test.gguf");
    md.insert("tokenizer.ggml.model", Value::String(spec.model.clone()));
    md.insert(
        "tokenizer.ggml.tokens",
        Value::Array(Array::String(spec.tokens.clone())),
    );
    if let Some(s) = &spec.scores {
        md.insert("tokenizer.ggml.scores", Value::Array(Array::F32(s.clone())));
    }
    if let Some(t) = &spec.token_types {
        md.insert(
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(t.clone())),
        );
    }
    md
}

#[test]
fn from_gguf_metadata() {
    let spec = spm_spec(&[("▁", -1.0), ("a", -1.0), ("▁a", -0.5)]);
    let mut md = md_from(&spec);
    md.insert("tokenizer.ggml.bos_token_id", Value::U32(1));
    md.insert("tokenizer.ggml.eos_token_id", Value::I32(2));
    md.insert("tokenizer.ggml.add_bos_token", Value::Bool(false));
    md.insert("general.name", Value::String("tiny".into()));
    let tok = Tokenizer::from_gguf(&md).unwrap();
    assert!(!tok.add_bos());
    assert_eq!(tok.eos(), Some(2));
    assert_eq!(tok.decode(&tok.encode("a a", false, false).unwrap()), "a a");

    // Integer scores are accepted, as llama.cpp does.
    let mut md2 = md_from(&spec);
    md2.insert(
        "tokenizer.ggml.scores",
        Value::Array(Array::I32(vec![0; spec.tokens.len()])),
    );
    Tokenizer::from_gguf(&md2).unwrap();

    // Missing and mistyped keys.
    let mut md3 = Metadata::new("test.gguf");
    md3.insert("tokenizer.ggml.model", Value::String("llama".into()));
    let e = Tokenizer::from_gguf(&md3).unwrap_err();
    assert!(matches!(e, Error::MissingKey { ref key, .. } if key == "tokenizer.ggml.tokens"));

    let mut md4 = md_from(&spec);
    md4.insert(
        "tokenizer.ggml.token_type",
        Value::Array(Array::F32(vec![1.0; spec.tokens.len()])),
    );
    let e = Tokenizer::from_gguf(&md4).unwrap_err().to_string();
    assert!(e.contains("tokenizer.ggml.token_type"), "{e}");

    let mut md5 = md_from(&spec);
    md5.insert("tokenizer.ggml.bos_token_id", Value::I32(-1));
    let e = Tokenizer::from_gguf(&md5).unwrap_err().to_string();
    assert!(e.contains("tokenizer.ggml.bos_token_id"), "{e}");

    let mut md6 = md_from(&spec);
    md6.insert("tokenizer.ggml.model", Value::U32(3));
    let e = Tokenizer::from_gguf(&md6).unwrap_err().to_string();
    assert!(e.contains("tokenizer.ggml.model"), "{e}");
}

/// The SentencePiece vocab that ships in the repo's shared models: stories260K (512 tokens).
#[test]
fn stories260k_vocab() {
    let Some(path) = dino_testutil::stories260k() else {
        return;
    };
    let f = dino_formats::gguf::GgufFile::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(f.metadata()).unwrap();
    assert_eq!(tok.n_vocab(), 512);
    let ids = tok.encode("Once upon a time", true, false).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(tok.decode(&ids[1..]), "Once upon a time");
}
