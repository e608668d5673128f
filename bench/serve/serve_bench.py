#!/usr/bin/env python3
"""Dino's OpenAI-compatible server against llama.cpp's llama-server, same load, same run.

For each model both servers are started (on two ports, same file, same threads, same slots and
context per slot), each is warmed up, then for every concurrency level C the same closed-loop load
is sent to one engine and then the other (the order alternates from level to level): C clients,
each sending streaming `/v1/completions` requests one after another until the level's N requests
are done. Per request it records the time to the first text chunk (TTFT), the gaps between text
chunks, and the completion tokens the server reports in `usage`. Per level: aggregate generated
tokens/s (all completion tokens / wall time from the first request sent to the last one finished),
TTFT p50/p95 and per-token (inter-chunk) latency p50/p95 over all requests of the level.

See bench/serve/README.md. Run through bench/serve/run (it makes the venv with aiohttp).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[2]

MODELS = {
    "smollm2": {"file": "SmolLM2-135M-Instruct.Q4_1.gguf", "pull": "smollm2",
                "name": "SmolLM2-135M-Instruct Q4_1"},
    "qwen05": {"file": "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf", "pull": "qwen05",
               "name": "Qwen2.5-Coder-0.5B-Instruct Q4_K_M"},
}

# Plain-text openings that invite a long continuation, so that few requests end at EOS before
# max_tokens. Request i uses PROMPTS[i % len] behind a request number, which makes every prompt's
# first tokens unique: neither server can reuse a cached prefix from an earlier request (prefix
# reuse is a separate measurement).
PROMPTS = [
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "The history of the printing press begins in the fifteenth century, when",
    "Here is a detailed, step-by-step guide to baking sourdough bread at home. First,",
    "In the year 2150, humanity had finally reached the outer planets. The crew of the starship",
    "The mitochondria is often called the powerhouse of the cell because",
    "Dear diary, today was the strangest day of my life. It started when",
    "To understand how a compiler works, we first need to look at the lexer, which",
    "The old lighthouse keeper climbed the spiral stairs one last time and",
    "A good night's sleep matters for many reasons. Researchers have found that",
    "The detective looked at the broken window, then at the muddy footprints, and said",
    "Rivers shape the land over thousands of years. As water flows downhill, it",
    "My grandmother's kitchen always smelled of cinnamon and fresh bread. Every Sunday,",
    "The rules of chess are simple to learn but hard to master. Each player starts with",
    "When the power went out across the whole city, nobody expected that",
    "Photosynthesis is the process by which green plants turn sunlight into energy. It",
    "The little robot had never seen snow before. When the first flakes fell,",
]


# A long shared opening (~290 tokens) for --long-prompt: `shared` puts it first in every prompt, so a
# server that reuses cached prefixes computes only the rest; `unique` puts the request number before
# it, so the same amount of prompt has to be computed every time.
LONG_PREFIX = (
    "You are a careful storyteller who writes for readers of all ages. Your stories are vivid but simple: "
    "short sentences, concrete details, and a clear beginning, middle and end. You never use bad language, "
    "you avoid violence, and you always give the main character a problem to solve. The settings you like "
    "best are small towns, forests, the sea, old houses, and faraway planets. Your characters are kind but "
    "not perfect; they make mistakes and learn from them. You describe what the characters see, hear and "
    "smell, and you let the reader feel the weather. When you write dialogue, each speaker sounds "
    "different: children talk in short bursts, old people take their time, and robots are very polite. "
    "You like to end a story with a small surprise that makes the reader smile. You keep each story "
    "under five hundred words, and you give it a title that is no longer than five words. Before you "
    "begin, you think about who the story is for, what the main character wants, what stands in the way, "
    "and how the problem gets solved. You also remember that good stories have a rhythm: a calm opening, "
    "rising tension, a turning point, and a gentle landing. Now continue the story that begins below, "
    "in the same style, without repeating the opening.\n\n"
)


def make_prompt(i: int, mode: str) -> str:
    base = PROMPTS[i % len(PROMPTS)]
    if mode == "shared":
        return f"{LONG_PREFIX}({i}) {base}"
    if mode == "unique":
        return f"({i}) {LONG_PREFIX}{base}"
    return f"({i}) {base}"


def log(msg: str) -> None:
    print(f"[bench/serve] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- machine state

def _stat() -> tuple[int, int]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v[:8]), v[3] + (v[4] if len(v) > 4 else 0)


def cpu_busy(seconds: float = 0.5) -> float:
    """CPUs kept busy by all processes over `seconds` (the servers are idle meanwhile)."""
    t0, i0 = _stat()
    time.sleep(seconds)
    t1, i1 = _stat()
    return round((1 - (i1 - i0) / max(t1 - t0, 1)) * (os.cpu_count() or 1), 2)


def wait_quiet(max_wait: float, threshold: float) -> tuple[float, float]:
    t0 = time.time()
    busy = cpu_busy()
    said = False
    while busy >= threshold and time.time() - t0 < max_wait:
        if not said:
            log(f"other processes keep {busy:.1f} CPUs busy: waiting up to {max_wait:.0f} s for quiet")
            said = True
        time.sleep(2.5)
        busy = cpu_busy()
    return busy, round(time.time() - t0 - 0.5, 1)


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its threads."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def self_cpu_s() -> float:
    """This script's CPU seconds and its finished children's (the Rust load generator runs as one
    per level; the servers are children too, but none finishes during a level)."""
    cpu = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        cpu += ru.ru_utime + ru.ru_stime
    return cpu


class LoadMeter:
    """Over a level: CPUs used by the server under test, by this load generator, and by everything
    else (all busy CPU time from /proc/stat minus those two)."""

    def __init__(self, pid: int):
        self.pid = pid

    def __enter__(self):
        self.t0, self.s0 = time.monotonic(), _stat()
        self.p0, self.c0 = proc_cpu_s(self.pid), self_cpu_s()
        return self

    def __exit__(self, *exc):
        wall = max(time.monotonic() - self.t0, 1e-3)
        t1, i1 = _stat()
        total, idle = t1 - self.s0[0], i1 - self.s0[1]
        busy = (total - idle) / max(total, 1) * (os.cpu_count() or 1) * wall
        srv = proc_cpu_s(self.pid) - self.p0
        cli = self_cpu_s() - self.c0
        self.server_cpus = round(srv / wall, 2)
        self.client_cpus = round(cli / wall, 2)
        self.other_cpus = round(max(0.0, busy - srv - cli) / wall, 2)
        return False


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# ---------------------------------------------------------------- engines

def sh(cmd: list[str], **kw) -> str:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def build_dino(args) -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not args.no_build:
        log("cargo build --release -p dino-cli")
        subprocess.run(["cargo", "build", "--release", "-p", "dino-cli"], cwd=REPO, check=True)
    b = Path(args.dino) if args.dino else target / "release" / "dino"
    if not b.exists():
        sys.exit(f"bench/serve: no dino binary at {b}")
    return b


def build_probe(args) -> Path | None:
    """step_probe (crates/dino-engine/examples/step_probe.rs): the host-state check."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "dino-engine", "--example", "step_probe"],
                       cwd=REPO, check=True)
    b = target / "release" / "examples" / "step_probe"
    return b if b.exists() else None


