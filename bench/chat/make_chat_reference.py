#!/usr/bin/env python3
"""Reference renderings of real chat templates, as Hugging Face transformers renders them.

Reads `tokenizer.chat_template` and the BOS/EOS token texts from the test models' GGUF files
(SmolLM2-135M-Instruct, Qwen2.5-Coder-0.5B-Instruct, Gemma-3-270M), renders a set of
conversations with Jinja2 set up exactly as transformers' `apply_chat_template` does
(`ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` with the loop controls
extension, the `raise_exception` and `strftime_now` globals and transformers' `tojson` filter),
and writes crates/dino-testutil/data/reference/chat_templates.json, which
crates/dino-tokenizer/tests/chat_templates.rs compares Dino's minijinja rendering with, byte
for byte.

Gemma-3-270M (the base model) has no template: its entry renders Dino's documented fallback
(ChatML, `CHATML_TEMPLATE` in crates/dino-tokenizer/src/chat.rs, repeated below and checked
equal by the test). The Gemma 3 instruction-tuned template (as published in the gemma-3-*-it
tokenizer_config.json) is rendered with Gemma's tokens as well.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install jinja2 numpy
    /tmp/venv/bin/python bench/chat/make_chat_reference.py [--models-dir ~/.cache/dino]

Needs llama.cpp's gguf-py (from the llama-cpp-python sdist, see bench/llamacpp/build.sh) on
sys.path: --gguf-py, default /work/cache/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py.
"""

import argparse
import json
import os
import sys
from datetime import datetime

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen05": "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
    "gemma3": "gemma-3-270m-Q4_K_M.gguf",
}

# Must equal dino_tokenizer::chat::CHATML_TEMPLATE.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}\n"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "{{- '<|im_start|>assistant\\n' -}}\n"
    "{%- endif -%}\n"
)

# The chat template of Google's gemma-3-*-it models (tokenizer_config.json).
GEMMA3_IT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""

# Exercises what real templates use beyond plain output: Python string and dict methods,
# loop controls, tojson with its keyword arguments, namespaces, macros, trim/lstrip blocks.
HELPERS_TEMPLATE = """{%- macro turn(role, text) -%}
[{{ role | upper }}] {{ text }}
{%- endmacro -%}
{%- set ns = namespace(n_user=0) -%}
{% for message in messages %}
    {% if message.role == 'skip' %}
        {% continue %}
    {% endif %}
    {% if message.role == 'stop' %}
        {% break %}
    {% endif %}
    {% if message.role == 'user' %}{% set ns.n_user = ns.n_user + 1 %}{% endif %}
{{ turn(message.role, message.content.strip()) }}
  title={{ message.content.strip().title() }} words={{ message.content.split() | length }} first={{ (message.content.split() or ['-'])[0] }}
  starts_hi={{ message.content.strip().startswith('hi') }} ends_q={{ message.content.strip().endswith('?') }} lower={{ message.content.lower() }}
  json={{ message | tojson }}
{% endfor %}
users={{ ns.n_user }}
{{ {'b': [1, 2.5, none, true], 'a': 'x"y'} | tojson(indent=2, sort_keys=true) }}
{{ {'k': 'é'} | tojson(ensure_ascii=true) }} {{ [1, 2] | tojson(separators=(',', ':')) }}
{% for k, v in {'one': 1, 'two': 2}.items() %}{{ k }}={{ v }}{% if not loop.last %},{% endif %}{% endfor %}

{% if add_generation_prompt %}<assistant>{% endif %}
"""

SYSTEM = {"role": "system", "content": "You are a concise assistant."}
USER = {"role": "user", "content": "What is the capital of France?"}
ASSISTANT = {"role": "assistant", "content": "Paris."}
USER2 = {"role": "user", "content": "And of Italy?"}
UNICODE = {
    "role": "user",
    "content": "Quotes: \"double\", 'single', back\\slash, {{ not a tag }} {% raw %}\n"
    "Unicode: héllo wörld — 日本語 😀\ttab  ",
}


