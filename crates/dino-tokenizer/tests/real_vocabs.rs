//! Behaviour on llama.cpp's real vocabularies: special tokens, BOS/EOS, end of generation,
//! decode round trips, the streaming decoder, and encoding speed on a whole play.

mod common;

use common::{cached as load, hamlet, read, vocab_dir};
use dino_tokenizer::{DecodeOptions, StreamOptions, Tokenizer};

/// The test inputs of llama.cpp's vectors (shared by all vocabularies) plus a few of our own.
fn inputs() -> Vec<String> {
    let raw =
        String::from_utf8(read(&vocab_dir().join("ggml-vocab-llama-spm.gguf.inp"))).expect("utf-8");
    let mut v: Vec<String> = raw
        .split("\n__ggml_vocab_test__\n")
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    v.extend(
        [
            "🦙🦙 emoji 😶‍🌫️ and 日本語のテキスト",
            "naïve café — “quotes” ½ ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
            "tabs\tand\r\nwindows newlines\n\n\n  trailing   ",
            "ẞ ǅ ﬁ Ǆ ℃ Ω K Å",
        ]
        .map(str::to_string),
    );
    v
}

fn stream_all(tok: &Tokenizer, ids: &[u32], special: bool) -> (String, Vec<String>) {
    let mut d = tok.stream_decoder_with(StreamOptions {
        unparse_special: special,
        sequence_start: true,
    });
    let mut parts: Vec<String> = ids.iter().map(|&id| d.push(id)).collect();
    parts.push(d.flush());
    (parts.concat(), parts)
}

#[test]
fn special_ids_and_add_bos_defaults() {
    let spm = load("llama-spm");
    assert_eq!(
        (spm.bos(), spm.eos(), spm.unk()),
        (Some(1), Some(2), Some(0))
    );
    assert!(spm.add_bos() && !spm.add_eos());
    assert_eq!(spm.encode("Hello", true, false).unwrap()[0], 1);
    assert_eq!(spm.n_vocab(), 32000);
    assert_eq!(spm.token_text(15043), Some("▁Hello"));
    assert_eq!(spm.token_id("▁Hello"), Some(15043));
    assert_eq!(spm.token_text(32000), None);

    // llama3 pre: add_bos defaults to true when the GGUF does not say.
    let l3 = load("llama-bpe");
    assert!(l3.add_bos());
    assert_eq!(l3.bos(), Some(128000));
    assert_eq!(l3.encode("Hello", true, false).unwrap(), vec![128000, 9906]);

    let qwen = load("qwen2");
    assert!(!qwen.add_bos());
    assert_eq!(qwen.encode("Hello", true, false).unwrap(), vec![9707]);
    assert_eq!(qwen.encode("", true, false).unwrap(), Vec::<u32>::new());

    let dsc = load("deepseek-coder");
    assert!(dsc.add_bos());
    assert_eq!(dsc.encode("", true, false).unwrap(), vec![32013]);
}

#[test]
fn every_token_text_looks_up_its_id() {
    for name in ["llama-spm", "qwen2", "gpt-2", "phi-3"] {
        let tok = load(name);
        for id in 0..tok.n_vocab() as u32 {
            let text = tok.token_text(id).unwrap();
            assert_eq!(tok.token_id(text), Some(id), "{name}: {text:?}");
            assert!(tok.token_piece(id, true).is_some(), "{name}: {id}");
        }
        let n = tok.n_vocab() as u32;
        assert_eq!((tok.token_text(n), tok.token_piece(n, true)), (None, None));
        assert_eq!(tok.token_id("no such token \u{1}"), None);
    }
}

#[test]
fn end_of_generation() {
    let qwen = load("qwen2");
    let id = |t: &str| qwen.token_id(t).unwrap();
    assert!(qwen.is_eog(id("<|endoftext|>")));
    assert!(qwen.is_eog(id("<|im_end|>")));
    assert!(!qwen.is_eog(id("<|im_start|>")));
    assert!(!qwen.is_eog(id("Hello")));
    assert!(!qwen.is_eog(u32::MAX));

    let l3 = load("llama-bpe");
    assert!(l3.is_eog(128001)); // <|end_of_text|>
    assert!(l3.is_eog(128009)); // <|eot_id|>
    assert!(!l3.is_eog(128000));

    let phi = load("phi-3");
    assert!(phi.is_eog(32000)); // <|endoftext|>
    assert!(phi.is_eog(phi.token_id("<|end|>").unwrap()));
    assert!(phi.is_eog(2)); // </s>

    let spm = load("llama-spm");
    assert_eq!(spm.eog_ids(), vec![2]);
}