def host_probe(probe: Path | None, model: Path, threads: int) -> dict | None:
    """One batched decode step of 1 and of 8 sequences at 56 cached tokens (median ms), in-process:
    what the host gives the engine right now, without HTTP or clients."""
    if probe is None:
        return None
    r = subprocess.run([str(probe), str(model), "56", str(threads)], capture_output=True, text=True,
                       env=dict(os.environ, NS="1,8", STEPS="64"))
    out = {}
    for line in r.stdout.splitlines():
        m = re.match(r"n\s+(\d+)\s+step\s+([\d.]+) ms", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    if "1" in out and "8" in out:
        out["x"] = round(8 * out["1"] / out["8"], 2)
    return out or None


def build_loadgen(args) -> Path:
    """The Rust load generator (crates/dino-server/examples/loadgen.rs)."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if args.loadgen:
        return Path(args.loadgen)
    if not args.no_build:
        log("cargo build --release -p dino-server --example loadgen")
        subprocess.run(["cargo", "build", "--release", "-p", "dino-server", "--example", "loadgen"],
                       cwd=REPO, check=True)
    b = target / "release" / "examples" / "loadgen"
    if not b.exists():
        sys.exit(f"bench/serve: no load generator at {b} (run without --no-build, or --client python)")
    return b


def build_llama_server(args) -> Path:
    if args.llama_server:
        return Path(args.llama_server)
    peer = Path(os.environ.get("DINO_PEER_DIR", Path.home() / ".cache" / "dino-peer"))
    exe = peer / "build" / "bin" / "llama-server"
    if exe.exists():
        return exe
    if args.no_build:
        sys.exit(f"bench/serve: no llama-server at {exe} (run without --no-build)")
    log("building llama.cpp's llama-server (bench/llamacpp/build.sh, then the llama-server target)")
    subprocess.run([str(REPO / "bench" / "llamacpp" / "build.sh")], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(peer / "build"), "-j", str(os.cpu_count() or 2),
                    "--target", "llama-server"], check=True)
    if not exe.exists():
        sys.exit(f"bench/serve: the build made no {exe}")
    return exe


def find_model(dino: Path, key: str) -> Path:
    m = MODELS[key]
    for d in (Path(os.environ.get("DINO_HOME", Path.home() / ".cache" / "dino")),
              Path(os.environ.get("DINO_MODELS", Path.home() / ".cache" / "dino-models"))):
        for p in (d / m["file"], d / "models" / m["file"]):
            if p.exists():
                return p
    log(f"{key}: dino pull {m['pull']}")
    out = sh([str(dino), "pull", m["pull"]])
    for line in reversed(out.splitlines()):
        p = Path(line.strip())
        if p.suffix == ".gguf" and p.exists():
            return p
    sys.exit(f"bench/serve: could not find or pull {m['file']}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, engine: str, cmd: list[str], port: int, logdir: Path, env=None):
        self.engine, self.cmd, self.port = engine, cmd, port
        self.url = f"http://127.0.0.1:{port}"
        self.logpath = logdir / f"{engine}-{port}.log"
        self.logf = open(self.logpath, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.logf.close()

    def tail(self, n=20) -> str:
        try:
            return "".join(open(self.logpath).readlines()[-n:])
        except OSError:
            return ""


async def wait_health(srv: Server, timeout: float) -> float:
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as s:
        while time.monotonic() - t0 < timeout:
            if srv.proc.poll() is not None:
                raise RuntimeError(f"{srv.engine} exited ({srv.proc.returncode}):\n{srv.tail()}")
            try:
                async with s.get(srv.url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{srv.engine}: /health not ready after {timeout} s:\n{srv.tail()}")


# ---------------------------------------------------------------- load

def request_body(prompt: str, args) -> dict:
    return {"model": args.model_id, "prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0,
            "seed": 1, "stream": True, "stream_options": {"include_usage": True}}


async def one_request(session: aiohttp.ClientSession, url: str, prompt: str, args) -> dict:
    body = request_body(prompt, args)
    t0 = time.perf_counter()
    times: list[float] = []
    usage = None
    finish = None
    text = []
    async with session.post(url + "/v1/completions", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.text())[:300]}")
        buf = b""
        async for chunk in r.content.iter_any():
            now = time.perf_counter()
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    continue
                ev = json.loads(data)
                if ev.get("usage"):
                    usage = ev["usage"]
                for c in ev.get("choices") or []:
                    if c.get("text"):
                        times.append(now)
                        text.append(c["text"])
                    if c.get("finish_reason"):
                        finish = c["finish_reason"]
    t1 = time.perf_counter()
    n_tok = usage.get("completion_tokens") if usage else None
    return {
        "t_start": t0, "t_end": t1,
        "ttft_ms": (times[0] - t0) * 1e3 if times else None,
        "gaps_ms": [(b - a) * 1e3 for a, b in zip(times, times[1:])],
        "chunks": len(times),
        "completion_tokens": n_tok if n_tok is not None else len(times),
        "tokens_from_usage": n_tok is not None,
        "prompt_tokens": usage.get("prompt_tokens") if usage else None,
        "finish_reason": finish,
        "text_head": "".join(text)[:60],
    }


async def run_level(url: str, clients: int, n_requests: int, first_index: int, args) -> dict:
    """Closed loop: `clients` workers take the next request index until n_requests are done."""
    if args.client == "rust":
        return await run_level_rust(url, clients, n_requests, first_index, args)
    next_i = iter(range(first_index, first_index + n_requests))
    results: list[dict] = []
    errors: list[str] = []
    # A fresh connection per request: llama-server closes kept-alive connections after a stream,
    # which aiohttp would otherwise reuse and fail on. Both engines are driven the same way.
    conn = aiohttp.TCPConnector(limit=clients + 4, force_close=True)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        async def worker():
            for i in next_i:
                prompt = make_prompt(i, args.long_prompt)
                try:
                    results.append(await one_request(session, url, prompt, args))
                except Exception as e:  # noqa: BLE001 - a failed request is recorded, not fatal
                    errors.append(f"{type(e).__name__}: {e}")
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        t1 = time.perf_counter()
    return {"wall_s": t1 - t0, "requests": results, "errors": errors}


async def run_level_rust(url: str, clients: int, n_requests: int, first_index: int, args) -> dict:
    """`run_level` through the Rust load generator: the same requests, the same records, a
    fraction of the CPU (it shares the machine with the server it measures)."""
    bodies = [request_body(make_prompt(i, args.long_prompt), args)
              for i in range(first_index, first_index + n_requests)]
    cfg = {"url": url, "path": "/v1/completions", "clients": clients, "timeout_s": args.timeout,
           "bodies": bodies}
    proc = await asyncio.create_subprocess_exec(
        str(args.loadgen_bin), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate(json.dumps(cfg).encode())
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed ({proc.returncode}): {err.decode()[-500:]}")
    return json.loads(out)


def pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(level: dict) -> dict:
    reqs = level["requests"]
    toks = sum(r["completion_tokens"] for r in reqs)
    ttft = [r["ttft_ms"] for r in reqs if r["ttft_ms"] is not None]
    gaps = [g for r in reqs for g in r["gaps_ms"]]
    # Mean time per output token after the first, per request (decode speed one client sees).
    tpot = [((r["t_end"] - r["t_start"]) * 1e3 - r["ttft_ms"]) / (r["completion_tokens"] - 1)
            for r in reqs if r["ttft_ms"] is not None and r["completion_tokens"] > 1]
    chunks = sum(r["chunks"] for r in reqs)
    return {
        "requests": len(reqs), "errors": len(level["errors"]),
        "completion_tokens": toks, "wall_s": round(level["wall_s"], 3),
        "agg_tok_s": round(toks / level["wall_s"], 2) if level["wall_s"] > 0 else None,
        "ttft_p50_ms": pct(ttft, 50), "ttft_p95_ms": pct(ttft, 95),
        "tok_p50_ms": pct(gaps, 50), "tok_p95_ms": pct(gaps, 95),
        "tpot_mean_ms": statistics.mean(tpot) if tpot else None,
        "tokens_per_chunk": round(toks / chunks, 3) if chunks else None,
        "finish_length": sum(1 for r in reqs if r["finish_reason"] == "length"),
        "usage_reported": all(r["tokens_from_usage"] for r in reqs),
    }


async def model_id(url: str) -> str:
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/v1/models") as r:
            return (await r.json())["data"][0]["id"]


async def warm_up(url: str, parallel: int, args):
    for lv in (await run_level(url, 1, 1, 10_000, args),
               await run_level(url, min(parallel, 4), min(parallel, 4), 10_100, args)):
        if lv["errors"]:
            raise RuntimeError(f"warm-up failed: {lv['errors'][0]}")


# ---------------------------------------------------------------- output

def result_paths(out_dir: Path, date: str, quick: bool, tag: str = "") -> tuple[Path, Path]:
    stem = f"serve{tag}-{date}" + ("-quick" if quick else "")
    taken = [1] if (out_dir / f"{stem}.md").exists() or (out_dir / f"{stem}.json").exists() else []
    for p in out_dir.glob(f"{stem}-*.*"):
        m = re.fullmatch(re.escape(stem) + r"-(\d+)\.(md|json)", p.name)
        if m:
            taken.append(int(m.group(1)))
    i = max(taken, default=0) + 1
    s = stem if i == 1 else f"{stem}-{i}"
    return out_dir / f"{s}.md", out_dir / f"{s}.json"


def fmt(x, nd=0):
    return "–" if x is None else f"{x:.{nd}f}"


def pooled(samples: list[dict]) -> dict:
    """Rounds of one (model, engine, clients): median of aggregate tok/s; latency percentiles over
    all requests of all rounds."""
    reqs = [r for s in samples for r in s["raw"]["requests"]]
    walls = [s["raw"]["wall_s"] for s in samples]
    merged = summarize({"requests": reqs, "errors": [e for s in samples for e in s["raw"]["errors"]],
                        "wall_s": sum(walls)})
    merged["agg_tok_s"] = statistics.median(s["summary"]["agg_tok_s"] for s in samples)
    merged["rounds"] = len(samples)
    merged["other_cpus_max"] = max(s["load"]["other_cpus"] for s in samples)
    merged["server_cpus"] = statistics.median(s["load"]["server_cpus"] for s in samples)
    return merged


def markdown(meta: dict, table: list[dict]) -> str:
    L = [f"# Serving: Dino vs llama.cpp's llama-server ({meta['date']})", ""]
    L.append(f"{meta['cpu']}, {meta['ncpu']} CPUs. Each level: C closed-loop clients streaming "
             f"`/v1/completions`, {meta['args']['max_tokens']} tokens max, temperature 0, "
             f"requests per level = max({meta['args']['min_requests']}, {meta['args']['requests_per_client']} × C), "
             f"prompts of {meta['prompt_tokens_range']} tokens ({meta['prompt_mode']}); {meta['args']['rounds']} round(s), "
             f"engines alternating per level.")
    L.append("")
    L.append(f"- Dino: `{' '.join(meta['dino_cmd'])}` ({meta['dino_version']})")
    L.append(f"- llama.cpp: `{' '.join(meta['llama_cmd'])}` ({meta['llama_version']})")
    L.append(f"- Other processes kept up to {meta['other_cpus_max']:.2f} CPUs busy during a level "
             f"(median {meta['other_cpus_median']:.2f}; other work yields to a server that keeps both CPUs busy, so "
             f"this understates contention); just before a level they kept {meta['busy_before_median']:.2f} "
             f"CPUs busy (median, max {meta['busy_before_max']:.2f}); load generator ({meta['client']}) "
             f"≤ {meta['client_cpus_max']:.2f} CPUs.")
    for model, pr in (meta.get("host_probe") or {}).items():
        def one(x):
            return "–" if not x else f"1 token {x.get('1', 0):.2f} ms, 8 tokens {x.get('8', 0):.2f} ms ({x.get('x', 0):.2f}×)"
        L.append(f"- Host state, {model} (`step_probe`, one batched step at 56 cached tokens, in-process): "
                 f"before {one(pr.get('before'))}; after {one(pr.get('after'))}. 8 × (1 token) / (8 tokens) is "
                 f"what batching can give at best on the host as it was.")
    L.append("")
    L.append("Aggregate = completion tokens of the level / its wall time. TTFT = request sent → first text chunk. "
             "Per-token = gap between consecutive text chunks. ×1 = aggregate / the same engine's at 1 client. "
             "Dino/llama = aggregate tok/s ratio at the same level.")
    L.append("")
    L.append("| model | engine | clients | aggregate tok/s | ×1 | TTFT p50 ms | TTFT p95 ms | per-token p50 ms | per-token p95 ms | Dino/llama |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in table:
        L.append(f"| {row['model']} | {row['engine']} | {row['clients']} | {fmt(row['agg_tok_s'], 1)} | "
                 f"{fmt(row['x1'], 2)} | {fmt(row['ttft_p50_ms'])} | {fmt(row['ttft_p95_ms'])} | "
                 f"{fmt(row['tok_p50_ms'], 1)} | {fmt(row['tok_p95_ms'], 1)} | "
                 f"{fmt(row.get('ratio'), 2) if row['engine'] == 'dino' else ''} |")
    L.append("")
    notes = [f"- {n}" for n in meta.get("notes", [])]
    if notes:
        L += ["Notes:", ""] + notes + [""]
    return "\n".join(L)


# ---------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2,qwen05")
    ap.add_argument("--engines", default="dino,llama")
    ap.add_argument("--clients", default="1,4,8,16")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests-per-client", type=int, default=2,
                    help="requests per level = max(--min-requests, this × clients)")
    ap.add_argument("--min-requests", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=16, help="server slots (Dino --parallel, llama-server -np)")
    ap.add_argument("--ctx", type=int, default=512, help="context per slot")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=600, help="per request, seconds")
    ap.add_argument("--wait-idle", type=float, default=30,
                    help="before each level wait up to this many seconds for other processes to settle")
    ap.add_argument("--idle-threshold", type=float, default=0.5, help="CPUs busy counted as settled")
    ap.add_argument("--llama-extra", default="--kv-unified",
                    help="extra llama-server flags (default --kv-unified: one KV buffer shared by the slots, "
                         "what llama-server picks itself when -np is left on auto; faster here at 8 clients)")
    ap.add_argument("--dino-extra", default="", help="extra dino serve flags")
    ap.add_argument("--long-prompt", choices=["off", "shared", "unique"], default="off",
                    help="prepend a ~290-token opening: 'shared' = the same first tokens in every request "
                         "(prefix reuse possible), 'unique' = request number first (no reuse)")
    ap.add_argument("--client", choices=["rust", "python"], default="rust",
                    help="load generator: 'rust' (crates/dino-server/examples/loadgen.rs, blocking sockets, "
                         "little CPU) or 'python' (aiohttp; ~0.1 CPU at 8 clients, taken from the server)")
    ap.add_argument("--loadgen", help="loadgen binary (default: $CARGO_TARGET_DIR/release/examples/loadgen)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--dino", help="dino binary (default: $CARGO_TARGET_DIR/release/dino)")
    ap.add_argument("--llama-server", help="llama-server binary (default: the peer build)")
    ap.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    ap.add_argument("--quick", action="store_true", help="label the result -quick (e.g. a smoke run)")
    ap.add_argument("--no-write", action="store_true", help="print the table, write no result files")
    args = ap.parse_args()

    models = [m for m in args.models.split(",") if m]
    for m in models:
        if m not in MODELS:
            sys.exit(f"bench/serve: unknown model {m} (known: {', '.join(MODELS)})")
    engines = [e for e in args.engines.split(",") if e]
    clients = [int(c) for c in args.clients.split(",")]
    if max(clients) > args.parallel:
        log(f"note: {max(clients)} clients > {args.parallel} slots: the rest queue")

    dino = build_dino(args) if "dino" in engines else None
    args.loadgen_bin = str(build_loadgen(args)) if args.client == "rust" else None
    probe = build_probe(args) if dino else None
    probes: dict = {}
    llama = build_llama_server(args) if "llama" in engines else None
    dino_version = sh([str(dino), "--version"]).strip() if dino else None
    dino_commit = sh(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).strip()
    dirty = bool(sh(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"]).strip())
    dino_version = f"{dino_version}, commit {dino_commit}{' + uncommitted changes' if dirty else ''}" if dino else None
    llama_version = None
    llama_env = dict(os.environ)
    if llama:
        libdir = str(llama.parent)
        llama_env["LD_LIBRARY_PATH"] = libdir + (":" + llama_env["LD_LIBRARY_PATH"] if llama_env.get("LD_LIBRARY_PATH") else "")
        v = subprocess.run([str(llama), "--version"], text=True, capture_output=True, env=llama_env)
        llama_version = " ".join((v.stdout + v.stderr).split("\n")[0:2]).strip() or "unknown"
        llama_version = re.sub(r"\s+", " ", llama_version)

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    rundir = Path(os.environ.get("DINO_BENCH_DIR", Path.home() / ".cache" / "dino-bench")) / "serve-runs" / stamp
    rundir.mkdir(parents=True, exist_ok=True)
    log(f"server logs and raw samples in {rundir}")

    samples: list[dict] = []
    servers: list[Server] = []
    meta_cmds = {}

    def stop_all(*_):
        for s in servers:
            s.stop()

    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    t_run = time.time()
    try:
        for model in models:
            path = find_model(dino or Path("dino"), model)
            log(f"{model}: {path}")
            probes[model] = {"before": host_probe(probe, path, args.threads)}
            log(f"{model}: step_probe before: {probes[model]['before']}")
            srv = {}
            for eng in engines:
                port = free_port()
                if eng == "dino":
                    cmd = [str(dino), "serve", "-m", str(path), "--parallel", str(args.parallel),
                           "-c", str(args.ctx), "-t", str(args.threads), "--port", str(port)] + args.dino_extra.split()
                    srv[eng] = Server(eng, cmd, port, rundir)
                else:
                    cmd = [str(llama), "-m", str(path), "-np", str(args.parallel),
                           "-c", str(args.ctx * args.parallel), "-t", str(args.threads),
                           "--host", "127.0.0.1", "--port", str(port), "--no-webui"] + args.llama_extra.split()
                    srv[eng] = Server(eng, cmd, port, rundir, env=llama_env)
                servers.append(srv[eng])
                meta_cmds[eng] = [Path(cmd[0]).name] + [("MODEL.gguf" if c == str(path) else "PORT" if c == str(port) else c)
                                                        for c in cmd[1:]]
                # Start one at a time so loading does not overlap.
                secs = asyncio.run(wait_health(srv[eng], 300))
                log(f"{model}/{eng}: ready in {secs:.1f} s")
                srv[eng].model_id = asyncio.run(model_id(srv[eng].url))
                args.model_id = srv[eng].model_id
                asyncio.run(warm_up(srv[eng].url, args.parallel, args))
            for rnd in range(args.rounds):
                for li, c in enumerate(clients):
                    order = engines if (li + rnd) % 2 == 0 else list(reversed(engines))
                    n_req = max(args.min_requests, args.requests_per_client * c)
                    for eng in order:
                        before, waited = wait_quiet(args.wait_idle, args.idle_threshold)
                        args.model_id = srv[eng].model_id
                        with LoadMeter(srv[eng].proc.pid) as lm:
                            raw = asyncio.run(run_level(srv[eng].url, c, n_req, rnd * 1000 + li * 100, args))
                        s = summarize(raw)
                        log(f"{model}/{eng} round {rnd + 1} C={c}: {s['agg_tok_s']} tok/s, "
                            f"TTFT p50 {fmt(s['ttft_p50_ms'])} ms, per-token p50 {fmt(s['tok_p50_ms'], 1)} ms, "
                            f"{s['completion_tokens']} tokens / {s['wall_s']:.1f} s, errors {s['errors']}, "
                            f"server {lm.server_cpus} CPUs, others {lm.other_cpus}, client {lm.client_cpus}")
                        for e in raw["errors"][:3]:
                            log(f"  error: {e}")
                        samples.append({"model": model, "engine": eng, "clients": c, "round": rnd + 1,
                                        "summary": s, "raw": raw,
                                        "load": {"busy_before": before, "waited_s": waited,
                                                 "server_cpus": lm.server_cpus, "client_cpus": lm.client_cpus,
                                                 "other_cpus": lm.other_cpus}})
            for eng in engines:
                srv[eng].stop()
            probes[model]["after"] = host_probe(probe, path, args.threads)
            log(f"{model}: step_probe after: {probes[model]['after']}")
    except KeyboardInterrupt:
        log("interrupted: nothing written")
        stop_all()
        return 130
    finally:
        stop_all()

    with open(rundir / "samples.json", "w") as f:
        json.dump(samples, f)

    # Table.
    table = []
    for model in models:
        for c in clients:
            rows = {}
            for eng in engines:
                ss = [s for s in samples if s["model"] == model and s["engine"] == eng and s["clients"] == c]
                if ss:
                    rows[eng] = pooled(ss)
            for eng in engines:
                if eng not in rows:
                    continue
                r = dict(rows[eng])
                base = [s for s in samples if s["model"] == model and s["engine"] == eng and s["clients"] == clients[0]]
                b = statistics.median(s["summary"]["agg_tok_s"] for s in base) if base else None
                r.update(model=model, engine=eng, clients=c,
                         x1=(r["agg_tok_s"] / b) if b else None)
                if eng == "dino" and "llama" in rows and rows["llama"]["agg_tok_s"]:
                    r["ratio"] = r["agg_tok_s"] / rows["llama"]["agg_tok_s"]
                table.append({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()})

    prompt_toks = [r["prompt_tokens"] for s in samples for r in s["raw"]["requests"] if r.get("prompt_tokens")]
    others = [s["load"]["other_cpus"] for s in samples]
    before = [s["load"]["busy_before"] for s in samples]
    notes = []
    eos = {e: (sum(s["summary"]["requests"] - s["summary"]["finish_length"] for s in samples if s["engine"] == e),
               sum(s["summary"]["requests"] for s in samples if s["engine"] == e)) for e in engines}
    if any(n for n, _ in eos.values()):
        notes.append("requests that ended before max_tokens (EOS): " +
                     ", ".join(f"{e} {n} of {t}" for e, (n, t) in eos.items()) +
                     "; aggregate tok/s counts the tokens actually generated.")
    errs = sum(s["summary"]["errors"] for s in samples)
    if errs:
        notes.append(f"{errs} request(s) failed (see the JSON).")
    if not all(s["summary"]["usage_reported"] for s in samples):
        notes.append("some streams reported no usage: their tokens were counted as text chunks.")
    tpc = {e: statistics.median(s["summary"]["tokens_per_chunk"] or 0 for s in samples if s["engine"] == e)
           for e in engines}
    notes.append("tokens per text chunk (median over levels): " +
                 ", ".join(f"{e} {v:.2f}" for e, v in tpc.items()) +
                 " (1.00 = one chunk per token, so per-token = inter-chunk gap).")
    meta = {
        "date": dt.date.today().isoformat(), "started": dt.datetime.fromtimestamp(t_run).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - t_run, 1),
        "cpu": cpu_name(), "ncpu": os.cpu_count(), "kernel": platform.release(),
        "args": vars(args), "dino_cmd": meta_cmds.get("dino", []), "llama_cmd": meta_cmds.get("llama", []),
        "dino_version": dino_version, "llama_version": llama_version,
        "client": ("crates/dino-server/examples/loadgen.rs" if args.client == "rust" else
                   f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}"),
        "host_probe": probes,
        "prompt_tokens_range": f"{min(prompt_toks)}–{max(prompt_toks)}" if prompt_toks else "?",
        "other_cpus_max": max(others) if others else 0.0,
        "other_cpus_median": statistics.median(others) if others else 0.0,
        "busy_before_median": statistics.median(before) if before else 0.0,
        "busy_before_max": max(before) if before else 0.0,
        "client_cpus_max": max((s["load"]["client_cpus"] for s in samples), default=0.0),
        "notes": notes,
        "prompt_mode": {"off": "request number first: no shared prefix",
                        "unique": "~290-token opening after the request number: no shared prefix",
                        "shared": "the same ~290-token opening first, then the request number: prefix reuse possible",
                        }[args.long_prompt],
    }
    md = markdown(meta, table)
    print(md)
    if not args.no_write:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        mdp, jsp = result_paths(out, meta["date"], args.quick,
                                "" if args.long_prompt == "off" else f"-long-{args.long_prompt}")
        slim = [{k: v for k, v in s.items() if k != "raw"} | {
            "requests": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()
                          if k not in ("gaps_ms", "t_start", "t_end")} for r in s["raw"]["requests"]],
            "errors": s["raw"]["errors"]} for s in samples]
        for p, text in ((mdp, md), (jsp, json.dumps({"meta": meta, "table": table, "samples": slim}, indent=1))):
            tmp = p.with_suffix(p.suffix + ".tmp")
            tmp.write_text(text)
            tmp.rename(p)
        log(f"wrote {mdp} and {jsp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
