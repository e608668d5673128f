#!/usr/bin/env python3
"""llama.cpp reference logits for the random-weight models of the families without a real model here.

Run after `bench/llamacpp/build.sh` with `source bench/llamacpp/env.sh`, from the repository root:

    CARGO_TARGET_DIR=... python3 bench/llamacpp/make_arch_reference.py            # builds and runs the writer
    python3 bench/llamacpp/make_arch_reference.py --models-dir DIR                 # files already written by
        cargo run -p dino-testutil --example write_arch_models -- DIR

Writes crates/dino-testutil/data/reference/arch/<name>.json for every model of
`dino_testutil::random_model::arch_test_models` except the llama.cpp-only twins (`*.twin*`).

The GGUFs (F32, written by Dino's test utility, see DIR/manifest.json) are evaluated by llama-cpp-python on one fixed
64-token prompt (ids from an LCG in [3, n_vocab), no tokenizer), as one batch (n_batch = n_ubatch = 64), one thread,
flash attention on (what llama.cpp's CLI default `auto` resolves to on CPU), F16 KV cache, logits for every position.
Full logit rows are stored for a few positions, rounded to 7 significant digits (|error| <= 5e-7 relative, far below
the 1e-3 test bound).

Checks recorded in each file (and printed):
- the same prompt evaluated one token at a time, and with 2 threads: max |diff| against the batch rows;
- an independent numpy forward of the same weights (float64 with K and V rounded to f16, Q kept f32, as llama.cpp's
  batched FA path does: its tiled GEMM path converts K/V tiles to f32, while the one-token path rounds Q to f16 for
  the f16 dot, which is why one-by-one rows differ from batch rows by up to ~1e-2 on these touchy random models):
  max |diff| against llama.cpp, which catches a file llama.cpp reads differently from what the writer meant;
- MoE: the smallest router-logit gap between the k-th and (k+1)-th expert over all tokens and layers (numpy), so a
  ~1e-5 difference in the router input cannot flip the expert choice.

Phi-3 "long rope" (`phi3-longrope`: global `rope_factors_short/long.weight`, `rope.scaling.original_context_length`
512, `rope.scaling.attn_factor`): llama.cpp picks the factor set by its context size (`llama_model::get_rope_factors`:
long when n_ctx_seq, n_ctx padded to 256, exceeds original_context_length), so these rows are made at two context
sizes: n_ctx 256 (short factors; `logits`/`decode_logits`) and n_ctx 1024 (long factors; `more_contexts`), each
checked against the numpy forward with the factors it should have used.

Mistral with a sliding window: llama.cpp 0.3.36's `llama` architecture ignores windows. Dino reads
`llama.attention.sliding_window`; the reference comes from the same weights written as `granite_swa` (the llama graph
plus logit_scale 1, an all-SWA layer pattern and attention sinks of -1e30, which add exp(-1e30 - max) = 0 to the
softmax). The twin is validated here: with window 64 (>= the prompt) its logits must equal llama.cpp's `llama` logits
on the Dino file (whose window key llama.cpp ignores).
"""
import argparse
import math
import pathlib
import subprocess
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import jsonfmt  # noqa: E402

try:
    import gguf
    import llama_cpp
    from llama_cpp import Llama
except ImportError as e:  # pragma: no cover
    sys.exit(f"cannot import llama_cpp/gguf ({e}); run build.sh and `source bench/llamacpp/env.sh` first")

from make_reference import peer_version  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
OUT_DIR = REPO / "crates/dino-testutil/data/reference/arch"
N_PROMPT = 64
POSITIONS = [0, 7, 15, 16, 31, 47, 63]
N_CTX = 256
LONG_ROPE_N_CTX = 1024  # > the phi3-longrope original context (512): llama.cpp's long factors
NEOX = {"qwen3", "qwen3moe", "phi3"}


def prompt_tokens(n_vocab: int, n: int = N_PROMPT, seed: int = 20261124):
    """A fixed pseudo-random prompt in [3, n_vocab): glibc-style LCG, independent of numpy versions."""
    x, out = seed, []
    for _ in range(n):
        x = (1103515245 * x + 12345) % (1 << 31)
        out.append(3 + (x >> 8) % (n_vocab - 3))
    return out


def f7(x) -> float:
    return float(f"{float(x):.7g}")


