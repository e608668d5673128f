#!/usr/bin/env python3
"""Greedy-decoding reference data from the llama.cpp peer (llama-cpp-python 0.3.36's llama.cpp).

Run after `bench/llamacpp/build.sh` with `source bench/llamacpp/env.sh`:

    python3 bench/llamacpp/make_reference.py            # all models
    python3 bench/llamacpp/make_reference.py --only stories260K

Writes crates/dino-testutil/data/reference/<model-stem>.greedy.json.

Decoding is pure greedy argmax over the raw logits of the last position (no sampler chain at all: no
temperature, no top-k/p, no repetition penalty). The prompt is evaluated in one batch
(n_batch = n_ubatch = 512, logits for the last prompt position only, as llama-completion does), then one
token per decode. Context settings are llama.cpp's CLI defaults: KV cache F16, flash attention enabled
(what the default `auto` resolves to on the CPU backend), no context shift.

Each prompt is decoded twice, with --threads (reference) and --check-threads, and the token sequences
are compared. A candidate prompt is accepted only if its top-1/top-2 logit margin stays >= --min-margin
at every generated step and both thread counts agree; otherwise the next candidate of its category is tried.
"""
import argparse
import ctypes
import os
import pathlib
import platform
import subprocess
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import jsonfmt  # noqa: E402

try:
    import llama_cpp
    from llama_cpp import Llama
except ImportError as e:  # pragma: no cover
    sys.exit(f"cannot import llama_cpp ({e}); run build.sh and `source bench/llamacpp/env.sh` first")

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
OUT_DIR = REPO / "crates/dino-testutil/data/reference"
MODELS_DIR = pathlib.Path(os.environ.get("DINO_MODELS", pathlib.Path.home() / ".cache/dino-models"))
SHARED = pathlib.Path(os.environ.get("DINO_SHARED", REPO.parent / "shared"))
if not SHARED.is_dir():
    SHARED = pathlib.Path("/work/shared")

# Candidate prompts per category, tried in order until one is stable (see module doc).
CANDIDATES = {
    "english": [
        "The old lighthouse keeper climbed the stairs every evening to light the lamp, and",
        "The river wound slowly through the quiet valley, past farms and",
        "Once the snow had melted, the children ran outside to",
        "The history of the printing press begins in the fifteenth century, when",
        "It was the best of times, it was the worst of times, it was the age of wisdom,",
        "Four score and seven years ago our fathers brought forth on this continent",
        "To be, or not to be, that is the question:",
        "The quick brown fox jumps over the lazy dog. The quick brown fox",
    ],
    "code": [
        "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
        "fn main() {\n    let v: Vec<i32> = (1..=10).collect();\n",
        "#include <stdio.h>\n\nint main(void) {\n",
        "# Sort a list of numbers in Python\nnumbers = [5, 3, 8, 1]\n",
        "import numpy as np\nimport pandas as pd\nimport",
        "for i in range(10):\n    print(i)\n\nfor j in range(10):\n",
        "public static void main(String[] args) {\n",
        "<html>\n<head>\n<title>",
    ],
    "question": [
        "Question: What is the capital of France?\nAnswer:",
        "Q: Why is the sky blue?\nA:",
        "What is the boiling point of water at sea level?",
        "How many legs does a spider have?",
        "Can you explain what a hash table is?",
        "How do I reverse a string in Python?",
        "What does HTML stand for?",
        "Question: Which planet is known as the Red Planet?\nAnswer:",
        "Q: Who wrote Romeo and Juliet?\nA:",
        "What is the difference between a list and a tuple in Python?",
        "Q: What is 2 + 2?\nA: 4\nQ: What is 3 + 3?\nA:",
        "Q: What color is grass?\nA: Green.\nQ: What color is snow?\nA:",
    ],
    "list": [
        "Three primary colors:\n1. Red\n2.",
        "Shopping list:\n- eggs\n- milk\n-",
        "The days of the week are Monday, Tuesday,",
        "Steps to make a cup of tea:\n1. Boil the water.\n2.",
        "The planets of the solar system, in order from the Sun: Mercury, Venus,",
        "Ingredients for pancakes:\n- 2 cups of flour\n-",
        "Top 3 reasons to learn Python:\n1.",
        "1, 2, 3, 4, 5, 6, 7, 8,",
        "January, February, March, April,",
        "A, B, C, D, E, F,",
    ],
    "numbers_unicode": [
        "Prices: 3 × 4.50 € = 13.50 €; naïve café — 25% off!",
        "π ≈ 3.14159, e ≈ 2.71828, and √2 ≈",
        "Temperature in Zürich: 21.5 °C (70.7 °F) at 14:30 — “sunny” ☀",
        "Le café coûte 2,50 € — ¿cuánto cuesta el té? 日本語も少し。",
        "1 + 1 = 2\n2 + 2 = 4\n3 + 3 = 6\n4 + 4 =",
        "α, β, γ, δ, ε,",
        "Ça va? Très bien, merci. Et toi? — 10 × 10 = 100;",
    ],
}

