//! Every case of `tests/data/malformed.txt` must be answered 4xx with an OpenAI error object
//! (naming the field when the case says which), and the server must keep answering `/health`.

mod common;

use common::{config, get, send_raw, spawn, Mock};

struct Case {
    line: usize,
    status: u16,
    method: String,
    path: String,
    content_type: Option<String>,
    param: Option<String>,
    code: Option<String>,
    body: Vec<u8>,
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex byte"))
        .collect()
}

fn big_body() -> Vec<u8> {
    let filler = "x".repeat(5 << 20);
    format!(
        r#"{{"model":"mock-model","prompt":"{filler}","messages":[{{"role":"user","content":"{filler}"}}]}}"#
    )
    .into_bytes()
}

fn parse_cases(text: &str) -> Vec<Case> {
    let long_text = vec!["word"; 100].join(" ");
    let mut cases = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (status, rest) = line.split_once(' ').expect("status");
        let (route, mut rest) = rest.split_once(' ').expect("route");
        let mut case = Case {
            line: i + 1,
            status: status.parse().expect("status code"),
            method: "POST".into(),
            path: match route {
                "chat" => "/v1/chat/completions".into(),
                "cmpl" => "/v1/completions".into(),
                p => p.into(),
            },
            content_type: Some("application/json".into()),
            param: None,
            code: None,
            body: Vec::new(),
        };
        while let Some(opt) = rest.strip_prefix('!') {
            let (opt, tail) = rest_split(opt);
            rest = tail;
            match opt.split_once('=') {
                Some(("param", v)) => case.param = Some(v.into()),
                Some(("code", v)) => case.code = Some(v.into()),
                Some(("ct", v)) => case.content_type = Some(v.into()),
                Some(("method", v)) => case.method = v.into(),
                None if opt == "noct" => case.content_type = None,
                _ => panic!("line {}: unknown option {opt}", i + 1),
            }
        }
        case.body = match rest {
            "@empty" => Vec::new(),
            "@big" => big_body(),
            r if r.starts_with("@hex:") => hex(&r[5..]),
            r => r.replace("LONGTEXT", &long_text).into_bytes(),
        };
        cases.push(case);
    }
    cases
}

