//! `dino serve` driven by the official `openai` Python package (pinned in
//! `dino_testutil::python`), as applications use it: chat and completions, streamed and not,
//! usage counts, stop strings, seeds, `n`, logprobs and error types. The checks live in
//! `openai_client.py`; the Python and its venv are set up in the model cache on first use.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

mod common;
use common::{serve as start, Served};

fn serve(extra: &[&str]) -> Served {
    let mut args = vec!["--parallel", "4"];
    args.extend_from_slice(extra);
    start("dino-openai-test-home", &args)
}

/// Runs the client script against `s`; panics with its output unless every check passed.
fn run_client(python: &Path, s: &Served, api_key: &str, extra: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let t = Instant::now();
    let out = Command::new(python)
        .arg(&script)
        .arg(format!("http://{}/v1", s.addr))
        .arg(api_key)
        .args(extra)
        // The client must reach the local server directly, whatever the environment says.
        .env("NO_PROXY", "*")
        .env("no_proxy", "*")
        .env("PYTHONUNBUFFERED", "1")
        .output()
        .expect("running the openai client script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "--- openai_client.py ({:.1} s)\n{stdout}{stderr}",
        t.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "openai_client.py failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(stdout.contains("checks passed"), "{stdout}");
}

#[test]
fn the_openai_python_client_works_against_dino_serve() {
    let python = dino_testutil::python::openai_python();
    let s = serve(&[]);
    run_client(&python, &s, "unused", &[]);
}

#[test]
fn the_openai_python_client_sends_the_api_key() {
    let python = dino_testutil::python::openai_python();
    let s = serve(&["--api-key", "sekret"]);
    run_client(&python, &s, "sekret", &["--auth"]);
}
