"""Drives a running `dino serve` with the official `openai` Python client.

Usage: python openai_client.py BASE_URL API_KEY [--auth]

Run by tests/openai_client.rs (which starts the server on SmolLM2-135M-Instruct); exits non-zero
naming the failed check at the first mismatch. Greedy requests use temperature=0, so two requests
with the same prompt must give the same tokens. With `--auth` (a server started with `--api-key`)
it checks only that the client's key is sent and that a wrong key is an `AuthenticationError`.
"""

import sys
from concurrent.futures import ThreadPoolExecutor

import openai

BASE_URL, API_KEY = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0, timeout=120)
checks = 0


def check(cond, what, *details):
    global checks
    if not cond:
        print(f"FAILED: {what}", *details, file=sys.stderr, flush=True)
        sys.exit(1)
    checks += 1


def check_usage(usage, what, max_tokens=None, finish=None):
    check(usage is not None, f"{what}: usage present")
    check(usage.prompt_tokens > 0, f"{what}: prompt_tokens > 0", usage)
    check(usage.completion_tokens > 0, f"{what}: completion_tokens > 0", usage)
    check(
        usage.total_tokens == usage.prompt_tokens + usage.completion_tokens,
        f"{what}: total_tokens = prompt + completion",
        usage,
    )
    if max_tokens is not None:
        check(usage.completion_tokens <= max_tokens, f"{what}: completion_tokens <= max_tokens", usage)
        if finish == "length":
            check(
                usage.completion_tokens == max_tokens,
                f"{what}: finish 'length' means completion_tokens == max_tokens",
                usage,
            )


# --- API key (only with --auth: the server was started with --api-key API_KEY) ----------------
if sys.argv[3:] == ["--auth"]:
    bad = openai.OpenAI(base_url=BASE_URL, api_key="wrong", max_retries=0)
    try:
        bad.models.list()
        check(False, "a wrong API key is refused")
    except openai.AuthenticationError as e:
        check(e.status_code == 401, "wrong key: 401", e)
    try:
        bad.chat.completions.create(
            model="x", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        check(False, "a wrong API key is refused on chat")
    except openai.AuthenticationError:
        pass
    model = client.models.list().data[0].id
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    check_usage(r.usage, "chat with the right key", 4, r.choices[0].finish_reason)
    print(f"openai {openai.__version__}: all {checks} API-key checks passed")
    sys.exit(0)

# --- models -------------------------------------------------------------------------------------
models = client.models.list().data
check(len(models) == 1, "models.list gives one model", models)
MODEL = models[0].id
check("SmolLM2" in MODEL, "the model is SmolLM2", MODEL)
check(client.models.retrieve(MODEL).id == MODEL, "models.retrieve finds it")

# --- chat, non-streaming ------------------------------------------------------------------------
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write one sentence about the sea."},
]
chat = client.chat.completions.create(
    model=MODEL, messages=MESSAGES, max_tokens=16, temperature=0
)
check(chat.object == "chat.completion", "chat object", chat.object)
check(len(chat.choices) == 1, "chat: one choice")
c0 = chat.choices[0]
check(c0.message.role == "assistant", "chat: assistant role", c0.message)
check(isinstance(c0.message.content, str) and c0.message.content, "chat: non-empty content", c0)
check(c0.finish_reason in ("stop", "length"), "chat: finish_reason", c0.finish_reason)
check_usage(chat.usage, "chat", 16, c0.finish_reason)
print(f"chat: {c0.message.content!r} ({c0.finish_reason}, {chat.usage})")