# ---------------------------------------------------------------------------------------------------------------
# llama.cpp


def lcpp_logits(path, toks, threads=1, one_by_one=False, n_ctx=N_CTX):
    llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=N_PROMPT, n_ubatch=N_PROMPT, n_threads=threads,
                n_threads_batch=threads, logits_all=True, flash_attn=True, vocab_only=False, verbose=False)
    assert llm.n_ctx() == n_ctx, f"llama.cpp context {llm.n_ctx()} != {n_ctx}"
    if one_by_one:
        for t in toks:
            llm.eval([t])
    else:
        llm.eval(toks)
    rows = np.array(llm.scores[:len(toks)], dtype=np.float32)
    last = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()
    assert np.array_equal(rows[-1], last), "scores[-1] != llama_get_logits_ith(-1)"
    del llm
    return rows


# ---------------------------------------------------------------------------------------------------------------
# numpy forward (independent check; float64, K/V rounded to f16 like llama.cpp's batched FA path)


def f16(x):
    return x.astype(np.float16).astype(np.float64)


def rms(x, w, eps=1e-5):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope(x, n_rot, neox, base=10000.0, factors=None, attn_factor=1.0):  # x [T, H, hd]
    T = x.shape[0]
    inv = base ** (-np.arange(0, n_rot, 2) / n_rot)
    if factors is not None:  # per-pair frequency divisors (ggml_rope_ext's freq_factors)
        inv = inv / factors
    th = (np.arange(T)[:, None] * inv)[:, None, :]
    c, s = np.cos(th) * attn_factor, np.sin(th) * attn_factor
    out = x.copy()
    if neox:
        a, b = x[..., :n_rot // 2], x[..., n_rot // 2:n_rot]
        out[..., :n_rot // 2], out[..., n_rot // 2:n_rot] = a * c - b * s, a * s + b * c
    else:
        a, b = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        out[..., 0:n_rot:2], out[..., 1:n_rot:2] = a * c - b * s, a * s + b * c
    return out


def silu(x):
    return x / (1 + np.exp(-x))


def gguf_scalar(r, key, default=None):
    f = r.fields.get(key)
    return default if f is None else f.parts[f.data[0]][0].item()


def numpy_forward(path, arch, sh, toks, n_swa, n_ctx=N_CTX):
    r = gguf.GGUFReader(str(path))
    W = {t.name: np.array(t.data, dtype=np.float64) for t in r.tensors}  # numpy shape = reversed ggml ne
    # Phi-3 long rope, read from the file: long factors when the padded context exceeds the original one.
    factors, attn_factor = None, gguf_scalar(r, f"{arch}.rope.scaling.attn_factor", 1.0)
    if "rope_factors_short.weight" in W:
        n_ctx_orig = gguf_scalar(r, f"{arch}.rope.scaling.original_context_length",
                                 gguf_scalar(r, f"{arch}.context_length"))
        n_ctx_seq = -(-n_ctx // 256) * 256
        factors = W["rope_factors_long.weight" if n_ctx_seq > n_ctx_orig else "rope_factors_short.weight"]
    T, H, Hkv, hd, n_rot = len(toks), sh["n_head"], sh["n_head_kv"], sh["head_dim"], sh["n_rot"]
    q_w, kv_w = H * hd, Hkv * hd
    x = W["token_embd.weight"][toks]
    pos = np.arange(T)
    mask = pos[None, :] <= pos[:, None]
    if n_swa > 0:
        mask &= pos[:, None] - pos[None, :] < n_swa
    margins = []
    for il in range(sh["n_layer"]):
        p = lambda n: W[f"blk.{il}.{n}"]  # noqa: E731
        h = rms(x, p("attn_norm.weight"))
        if sh["fused_qkv"]:
            qkv = h @ p("attn_qkv.weight").T
            q, k, v = qkv[:, :q_w], qkv[:, q_w:q_w + kv_w], qkv[:, q_w + kv_w:]
        else:
            q, k, v = h @ p("attn_q.weight").T, h @ p("attn_k.weight").T, h @ p("attn_v.weight").T
        if sh["qkv_bias"]:
            q, k, v = q + p("attn_q.bias"), k + p("attn_k.bias"), v + p("attn_v.bias")
        q, k, v = q.reshape(T, H, hd), k.reshape(T, Hkv, hd), v.reshape(T, Hkv, hd)
        if sh["qk_norm"]:
            q, k = rms(q, p("attn_q_norm.weight")), rms(k, p("attn_k_norm.weight"))
        q = rope(q, n_rot, arch in NEOX, factors=factors, attn_factor=attn_factor)
        k = rope(k, n_rot, arch in NEOX, factors=factors, attn_factor=attn_factor)
        scale = 1 / math.sqrt(hd)
        if arch == "phi3":  # Q pre-scaled in f32, kq_scale 1
            q, scale = q * scale, 1.0
        k, v = f16(k), f16(v)
        att = np.zeros((T, H, hd))
        for hh in range(H):
            kh = hh // (H // Hkv)
            s = (q[:, hh] @ k[:, kh].T) * scale
            s = np.where(mask, s, -np.inf)
            s = np.exp(s - s.max(-1, keepdims=True))
            att[:, hh] = (s / s.sum(-1, keepdims=True)) @ v[:, kh]
        x = x + att.reshape(T, q_w) @ p("attn_output.weight").T
        h = rms(x, p("ffn_norm.weight"))
        if sh["n_expert"] > 0:
            k_used = sh["n_expert_used"]
            logits = h @ p("ffn_gate_inp.weight").T  # [T, n_expert]
            pr = np.exp(logits - logits.max(-1, keepdims=True))
            pr /= pr.sum(-1, keepdims=True)
            y = np.zeros_like(x)
            for t in range(T):
                order = np.argsort(-logits[t], kind="stable")
                srt = logits[t][order]
                margins.append(float(srt[k_used - 1] - srt[k_used]))
                sel = order[:k_used]
                w = pr[t][sel] / max(pr[t][sel].sum(), 6.103515625e-5)
                for j, e in enumerate(sel):
                    g = p("ffn_gate_exps.weight")[e] @ h[t]
                    u = p("ffn_up_exps.weight")[e] @ h[t]
                    y[t] += w[j] * (p("ffn_down_exps.weight")[e] @ (silu(g) * u))
            x = x + y
        elif sh["fused_gate_up"]:
            u = h @ p("ffn_up.weight").T
            n_ff = sh["n_ff"]
            x = x + (silu(u[:, :n_ff]) * u[:, n_ff:]) @ p("ffn_down.weight").T
        else:
            f = silu(h @ p("ffn_gate.weight").T) * (h @ p("ffn_up.weight").T)
            x = x + f @ p("ffn_down.weight").T
    out = W["output.weight"] if "output.weight" in W else W["token_embd.weight"]
    return rms(x, W["output_norm.weight"]) @ out.T, (min(margins) if margins else None)


# ---------------------------------------------------------------------------------------------------------------


def maxdiff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def write_models(dir_: pathlib.Path, writer=None, extra=(), quiet=False):
    cmd = [str(writer)] if writer else ["cargo", "run", "-q", "-p", "dino-testutil", "--example", "write_arch_models", "--"]
    cmd += [str(dir_), *extra]
    if not quiet:
        print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL if quiet else None)


def search_seed(args):
    """Print the router gap of model NAME for a range of seeds (numpy only), to choose a seed for a MoE model."""
    import json
    d = args.work_dir / "seed-search"
    best = None
    for seed in range(args.seed_from | 1, (args.seed_from | 1) + 2 * args.seed_count, 2):  # the writer uses seed | 1
        write_models(d, args.writer, ["--only", args.search_seed, "--seed", str(seed)], quiet=True)
        m = json.loads((d / "manifest.json").read_text())["models"][args.search_seed]
        toks = prompt_tokens(m["shape"]["n_vocab"])
        _, gap = numpy_forward(d / m["file"], m["arch"], m["shape"], toks, m["shape"]["n_swa"])
        print(f"{args.search_seed} seed {seed}: min router gap {gap:.5f}", flush=True)
        if best is None or gap > best[1]:
            best = (seed, gap)
    print(f"best: seed {best[0]} gap {best[1]:.5f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", type=pathlib.Path, help="GGUFs + manifest.json already written by write_arch_models")
    ap.add_argument("--work-dir", type=pathlib.Path, default=pathlib.Path("/tmp/dino-arch-models"),
                    help="where to write the GGUFs when --models-dir is not given")
    ap.add_argument("--only", action="append", help="model name(s) to run")
    ap.add_argument("--out-dir", type=pathlib.Path, default=OUT_DIR)
    ap.add_argument("--min-router-margin", type=float, default=1e-2)
    ap.add_argument("--writer", type=pathlib.Path, help="a built write_arch_models binary (default: cargo run)")
    ap.add_argument("--search-seed", metavar="NAME", help="only print NAME's router gap for --seed-count seeds")
    ap.add_argument("--seed-from", type=int, default=1)
    ap.add_argument("--seed-count", type=int, default=20)
    args = ap.parse_args()
    if args.search_seed:
        return search_seed(args)
    mdir = args.models_dir
    if mdir is None:
        mdir = args.work_dir
        write_models(mdir, args.writer)
    import json
    manifest = json.loads((mdir / "manifest.json").read_text())["models"]
    version = peer_version()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, m in manifest.items():
        if ".twin" in name or (args.only and name not in args.only):
            continue
        sh = m["shape"]
        path = mdir / m["file"]
        toks = prompt_tokens(sh["n_vocab"])
        n_swa = sh["n_swa"]
        checks = {}
        lcpp_file = None
        if n_swa > 0:
            # llama.cpp's `llama` ignores the window: reference from the granite_swa twin with the same weights.
            twin, twin64 = manifest[f"{name}.twin"], manifest[f"{name}.twin-w64"]
            assert twin["shape"]["n_swa"] == n_swa and twin64["shape"]["n_swa"] >= N_PROMPT
            ref_path = mdir / twin["file"]
            lcpp_file = {k: twin[k] for k in ("arch", "seed", "type", "sha256", "bytes")}
            full = lcpp_logits(path, toks)
            w64 = lcpp_logits(mdir / twin64["file"], toks)
            rows = lcpp_logits(ref_path, toks)
            checks["twin_window_64_vs_llama_arch_max_abs_diff"] = maxdiff(w64, full)
            checks["twin_window_vs_full_rows_before_window_max_abs_diff"] = maxdiff(rows[:n_swa], full[:n_swa])
            checks["twin_window_vs_full_rows_from_window_max_abs_diff"] = maxdiff(rows[n_swa:], full[n_swa:])
            print(f"{name}: twin w{twin64['shape']['n_swa']} vs llama arch {checks['twin_window_64_vs_llama_arch_max_abs_diff']:.3g}; "
                  f"w{n_swa} vs full: rows <{n_swa} {checks['twin_window_vs_full_rows_before_window_max_abs_diff']:.3g}, "
                  f"rows >={n_swa} {checks['twin_window_vs_full_rows_from_window_max_abs_diff']:.3g}", flush=True)
            assert checks["twin_window_64_vs_llama_arch_max_abs_diff"] <= 1e-5, "granite_swa twin is not the llama graph"
        else:
            ref_path = path
            rows = lcpp_logits(path, toks)
        seq = lcpp_logits(ref_path, toks, one_by_one=True)
        thr = lcpp_logits(ref_path, toks, threads=2)
        checks["one_by_one_vs_batch_max_abs_diff"] = maxdiff(seq, rows)
        checks["two_threads_vs_one_max_abs_diff"] = maxdiff(thr, rows)
        npy, margin = numpy_forward(path, m["arch"], sh, toks, n_swa)
        checks["numpy_forward_vs_llama_cpp_max_abs_diff"] = maxdiff(npy, rows)
        if margin is not None:
            checks["min_router_logit_gap_kth_vs_next"] = margin
        print(f"{name}: |logits| max {np.abs(rows).max():.3f}; one-by-one {checks['one_by_one_vs_batch_max_abs_diff']:.3g}, "
              f"2 threads {checks['two_threads_vs_one_max_abs_diff']:.3g}, numpy {checks['numpy_forward_vs_llama_cpp_max_abs_diff']:.3g}"
              + (f", min router gap {margin:.4f}" if margin is not None else ""), flush=True)
        if margin is not None and margin < args.min_router_margin:
            sys.exit(f"{name}: router gap {margin} < {args.min_router_margin}: choose another seed")
        more = []
        if sh.get("n_ctx_orig"):
            # Long rope: the same prompt with a context over the original one (llama.cpp's long factors).
            n_ctx = LONG_ROPE_N_CTX
            assert n_ctx > sh["n_ctx_orig"] >= N_CTX, "the two contexts must fall on either side of n_ctx_orig"
            lrows = lcpp_logits(path, toks, n_ctx=n_ctx)
            lseq = lcpp_logits(path, toks, one_by_one=True, n_ctx=n_ctx)
            lnpy, _ = numpy_forward(path, m["arch"], sh, toks, n_swa, n_ctx=n_ctx)
            short_npy_on_long, _ = numpy_forward(path, m["arch"], sh, toks, n_swa)
            c = {
                f"n_ctx_{n_ctx}_vs_{N_CTX}_max_abs_diff": maxdiff(lrows, rows),
                f"n_ctx_{n_ctx}_one_by_one_vs_batch_max_abs_diff": maxdiff(lseq, lrows),
                f"n_ctx_{n_ctx}_numpy_forward_vs_llama_cpp_max_abs_diff": maxdiff(lnpy, lrows),
                f"n_ctx_{n_ctx}_numpy_with_short_factors_vs_llama_cpp_max_abs_diff": maxdiff(short_npy_on_long, lrows),
            }
            checks.update(c)
            print(f"{name} n_ctx {n_ctx}: " + ", ".join(f"{k} {v:.3g}" for k, v in c.items()), flush=True)
            assert c[f"n_ctx_{n_ctx}_vs_{N_CTX}_max_abs_diff"] > 0.1, "the two contexts give the same logits"
            assert c[f"n_ctx_{n_ctx}_numpy_forward_vs_llama_cpp_max_abs_diff"] < 1e-3, "llama.cpp's long rope differs"
            more.append({
                "n_ctx": n_ctx,
                "logits": [[f7(x) for x in lrows[p]] for p in POSITIONS],
                "decode_logits": [[f7(x) for x in lseq[p]] for p in POSITIONS],
            })
        doc = {
            "generator": "bench/llamacpp/make_arch_reference.py",
            "name": name,
            "peer": version,
            "dino_file": {
                "arch": m["arch"],
                "seed": m["seed"],
                "type": m["type"],
                "sha256": m["sha256"],
                "bytes": m["bytes"],
                "shape": sh,
                "writer": "dino_testutil::random_model::write_random_model(Shape::arch_test(name), F32, seed)",
            },
        }
        if lcpp_file is not None:
            doc["llama_cpp_file"] = dict(lcpp_file, note=(
                "llama.cpp's `llama` ignores sliding windows; these are the same weights as granite_swa (logit_scale 1, "
                "every layer SWA, attn_sinks -1e30), i.e. the llama graph with a standard window "
                "(key at p0 visible from query p1 iff p1 - n_swa < p0 <= p1)"))
        doc["settings"] = {
            "n_ctx": N_CTX, "n_batch": N_PROMPT, "n_ubatch": N_PROMPT, "n_threads": 1, "flash_attn": True,
            "kv_cache_type": "f16", "logits_all": True,
            "prompt": "token ids from an LCG in [3, n_vocab), evaluated from position 0 as one batch",
            "logit_values": "rounded to 7 significant digits",
            "logits": "rows of the one-batch prompt evaluation at `positions`",
            "decode_logits": "the same rows when the prompt is evaluated one token per decode (llama.cpp's f16-Q path)",
        }
        if more:
            doc["settings"]["more_contexts"] = (
                "`logits` and `decode_logits` with the context n_ctx (llama.cpp picks Phi-3's long rope factors "
                "when n_ctx, padded to 256, exceeds rope.scaling.original_context_length); all else as above")
        doc["checks"] = checks
        doc["prompt"] = toks
        doc["positions"] = POSITIONS
        doc["logits"] = [[f7(x) for x in rows[p]] for p in POSITIONS]
        doc["decode_logits"] = [[f7(x) for x in seq[p]] for p in POSITIONS]
        if more:
            doc["more_contexts"] = more
        out = args.out_dir / f"{name}.json"
        out.write_text(jsonfmt.dumps(doc), encoding="utf-8")
        print(f"  wrote {out} ({out.stat().st_size // 1024} KB)", flush=True)


if __name__ == "__main__":
    main()