MODELS = {
    "SmolLM2-135M-Instruct.Q4_1": {"path": MODELS_DIR / "SmolLM2-135M-Instruct.Q4_1.gguf", "kind": "prompts"},
    "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M": {
        "path": MODELS_DIR / "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
        "kind": "prompts",
    },
    "gemma-3-270m-Q4_K_M": {"path": MODELS_DIR / "gemma-3-270m-Q4_K_M.gguf", "kind": "prompts"},
    "stories260K": {"path": SHARED / "models/stories260K.gguf", "kind": "stories"},
}


def f32(x) -> float:
    """A float32 as the shortest decimal that round-trips to the same float32."""
    return float(str(np.float32(x)))


def peer_version() -> dict:
    info = {"llama_cpp_python": llama_cpp.__version__}
    src = pathlib.Path(llama_cpp.__file__).resolve().parent.parent / "vendor/llama.cpp"
    commit = None
    try:
        top, head = subprocess.run(["git", "-C", str(src), "rev-parse", "--show-toplevel", "HEAD"],
                                   capture_output=True, text=True, check=True).stdout.split()
        if pathlib.Path(top).resolve() == src.resolve():
            commit = head
    except Exception:
        pass
    info["llama_cpp_commit"] = commit or "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
    info["llama_cpp_commit_date"] = "2026-10-01"
    info["system_info"] = llama_cpp.llama_print_system_info().decode().strip()
    info["machine"] = platform.machine()
    return info


class Runner:
    def __init__(self, path: pathlib.Path, n_ctx: int, threads: int, flash_attn: bool):
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                         n_batch=512, n_ubatch=512, logits_all=False, flash_attn=flash_attn, verbose=False)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n_vocab = self.llm.n_vocab()

    def add_bos(self) -> bool:
        return bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))

    def tokenize(self, text: str):
        # add_bos=True means llama_tokenize(add_special=true): BOS is added iff the vocab's add_bos says so,
        # exactly as llama-completion / llama-perplexity tokenize their input. parse_special=false.
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)

    def piece(self, tok: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_token_to_piece(self.vocab, llama_cpp.llama_token(tok), buf, 256, 0, special)
        assert 0 <= n <= 256
        return buf.raw[:n]

    def last_logits(self) -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def greedy(self, prompt_ids, n_gen: int, stop_at_eog: bool = True):
        llm = self.llm
        llm.reset()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)
        llm.eval(prompt_ids)
        ids, margins, first_logits, stop = [], [], None, "length"
        for step in range(n_gen):
            logits = self.last_logits()
            if first_logits is None:
                first_logits = logits
            tok = int(np.argmax(logits))  # first index of the maximum, like llama.cpp's greedy sampler
            top2 = np.partition(logits, -2)[-2:]
            margins.append(float(top2[1]) - float(top2[0]))
            ids.append(tok)
            if stop_at_eog and llama_cpp.llama_vocab_is_eog(self.vocab, tok):
                stop = "eog"
                break
            if step + 1 < n_gen:
                llm.eval([tok])
        return ids, margins, first_logits, stop


def top_k(logits: np.ndarray, k: int):
    idx = np.argsort(-logits, kind="stable")[:k]
    return [[int(i), f32(logits[i])] for i in idx]