# --- chat, streaming: the same greedy request gives the same text and usage ---------------------
stream = client.chat.completions.create(
    model=MODEL,
    messages=MESSAGES,
    max_tokens=16,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
parts, finish, usage, roles, n_chunks = [], None, None, [], 0
for chunk in stream:
    n_chunks += 1
    check(chunk.object == "chat.completion.chunk", "chat stream: chunk object", chunk)
    if chunk.usage is not None:
        check(chunk.choices == [], "chat stream: the usage chunk has no choices", chunk)
        check(usage is None, "chat stream: one usage chunk")
        usage = chunk.usage
        continue
    check(usage is None, "chat stream: usage comes last")
    check(chunk.usage is None, "chat stream: no usage in content chunks")
    for ch in chunk.choices:
        if ch.delta.role:
            roles.append(ch.delta.role)
        if ch.delta.content:
            parts.append(ch.delta.content)
        if ch.finish_reason:
            finish = ch.finish_reason
check(roles == ["assistant"], "chat stream: the role comes once", roles)
check(n_chunks > 2, "chat stream: streamed in several chunks", n_chunks)
check(
    "".join(parts) == c0.message.content,
    "chat stream: concatenated deltas equal the non-streaming content",
    repr("".join(parts)),
    repr(c0.message.content),
)
check(finish == c0.finish_reason, "chat stream: same finish_reason", finish, c0.finish_reason)
check(usage == chat.usage, "chat stream: same usage", usage, chat.usage)

# The newer spelling of the limit, and content given as text parts, mean the same request.
r = client.chat.completions.create(
    model=MODEL,
    messages=[
        MESSAGES[0],
        {"role": "user", "content": [{"type": "text", "text": MESSAGES[1]["content"]}]},
    ],
    max_completion_tokens=16,
    temperature=0,
)
check(
    r.choices[0].message.content == c0.message.content and r.usage == chat.usage,
    "chat: max_completion_tokens and text parts give the same result",
    r,
)

# --- completions, non-streaming and streaming ----------------------------------------------------
PROMPT = "The capital of France is Paris. The capital of Germany is"
comp = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0)
check(comp.object == "text_completion", "completion object", comp.object)
check(len(comp.choices) == 1, "completion: one choice")
text = comp.choices[0].text
check(comp.choices[0].finish_reason == "length", "completion: finish 'length'", comp.choices[0])
check_usage(comp.usage, "completion", 24, "length")
print(f"completion: {text!r} ({comp.usage})")

stream = client.completions.create(
    model=MODEL,
    prompt=PROMPT,
    max_tokens=24,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
parts, finish, usage = [], None, None
for chunk in stream:
    if chunk.usage is not None:
        check(usage is None, "completion stream: one usage chunk")
        usage = chunk.usage
    for ch in chunk.choices:
        parts.append(ch.text)
        if ch.finish_reason:
            finish = ch.finish_reason
check(
    "".join(parts) == text,
    "completion stream: concatenated text equals the non-streaming text",
    repr("".join(parts)),
    repr(text),
)
check(finish == "length", "completion stream: finish 'length'", finish)
check(usage == comp.usage, "completion stream: same usage", usage, comp.usage)

# --- stop strings: cut right before the first occurrence, finish 'stop' --------------------------
# A stop string from the middle of the greedy continuation, occurring there for the first time.
mid = len(text) // 2
stop = text[mid : mid + 4]
check(len(stop.strip()) > 0, "stop: a non-blank stop string", repr(stop))
cut = text.index(stop)
for stream_it in (False, True):
    r = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop], stream=stream_it
    )
    if stream_it:
        got, fin = "", None
        for chunk in r:
            for ch in chunk.choices:
                got += ch.text
                fin = ch.finish_reason or fin
    else:
        got, fin = r.choices[0].text, r.choices[0].finish_reason
        check_usage(r.usage, "stop")
    check(
        got == text[:cut],
        f"stop (stream={stream_it}): the text ends right before the stop string",
        repr(stop),
        repr(got),
        repr(text[:cut]),
    )
    check(fin == "stop", f"stop (stream={stream_it}): finish 'stop'", fin)