#[test]
fn parse_special() {
    let qwen = load("qwen2");
    let text = "<|im_start|>user\nhi<|im_end|>";
    let parsed = qwen.encode(text, false, true).unwrap();
    assert_eq!(parsed.first(), Some(&151644));
    assert_eq!(parsed.last(), Some(&151645));
    let plain = qwen.encode(text, false, false).unwrap();
    assert!(!plain.contains(&151644) && !plain.contains(&151645));
    // Control tokens render empty by default, as text when asked.
    assert_eq!(qwen.decode(&parsed), "user\nhi");
    let opts = DecodeOptions {
        unparse_special: true,
        ..Default::default()
    };
    assert_eq!(qwen.decode_with(&parsed, opts), text);
    assert_eq!(qwen.decode(&plain), text);

    // SPM: the text after a special token gets the space prefix again.
    let spm = load("llama-spm");
    let ids = spm.encode("Hi</s>there", false, true).unwrap();
    assert_eq!(
        ids,
        spm.encode("Hi", false, false)
            .unwrap()
            .into_iter()
            .chain([2])
            .chain(spm.encode("there", false, false).unwrap())
            .collect::<Vec<_>>()
    );

    // phi-3 user-defined/control tokens strip the whitespace to their right (llama.cpp's rule
    // for models named phi-3).
    let phi = load("phi-3");
    let end = phi.token_id("<|end|>").unwrap();
    let a = phi.encode("<|user|>\nHi<|end|>\n", false, true).unwrap();
    let b = phi.encode("<|user|>Hi<|end|>", false, true).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.last(), Some(&end));

    // User-defined tokens are matched even without parse_special (deepseek-coder's "õ").
    let dsc = load("deepseek-coder");
    let ids = dsc.encode("aõb", false, false).unwrap();
    assert!(ids.contains(&32000), "{ids:?}");
}

/// decode(encode(x)) == x for SentencePiece and for the BPE vocabularies without llama.cpp's
/// `clean_spaces` pass.
#[test]
fn lossless_round_trips() {
    for name in [
        "llama-spm",
        "phi-3",
        "qwen2",
        "deepseek-coder",
        "command-r",
        "qwen35",
    ] {
        let tok = load(name);
        for text in inputs() {
            let ids = tok.encode(&text, false, false).unwrap();
            assert_eq!(tok.decode(&ids), text, "{name}: {ids:?}");
        }
    }
}

/// With `clean_spaces` (gpt-2, llama-bpe), only the spaces llama.cpp cleans may differ.
#[test]
fn clean_spaces_round_trips() {
    for name in ["gpt-2", "llama-bpe"] {
        let tok = load(name);
        for text in inputs() {
            let ids = tok.encode(&text, false, false).unwrap();
            let back = tok.decode(&ids);
            if back != text {
                let removable = [" ?", " !", " .", " ,", " '"];
                assert!(
                    removable.iter().any(|p| text.contains(p)),
                    "{name}: {text:?} -> {back:?}"
                );
                assert_eq!(back.replace(' ', ""), text.replace(' ', ""), "{name}");
            }
        }
        assert_eq!(
            tok.decode(&tok.encode("Hello , world !", false, false).unwrap()),
            "Hello, world!"
        );
    }
}

/// SPM: the space prefix added when encoding is removed from the first token; after a BOS the
/// space stays (llama.cpp's detokenize does the same).
#[test]
fn spm_leading_space() {
    let spm = load("llama-spm");
    let ids = spm.encode("Hello world", false, false).unwrap();
    assert_eq!(spm.decode(&ids), "Hello world");
    let ids = spm.encode("Hello world", true, false).unwrap();
    assert_eq!(spm.decode(&ids), " Hello world");
    let opts = DecodeOptions {
        remove_special: true,
        unparse_special: false,
    };
    assert_eq!(spm.decode_with(&ids, opts), " Hello world");
    let opts = DecodeOptions {
        remove_special: false,
        unparse_special: true,
    };
    assert_eq!(spm.decode_with(&ids, opts), "<s> Hello world");
}

