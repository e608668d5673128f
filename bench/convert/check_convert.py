#!/usr/bin/env python3
"""Does llama.cpp load what `dino convert` writes, and agree with Dino on it?

Run after `bench/llamacpp/build.sh`, with `source bench/llamacpp/env.sh`:

    python3 bench/convert/check_convert.py            # makes the fixtures, then compares

1. `cargo run --release -p dino-engine --example hf_fixtures -- DIR` builds Hugging Face checkpoint directories from SmolLM2-135M-Instruct
   Q4_1 and Gemma-3-270M Q4_K_M (weights dequantized to F16, Q/K un-permuted for llama, 1 taken
   off Gemma's norms; tokenizer.json rebuilt from the GGUF vocab: byte-level BPE for SmolLM2,
   byte-fallback BPE for Gemma), converts them with Dino's converter (`--type auto` = F16), and records
   Dino's token ids, last-position logits and greedy 32-token continuation of each prompt
   (`--no-repack`, so Dino keeps llama.cpp's float order).
2. llama.cpp (llama-cpp-python 0.3.36) loads the converted GGUF, tokenizes each prompt, evaluates
   it in one batch (flash attention on, as its CLI's `auto` does on the CPU) and decodes 32 tokens
   greedily (raw argmax, no sampler chain).
3. Prints, per prompt: whether the prompt tokens agree, max |logit diff| over the whole vocabulary
   at the last prompt position, and how many of the 32 greedy tokens agree.
Exits non-zero if a prompt tokenizes differently, logits differ by more than --max-diff, or the
continuations part.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

try:
    import llama_cpp
    from llama_cpp import Llama
except ImportError as e:  # pragma: no cover
    sys.exit(f"cannot import llama_cpp ({e}); run bench/llamacpp/build.sh and `source bench/llamacpp/env.sh`")

REPO = pathlib.Path(__file__).resolve().parent.parent.parent


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", default=os.environ.get("DINO_HF_FIXTURES", "/tmp/dino-hf-fixtures"))
    ap.add_argument("--no-make", action="store_true", help="reuse existing fixtures")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-diff", type=float, default=0.1)
    a = ap.parse_args()
    fx = pathlib.Path(a.fixtures)
    if not a.no_make:
        subprocess.run(
            ["cargo", "run", "--release", "-p", "dino-engine", "--example", "hf_fixtures", "--",
             str(fx)],
            cwd=REPO, check=True)
    ok = True
    for name in ["smollm2", "gemma3"]:
        ok &= check(fx, name, a)
    print("OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


def check(fx, name, a):
    data = json.loads((fx / f"dino_results_{name}.json").read_text())
    gguf, dino = pathlib.Path(data["gguf"]), data["results"]
    llm = Llama(model_path=str(gguf), n_ctx=512, n_batch=512, n_ubatch=512, n_threads=a.threads,
                n_threads_batch=a.threads, logits_all=False, flash_attn=True, verbose=False)
    n_vocab = llm.n_vocab()
    print(f"\nllama.cpp loaded {gguf.name}: n_vocab {n_vocab}, {llm.metadata.get('general.architecture')}, "
          f"file type {llm.metadata.get('general.file_type')}")

    def last_logits():
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy()

    ok = True
    print(f"{'prompt':<44} {'tokens':>7} {'max|dlogit|':>12} {'greedy 32':>10}")
    for r in dino:
        prompt = r["prompt"]
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        same_ids = ids == r["prompt_ids"]
        llm.reset()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)
        llm.eval(r["prompt_ids"])
        first = last_logits()
        diff = float(np.max(np.abs(first - np.array(r["last_logits"], dtype=np.float32))))
        gen, logits = [], first
        for _ in range(len(r["generated_ids"])):
            tok = int(np.argmax(logits))
            gen.append(tok)
            llm.eval([tok])
            logits = last_logits()
        same = next((i for i, (x, y) in enumerate(zip(gen, r["generated_ids"])) if x != y), len(gen))
        print(f"{prompt[:42]!r:<44} {'same' if same_ids else 'DIFF':>7} {diff:>12.6f} {same:>7}/{len(gen)}")
        if not same_ids:
            print(f"  llama.cpp ids {ids}\n  dino ids      {r['prompt_ids']}")
        if same < len(gen):
            print(f"  llama.cpp {gen}\n  dino      {r['generated_ids']}")
        ok &= same_ids and diff <= a.max_diff and same == len(gen)
    del llm
    return ok


if __name__ == "__main__":
    main()
