#!/usr/bin/env python3
"""Quantized KV cache: Dino vs llama.cpp, same files, same machine, one run (see README.md).

For each model and each KV cache type (keys and values alike: f16, q8_0, q4_0):
  1. perplexity on hamlet.txt at -c 512 by `dino perplexity -ctk T -ctv T` and by
     `llama-perplexity -fa on -ctk T -ctv T`, and the cache's bytes per token in each;
  2. decode speed at a long context: `dino bench -p 0 -n GEN -d DEPTH` against
     `llama-bench -p 0 -n GEN -d DEPTH -fa on`, both with -ctk T -ctv T, interleaved
     (Dino, llama.cpp, next type, ...) for several rounds; medians of the rounds' means.
Other processes' CPU use is sampled before each speed run and reported.
The table goes to stdout and bench/results/kv-<models>-<date>.md.
"""

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

here = Path(__file__).resolve().parent
repo = here.parent.parent


def log(msg: str) -> None:
    print(f"[bench/kv] {msg}", file=sys.stderr, flush=True)


def _stat() -> tuple[int, int]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v[:8]), v[3] + (v[4] if len(v) > 4 else 0)


def cpu_busy(seconds: float = 0.5) -> float:
    """CPUs kept busy by all processes over `seconds` (nothing of ours runs meanwhile)."""
    t0, i0 = _stat()
    time.sleep(seconds)
    t1, i1 = _stat()
    return round((1 - (i1 - i0) / max(t1 - t0, 1)) * (os.cpu_count() or 1), 2)


def wait_quiet(max_wait: float, threshold: float = 0.3) -> float:
    t0 = time.time()
    busy = cpu_busy()
    said = False
    while busy >= threshold and time.time() - t0 < max_wait:
        if not said:
            log(f"other processes keep {busy:.1f} CPUs busy: waiting up to {max_wait:.0f} s")
            said = True
        time.sleep(2.5)
        busy = cpu_busy()
    return busy


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def dino_ppl(dino: Path, model: Path, text: Path, t: str, chunks: str, threads: int):
    ch = [] if chunks == "all" else ["--chunks", chunks]
    r = run([dino, "perplexity", "-m", model, "-f", text, "-c", "512", "-t", str(threads),
             "-ctk", t, "-ctv", t] + ch)
    m = re.search(r"PPL = ([0-9.]+) \+/- ([0-9.]+)", r.stdout)
    n = re.search(r"(\d+) chunks of 512", r.stderr)
    if not m:
        sys.exit(f"dino perplexity failed:\n{r.stderr[-2000:]}")
    return float(m.group(1)), float(m.group(2)), int(n.group(1)) if n else None


def llama_ppl(model: Path, text: Path, t: str, chunks: str, threads: int):
    ch = [] if chunks == "all" else ["--chunks", chunks]
    r = run(["llama-perplexity", "-m", model, "-f", text, "-c", "512", "-t", str(threads),
             "-fa", "on", "-ctk", t, "-ctv", t, "-lv", "4"] + ch)
    out = r.stdout + r.stderr
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", out)
    # "size = 23.91 MiB (512 cells, 30 layers, 4/4 seqs)": llama-perplexity runs n_batch / n_ctx
    # sequences side by side, each with its own cells.
    kv = re.search(r"llama_kv_cache: size = +([0-9.]+) MiB \( *(\d+) cells, +\d+ layers, +(\d+)/\d+ seqs", out)
    rot = re.search(r"attn_rot_k = (\d)", out)
    if not m:
        sys.exit(f"llama-perplexity failed:\n{out[-2000:]}")
    per_tok = float(kv.group(1)) * 1048576 / (int(kv.group(2)) * int(kv.group(3))) if kv else None
    return float(m.group(1)), float(m.group(2)), per_tok, rot.group(1) if rot else "?"


def dino_bench(dino: Path, model: Path, t: str, depth: int, gen: int, threads: int, reps: int):
    r = run([dino, "bench", "-m", model, "-p", "0", "-n", str(gen), "-d", str(depth),
             "-t", str(threads), "-r", str(reps), "-ctk", t, "-ctv", t, "-o", "jsonl"])
    rows = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    if not rows:
        sys.exit(f"dino bench failed:\n{r.stderr[-2000:]}")
    return rows[0]["avg_ts"], rows[0]["dino_kv_cache_bytes"]