# Several stop strings: the earliest match wins; an absent one changes nothing.
r = client.completions.create(
    model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, stop=["\u2603 absent", stop]
)
check(r.choices[0].text == text[:cut], "stop list: cut at the present one", r.choices[0])
# Chat too.
stop_c = c0.message.content[len(c0.message.content) // 2 :][:3]
check(len(stop_c.strip()) > 0, "chat stop: a non-blank stop string", repr(stop_c))
cut_c = c0.message.content.index(stop_c)
r = client.chat.completions.create(
    model=MODEL, messages=MESSAGES, max_tokens=16, temperature=0, stop=stop_c
)
check(
    r.choices[0].message.content == c0.message.content[:cut_c],
    "chat stop: cut right before the stop string",
    repr(stop_c),
    r.choices[0],
)
check(r.choices[0].finish_reason == "stop", "chat stop: finish 'stop'", r.choices[0])
check_usage(r.usage, "chat stop")
check(r.usage.completion_tokens < chat.usage.completion_tokens, "chat stop: fewer tokens", r.usage)


# --- seeds: the same seed reproduces a sampled run; another seed gives another one --------------
def sampled(seed, stream=False):
    r = client.completions.create(
        model=MODEL,
        prompt="Once upon a time",
        max_tokens=32,
        temperature=0.9,
        seed=seed,
        stream=stream,
    )
    if stream:
        return "".join(ch.text for chunk in r for ch in chunk.choices)
    return r.choices[0].text


a, b, other = sampled(1234), sampled(1234), sampled(4321)
check(a == b, "seed: the same seed gives the same text", repr(a), repr(b))
check(a == sampled(1234, stream=True), "seed: streaming gives the same text as non-streaming")
check(a != other, "seed: another seed gives another text", repr(a), repr(other))
chat_a, chat_b = (
    client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=24, temperature=0.9, seed=7
    ).choices[0].message.content
    for _ in range(2)
)
check(chat_a == chat_b, "chat seed: the same seed gives the same text", repr(chat_a), repr(chat_b))

# --- n choices ------------------------------------------------------------------------------------
r = r_n2 = client.completions.create(
    model=MODEL, prompt="Once upon a time", max_tokens=32, temperature=0.9, seed=1234, n=2
)
check(len(r.choices) == 2, "n=2: two choices", r.choices)
check(sorted(c.index for c in r.choices) == [0, 1], "n=2: indices 0 and 1", r.choices)
check(r.choices[0].text == a, "n=2: choice 0 has seed 1234's text", repr(r.choices[0].text), repr(a))
check(r.choices[0].text != r.choices[1].text, "n=2: the choices differ", r.choices)
check(
    r.usage.completion_tokens == 64 and r.usage.total_tokens == r.usage.prompt_tokens + 64,
    "n=2: usage counts both choices and the prompt once",
    r.usage,
)
r = client.chat.completions.create(
    model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0.9, seed=1, n=2
)
check(len(r.choices) == 2, "chat n=2: two choices", r.choices)
check(all(c.message.content for c in r.choices), "chat n=2: both have content", r.choices)

# Streamed n=2: chunks carry their choice's index; each choice's text equals the non-streamed one.
stream = client.completions.create(
    model=MODEL, prompt="Once upon a time", max_tokens=32, temperature=0.9, seed=1234, n=2,
    stream=True,
)
texts, finishes = ["", ""], [None, None]
for chunk in stream:
    for ch in chunk.choices:
        texts[ch.index] += ch.text
        finishes[ch.index] = ch.finish_reason or finishes[ch.index]
check(texts == [c.text for c in r_n2.choices], "n=2 stream: the same two texts", texts)
check(finishes == ["length", "length"], "n=2 stream: both end at max_tokens", finishes)

