//! The `dino` binary as a user runs it: real output, clear errors, exit codes, no panics.

use dino_core::GgmlType;
use dino_testutil::random_model::{write_random_model, Shape};
use std::path::PathBuf;
use std::process::{Command, Output};

fn dino(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dino"))
        .args(args)
        // Never touch the network or the user's cache from these tests.
        .env("DINO_HOME", tmp("home"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("dino runs")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dino-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn tiny_model() -> PathBuf {
    static MODEL: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    MODEL
        .get_or_init(|| {
            let p = tmp("tiny-llama.gguf");
            write_random_model(&p, &Shape::tiny("llama"), GgmlType::Q8_0, 5).unwrap();
            p
        })
        .clone()
}

#[test]
fn run_streams_text_and_reports_metrics() {
    let m = tiny_model();
    let o = dino(&[
        "run",
        "-m",
        m.to_str().unwrap(),
        "-p",
        "hello world",
        "-n",
        "12",
        "--temp",
        "0",
        "--ignore-eos",
        "--json-stats",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.starts_with("hello world"), "{out}");
    for key in [
        "load time",
        "prompt",
        "first token",
        "generated",
        "peak RSS",
        "tokens/s",
    ] {
        assert!(err.contains(key), "missing '{key}' in:\n{err}");
    }
    let json = err
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("json stats line");
    assert!(json.contains("\"gen_tokens\":12"), "{json}");
}

#[test]
fn same_seed_reproduces_the_same_text() {
    let m = tiny_model();
    let args = [
        "run",
        "-m",
        m.to_str().unwrap(),
        "-p",
        "a b c",
        "-n",
        "16",
        "--temp",
        "1.2",
        "--ignore-eos",
        "--seed",
        "42",
    ];
    let a = dino(&args);
    let b = dino(&args);
    assert!(a.status.success());
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn inspect_prints_metadata_and_tensors() {
    let m = tiny_model();
    let o = dino(&["inspect", m.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("general.architecture") && out.contains("\"llama\""),
        "{out}"
    );
    assert!(
        out.contains("blk.1.ffn_down.weight") && out.contains("q8_0"),
        "{out}"
    );
    assert!(out.contains("parameters"), "{out}");
}

#[test]
fn corrupt_and_missing_files_are_clear_errors_not_panics() {
    let m = tiny_model();
    let bytes = std::fs::read(&m).unwrap();
    let cut = tmp("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let junk = tmp("junk.gguf");
    std::fs::write(&junk, b"this is not a model").unwrap();
    for (path, want) in [
        (cut.to_str().unwrap(), "truncated"),
        (junk.to_str().unwrap(), "not a GGUF file"),
    ] {
        for cmd in [vec!["inspect", path], vec!["run", "-m", path, "-p", "x"]] {
            let o = dino(&cmd);
            let (_, err) = text(&o);
            assert_eq!(o.status.code(), Some(1), "{cmd:?}: {err}");
            assert!(
                err.contains("error:") && err.contains(want),
                "{cmd:?}: {err}"
            );
            assert!(!err.contains("panicked"), "{cmd:?}: {err}");
        }
    }
    let o = dino(&["run", "-m", "no-such-model-name", "-p", "x"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("no-such-model-name"), "{err}");
}

#[test]
fn prompt_longer_than_the_context_is_an_error() {
    let m = tiny_model();
    let long = "a ".repeat(300);
    let o = dino(&[
        "run",
        "-m",
        m.to_str().unwrap(),
        "-p",
        &long,
        "--ctx-size",
        "64",
    ]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("context"), "{err}");
}

#[test]
fn perplexity_prints_llama_cpp_final_line() {
    let m = tiny_model();
    let f = tmp("text.txt");
    std::fs::write(
        &f,
        "the quick brown fox jumps over the lazy dog ".repeat(40),
    )
    .unwrap();
    let o = dino(&[
        "perplexity",
        "-m",
        m.to_str().unwrap(),
        "-f",
        f.to_str().unwrap(),
        "-c",
        "64",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let line = out.lines().last().unwrap();
    assert!(
        line.starts_with("Final estimate: PPL = ") && line.contains(" +/- "),
        "{line}"
    );
    // Too little text for two chunks: a clear error.
    std::fs::write(&f, "short").unwrap();
    let o = dino(&[
        "perplexity",
        "-m",
        m.to_str().unwrap(),
        "-f",
        f.to_str().unwrap(),
        "-c",
        "64",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("tokens"), "{}", text(&o).1);
}

#[test]
fn pull_list_names_the_default_model() {
    let o = dino(&["pull", "--list"]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    assert!(out.to_lowercase().contains("smollm2"), "{out}");
}
