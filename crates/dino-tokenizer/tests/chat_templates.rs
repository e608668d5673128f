//! Chat templates rendered as transformers renders them: the templates embedded in the real test
//! models (SmolLM2-135M-Instruct, Qwen2.5-Coder-0.5B-Instruct; Gemma-3-270M has none and gets
//! the ChatML fallback), the Gemma 3 instruction-tuned template and a template exercising the
//! helpers, each over several conversations, byte-equal to Python Jinja2's output
//! (`crates/dino-testutil/data/reference/chat_templates.json`, made by
//! `bench/chat/make_chat_reference.py`). Plus errors: `raise_exception`, malformed templates.

use dino_formats::gguf::GgufFile;
use dino_tokenizer::chat::{ChatMessage, ChatTemplate, CHATML_TEMPLATE};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    templates: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    name: String,
    /// The test model the template comes from (`None`: written in the script).
    model: Option<String>,
    /// `gguf`, `fallback` (the model has none) or `inline`.
    source: String,
    template: String,
    bos_token: String,
    eos_token: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    output: Option<String>,
    /// The message the template raised instead of rendering.
    error: Option<String>,
}

fn reference() -> Reference {
    let path = dino_testutil::reference_dir().join("chat_templates.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The template of entry `name`, built the way Dino builds it (from the model's metadata when
/// it comes from a model), checked equal to the text the reference was rendered with.
fn template_for(e: &Entry) -> ChatTemplate {
    let t = match &e.model {
        Some(model) => {
            let file = GgufFile::open(dino_testutil::model(model)).unwrap();
            let t = ChatTemplate::for_model(file.metadata()).unwrap();
            assert_eq!(
                t.is_fallback(),
                e.source == "fallback",
                "{}: from_gguf found {}",
                e.name,
                if t.is_fallback() {
                    "no template"
                } else {
                    "a template"
                }
            );
            assert_eq!(
                ChatTemplate::from_gguf(file.metadata()).unwrap().is_none(),
                e.source == "fallback"
            );
            if t.is_fallback() {
                assert_eq!(
                    CHATML_TEMPLATE, e.template,
                    "the script's copy of the fallback"
                );
            }
            t
        }
        None => ChatTemplate::new(
            e.name.clone(),
            e.template.clone(),
            e.bos_token.clone(),
            e.eos_token.clone(),
        )
        .unwrap(),
    };
    assert_eq!(t.source(), e.template, "{}: template text", e.name);
    assert_eq!(t.bos_token(), e.bos_token, "{}: bos_token", e.name);
    assert_eq!(t.eos_token(), e.eos_token, "{}: eos_token", e.name);
    t
}

/// Renders every case of template `name` and compares with Jinja2's output.
fn check(name: &str) {
    let r = reference();
    let e = r
        .templates
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no reference for template {name}"));
    let t = template_for(e);
    assert!(!e.cases.is_empty());
    let mut failures = Vec::new();
    for c in &e.cases {
        let got = t.render(&c.messages, c.add_generation_prompt);
        match (&c.output, &c.error, got) {
            (Some(want), _, Ok(got)) => {
                if &got != want {
                    failures.push(format!(
                        "{name}/{}: rendering differs\n--- jinja2:\n{want:?}\n--- dino:\n{got:?}",
                        c.name
                    ));
                }
            }
            (_, Some(msg), Err(err)) => {
                let err = err.to_string();
                if !err.contains(msg.as_str()) || !err.contains(t.name()) {
                    failures.push(format!("{name}/{}: error {err:?} lacks {msg:?}", c.name));
                }
            }
            (_, _, got) => failures.push(format!(
                "{name}/{}: jinja2 gave {:?} / error {:?}, dino {got:?}",
                c.name, c.output, c.error
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    eprintln!("{name}: {} cases equal to jinja2", e.cases.len());
}

#[test]
fn smollm2_template_renders_as_transformers() {
    check("smollm2");
}

#[test]
fn qwen05_template_renders_as_transformers() {
    check("qwen05");
}

#[test]
fn gemma3_without_template_falls_back_to_chatml() {
    check("gemma3");
}

#[test]
fn gemma3_it_template_renders_as_transformers() {
    check("gemma3-it");
}

#[test]
fn helpers_render_as_jinja2() {
    check("helpers");
}

fn inline(source: &str) -> dino_core::Result<ChatTemplate> {
    ChatTemplate::new("test.jinja", source, "<s>", "</s>")
}

#[test]
fn raise_exception_reaches_the_error_with_its_message() {
    let t = inline(
        "{% for m in messages %}\n{% if m.role == 'system' %}\n\
         {{ raise_exception('System role not supported: ' + m.content) }}\n{% endif %}\n{% endfor %}",
    )
    .unwrap();
    let err = t
        .render(&[ChatMessage::new("system", "be nice")], true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("System role not supported: be nice"), "{err}");
    assert!(
        err.contains("test.jinja") && err.contains("line 3"),
        "{err}"
    );
    assert!(err.contains("raised"), "{err}");
    // Other conversations render.
    assert_eq!(
        t.render(&[ChatMessage::new("user", "hi")], true).unwrap(),
        ""
    );
}

#[test]
fn malformed_templates_give_errors_not_panics() {
    for (src, line) in [
        ("{% for m in %}{% endfor %}", 1),
        ("ok\n{{ unclosed", 2),
        ("{% if true %}never closed", 1),
        ("{% endif %}", 1),
        ("{{ 'a' + }}", 1),
        ("{% break %}", 1),
    ] {
        let err = inline(src).unwrap_err().to_string();
        eprintln!("{src:?}: {err}");
        assert!(
            err.contains("test.jinja") && err.contains(&format!("line {line}")),
            "{src:?}: {err}"
        );
    }
    let msgs = [ChatMessage::new("user", "hi")];
    for src in [
        "{{ messages | nosuchfilter }}",
        "{{ nosuchfunction() }}",
        "{{ messages[0].content.nosuchmethod() }}",
        "{{ 1 + messages }}",
        "{{ messages[0].content | tojson(indent='x', bogus=1) }}",
        "{{ undefined_thing.attr }}",
        "{{ strftime_now('%Q %') }}",
        "{% for m in messages %}{{ m.tool_calls[0] }}{% endfor %}",
    ] {
        match inline(src).and_then(|t| t.render(&msgs, true)) {
            Ok(out) => panic!("{src:?} rendered {out:?}"),
            Err(e) => {
                eprintln!("{src:?}: {e}");
                assert!(e.to_string().contains("test.jinja"), "{src:?}: {e}")
            }
        }
    }
}

#[test]
fn optional_message_fields_are_absent_unless_set() {
    let t = inline(
        "{% for m in messages %}{{ m.tool_calls is defined }} {{ m.name is defined }} {{ m | tojson }};{% endfor %}",
    )
    .unwrap();
    let mut named = ChatMessage::new("tool", "42");
    named.name = Some("calc".into());
    let out = t
        .render(&[ChatMessage::new("user", "x"), named], false)
        .unwrap();
    assert_eq!(
        out,
        "False False {\"role\": \"user\", \"content\": \"x\"};\
         False True {\"role\": \"tool\", \"content\": \"42\", \"name\": \"calc\"};"
    );
}

#[test]
fn strftime_now_formats_the_local_time() {
    let t = inline("{{ strftime_now('%Y-%m-%d') }}|{{ strftime_now('%d %b %Y') }}").unwrap();
    let before = chrono::Local::now().format("%Y-%m-%d|%d %b %Y").to_string();
    let out = t.render(&[], true).unwrap();
    let after = chrono::Local::now().format("%Y-%m-%d|%d %b %Y").to_string();
    assert!(out == before || out == after, "{out}");
}

#[test]
fn globals_and_generation_prompt() {
    let t = inline("{{ bos_token }}{{ messages | length }}{% if add_generation_prompt %}>{% endif %}{{ eos_token }}{{ tools is none }}").unwrap();
    assert_eq!(t.render(&[], true).unwrap(), "<s>0></s>True");
    assert_eq!(t.render(&[], false).unwrap(), "<s>0</s>True");
}