fn rest_split(s: &str) -> (&str, &str) {
    match s.split_once(' ') {
        Some((a, b)) => (a, b.trim_start()),
        None => (s, ""),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_corpus_gets_json_errors() {
    let text = include_str!("data/malformed.txt");
    let cases = parse_cases(text);
    assert!(cases.len() >= 100, "corpus has only {} cases", cases.len());
    let mock = Mock::new();
    let addr = spawn(mock.clone(), config()).await;
    let mut failures = Vec::new();
    for c in &cases {
        let mut headers = Vec::new();
        if let Some(ct) = &c.content_type {
            headers.push(("Content-Type", ct.as_str()));
        }
        let raw = common::build_request(&c.method, &c.path, &headers, &c.body);
        let resp = send_raw(addr, raw).await;
        let mut problems = Vec::new();
        if resp.status != c.status {
            problems.push(format!("status {} (expected {})", resp.status, c.status));
        }
        if !(400..500).contains(&resp.status) {
            problems.push("not a 4xx".into());
        }
        match serde_json::from_slice::<serde_json::Value>(&resp.body) {
            Ok(v) => {
                let e = &v["error"];
                if !e["message"].is_string() || !e["type"].is_string() {
                    problems.push("error.message/type missing".into());
                }
                let obj = e.as_object();
                if !obj.is_some_and(|o| o.contains_key("param") && o.contains_key("code")) {
                    problems.push("error.param/code keys missing".into());
                }
                if let Some(p) = &c.param {
                    if e["param"].as_str() != Some(p) {
                        problems.push(format!("param {} (expected {p})", e["param"]));
                    }
                }
                if let Some(code) = &c.code {
                    if e["code"].as_str() != Some(code) {
                        problems.push(format!("code {} (expected {code})", e["code"]));
                    }
                }
            }
            Err(_) => problems.push(format!("body is not JSON: {:?}", resp.text())),
        }
        if resp
            .header("content-type")
            .is_none_or(|ct| !ct.starts_with("application/json"))
        {
            problems.push(format!("content-type {:?}", resp.header("content-type")));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "line {}: {} — {}",
                c.line,
                problems.join("; "),
                resp.text().chars().take(200).collect::<String>()
            ));
        }
        let health = get(addr, "/health").await;
        assert_eq!(health.status, 200, "health after line {}", c.line);
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // None of them reached the engine.
    assert!(mock.submitted.lock().unwrap().is_empty());
}

/// The edges of every range are accepted (the corpus above checks just past them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boundary_values_are_accepted() {
    let mock = Mock::new();
    let addr = spawn(mock, config()).await;
    let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
    let chat_extras = [
        r#""temperature":0"#,
        r#""temperature":2"#,
        r#""temperature":2.0"#,
        r#""top_p":1"#,
        r#""top_p":0.0001"#,
        r#""presence_penalty":-2"#,
        r#""presence_penalty":2"#,
        r#""frequency_penalty":-2.0"#,
        r#""frequency_penalty":2"#,
        r#""n":1"#,
        r#""n":8"#,
        r#""stop":["a","b","c","d"]"#,
        r#""stop":[]"#,
        r#""logprobs":true,"top_logprobs":0"#,
        r#""logprobs":true,"top_logprobs":20"#,
        r#""logprobs":false"#,
        r#""max_tokens":1"#,
        r#""max_tokens":18446744073709551615"#,
        r#""seed":-9223372036854775808"#,
        r#""seed":18446744073709551615"#,
        r#""stream":false,"stream_options":null"#,
        r#""user":"someone""#,
        r#""model":"mock-model""#,
    ];
    for extra in chat_extras {
        let body = format!(r#"{{"model":"mock-model",{msgs},{extra}}}"#);
        let raw = common::build_request(
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json; charset=utf-8")],
            body.as_bytes(),
        );
        let r = send_raw(addr, raw).await;
        assert_eq!(r.status, 200, "{extra}: {}", r.text());
    }
    for extra in [
        r#""logprobs":0"#,
        r#""logprobs":5"#,
        r#""prompt":[4294967295]"#,
    ] {
        let body = format!(r#"{{"model":"mock-model","prompt":"hi",{extra}}}"#);
        let raw = common::build_request(
            "POST",
            "/v1/completions",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        let r = send_raw(addr, raw).await;
        assert_eq!(r.status, 200, "{extra}: {}", r.text());
    }
}

/// Deterministic mutations of a valid body (truncations, byte flips, insertions): every
/// answer is 200 or a 4xx JSON error, never a 5xx or a dropped connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_bodies_never_fail_the_server() {
    let mock = Mock::new();
    let addr = spawn(mock, config()).await;
    let valid = br#"{"model":"mock-model","messages":[{"role":"user","content":"hi there"}],"max_tokens":3,"temperature":0.5,"stop":["x"],"n":2,"logprobs":true,"top_logprobs":1,"stream":false}"#;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let specials = b"{}[]\",:0-9e.\\\xff\x00 ";
    let mut bodies: Vec<Vec<u8>> = (0..valid.len())
        .step_by(3)
        .map(|n| valid[..n].to_vec())
        .collect();
    for _ in 0..250 {
        let mut b = valid.to_vec();
        for _ in 0..1 + rand() % 3 {
            let i = (rand() as usize) % b.len();
            let c = specials[(rand() as usize) % specials.len()];
            match rand() % 3 {
                0 => b[i] = c,
                1 => b.insert(i, c),
                _ => {
                    b.remove(i);
                }
            }
        }
        bodies.push(b);
    }
    let (mut ok, mut rejected) = (0, 0);
    for body in &bodies {
        let raw = common::build_request(
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json")],
            body,
        );
        let r = send_raw(addr, raw).await;
        let what = String::from_utf8_lossy(body);
        match r.status {
            200 => ok += 1,
            400..=499 => {
                let v: serde_json::Value = serde_json::from_slice(&r.body)
                    .unwrap_or_else(|_| panic!("{what}: non-JSON {}", r.text()));
                assert!(v["error"]["message"].is_string(), "{what}");
                rejected += 1;
            }
            s => panic!("{what}: status {s}: {}", r.text()),
        }
    }
    assert!(rejected > 100, "ok {ok} rejected {rejected}");
    assert_eq!(get(addr, "/health").await.status, 200);
}
