#!/usr/bin/env python3
"""Two checks of `dino serve` under load, beside the throughput table of serve_bench.py:

soak    1,000 streaming requests from 16 concurrent clients, a fifth of them cancelled by the
        client mid-stream (the connection closed after a random number of chunks). Passes when the
        server never panics and stays healthy, every stream that was not cancelled is well formed
        (HTTP 200, every event valid JSON with one id, a finish reason, a usage chunk whose
        completion count matches the tokens streamed, `data: [DONE]` last), the server's RSS grows
        less than 5 % from request 100 to request 1,000, and once idle no KV block is held.

prefix  Time to first token of a request whose ~1,000-token prefix is cached against the same
        request uncached (a different first token): the cached one must take at most 20 %.
        llama-server is measured the same way when present (--engines).

See bench/serve/README.md. Run through bench/serve/check (same venv as bench/serve/run).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_bench as sb  # noqa: E402

log = sb.log


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, KiB."""
    got = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                got[k] = int(v.split()[0])
    return got["VmRSS"], got["VmHWM"]


async def metrics(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/metrics") as r:
            text = await r.text()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


# ---------------------------------------------------------------- soak

async def soak_request(session, url: str, i: int, rng: random.Random, model: str) -> dict:
    """One streaming request, chat or completion; `cancel_after` chunks then close, or to the end.
    Returns what was seen and the problems found in a stream that ran to its end."""
    chat = rng.random() < 0.5
    max_tokens = rng.randint(4, 64)
    body = {"model": model, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": rng.choice([0, 0.7, 1.0]), "seed": rng.randint(0, 1 << 30)}
    if rng.random() < 0.3:
        body["stop"] = [rng.choice(["\n", ".", " the", "and"])]
    text = sb.make_prompt(i, "off")
    if chat:
        body["messages"] = [{"role": "user", "content": text}]
        path = "/v1/chat/completions"
    else:
        body["prompt"] = text
        path = "/v1/completions"
    cancel_after = rng.randint(0, 6) if rng.random() < 0.2 else None
    problems: list[str] = []
    ids, finishes, usage, done, n_text, events = set(), [], None, False, 0, 0
    async with session.post(url + path, json=body) as r:
        if r.status != 200:
            return {"i": i, "cancelled": False, "problems": [f"HTTP {r.status}: {(await r.text())[:200]}"]}
        buf = b""
        async for chunk in r.content.iter_any():
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line = line.strip()
                if not line:
                    continue
                if not line.startswith(b"data:"):
                    problems.append(f"not an SSE data line: {line[:80]!r}")
                    continue
                data = line[5:].strip()
                if done:
                    problems.append("an event after [DONE]")
                if data == b"[DONE]":
                    done = True
                    continue
                try:
                    ev = json.loads(data)
                except json.JSONDecodeError:
                    problems.append(f"invalid JSON: {data[:80]!r}")
                    continue
                events += 1
                ids.add(ev.get("id"))
                if ev.get("usage"):
                    usage = ev["usage"]
                for c in ev.get("choices") or []:
                    piece = (c.get("delta") or {}).get("content") if chat else c.get("text")
                    if piece:
                        n_text += 1
                    if c.get("finish_reason"):
                        finishes.append(c["finish_reason"])
            if cancel_after is not None and events >= cancel_after:
                # The client goes away mid-stream.
                r.close()
                return {"i": i, "cancelled": True, "problems": []}
    if not done:
        problems.append("no data: [DONE]")
    if len(ids) != 1:
        problems.append(f"{len(ids)} distinct ids")
    if len(finishes) != 1 or finishes[0] not in ("stop", "length"):
        problems.append(f"finish reasons {finishes}")
    if not usage:
        problems.append("no usage chunk")
    else:
        ct = usage.get("completion_tokens", -1)
        if not (1 <= ct <= max_tokens) or n_text > ct:
            problems.append(f"usage {usage} with {n_text} text chunks, max_tokens {max_tokens}")
        if usage.get("total_tokens") != usage.get("prompt_tokens", 0) + ct:
            problems.append(f"usage totals {usage}")
        if finishes == ["length"] and ct != max_tokens:
            problems.append(f"finish length after {ct} of {max_tokens} tokens")
    return {"i": i, "cancelled": False, "problems": problems, "tokens": usage and usage.get("completion_tokens")}


async def soak(url: str, pid: int, n: int, clients: int, seed: int, model: str) -> dict:
    rng = random.Random(seed)
    todo = iter(range(n))
    results: list[dict] = []
    rss_at: dict[int, tuple[int, int]] = {}
    marks = {100, 250, 500, 750, n}
    conn = aiohttp.TCPConnector(limit=clients + 4, force_close=True)
    t0 = time.monotonic()
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=300)) as s:
        async def worker(wid: int):
            wr = random.Random(rng.random())
            for i in todo:
                try:
                    res = await soak_request(s, url, i, wr, model)
                except Exception as e:  # noqa: BLE001 - recorded as a problem
                    res = {"i": i, "cancelled": False, "problems": [f"{type(e).__name__}: {e}"]}
                results.append(res)
                if len(results) in marks:
                    rss_at[len(results)] = rss_kib(pid)
                    log(f"soak: {len(results)} requests, RSS {rss_at[len(results)][0] / 1024:.1f} MiB")
        await asyncio.gather(*(worker(w) for w in range(clients)))
    wall = time.monotonic() - t0
    # Idle: every sequence ended or cancelled, every block back.
    m = {}
    for _ in range(50):
        m = await metrics(url)
        if m.get("dino_running_sequences", 0) == 0 and m.get("dino_queue_depth", 0) == 0:
            break
        await asyncio.sleep(0.1)
    bad = [r for r in results if r["problems"]]
    return {
        "requests": len(results), "wall_s": round(wall, 1),
        "cancelled": sum(r["cancelled"] for r in results),
        "completed": sum(not r["cancelled"] for r in results),
        "malformed": len(bad), "examples": bad[:5],
        "tokens": sum(r.get("tokens") or 0 for r in results),
        "rss_kib": {str(k): v[0] for k, v in sorted(rss_at.items())},
        "hwm_kib": max((v[1] for v in rss_at.values()), default=0),
        "rss_growth_100_to_n": (rss_at[n][0] - rss_at[100][0]) / rss_at[100][0] if 100 in rss_at and n in rss_at else None,
        "idle_metrics": {k: v for k, v in m.items() if k.startswith("dino_kv") or k in (
            "dino_running_sequences", "dino_queue_depth", "dino_preemptions_total", "dino_prefix_tokens_reused_total")},
    }


