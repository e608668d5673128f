//! llama.cpp's own tokenizer test vectors (`tests/test-tokenizer-0.cpp`): for each vocabulary,
//! every input of `ggml-vocab-<name>.gguf.inp` must encode to exactly the ids on the matching
//! line of `.out`, with `add_special = false, parse_special = false` as the C++ test does.
//!
//! The files live in `$DINO_MODELS/vocab/` (default `~/.cache/dino-models/vocab/`); fetch them
//! on first use through the model cache (`dino pull vocab`). Missing files fail the test.

mod common;

use common::{load, read, vocab_dir};

/// Inputs separated by "\n__ggml_vocab_test__\n"; a trailing separator ends the list.
fn split_inputs(raw: &str) -> Vec<String> {
    const SEP: &str = "\n__ggml_vocab_test__\n";
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < raw.len() {
        match raw[pos..].find(SEP) {
            Some(rel) => {
                out.push(raw[pos..pos + rel].to_string());
                pos += rel + SEP.len();
            }
            None => {
                out.push(raw[pos..].to_string());
                break;
            }
        }
    }
    out
}

/// Runs every vector of `name`; returns (passed, total, failure report).
fn run(name: &str) -> (usize, usize, String) {
    let dir = vocab_dir();
    let tok = load(name);
    let inp_path = dir.join(format!("ggml-vocab-{name}.gguf.inp"));
    let out_path = dir.join(format!("ggml-vocab-{name}.gguf.out"));
    let inp = String::from_utf8(read(&inp_path)).expect(".inp is not UTF-8");
    let out = String::from_utf8(read(&out_path)).expect(".out is not UTF-8");
    let inputs = split_inputs(&inp);
    let expected: Vec<Vec<u32>> = out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|t| t.parse().expect("bad id in .out"))
                .collect()
        })
        .collect();
    assert_eq!(
        inputs.len(),
        expected.len(),
        "{name}: .inp has {} inputs, .out has {} lines",
        inputs.len(),
        expected.len()
    );
    let mut report = String::new();
    let mut passed = 0;
    for (text, want) in inputs.iter().zip(&expected) {
        let got = tok.encode(text, false, false).unwrap();
        if &got == want {
            passed += 1;
        } else {
            report.push_str(&format!(
                "  input {text:?}\n    want {want:?}\n    got  {got:?}\n"
            ));
        }
    }
    eprintln!("{name}: {passed}/{} vectors", inputs.len());
    (passed, inputs.len(), report)
}

fn check(name: &str) {
    let (passed, total, report) = run(name);
    assert!(
        passed == total,
        "{name}: {passed}/{total} vectors pass; failures:\n{report}"
    );
}

#[test]
fn llama_spm() {
    check("llama-spm");
}

#[test]
fn llama_bpe() {
    check("llama-bpe");
}

#[test]
fn gpt_2() {
    check("gpt-2");
}

#[test]
fn qwen2() {
    check("qwen2");
}

#[test]
fn phi_3() {
    check("phi-3");
}

#[test]
fn deepseek_coder() {
    check("deepseek-coder");
}

// More of llama.cpp's vocabularies (fetched by the same `get-models vocab`).

#[test]
fn falcon() {
    check("falcon");
}

#[test]
fn starcoder() {
    check("starcoder");
}

#[test]
fn refact() {
    check("refact");
}

#[test]
fn mpt() {
    check("mpt");
}

#[test]
fn command_r() {
    check("command-r");
}

#[test]
fn deepseek_llm() {
    check("deepseek-llm");
}

#[test]
fn qwen35() {
    check("qwen35");
}
