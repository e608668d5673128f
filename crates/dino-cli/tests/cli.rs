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

/// A small real model (stories260K) when present, else the random tiny one.
fn small_model() -> PathBuf {
    dino_testutil::stories260k().unwrap_or_else(tiny_model)
}

fn check_bench_object(o: &serde_json::Value) {
    use dino_engine::bench::{llama_bench_field_type, DINO_FIELDS, LLAMA_BENCH_FIELDS};
    for f in LLAMA_BENCH_FIELDS {
        match llama_bench_field_type(f) {
            "int" => assert!(o[f].is_i64(), "{f} = {} is not an integer", o[f]),
            "bool" => assert!(o[f].is_boolean(), "{f} = {} is not a bool", o[f]),
            "float" => assert!(o[f].as_f64().is_some_and(|x| x >= 0.0), "{f} = {}", o[f]),
            _ => assert!(o[f].is_string(), "{f} = {} is not a string", o[f]),
        }
    }
    let n_fields = LLAMA_BENCH_FIELDS.len();
    let obj = o.as_object().unwrap();
    // llama-bench's 42 fields, its two sample arrays, and Dino's six dino_* fields.
    assert_eq!(n_fields, 42);
    assert_eq!(
        obj.len(),
        n_fields + 2 + DINO_FIELDS.len(),
        "{:?}",
        obj.keys()
    );
    assert_eq!(DINO_FIELDS.len(), 6);
    assert!(o["dino_kv_cache_bytes"].as_u64().is_some_and(|b| b > 0));
    // A dense run: sparsity 0, nothing measured.
    assert_eq!(o["dino_sparsity"].as_f64(), Some(0.0));
    assert!(o["dino_measured_sparsity"].is_null());
    let ns = o["samples_ns"].as_array().unwrap();
    let ts = o["samples_ts"].as_array().unwrap();
    assert_eq!(ns.len(), 2);
    assert_eq!(ts.len(), 2);
    assert!(ns.iter().all(|x| x.as_u64().is_some_and(|x| x > 0)));
    assert!(ts.iter().all(|x| x.as_f64().is_some_and(|x| x > 0.0)));
    assert!(o["avg_ts"].as_f64().unwrap() > 0.0);
    assert_eq!(o["backends"], "CPU");
    assert_eq!(o["n_threads"], 1);
    assert!(o["model_size"].as_u64().unwrap() > 0);
    assert!(o["model_n_params"].as_u64().unwrap() > 0);
    assert!(o["dino_peak_rss_bytes"].is_u64() || o["dino_peak_rss_bytes"].is_null());
    assert!(o["dino_energy_j_per_token"].is_number() || o["dino_energy_j_per_token"].is_null());
    assert!(o["dino_isa"].is_string());
}