# ---------------------------------------------------------------- prefix

def long_prefix(target_tokens: int) -> str:
    """At least about `target_tokens` tokens of instruction text (LONG_PREFIX is ~270)."""
    reps = max(1, -(-target_tokens // 270))
    return "".join(f"Part {k + 1}. " + sb.LONG_PREFIX for k in range(reps))


async def ttft(session, url: str, model: str, prompt: str) -> tuple[float, int]:
    body = {"model": model, "prompt": prompt, "max_tokens": 2, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = None
    n_prompt = 0
    async with session.post(url + "/v1/completions", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.text())[:200]}")
        async for line in r.content:
            line = line.strip()
            if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                continue
            ev = json.loads(line[5:])
            if first is None and any(c.get("text") for c in ev.get("choices") or []):
                first = time.perf_counter()
            if ev.get("usage"):
                n_prompt = ev["usage"]["prompt_tokens"]
    return ((first or time.perf_counter()) - t0) * 1e3, n_prompt


async def prefix_check(url: str, model: str, reps: int, tokens: int) -> dict:
    prefix = long_prefix(tokens)
    conn = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=300)) as s:
        uncached, cached, n_prompt = [], [], 0
        for k in range(reps):
            # Uncached: a first token no earlier request had, so nothing after it can be reused.
            ms, n_prompt = await ttft(s, url, model, f"[{k}:{random.random():.6f}] {prefix}Question {k}: why?")
            uncached.append(ms)
        # Cache the prefix once, then requests that share it and differ after it.
        await ttft(s, url, model, f"{prefix}Question: warm-up.")
        for k in range(reps):
            ms, _ = await ttft(s, url, model, f"{prefix}Question {k}: what next?")
            cached.append(ms)
    u, c = statistics.median(uncached), statistics.median(cached)
    return {"prompt_tokens": n_prompt, "uncached_ttft_ms": [round(x, 1) for x in uncached],
            "cached_ttft_ms": [round(x, 1) for x in cached], "uncached_median_ms": round(u, 1),
            "cached_median_ms": round(c, 1), "ratio": round(c / u, 3)}