def run_prompts(stem, path, args, version):
    ref = Runner(path, args.n_ctx, args.threads, True)
    chk = Runner(path, args.n_ctx, args.check_threads, True)
    nofa = Runner(path, args.n_ctx, args.threads, False) if args.check_no_fa else None
    prompts, rejected = [], []
    for category, cands in CANDIDATES.items():
        chosen = None
        for text in cands:
            pids = ref.tokenize(text)
            if not (5 <= len(pids) <= 40):
                rejected.append({"category": category, "prompt": text, "reason": f"{len(pids)} prompt tokens"})
                continue
            ids, margins, logits, stop = ref.greedy(pids, args.n_gen)
            ids2, _, logits2, _ = chk.greedy(pids, args.n_gen)
            mm = min(margins)
            entry = {
                "category": category,
                "prompt": text,
                "prompt_ids": pids,
                "generated_ids": ids,
                "n_generated": len(ids),
                "stop_reason": stop,
                "generated_text": b"".join(ref.piece(t) for t in ids).decode("utf-8", errors="replace"),
                "min_margin": f32(mm),
                "min_margin_step": int(np.argmin(margins)),
                "margins": [round(m, 4) for m in margins],
                "first_step_top20": top_k(logits, 20),
                "threads_check": {
                    "n_threads": args.check_threads,
                    "same_tokens": ids2 == ids,
                    "first_step_max_abs_logit_diff": f32(np.max(np.abs(logits2 - logits))),
                },
            }
            if nofa is not None:
                ids3, _, logits3, _ = nofa.greedy(pids, args.n_gen)
                entry["no_flash_attn_check"] = {
                    "same_tokens": ids3 == ids,
                    "first_step_max_abs_logit_diff": f32(np.max(np.abs(logits3 - logits))),
                }
            print(f"  [{category}] {len(pids)} tok, gen {len(ids)}, min margin {mm:.4f} @ {entry['min_margin_step']}, "
                  f"t{args.check_threads} same={ids2 == ids} "
                  f"d={entry['threads_check']['first_step_max_abs_logit_diff']:.2e}"
                  + (f", noFA same={entry['no_flash_attn_check']['same_tokens']} "
                     f"d={entry['no_flash_attn_check']['first_step_max_abs_logit_diff']:.2e}" if nofa else "")
                  + f": {entry['generated_text'][:60]!r}", flush=True)
            if mm < args.min_margin or ids2 != ids or len(ids) < args.min_gen:
                rejected.append({"category": category, "prompt": text, "reason":
                                 f"min margin {mm:.4f} at step {entry['min_margin_step']}, "
                                 f"{len(ids)} tokens generated ({stop}), "
                                 f"same tokens with {args.check_threads} threads: {ids2 == ids}"})
                continue
            chosen = entry
            break
        if chosen is None:
            sys.exit(f"{stem}: no stable prompt in category {category}")
        prompts.append(chosen)
    return ref, prompts, rejected