#[test]
fn bench_json_has_llama_bench_fields() {
    let m = small_model();
    let m = m.to_str().unwrap();
    let o = dino(&[
        "bench", "-m", m, "-p", "8", "-n", "4", "-r", "2", "-t", "1", "-o", "json",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("stdout is one JSON array");
    let tests = v.as_array().unwrap();
    assert_eq!(tests.len(), 2, "{out}");
    for t in tests {
        check_bench_object(t);
    }
    assert_eq!(
        (&tests[0]["n_prompt"], &tests[0]["n_gen"]),
        (&8.into(), &0.into())
    );
    assert_eq!(
        (&tests[1]["n_prompt"], &tests[1]["n_gen"]),
        (&0.into(), &4.into())
    );
    assert_eq!(tests[0]["model_filename"], m);
    // Progress on stderr; energy either measured or explained.
    assert!(err.contains("pp8") && err.contains("tg4"), "{err}");
    assert!(err.contains("energy: "), "{err}");

    // jsonl: one object per line; -pg and -ub lists; markdown's columns.
    let o = dino(&[
        "bench", "-m", m, "-p", "0", "-n", "0", "-pg", "4,2", "-ub", "2,4", "-r", "2", "-t", "1",
        "-o", "jsonl",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (l, ub) in lines.iter().zip([2, 4]) {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        check_bench_object(&v);
        assert_eq!((&v["n_prompt"], &v["n_gen"]), (&4.into(), &2.into()));
        assert_eq!(v["n_ubatch"], ub);
        assert_eq!(v["repack"], true);
    }
    let o = dino(&[
        "bench", "-m", m, "-p", "4", "-n", "0", "-r", "1", "-t", "1", "--repack", "0",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.starts_with("| model "), "{out}");
    for col in [
        "size", "params", "backend", "threads", "rpk", "test", "t/s", "peak RSS", "J/token",
    ] {
        assert!(out.lines().next().unwrap().contains(col), "{col}: {out}");
    }
    assert!(out.contains("|             pp4 |"), "{out}");
    assert!(out.contains("\nbuild: "), "{out}");

    // KV cache types (llama-bench's -ctk/-ctv lists) and a depth (-d): the fields, the test
    // name, the cache's bytes (Q8_0: 34/64 of f16, Q4_0 18/64) and the markdown columns.
    let m = tiny_model();
    let m = m.to_str().unwrap();
    let o = dino(&[
        "bench", "-m", m, "-p", "0", "-n", "2", "-d", "8", "-r", "2", "-t", "1", "-ctk",
        "f16,q8_0", "-ctv", "q4_0", "-o", "jsonl",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    for (r, k) in rows.iter().zip(["f16", "q8_0"]) {
        check_bench_object(r);
        assert_eq!((&r["type_k"], &r["type_v"]), (&k.into(), &"q4_0".into()));
        assert_eq!(r["n_depth"], 8);
    }
    let bytes = |r: &serde_json::Value| r["dino_kv_cache_bytes"].as_u64().unwrap() as f64;
    // Keys f16 + values q4_0 against keys q8_0 + values q4_0: (64 + 18) / (34 + 18).
    assert_eq!(bytes(&rows[0]) / bytes(&rows[1]), 82.0 / 52.0);
    let o = dino(&[
        "bench", "-m", m, "-p", "0", "-n", "2", "-d", "8", "-r", "1", "-t", "1", "-ctk", "q8_0",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let header = out.lines().next().unwrap();
    assert!(
        header.contains("| type_k |") && !header.contains("type_v"),
        "{out}"
    );
    assert!(header.contains("KV cache"), "{out}");
    assert!(out.contains("|   q8_0 |        tg2 @ d8 |"), "{out}");
}

/// `dino run` with quantized KV caches (`-ctk`/`-ctv`, llama.cpp's spellings too): it
/// generates, and reports the cache's size and types.
#[test]
fn run_with_a_quantized_kv_cache_reports_its_memory() {
    let m = tiny_model();
    let m = m.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut a = vec![
            "run",
            "-m",
            m,
            "-p",
            "hello world",
            "-n",
            "8",
            "--temp",
            "0",
            "--ignore-eos",
            "-c",
            "256",
            "--json-stats",
        ];
        a.extend(extra);
        let o = dino(&a);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{err}");
        assert!(out.starts_with("hello world"), "{out}");
        let json = err
            .lines()
            .find(|l| l.starts_with('{'))
            .expect("json stats");
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        (err, v)
    };
    let (err, f16) = run(&[]);
    assert!(err.contains("(k f16, v f16)"), "{err}");
    let (err, q) = run(&["-ctk", "q8_0", "--cache-type-v", "q4_0"]);
    assert!(
        err.contains("KV cache") && err.contains("(k q8_0, v q4_0)"),
        "{err}"
    );
    assert_eq!(
        (&q["type_k"], &q["type_v"]),
        (&"q8_0".into(), &"q4_0".into())
    );
    let b = |v: &serde_json::Value| v["kv_cache_bytes"].as_u64().unwrap() as f64;
    assert_eq!(b(&q) / b(&f16), (34.0 + 18.0) / 128.0);
    let o = dino(&["run", "-m", m, "-p", "x", "-ctv", "q5_1"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("unknown KV cache type 'q5_1'"), "{err}");
}

#[test]
fn bench_bad_arguments_are_clear_errors() {
    let m = tiny_model();
    let m = m.to_str().unwrap();
    for (args, want) in [
        (vec!["-t", "0"], "-t: 0 is too small"),
        (vec!["-t", "1,0"], "-t: 0 is too small"),
        (vec!["-p", "abc"], "-p: \"abc\" is not a whole number"),
        (vec!["-n", "4,x"], "-n: \"x\" is not a whole number"),
        (vec!["-pg", "512"], "-pg: expected two numbers"),
        (vec!["-b", "0"], "-b: 0 is too small"),
        (vec!["-r", "0"], "-r: at least 1"),
        (vec!["--repack", "2"], "--repack: 2 is not 0 or 1"),
        (vec!["-p", "0", "-n", "0"], "nothing to run"),
        (vec!["-ctk", "q8_0,q5"], "-ctk: unknown KV cache type 'q5'"),
        (vec!["-d", "x"], "-d: \"x\" is not a whole number"),
    ] {
        let mut a = vec!["bench", "-m", m];
        a.extend(&args);
        let o = dino(&a);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let o = dino(&["bench", "-m", "/no/such/model.gguf", "-p", "4"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("/no/such/model.gguf"), "{err}");
    let o = dino(&["bench", "--help"]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    for flag in [
        "--model",
        "--n-prompt",
        "--n-gen",
        "--pg",
        "--batch-size",
        "--ubatch-size",
        "--threads",
        "--repetitions",
        "--output",
        "--no-warmup",
        "--seed",
        "--repack",
        "--n-depth",
        "--cache-type-k",
        "--cache-type-v",
        "RAPL",
    ] {
        assert!(out.contains(flag), "{flag} missing from --help:\n{out}");
    }
}

/// A Hugging Face checkpoint directory of the tiny model (F16 safetensors, byte-fallback BPE
/// tokenizer.json), made by the test utility from its GGUF.
fn tiny_hf_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = tmp("tiny-llama-hf");
        dino_testutil::hf_dir::write_hf_dir_from_gguf(&tiny_model(), &d, Default::default())
            .unwrap();
        d
    })
    .clone()
}

fn greedy_text(model: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "run",
        "-m",
        model,
        "-p",
        "hello world",
        "-n",
        "10",
        "--temp",
        "0",
        "--ignore-eos",
    ];
    args.extend_from_slice(extra);
    let o = dino(&args);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{args:?}: {err}");
    out
}

#[test]
fn hf_directory_runs_quantized_and_converts() {
    let dir = tiny_hf_dir();
    let dir = dir.to_str().unwrap();
    let f16 = greedy_text(dir, &[]);
    let q8 = greedy_text(dir, &["--quant", "q8_0"]);
    let out = tmp("tiny-from-hf-q8_0.gguf");
    let o = dino(&[
        "convert",
        dir,
        out.to_str().unwrap(),
        "--type",
        "q8_0",
        "-q",
    ]);
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("wrote") && err.contains("peak RSS"), "{err}");
    // The converted file holds the bytes the in-situ quantization made: the same text.
    assert_eq!(greedy_text(out.to_str().unwrap(), &[]), q8);
    let o = dino(&["convert", dir, tmp("x.gguf").to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(greedy_text(tmp("x.gguf").to_str().unwrap(), &[]), f16);
    // inspect reads the directory as the GGUF it loads as.
    let o = dino(&["inspect", dir]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    assert!(
        out.contains("blk.0.attn_q.weight") && out.contains("tokenizer.ggml.model"),
        "{out}"
    );
}

#[test]
fn hf_directory_errors_are_clear() {
    let dir = tiny_hf_dir();
    let o = dino(&[
        "convert",
        dir.to_str().unwrap(),
        tmp("y.gguf").to_str().unwrap(),
        "--type",
        "q9_9",
    ]);
    let (_, err) = text(&o);
    assert!(
        !o.status.success() && err.contains("unknown tensor type 'q9_9'"),
        "{err}"
    );
    let o = dino(&[
        "run",
        "-m",
        dir.to_str().unwrap(),
        "--quant",
        "iq2_xs",
        "-p",
        "x",
    ]);
    let (_, err) = text(&o);
    assert!(!o.status.success() && err.contains("q8_0"), "{err}");
    // A directory without config.json is not a checkpoint.
    let empty = tmp("empty-dir");
    std::fs::create_dir_all(&empty).unwrap();
    let o = dino(&["run", "-m", empty.to_str().unwrap(), "-p", "x"]);
    let (_, err) = text(&o);
    assert!(!o.status.success() && err.contains("config.json"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let o = dino(&["convert", "--help"]);
    let (out, _) = text(&o);
    assert!(
        out.contains("auto keeps BF16") && out.contains("q4_k"),
        "{out}"
    );
}

/// `dino quantize` writes a model that `dino run` loads, says what it wrote, and names the
/// accepted types when given another.
#[test]
fn quantize_writes_a_runnable_model() {
    let m = tiny_model();
    let out = tmp("tiny-q4_k_m.gguf");
    let o = dino(&[
        "quantize",
        m.to_str().unwrap(),
        out.to_str().unwrap(),
        "--type",
        "q4_k_m",
        "-q",
    ]);
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("(Q4_K_M)") && err.contains("bits per weight"),
        "{err}"
    );
    // Already quantized (Q8_0): said so.
    assert!(err.contains("already quantized"), "{err}");
    let o = dino(&[
        "run",
        "-m",
        out.to_str().unwrap(),
        "-p",
        "hello",
        "-n",
        "4",
        "--temp",
        "0",
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    let o = dino(&[
        "quantize",
        m.to_str().unwrap(),
        "x.gguf",
        "--type",
        "q4_k_x",
    ]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("unknown file type") && err.contains("q3_k_m"),
        "{err}"
    );
}

/// `dino calibrate` writes an imatrix that `dino quantize --imatrix` uses; `--target-bpw`
/// measures, allocates and keeps its sensitivities; bad combinations are clear errors.
#[test]
fn calibrate_then_quantize_with_imatrix_and_budget() {
    let m = tiny_model();
    let m = m.to_str().unwrap();
    let hamlet = dino_testutil::hamlet();
    let hamlet = hamlet.to_str().unwrap();
    let im = tmp("tiny.imatrix");
    let o = dino(&[
        "calibrate",
        "-m",
        m,
        "-f",
        hamlet,
        "-c",
        "64",
        "--chunks",
        "2",
        "-o",
        im.to_str().unwrap(),
    ]);
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("matrices, 2 chunks of 64 tokens") && err.contains("PPL"),
        "{err}"
    );
    let out = tmp("tiny-imat-q4_0.gguf");
    let o = dino(&[
        "quantize",
        m,
        out.to_str().unwrap(),
        "--type",
        "q4_0",
        "--imatrix",
        im.to_str().unwrap(),
        "-q",
    ]);
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("imatrix: weights for"), "{err}");
    let sens = tmp("tiny.sens");
    let out = tmp("tiny-mixed.gguf");
    let o = dino(&[
        "quantize",
        m,
        out.to_str().unwrap(),
        "--type",
        "q4_k_m",
        "--target-bpw",
        "6",
        "--calib-file",
        hamlet,
        "--calib-tokens",
        "64",
        "--sensitivity",
        sens.to_str().unwrap(),
        "-q",
    ]);
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("mixed precision:") && sens.exists(), "{err}");
    let o = dino(&[
        "run",
        "-m",
        out.to_str().unwrap(),
        "-p",
        "hello",
        "-n",
        "4",
        "--temp",
        "0",
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    // No calibration text; an impossible budget; an imatrix that is not one.
    let o = dino(&[
        "quantize",
        m,
        "z.gguf",
        "--type",
        "q4_k_m",
        "--target-bpw",
        "4",
    ]);
    assert!(text(&o).1.contains("--calib-file"), "{}", text(&o).1);
    let o = dino(&[
        "quantize",
        m,
        "z.gguf",
        "--type",
        "q4_k_m",
        "--target-bpw",
        "1",
        "--calib-file",
        hamlet,
        "--calib-tokens",
        "64",
        "--sensitivity",
        sens.to_str().unwrap(),
    ]);
    assert!(text(&o).1.contains("budget"), "{}", text(&o).1);
    let o = dino(&[
        "quantize",
        m,
        "z.gguf",
        "--type",
        "q4_0",
        "--imatrix",
        hamlet,
    ]);
    assert!(
        !o.status.success() && text(&o).1.contains("imatrix"),
        "{}",
        text(&o).1
    );
}

#[test]
fn sparsity_thresholds_run_perplexity_and_bench() {
    let m = tiny_model();
    let m = m.to_str().unwrap();
    let hamlet = dino_testutil::hamlet();
    let hamlet = hamlet.to_str().unwrap();
    let th = tmp("tiny.thresholds");
    let th = th.to_str().unwrap();
    let o = dino(&[
        "calibrate",
        "-m",
        m,
        "-f",
        hamlet,
        "-c",
        "64",
        "--chunks",
        "2",
        "-o",
        tmp("tiny-sp.imatrix").to_str().unwrap(),
        "--save-thresholds",
        th,
        "--sparsity-tokens",
        "64",
    ]);
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("input thresholds of 14 matrices"), "{err}");
    assert!(
        err.contains("sparsity schedule") && err.contains("overall"),
        "{err}"
    );
    let saved = std::fs::read_to_string(th).unwrap();
    assert!(saved.contains("#schedule\t"), "{saved}");
    // Decode through the column layouts, with the measured share reported.
    let o = dino(&[
        "run",
        "-m",
        m,
        "-p",
        "hello world",
        "-n",
        "8",
        "--temp",
        "0",
        "--ignore-eos",
        "--sparsity",
        "0.4",
        "--thresholds",
        th,
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.starts_with("hello world"), "{out}");
    assert!(err.contains("activation sparsity:"), "{err}");
    // The cost against the dense model.
    let o = dino(&[
        "perplexity",
        "-m",
        m,
        "-f",
        hamlet,
        "-c",
        "64",
        "--chunks",
        "2",
        "--sparsity",
        "0.4",
        "--thresholds",
        th,
        "--kl-divergence-base",
        m,
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("Mean    KLD:") && err.contains("activation sparsity:"),
        "{out}{err}"
    );
    // bench: one row per level, a sparsity column.
    let o = dino(&[
        "bench",
        "-m",
        m,
        "-p",
        "0",
        "-n",
        "4",
        "-r",
        "1",
        "-t",
        "1",
        "--sparsity",
        "0,0.4",
        "--thresholds",
        th,
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("sparsity") && out.contains("0.40") && out.contains("0.00"),
        "{out}"
    );
    // Bad input: clear errors.
    for (args, want) in [
        (vec!["--sparsity", "0.4"], "--thresholds"),
        (
            vec!["--sparsity", "1.5", "--thresholds", th],
            "between 0 and 0.99",
        ),
        (vec!["--thresholds", th], "--sparsity"),
        (
            vec!["--sparsity", "0.4", "--thresholds", hamlet],
            "not a thresholds file",
        ),
    ] {
        let mut a = vec!["run", "-m", m, "-p", "hi", "-n", "2"];
        a.extend(args.iter());
        let o = dino(&a);
        let (_, err) = text(&o);
        assert!(!o.status.success() && err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn prune_removes_layers_and_ffn_channels() {
    let m = tiny_model();
    let m = m.to_str().unwrap();
    let hamlet = dino_testutil::hamlet();
    let hamlet = hamlet.to_str().unwrap();
    let out = tmp("tiny-pruned.gguf");
    let o = dino(&[
        "prune",
        "-m",
        m,
        "-f",
        hamlet,
        "-c",
        "64",
        "--chunks",
        "2",
        "--remove-layers",
        "1",
        "--ffn-keep",
        "0.5",
        "-o",
        out.to_str().unwrap(),
    ]);
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("angular distance") && err.contains("removing layers"),
        "{err}"
    );
    assert!(err.contains("2 -> 1 layers"), "{err}");
    let f = dino_formats::gguf::GgufFile::open(&out).unwrap();
    assert_eq!(f.metadata().get_u32("llama.block_count").unwrap(), 1);
    // The pruned file runs.
    let o = dino(&[
        "run",
        "-m",
        out.to_str().unwrap(),
        "-p",
        "hello",
        "-n",
        "4",
        "--temp",
        "0",
    ]);
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    // Bad input: clear errors.
    for (args, want) in [
        (vec![], "nothing to prune"),
        (vec!["--ffn-keep", "0"], "(0, 1]"),
        (vec!["--layers", "0", "--remove-layers", "1"], "pass one"),
        (vec!["--layers", "7"], "does not exist"),
        (vec!["--layers", "0,1"], "leaves none"),
    ] {
        let bad = tmp("tiny-bad-prune.gguf");
        let mut a = vec!["prune", "-m", m, "-f", hamlet, "-o", bad.to_str().unwrap()];
        a.extend(args.iter());
        let o = dino(&a);
        let (_, err) = text(&o);
        assert!(!o.status.success() && err.contains(want), "{args:?}: {err}");
    }
}