#[test]
fn stream_decoder_matches_decode_and_never_splits_utf8() {
    for name in [
        "llama-spm",
        "phi-3",
        "gpt-2",
        "llama-bpe",
        "qwen2",
        "deepseek-coder",
    ] {
        let tok = load(name);
        for text in inputs() {
            let ids = tok.encode(&text, true, false).unwrap();
            for special in [false, true] {
                let (joined, parts) = stream_all(tok, &ids, special);
                let opts = DecodeOptions {
                    remove_special: false,
                    unparse_special: special,
                };
                assert_eq!(joined, tok.decode_with(&ids, opts), "{name}: {text:?}");
                for p in &parts {
                    assert!(!p.contains('\u{fffd}'), "{name}: {text:?} gave {parts:?}");
                }
            }
        }
    }
}

#[test]
fn stream_decoder_holds_back_partial_characters() {
    // SPM byte fallback: 🦙 is four <0xXX> tokens.
    let spm = load("llama-spm");
    let ids = spm.encode("🦙", false, false).unwrap();
    let bytes: Vec<u32> = "🦙"
        .bytes()
        .map(|b| spm.token_id(&format!("<0x{b:02X}>")).unwrap())
        .collect();
    assert!(ids.ends_with(&bytes), "{ids:?}");
    let mut d = spm.stream_decoder_with(StreamOptions {
        sequence_start: true,
        ..Default::default()
    });
    let outs: Vec<String> = ids.iter().map(|&id| d.push(id)).collect();
    assert_eq!(outs.last().unwrap(), "🦙");
    assert!(outs[..outs.len() - 1]
        .iter()
        .all(|s| s.is_empty() || s == " "));
    assert_eq!(d.flush(), "");

    // Byte-level BPE: a character spread over several tokens.
    let gpt2 = load("gpt-2");
    let ids = gpt2.encode("🦙", false, false).unwrap();
    assert!(ids.len() > 1, "{ids:?}");
    let mut d = gpt2.stream_decoder();
    let outs: Vec<String> = ids.iter().map(|&id| d.push(id)).collect();
    assert_eq!(outs.concat(), "🦙");
    assert!(outs[..outs.len() - 1].iter().all(String::is_empty));

    // An unfinished character at the end comes out as U+FFFD from flush().
    let mut d = spm.stream_decoder();
    assert_eq!(d.push(bytes[0]), "");
    assert_eq!(d.pending_len(), 1);
    assert_eq!(d.flush(), "\u{fffd}");
}

#[test]
fn stream_decoder_clean_spaces() {
    let tok = load("llama-bpe");
    let ids = tok
        .encode("Hello , world ! It 's fine", false, false)
        .unwrap();
    let (joined, _) = stream_all(tok, &ids, false);
    assert_eq!(joined, "Hello, world! It's fine");
    assert_eq!(joined, tok.decode(&ids));
}

#[test]
fn hamlet_encodes_quickly() {
    let text = hamlet();
    for name in ["qwen2", "llama-bpe", "llama-spm"] {
        let tok = load(name);
        let t = std::time::Instant::now();
        let ids = tok.encode(&text, false, false).unwrap();
        let dt = t.elapsed();
        eprintln!(
            "{name}: {} bytes -> {} tokens in {:.3} s",
            text.len(),
            ids.len(),
            dt.as_secs_f64()
        );
        assert!(
            ids.len() > text.len() / 8,
            "{name}: suspiciously few tokens"
        );
        if name != "llama-bpe" {
            assert_eq!(tok.decode(&ids), text, "{name}: round trip");
        }
    }
}

/// The default stream decoder renders generated tokens as llama.cpp prints them: a first
/// generated SentencePiece token keeps its space, and no `clean_spaces`.
#[test]
fn stream_decoder_generation_mode() {
    let spm = load("llama-spm");
    let prompt = spm.encode("Once upon a time", true, false).unwrap();
    let there = spm.token_id("▁there").unwrap();
    let was = spm.token_id("▁was").unwrap();
    let mut d = spm.stream_decoder();
    assert_eq!(d.push(there), " there");
    assert_eq!(d.push(was), " was");
    assert_eq!(d.flush(), "");
    // With BOS first, the whole-sequence decode has no space to strip either.
    let mut all = prompt.clone();
    all.extend([there, was]);
    assert_eq!(spm.decode(&all), " Once upon a time there was");

    let l3 = load("llama-bpe");
    let ids = l3.encode("Really ? Yes !", false, false).unwrap();
    let mut d = l3.stream_decoder();
    let mut s: String = ids.iter().map(|&id| d.push(id)).collect();
    s += &d.flush();
    assert_eq!(s, "Really ? Yes !");
    assert_eq!(l3.decode(&ids), "Really? Yes!");
}
