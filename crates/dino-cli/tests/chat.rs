//! `dino chat` with piped stdin on a real chat model (SmolLM2-135M-Instruct): one message per
//! line, replies streamed to stdout, a turn summary per reply on stderr.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn chat(input: &str, extra: &[&str]) -> Output {
    let model = dino_testutil::model("smollm2");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dino"))
        .args([
            "chat",
            "-m",
            model.to_str().unwrap(),
            "--temp",
            "0",
            "-n",
            "24",
        ])
        .args(["-c", "1024", "-t", "2"])
        .args(extra)
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dino runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn turns(stderr: &str) -> usize {
    stderr.lines().filter(|l| l.starts_with("[turn ")).count()
}

#[test]
fn chat_answers_each_piped_line_and_exits() {
    let o = chat(
        "What is the capital of France?\nAnd of Italy?\n/exit\nnever read\n",
        &["--system", "You are a concise assistant."],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(turns(&err), 2, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains("[turn 1: ") && err.contains("[turn 2: "),
        "{err}"
    );
    // Two replies with text in them, each ended by a newline.
    assert!(out.ends_with('\n'), "{out:?}");
    assert!(out.trim().len() > 4, "{out:?}");
    assert!(
        !out.contains("<|im_end|>") && !out.contains("<|im_start|>"),
        "{out:?}"
    );
    // The second prompt is longer: the first turn's exchange is in it.
    let prompt_len = |n: usize| -> usize {
        let line = err
            .lines()
            .find(|l| l.starts_with(&format!("[turn {n}: prompt ")))
            .unwrap();
        line.split_whitespace().nth(3).unwrap().parse().unwrap()
    };
    assert!(prompt_len(2) > prompt_len(1), "{err}");
}

#[test]
fn chat_reset_forgets_the_conversation() {
    // Greedy: after /reset the same message gets the same reply; EOF ends the chat.
    let o = chat("Say hello.\n/reset\nSay hello.", &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(turns(&err), 2, "{err}");
    assert!(err.contains("conversation cleared"), "{err}");
    let (a, b) = out.split_at(out.len() / 2);
    assert_eq!(a, b, "replies differ after /reset:\n{out}");
    assert!(a.trim().len() > 1, "{out:?}");
}
