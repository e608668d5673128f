//! Shared by the tests that start `dino serve`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The server process, killed when dropped.
pub struct Served {
    child: Child,
    pub addr: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `dino serve` on SmolLM2-135M-Instruct, port 0, 2 threads, plus `extra`; `home` names its
/// (empty) `DINO_HOME` under the temp dir. Returns once the socket is bound.
pub fn serve(home: &str, extra: &[&str]) -> Served {
    let model = dino_testutil::model("smollm2");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dino"))
        .args([
            "serve",
            "-m",
            model.to_str().unwrap(),
            "--port",
            "0",
            "-t",
            "2",
        ])
        .args(extra)
        .env("DINO_HOME", std::env::temp_dir().join(home))
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