def llama_bench(model: Path, t: str, depth: int, gen: int, threads: int, reps: int):
    r = run(["llama-bench", "-m", model, "-p", "0", "-n", str(gen), "-d", str(depth),
             "-t", str(threads), "-r", str(reps), "-fa", "on", "-ctk", t, "-ctv", t,
             "-o", "jsonl"])
    rows = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    if not rows:
        sys.exit(f"llama-bench failed:\n{r.stderr[-2000:]}")
    return rows[0]["avg_ts"]


def pct(x: float, base: float) -> str:
    return f"{100 * (x - base) / base:+.2f} %"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2,qwen05", help="catalog names (dino pull --list)")
    ap.add_argument("--chunks", default="smollm2=all,qwen05=16",
                    help="perplexity chunks per model: NAME=N|all,... (default for others: all)")
    ap.add_argument("--types", default="f16,q8_0,q4_0")
    ap.add_argument("--depth", type=int, default=2048)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3, help="repetitions inside each bench run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the speed runs")
    ap.add_argument("--quiet-wait", type=float, default=120,
                    help="seconds to wait for other processes to go quiet before each speed run")
    ap.add_argument("--ppl-threads", type=int, default=None,
                    help="threads of the perplexity runs (default: --threads; results do not depend on it)")
    ap.add_argument("--ppl-cache", type=Path, default=None,
                    help="JSON file: perplexities are read from it when it exists, else written to it")
    ap.add_argument("--no-ppl", action="store_true")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()

    target = Path(os.environ.get("CARGO_TARGET_DIR", repo / "target")) / "release"
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "dino-cli"], cwd=repo, check=True)
    dino = target / "dino"
    for tool in ["llama-perplexity", "llama-bench"]:
        if run(["which", tool]).returncode != 0:
            sys.exit(f"bench/kv: no {tool}: run bench/llamacpp/build.sh and source bench/llamacpp/env.sh")
    text = repo.parent / "shared" / "text" / "hamlet.txt"
    if not text.exists():
        text = Path(run([dino, "pull", "hamlet", "-q"]).stdout.strip())
    models = a.models.split(",")
    chunks = dict(kv.split("=") for kv in a.chunks.split(",") if kv)
    types = a.types.split(",")
    paths = {m: Path(run([dino, "pull", m, "-q"]).stdout.strip()) for m in models}

    ppl = {}
    pt = a.ppl_threads or a.threads
    if a.ppl_cache and a.ppl_cache.exists():
        ppl = {tuple(k.split("/")): v for k, v in json.loads(a.ppl_cache.read_text()).items()}
        log(f"perplexities from {a.ppl_cache}")
    elif not a.no_ppl:
        for m in models:
            for t in types:
                c = chunks.get(m, "all")
                log(f"{m} {t}: perplexity ({c} chunks)")
                ppl[m, t] = (dino_ppl(dino, paths[m], text, t, c, pt),
                             llama_ppl(paths[m], text, t, c, pt))
        if a.ppl_cache:
            a.ppl_cache.write_text(json.dumps({f"{m}/{t}": v for (m, t), v in ppl.items()}))

    speed = {}
    busy = []
    if not a.no_speed:
        for rnd in range(a.rounds):
            for m in models:
                for t in types:
                    b = wait_quiet(a.quiet_wait)
                    busy.append(b)
                    log(f"round {rnd + 1}/{a.rounds}: {m} {t}: tg{a.gen} @ d{a.depth} (others busy {b:.2f} CPUs)")
                    d, kvb = dino_bench(dino, paths[m], t, a.depth, a.gen, a.threads, a.reps)
                    b2 = cpu_busy(0.3)
                    busy.append(b2)
                    l = llama_bench(paths[m], t, a.depth, a.gen, a.threads, a.reps)
                    s = speed.setdefault((m, t), {"dino": [], "llama": [], "kv": kvb})
                    s["dino"].append(d)
                    s["llama"].append(l)

    date = datetime.date.today().isoformat()
    commit = run(["git", "rev-parse", "--short", "HEAD"], cwd=repo).stdout.strip()
    dirty = "+" if run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo).stdout.strip() else ""
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    lines = [f"# Quantized KV cache: Dino vs llama.cpp ({', '.join(models)}, {date})", ""]
    lines.append(f"Commit {commit}{dirty} (+: uncommitted changes); llama.cpp from llama-cpp-python "
                 f"{os.environ.get('DINO_PEER_VERSION', '?')}; {cpu}, {os.cpu_count()} CPUs, "
                 f"{a.threads} threads everywhere. Keys and values of the same type in each row.")
    lines.append("")
    if ppl:
        lines.append("## Perplexity (hamlet.txt, -c 512)")
        lines.append("")
        lines.append("Dino: `dino perplexity -ctk T -ctv T` (default kernels). llama.cpp: `llama-perplexity "
                     "-fa on -ctk T -ctv T` (with a quantized cache it rotates Q, K and V by a Walsh-Hadamard "
                     "matrix, `attn_rot_k/v`; Dino does the same). Bytes per token: every layer's keys and "
                     "values for one position.")
        lines.append("")
        lines.append("| model | chunks | KV type | bytes/token Dino | bytes/token llama.cpp | PPL Dino | vs f16 | "
                     "PPL llama.cpp | vs f16 | Dino / llama.cpp |")
        lines.append("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for m in models:
            base = ppl.get((m, "f16"))
            for t in types:
                if (m, t) not in ppl:
                    continue
                (dp, de, dn), (lp, le, lb, rot) = ppl[m, t]
                shape_bytes = None
                kv = run([dino, "bench", "-m", paths[m], "-p", "0", "-n", "16", "-r", "1", "--no-warmup",
                          "-t", str(a.threads), "-ctk", t, "-ctv", t, "-o", "jsonl"]).stdout
                for l in kv.splitlines():
                    if l.startswith("{"):
                        shape_bytes = json.loads(l)["dino_kv_cache_bytes"] / 16
                dv = pct(dp, base[0][0]) if base else "–"
                lv = pct(lp, base[1][0]) if base else "–"
                lines.append(
                    f"| {m} | {dn or chunks.get(m, 'all')} | {t} | {shape_bytes:.0f} | "
                    f"{lb:.0f} | {dp:.4f} ± {de:.4f} | {dv} | {lp:.4f} ± {le:.4f} | {lv} | {dp / lp:.4f} |")
        lines.append("")
    if speed:
        lines.append(f"## Decode at depth {a.depth} (tg{a.gen} @ d{a.depth}, tokens/s)")
        lines.append("")
        lines.append(f"`dino bench -p 0 -n {a.gen} -d {a.depth} -ctk T -ctv T -r {a.reps}` against "
                     f"`llama-bench -p 0 -n {a.gen} -d {a.depth} -fa on -ctk T -ctv T -r {a.reps}`, "
                     f"interleaved, {a.rounds} rounds; median of the rounds' means (min–max). "
                     f"KV cache: Dino's, for the test's {a.depth + a.gen} positions.")
        lines.append("")
        lines.append("| model | KV type | KV cache MiB | Dino t/s | llama.cpp t/s | Dino / llama.cpp | "
                     "Dino vs its f16 | llama.cpp vs its f16 |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
        for m in models:
            base = speed.get((m, "f16"))
            for t in types:
                s = speed[m, t]
                dm, lm = statistics.median(s["dino"]), statistics.median(s["llama"])
                rng = lambda v: f"{min(v):.1f}–{max(v):.1f}"
                bd = pct(dm, statistics.median(base["dino"])) if base else "–"
                bl = pct(lm, statistics.median(base["llama"])) if base else "–"
                lines.append(
                    f"| {m} | {t} | {s['kv'] / 1048576:.1f} | {dm:.2f} ({rng(s['dino'])}) | "
                    f"{lm:.2f} ({rng(s['llama'])}) | {dm / lm:.3f} | {bd} | {bl} |")
        lines.append("")
        lines.append(f"Other processes' CPU use sampled before each run: median {statistics.median(busy):.2f}, "
                     f"max {max(busy):.2f} CPUs of {os.cpu_count()}.")
        lines.append("")
    out = "\n".join(lines)
    print(out)
    res = repo / "bench" / "results" / f"kv-{'-'.join(models)}-{date}.md"
    res.write_text(out)
    log(f"wrote {res}")


if __name__ == "__main__":
    main()
