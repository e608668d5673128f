//! `dino serve` driven by the official `openai` Python package (pinned in
//! `dino_testutil::python`), as applications use it: chat and completions, streamed and not,
//! usage counts, stop strings, seeds, `n`, logprobs and error types. The checks live in
//! `openai_client.py`; the Python and its venv are set up in the model cache on first use.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// The server process, killed when dropped.
struct Served {
    child: Child,
    addr: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(extra: &[&str]) -> Served {
    let model = dino_testutil::model("smollm2");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dino"))
        .args(["serve", "-m", model.to_str().unwrap(), "--port", "0"])
        .args(["--parallel", "4", "-t", "2"])
        .args(extra)
        .env(
            "DINO_HOME",
            std::env::temp_dir().join("dino-openai-test-home"),
        )
        .env_remove("DINO_API_KEY")
        .stderr(Stdio::piped())
        .spawn()
        .expect("dino serve starts");
    // The address is announced on stderr once the model is loaded and the socket bound.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("dino serve exited before listening")
            .unwrap();
        if let Some(rest) = line.split("http://").nth(1) {
            break rest.split('/').next().unwrap().to_string();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Served { child, addr }
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