# --- logprobs -------------------------------------------------------------------------------------
r = client.chat.completions.create(
    model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
)
lp = r.choices[0].logprobs
check(lp is not None and lp.content is not None, "chat logprobs present", r.choices[0])
check(len(lp.content) == r.usage.completion_tokens, "chat logprobs: one per token", lp, r.usage)
check(
    "".join(t.token for t in lp.content) == r.choices[0].message.content,
    "chat logprobs: the tokens spell the content",
    lp,
)
for t in lp.content:
    check(t.logprob <= 0.0, "chat logprobs: logprob <= 0", t)
    check(len(t.top_logprobs) == 3, "chat logprobs: 3 alternatives", t)
    check(
        all(x.logprob <= y.logprob + 1e-6 for x, y in zip(t.top_logprobs[1:], t.top_logprobs)),
        "chat logprobs: alternatives sorted",
        t,
    )
    # Greedy: the chosen token is the most likely one.
    check(abs(t.logprob - t.top_logprobs[0].logprob) < 1e-4, "chat logprobs: greedy takes the top", t)
    check(t.bytes is not None and bytes(t.bytes).decode("utf-8", "replace") != "", "chat logprobs: bytes", t)
# Streamed, each content chunk carries the logprobs of its tokens; together they are the same.
stream = client.chat.completions.create(
    model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3,
    stream=True,
)
streamed = [t for chunk in stream for ch in chunk.choices if ch.logprobs for t in ch.logprobs.content]
check(
    [t.token for t in streamed] == [t.token for t in lp.content]
    and all(abs(x.logprob - y.logprob) < 1e-3 for x, y in zip(streamed, lp.content)),
    "chat logprobs: streamed equal non-streamed",
    streamed,
    lp.content,
)
r = client.completions.create(
    model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2
)
lp = r.choices[0].logprobs
check(lp is not None, "completion logprobs present", r.choices[0])
check(len(lp.tokens) == 5 and len(lp.token_logprobs) == 5, "completion logprobs: 5 tokens", lp)
check(len(lp.top_logprobs) == 5 and all(len(d) == 2 for d in lp.top_logprobs), "completion logprobs: top 2", lp)
check(len(lp.text_offset) == 5, "completion logprobs: text_offset per token", lp)
check("".join(lp.tokens) == r.choices[0].text, "completion logprobs: the tokens spell the text", lp)

# --- concurrency: requests batched together give their solo greedy text -------------------------
PROMPTS = [
    "The capital of France is Paris. The capital of Germany is",
    "Once upon a time",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at",
    "My favourite animal is",
]


def greedy(prompt, stream=False):
    r = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=12, temperature=0, stream=stream
    )
    if stream:
        return "".join(ch.text for chunk in r for ch in chunk.choices)
    return r.choices[0].text


solo = [greedy(p) for p in PROMPTS]
with ThreadPoolExecutor(max_workers=len(PROMPTS)) as pool:
    together = list(pool.map(greedy, PROMPTS, [i % 2 == 1 for i in range(len(PROMPTS))]))
check(together == solo, "concurrent requests give their solo greedy text", together, solo)

# --- errors ---------------------------------------------------------------------------------------
try:
    client.completions.create(model=MODEL, prompt="hello " * 5000, max_tokens=4)
    check(False, "an over-long prompt is refused")
except openai.BadRequestError as e:
    check(e.status_code == 400, "over-long prompt: 400", e)
    check(e.code == "context_length_exceeded", "over-long prompt: code context_length_exceeded", e.code, e)
try:
    client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello " * 5000}], max_tokens=4
    )
    check(False, "an over-long chat is refused")
except openai.BadRequestError as e:
    check(e.code == "context_length_exceeded", "over-long chat: code context_length_exceeded", e)
try:
    client.chat.completions.create(model="no-such-model", messages=MESSAGES, max_tokens=4)
    check(False, "an unknown model is refused")
except openai.NotFoundError as e:
    check(e.status_code == 404, "unknown model: 404", e)
    check(e.code == "model_not_found", "unknown model: code model_not_found", e.code, e)
try:
    client.models.retrieve("no-such-model")
    check(False, "retrieving an unknown model is refused")
except openai.NotFoundError:
    pass
try:
    client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=5)
    check(False, "temperature 5 is refused")
except openai.BadRequestError as e:
    check(e.status_code == 400, "bad temperature: 400", e)
# The server is still fine.
r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0)
check(r.choices[0].text == text, "after the errors, the same greedy text")

print(f"openai {openai.__version__}: all {checks} checks passed")