# ---------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("check", choices=["soak", "prefix", "all"])
    ap.add_argument("--model", default="smollm2", choices=list(sb.MODELS))
    ap.add_argument("--engines", default="dino,llama", help="prefix: engines to measure (soak: Dino only)")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--prefix-tokens", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--dino", help="dino binary (default: $CARGO_TARGET_DIR/release/dino)")
    ap.add_argument("--llama-server", help="llama-server binary (default: the peer build)")
    ap.add_argument("--out-dir", default=str(sb.REPO / "bench" / "results"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    dino = sb.build_dino(args)
    path = sb.find_model(dino, args.model)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    rundir = Path(os.environ.get("DINO_BENCH_DIR", Path.home() / ".cache" / "dino-bench")) / "serve-runs" / f"checks-{stamp}"
    rundir.mkdir(parents=True, exist_ok=True)
    commit = sb.sh(["git", "-C", str(sb.REPO), "rev-parse", "--short", "HEAD"]).strip()
    report = {"date": dt.date.today().isoformat(), "commit": commit, "model": sb.MODELS[args.model]["name"],
              "cpu": sb.cpu_name(), "ncpu": os.cpu_count()}
    ok = True

    def start_dino(extra: list[str]) -> sb.Server:
        port = sb.free_port()
        cmd = [str(dino), "serve", "-m", str(path), "-t", str(args.threads), "--port", str(port)] + extra
        srv = sb.Server("dino", cmd, port, rundir)
        asyncio.run(sb.wait_health(srv, 300))
        srv.model_id = asyncio.run(sb.model_id(srv.url))
        return srv

    if args.check in ("soak", "all"):
        srv = start_dino(["--parallel", str(args.clients), "-c", "512"])
        try:
            log(f"soak: {args.requests} requests, {args.clients} clients, logs in {rundir}")
            res = asyncio.run(soak(srv.url, srv.proc.pid, args.requests, args.clients, args.seed, srv.model_id))
            alive = srv.proc.poll() is None
            healthy = False
            if alive:
                async def health():
                    async with aiohttp.ClientSession() as s:
                        async with s.get(srv.url + "/health") as r:
                            return r.status == 200
                healthy = asyncio.run(health())
        finally:
            srv.stop()
        panics = sum("panicked" in line for line in open(srv.logpath))
        res.update(server_alive=alive, healthy=healthy, panics=panics,
                   command=" ".join(["dino"] + srv.cmd[1:]).replace(str(path), "MODEL.gguf"))
        growth = res["rss_growth_100_to_n"]
        kv_held = res["idle_metrics"].get("dino_kv_blocks_used")
        res["pass"] = (alive and healthy and panics == 0 and res["malformed"] == 0
                       and growth is not None and growth < 0.05 and kv_held == 0)
        ok &= res["pass"]
        report["soak"] = res
        log(f"soak: {'PASS' if res['pass'] else 'FAIL'}: {res['completed']} completed, {res['cancelled']} cancelled, "
            f"{res['malformed']} malformed, panics {panics}, RSS {res['rss_kib']} KiB "
            f"(growth 100 -> {args.requests}: {100 * growth:.2f} %), idle KV blocks used {kv_held}")

    if args.check in ("prefix", "all"):
        report["prefix"] = {}
        engines = [e for e in args.engines.split(",") if e]
        for eng in engines:
            if eng == "dino":
                srv = start_dino(["--parallel", "4", "-c", "2048"])
            else:
                llama = sb.build_llama_server(args)
                env = dict(os.environ)
                env["LD_LIBRARY_PATH"] = str(llama.parent) + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
                port = sb.free_port()
                cmd = [str(llama), "-m", str(path), "-np", "4", "-c", str(4 * 2048), "-t", str(args.threads),
                       "--host", "127.0.0.1", "--port", str(port), "--no-webui", "--kv-unified"]
                srv = sb.Server("llama", cmd, port, rundir, env=env)
                asyncio.run(sb.wait_health(srv, 300))
                srv.model_id = asyncio.run(sb.model_id(srv.url))
            try:
                res = asyncio.run(prefix_check(srv.url, srv.model_id, args.reps, args.prefix_tokens))
            finally:
                srv.stop()
            res["command"] = " ".join([Path(srv.cmd[0]).name] + srv.cmd[1:]).replace(str(path), "MODEL.gguf")
            if eng == "dino":
                res["pass"] = res["ratio"] <= 0.2
                ok &= res["pass"]
            report["prefix"][eng] = res
            log(f"prefix/{eng}: {res['prompt_tokens']} prompt tokens, TTFT uncached {res['uncached_median_ms']} ms, "
                f"cached {res['cached_median_ms']} ms: {100 * res['ratio']:.1f} %")

    print(json.dumps(report, indent=1))
    if not args.no_write:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        p = out / f"serve-checks-{report['date']}.json"
        k = 2
        while p.exists():
            p = out / f"serve-checks-{report['date']}-{k}.json"
            k += 1
        p.write_text(json.dumps(report, indent=1))
        log(f"wrote {p}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
