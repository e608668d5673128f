#!/usr/bin/env python3
"""Collects the llama-perplexity logs written by run_perplexity.sh into
crates/dino-testutil/data/reference/perplexity.json, adding how llama.cpp tokenizes the text.

    source bench/llamacpp/env.sh
    bench/llamacpp/run_perplexity.sh            # ~15 min on 2 cores, logs in $DINO_PEER_DIR/ppl-logs
    python3 bench/llamacpp/parse_perplexity.py  # [LOG_DIR]
"""
import json
import os
import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import jsonfmt  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
OUT = REPO / "crates/dino-testutil/data/reference/perplexity.json"
PEER = pathlib.Path(os.environ.get("DINO_PEER_DIR", pathlib.Path.home() / ".cache/dino-peer"))
LOGS = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else PEER / "ppl-logs"
STEMS = ["SmolLM2-135M-Instruct.Q4_1", "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M", "gemma-3-270m-Q4_K_M"]
N_CTX = 512


def parse_log(path: pathlib.Path) -> dict:
    text = path.read_text(errors="replace")
    cmd = re.search(r"^# cmd: (.*)$", text, re.M).group(1).strip()
    m = re.search(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+), batch_size=(\d+), n_seq=(\d+)", text)
    fin = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", text)
    chunks = [(int(i), v) for i, v in re.findall(r"\[(\d+)\]([0-9.]+),", text)]
    assert [i for i, _ in chunks] == list(range(1, len(chunks) + 1)), path
    n_chunks = int(m.group(1))
    ctx = int(m.group(2))
    return {
        "command": cmd,
        "log_lines": [l.split(" I ", 1)[-1] for l in text.splitlines()
                      if "calculating perplexity over" in l or "Final estimate" in l or "system_info" in l],
        "n_chunks": n_chunks,
        "n_ctx": ctx,
        "batch_size": int(m.group(3)),
        "n_seq": int(m.group(4)),
        "scored_tokens": n_chunks * (ctx - ctx // 2 - 1),
        "ppl": fin.group(1),
        "ppl_error": fin.group(2),
        "ppl_f64": float(fin.group(1)),
        "ppl_error_f64": float(fin.group(2)),
        "running_ppl_per_chunk": [v for _, v in chunks],
    }


def tokenization(model_path: pathlib.Path, text_path: pathlib.Path) -> dict:
    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(model_path=str(model_path), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    data = text_path.read_bytes()
    if data.endswith(b"\n"):
        data = data[:-1]  # common/arg.cpp `-f`: one trailing '\n' is dropped
    # common_tokenize(ctx, text, add_special=true, parse_special=false), as perplexity() does
    ids = llm.tokenize(data, add_bos=True, special=False)
    n = len(ids)
    return {
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "bos_id": int(llama_cpp.llama_vocab_bos(vocab)),
        "n_tokens": n,
        "n_chunks_max_at_n_ctx_512": n // N_CTX,
        "first_16_ids": ids[:16],
        "last_8_ids": ids[-8:],
        "chunk_starts_ids_first_4": [ids[i * N_CTX:i * N_CTX + 4] for i in range(4)],
    }


def main():
    text_path = pathlib.Path("/work/shared/text/hamlet.txt")
    models_dir = pathlib.Path(os.environ.get("DINO_MODELS", pathlib.Path.home() / ".cache/dino-models"))
    out = {
        "header": {
            "generator": "bench/llamacpp/run_perplexity.sh + parse_perplexity.py",
            "llama_cpp_python": "0.3.36",
            "llama_cpp_commit": "0c1e57098bba43ac29e6e3b677cdceebdd22334f",
            "text": "shared/text/hamlet.txt",
            "text_bytes": text_path.stat().st_size,
            "defaults": "llama-perplexity defaults: n_batch 2048 -> 4 chunks per decode (n_seq 4), n_ubatch 512, "
                        "KV cache f16, flash attention auto (enabled on CPU)",
            "notes": "ppl and ppl_error are the strings printed by llama.cpp (%.4lf and %.5lf); "
                     "see bench/llamacpp/PERPLEXITY.md for the algorithm",
        },
        "models": {},
    }
    for stem in STEMS:
        entry = {"model_file": f"{stem}.gguf"}
        entry["tokenization"] = tokenization(models_dir / f"{stem}.gguf", text_path)
        for mode in ("chunks4", "full"):
            log = LOGS / f"{stem}.{mode}.log"
            if log.exists() and "Final estimate" in log.read_text(errors="replace"):
                entry[mode] = parse_log(log)
        out["models"][stem] = entry
        assert entry.get("full", {}).get("n_chunks", entry["tokenization"]["n_chunks_max_at_n_ctx_512"]) == \
            entry["tokenization"]["n_chunks_max_at_n_ctx_512"]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w") as f:
        f.write(jsonfmt.dumps(out))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