def conversations(name):
    """(case name, messages, add_generation_prompt) for template `name`."""
    cases = [
        ("system_user", [SYSTEM, USER], True),
        ("user_only", [USER], True),
        ("multi_turn", [SYSTEM, USER, ASSISTANT, USER2], True),
        ("multi_turn_no_generation_prompt", [SYSTEM, USER, ASSISTANT, USER2], False),
        ("ends_with_assistant", [USER, ASSISTANT], False),
        ("unicode_and_quotes", [UNICODE], True),
        ("unknown_role", [USER, {"role": "critic", "content": "Be brief."}], True),
    ]
    if name == "qwen05":
        calls = [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "arguments": {"city": "Paris", "days": 3, "metric": True, "note": "é\"x", "ratio": 0.5},
                },
            }
        ]
        cases.append(
            (
                "tool_calls",
                [
                    USER,
                    {"role": "assistant", "content": "", "tool_calls": calls},
                    {"role": "tool", "content": "{\"temp\": 21}", "name": "get_weather"},
                    {"role": "tool", "content": "sunny"},
                ],
                True,
            )
        )
    if name == "gemma3-it":
        cases = [c for c in cases if c[0] != "unknown_role"]
        cases.append(("unknown_role", [USER, {"role": "critic", "content": "Be brief."}, USER2], True))
        cases.append(("padded_content", [SYSTEM, {"role": "user", "content": "  \n spaced out \n "}], True))
        cases.append(("roles_not_alternating", [USER, USER2], True))
    if name == "helpers":
        cases = [
            (
                "helpers",
                [
                    {"role": "user", "content": "  hi there, how ARE you?  "},
                    {"role": "skip", "content": "never shown"},
                    {"role": "assistant", "content": "fine\tthanks", "name": "bot"},
                    {"role": "user", "content": ""},
                    {"role": "stop", "content": "end"},
                    {"role": "user", "content": "after the break"},
                ],
                True,
            ),
            ("helpers_no_generation_prompt", [USER], False),
        ]
    return cases


class TemplateError(Exception):
    pass


def environment():
    """The Jinja2 environment of transformers' `_compile_jinja_template`."""

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def read_gguf(path):
    import gguf

    r = gguf.GGUFReader(path)

    def get(key):
        f = r.fields.get(key)
        return f.contents() if f is not None else None

    tokens = get("tokenizer.ggml.tokens")
    bos, eos = get("tokenizer.ggml.bos_token_id"), get("tokenizer.ggml.eos_token_id")
    return (
        get("tokenizer.chat_template"),
        tokens[bos] if bos is not None else "",
        tokens[eos] if eos is not None else "",
    )


def render_cases(env, name, template, bos, eos):
    compiled = env.from_string(template)
    out = []
    for case, messages, agp in conversations(name):
        c = {"name": case, "messages": messages, "add_generation_prompt": agp}
        try:
            c["output"] = compiled.render(
                messages=messages,
                tools=None,
                documents=None,
                add_generation_prompt=agp,
                bos_token=bos,
                eos_token=eos,
            )
        except TemplateError as e:
            c["error"] = str(e)
        out.append(c)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    home = os.environ.get("DINO_HOME") or os.path.expanduser("~/.cache/dino")
    ap.add_argument("--models-dir", default=home)
    ap.add_argument("--gguf-py", default="/work/cache/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py")
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument(
        "--out",
        default=os.path.join(here, "../../crates/dino-testutil/data/reference/chat_templates.json"),
    )
    args = ap.parse_args()
    sys.path.insert(0, args.gguf_py)

    env = environment()
    entries = []
    gemma_tokens = None
    for model, file in MODELS.items():
        template, bos, eos = read_gguf(os.path.join(args.models_dir, file))
        source = "gguf"
        if template is None:
            template, source = CHATML_TEMPLATE, "fallback"
        if model == "gemma3":
            gemma_tokens = (bos, eos)
        entries.append(
            {
                "name": model,
                "model": model,
                "source": source,
                "template": template,
                "bos_token": bos,
                "eos_token": eos,
                "cases": render_cases(env, model, template, bos, eos),
            }
        )
    for name, template, (bos, eos) in [
        ("gemma3-it", GEMMA3_IT_TEMPLATE, gemma_tokens),
        ("helpers", HELPERS_TEMPLATE, ("<s>", "</s>")),
    ]:
        entries.append(
            {
                "name": name,
                "model": None,
                "source": "inline",
                "template": template,
                "bos_token": bos,
                "eos_token": eos,
                "cases": render_cases(env, name, template, bos, eos),
            }
        )
    doc = {
        "generator": "bench/chat/make_chat_reference.py",
        "jinja2": jinja2.__version__,
        "templates": entries,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    n = sum(len(e["cases"]) for e in entries)
    print(f"wrote {n} cases for {len(entries)} templates to {os.path.normpath(args.out)}")


if __name__ == "__main__":
    main()