def run_stories(stem, path, args, version):
    ref = Runner(path, args.n_ctx, args.threads, True)
    chk = Runner(path, args.n_ctx, args.check_threads, True)
    text = "Once upon a time"
    pids = ref.tokenize(text)
    n_gen = 200
    # No early stop: llama2.c's run.c runs a fixed number of steps (stopping only at BOS=1).
    ids, margins, logits, stop = ref.greedy(pids, n_gen, stop_at_eog=False)
    ids2, _, logits2, _ = chk.greedy(pids, n_gen, stop_at_eog=False)
    full = b"".join(ref.piece(t) for t in pids[1:] + ids).decode("utf-8", errors="replace")
    if full.startswith(" "):
        full = full[1:]  # SentencePiece: the space before the first word is not printed (llama2.c does the same)
    gen_text = b"".join(ref.piece(t) for t in ids).decode("utf-8", errors="replace")
    cmp = {}
    ref_file = SHARED / "models/stories260K.greedy-once-upon-a-time.txt"
    if ref_file.exists():
        want = ref_file.read_text().rstrip("\n")
        # llama2.c's run.c: 200 steps = 200 forwards at positions 0..199 starting from BOS, each printing the
        # next token; the first len(prompt)-1 of those are the forced prompt tokens, the rest are generated.
        n = 0
        while n < min(len(want), len(full)) and want[n] == full[n]:
            n += 1
        n_llama2c_gen = 200 - (len(pids) - 1)
        cmp = {
            "file": "shared/models/stories260K.greedy-once-upon-a-time.txt",
            "llama2c_steps": 200,
            "llama2c_generated_tokens": n_llama2c_gen,
            "matches": want == b"".join(ref.piece(t) for t in pids[1:] + ids[:n_llama2c_gen]).decode(
                "utf-8", errors="replace").lstrip(" "),
            "common_prefix_chars": n,
            "reference_chars": len(want),
        }
    mm = min(margins)
    print(f"  stories: min margin {mm:.4f} @ {int(np.argmin(margins))}, t{args.check_threads} same={ids2 == ids}, "
          f"llama2c match={cmp.get('matches')} prefix {cmp.get('common_prefix_chars')}/{cmp.get('reference_chars')}")
    entry = {
        "category": "stories",
        "prompt": text,
        "prompt_ids": pids,
        "generated_ids": ids,
        "n_generated": len(ids),
        "stop_reason": stop,
        "generated_text": gen_text,
        "full_text": full,
        "min_margin": f32(mm),
        "min_margin_step": int(np.argmin(margins)),
        "margins": [round(m, 4) for m in margins],
        "first_step_top20": top_k(logits, 20),
        "threads_check": {
            "n_threads": args.check_threads,
            "same_tokens": ids2 == ids,
            "first_step_max_abs_logit_diff": f32(np.max(np.abs(logits2 - logits))),
        },
        "llama2c_comparison": cmp,
    }
    return ref, [entry], []


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", help="model stem(s) to run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--check-threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=512)
    ap.add_argument("--n-gen", type=int, default=32)
    ap.add_argument("--min-margin", type=float, default=0.05)
    ap.add_argument("--min-gen", type=int, default=8, help="reject prompts that hit EOG before this many tokens")
    ap.add_argument("--no-fa-check", dest="check_no_fa", action="store_false",
                    help="skip the extra decode with flash attention disabled")
    ap.add_argument("--out-dir", type=pathlib.Path, default=OUT_DIR)
    args = ap.parse_args()
    version = peer_version()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for stem, m in MODELS.items():
        if args.only and stem not in args.only:
            continue
        print(f"{stem}: {m['path']}", flush=True)
        if m["kind"] == "stories":
            runner, prompts, rejected = run_stories(stem, m["path"], args, version)
        else:
            runner, prompts, rejected = run_prompts(stem, m["path"], args, version)
        md = runner.llm.metadata
        header = {
            "generator": "bench/llamacpp/make_reference.py",
            "peer": version,
            "model_file": m["path"].name,
            "model_arch": md.get("general.architecture"),
            "n_vocab": runner.n_vocab,
            "add_bos": runner.add_bos(),
            "gguf_add_bos_token": md.get("tokenizer.ggml.add_bos_token"),
            "bos_id": int(llama_cpp.llama_vocab_bos(runner.vocab)),
            "eos_id": int(llama_cpp.llama_vocab_eos(runner.vocab)),
            "settings": {
                "decoding": "greedy argmax of raw logits (no sampler: no temperature, top-k/p, penalties)",
                "tie_break": "lowest token id",
                "tokenize": "llama_tokenize(add_special=true, parse_special=false): BOS iff add_bos",
                "n_gen": 200 if m["kind"] == "stories" else args.n_gen,
                "stop": "never" if m["kind"] == "stories" else "after an end-of-generation token (included)",
                "n_ctx": args.n_ctx,
                "n_batch": 512,
                "n_ubatch": 512,
                "n_threads": args.threads,
                "n_threads_batch": args.threads,
                "check_n_threads": args.check_threads,
                "prompt_eval": "one batch, logits of the last position only; then one token per decode",
                "flash_attn": "enabled (llama.cpp's default 'auto' resolves to enabled on CPU; checked: "
                              "llama-completion -fa auto and -fa on give the same text, -fa off differs)",
                "kv_cache_type": "f16",
                "logit_values": "float32, shortest round-trip decimal",
                "min_margin_required": None if m["kind"] == "stories" else args.min_margin,
            },
        }
        doc = {"header": header, "prompts": prompts}
        if rejected:
            doc["rejected_candidates"] = rejected
        out = args.out_dir / f"{stem}.greedy.json"
        with open(out, "w", encoding="utf-8") as f:
            f.write(jsonfmt.dumps(doc))
        print(f"  wrote {out}", flush=True)
        del runner


if __name__ == "__main__":
    main()
