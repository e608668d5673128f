#!/usr/bin/env python3
"""Dino vs llama.cpp on the same GGUF files, in one run: see bench/compare/README.md.

Stdlib only. Steps: build both engines (llama.cpp through bench/llamacpp/build.sh, cached), find or
make the models, measure memory read bandwidth, then per model `rounds` times llama-bench followed
by `dino bench` (same file, flags and threads), a peak-RSS run of each, and the tg roofline. Medians
of all samples and Dino/llama.cpp ratios go to stdout and to bench/results/compare-<date>.{md,json}
(written whole or not at all).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench" / "llamacpp"))
import jsonfmt  # noqa: E402  (the repo's stable JSON layout)

HOME = Path.home()
BENCH_CACHE = Path(os.environ.get("DINO_BENCH_DIR") or HOME / ".cache" / "dino-bench")
README_BEGIN, README_END = "<!-- compare:begin -->", "<!-- compare:end -->"

# key -> how to get the file. "pull": a `dino pull` catalog name; "shape"/"gtype": a random model
# written by crates/dino-testutil/examples/random_model.rs.
MODELS = {
    "smollm2": dict(pull="smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf",
                    label="SmolLM2-135M-Instruct", type="Q4_1"),
    "qwen05": dict(pull="qwen05", file="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
                   label="Qwen2.5-Coder-0.5B-Instruct", type="Q4_K_M"),
    "qwen15": dict(pull="qwen15", file="Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
                   label="Qwen2.5-Coder-1.5B-Instruct", type="Q4_K_M"),
    "gemma3": dict(pull="gemma3", file="gemma-3-270m-Q4_K_M.gguf", label="Gemma-3-270M", type="Q4_K_M"),
    "tl-q4_0": dict(shape="tinyllama", gtype="q4_0", label="TinyLlama-1.1B shape, random", type="Q4_0"),
    "tl-q8_0": dict(shape="tinyllama", gtype="q8_0", label="TinyLlama-1.1B shape, random", type="Q8_0"),
    "tl-f16": dict(shape="tinyllama", gtype="f16", label="TinyLlama-1.1B shape, random", type="F16"),
    "moe-q4_0": dict(shape="qwen3moe-a3b-16l", gtype="q4_0", label="Qwen3-30B-A3B layers x16, random",
                     type="Q4_0"),
}
RANDOM_SEED = 42


class Fail(Exception):
    """An error to print as one clear message (no traceback)."""


def log(msg: str) -> None:
    print(f"[compare] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes

def _kill(p: subprocess.Popen) -> None:
    # Each child runs in its own session (start_new_session), so its process group is its own pid:
    # this ends exactly the processes this script started.
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run(cmd: list[str], what: str, timeout: float, env: dict | None = None,
        stream_stderr: bool = False) -> tuple[str, str]:
    """Runs cmd, returns (stdout, stderr); raises Fail naming `what` on error or timeout."""
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                             stderr=None if stream_stderr else subprocess.PIPE,
                             text=True, env=env, cwd=REPO, start_new_session=True)
    except OSError as e:
        raise Fail(f"{what}: cannot start {cmd[0]}: {e}") from None
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(p)
        p.communicate()
        raise Fail(f"{what}: timed out after {timeout:.0f} s: {shlex.join(cmd)}") from None
    except BaseException:  # Ctrl-C / SIGTERM: the child runs in its own session, so end it here
        _kill(p)
        p.wait()
        raise
    err = err or ""
    if p.returncode != 0:
        tail = "\n".join(err.strip().splitlines()[-15:])
        raise Fail(f"{what}: exit status {p.returncode}: {shlex.join(cmd)}" + (f"\n{tail}" if tail else ""))
    return out, err


def _on_term(signum, frame):
    raise KeyboardInterrupt


# ---------------------------------------------------------------- machine state

def _stat() -> tuple[int, int]:
    """(all CPU ticks, idle ticks) summed over CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v[:8]), v[3] + (v[4] if len(v) > 4 else 0)


def cpu_busy(seconds: float = 0.5) -> float:
    """CPUs kept busy by other processes over `seconds` (this script is idle meanwhile)."""
    t0, i0 = _stat()
    time.sleep(seconds)
    t1, i1 = _stat()
    total = max(t1 - t0, 1)
    return round((1 - (i1 - i0) / total) * (os.cpu_count() or 1), 2)


class OtherLoad:
    """CPUs that processes other than our children kept busy while a child ran: all busy CPU time
    (/proc/stat) minus the children's own (getrusage), over the wall time."""

    def __enter__(self):
        self.t0, self.w0 = time.monotonic(), _stat()
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.c0 = ru.ru_utime + ru.ru_stime
        return self

    def __exit__(self, *exc):
        t1, i1 = _stat()
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = max(time.monotonic() - self.t0, 1e-3)
        total, idle = t1 - self.w0[0], i1 - self.w0[1]
        ncpu = os.cpu_count() or 1
        busy_cpu_s = (total - idle) / max(total, 1) * ncpu * wall
        own = ru.ru_utime + ru.ru_stime - self.c0
        self.cpus = round(max(0.0, busy_cpu_s - own) / wall, 2)
        return False


def wait_quiet(max_wait: float, threshold: float = 0.3) -> tuple[float, float]:
    """Waits (up to max_wait s) until other processes keep fewer than `threshold` CPUs busy.
    Returns (CPUs busy by others just before the run, seconds waited)."""
    t0 = time.time()
    busy = cpu_busy()
    announced = False
    while busy >= threshold and time.time() - t0 < max_wait:
        if not announced:
            log(f"other processes keep {busy:.1f} CPUs busy: waiting up to {max_wait:.0f} s for quiet")
            announced = True
        time.sleep(4.5)
        busy = cpu_busy()
    return busy, round(time.time() - t0 - 0.5, 1)


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def cpu_flags() -> set[str]:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


# ---------------------------------------------------------------- engines

class Env:
    """Paths of the built tools."""

    def __init__(self, args):
        self.args = args
        self.llama_bin: Path | None = None
        self.target: Path | None = None
        self.dino_bench_available = False

    @property
    def llama_bench(self) -> Path:
        return self.llama_bin / "llama-bench"

    @property
    def dino(self) -> Path:
        return self.target / "release" / "dino"

    def example(self, name: str) -> Path:
        return self.target / "release" / "examples" / name

    def llama_env(self) -> dict:
        e = dict(os.environ)
        e["LD_LIBRARY_PATH"] = str(self.llama_bin) + (":" + e["LD_LIBRARY_PATH"] if e.get("LD_LIBRARY_PATH") else "")
        return e


def setup_llama(env: Env) -> None:
    log("llama.cpp peer: bench/llamacpp/build.sh (builds into its cache if absent, ~15 min on 2 cores)")
    out, _ = run(["bash", str(REPO / "bench/llamacpp/build.sh")], "building llama.cpp",
                 timeout=3 * 3600, stream_stderr=True)
    lines = out.strip().splitlines()
    if not lines:
        raise Fail("bench/llamacpp/build.sh printed no bin dir")
    env.llama_bin = Path(lines[-1])
    if not os.access(env.llama_bench, os.X_OK):
        raise Fail(f"llama-bench not found at {env.llama_bench}")


def setup_dino(env: Env) -> None:
    out, _ = run(["cargo", "metadata", "--no-deps", "--format-version", "1"], "cargo metadata", timeout=300)
    env.target = Path(json.loads(out)["target_directory"])
    if not env.args.no_build:
        log(f"building dino-cli and the bench examples (release, target dir {env.target})")
        run(["cargo", "build", "--release", "-p", "dino-cli"], "cargo build -p dino-cli",
            timeout=3600, stream_stderr=True)
        run(["cargo", "build", "--release", "-p", "dino-testutil", "--example", "membw",
             "--example", "random_model"], "cargo build dino-testutil examples", timeout=3600,
            stream_stderr=True)
    for p in (env.dino, env.example("membw"), env.example("random_model")):
        if not os.access(p, os.X_OK):
            raise Fail(f"{p} is missing (run without --no-build)")
    try:
        run([str(env.dino), "bench", "--help"], "dino bench --help", timeout=60)
        env.dino_bench_available = True
    except Fail:
        env.dino_bench_available = False
    if not env.dino_bench_available and not env.args.standin:
        raise Fail(f"`{env.dino} bench` does not exist in this build. Pass --standin to test the harness "
                   "with llama-bench playing Dino's part (the table is then marked STAND-IN).")
    if env.dino_bench_available and env.args.standin:
        log("note: dino bench exists, but --standin was given: llama-bench plays Dino's part")


def bench_cmd(env: Env, engine: str, model: Path, p: int, n: int, threads: str, reps: int) -> tuple[list, dict]:
    flags = ["-m", str(model), "-p", str(p), "-n", str(n), "-t", threads, "-r", str(reps), "-o", "json"]
    if engine == "llama" or env.args.standin:
        return [str(env.llama_bench), *flags], env.llama_env()
    return [str(env.dino), "bench", *flags], dict(os.environ)


def parse_bench_json(text: str, what: str) -> list[dict]:
    """llama-bench's `-o json` (a list of objects); also accepts one object or JSON lines."""
    text = text.strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        start = min((i for i in (text.find("["), text.find("{")) if i >= 0), default=-1)
        obj = None
        if start >= 0:
            try:
                obj, _ = json.JSONDecoder().raw_decode(text[start:])
            except json.JSONDecodeError:
                obj = None
        if obj is None:
            try:
                obj = [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]
            except json.JSONDecodeError:
                obj = None
        if not obj:
            raise Fail(f"{what}: stdout is not llama-bench JSON: {text[:300]!r}")
    recs = obj if isinstance(obj, list) else [obj]
    for r in recs:
        for k in ("n_prompt", "n_gen", "n_threads", "avg_ts"):
            if k not in r:
                raise Fail(f"{what}: a result lacks '{k}': {json.dumps(r)[:300]}")
    return recs


def test_name(rec: dict) -> str | None:
    pp, tg = int(rec["n_prompt"]), int(rec["n_gen"])
    if pp > 0 and tg == 0:
        return f"pp{pp}"
    if tg > 0 and pp == 0:
        return f"tg{tg}"
    return None  # pp+tg combined tests are not compared


KEEP = ("model_filename", "model_type", "model_size", "model_n_params", "n_prompt", "n_gen", "n_threads",
        "avg_ts", "stddev_ts", "samples_ts", "test_time", "dino_peak_rss_bytes", "dino_energy_j_per_token",
        "dino_isa")
SETTINGS = ("build_commit", "cpu_info", "backends", "n_batch", "n_ubatch", "type_k", "type_v", "flash_attn",
            "poll", "repack", "load_mode", "n_depth", "cpu_strict", "dino_isa")


# ---------------------------------------------------------------- models

def find_model(env: Env, key: str) -> dict:
    m = MODELS[key]
    if "pull" in m:
        home = Path(os.environ.get("DINO_HOME") or HOME / ".cache" / "dino")
        alt = Path(os.environ.get("DINO_MODELS") or HOME / ".cache" / "dino-models") / m["file"]
        if not (home / m["file"]).exists() and alt.exists():
            return dict(path=alt, source=f"{alt.parent} (../shared/models/get-models, sha256-checked there)")
        log(f"{key}: dino pull {m['pull']}" + ("" if (home / m["file"]).exists() else " (downloading)"))
        out, _ = run([str(env.dino), "pull", "-q", m["pull"]], f"dino pull {m['pull']}",
                     timeout=env.args.pull_timeout)
        lines = out.strip().splitlines()
        path = Path(lines[-1]) if lines else None
        if path is None or not path.is_file():
            raise Fail(f"dino pull {m['pull']}: printed no model path ({out.strip()[:200]!r})")
        return dict(path=path, source=f"dino pull {m['pull']}")
    path = BENCH_CACHE / "models" / f"{m['shape']}-random-s{RANDOM_SEED}.{m['gtype']}.gguf"
    if not path.exists():
        log(f"{key}: writing {path} (random weights, seed {RANDOM_SEED})")
        run([str(env.example("random_model")), "--shape", m["shape"], "--type", m["gtype"], "-o", str(path),
             "--seed", str(RANDOM_SEED)], f"random_model {m['gtype']}", timeout=1800)
    return dict(path=path, source=f"crates/dino-testutil/examples/random_model.rs --shape {m['shape']} "
                                  f"--type {m['gtype']} --seed {RANDOM_SEED}")


_ROW = re.compile(r"^\s+(\d+)\s+(\S+)\s+(\S+)\s+(.+?)\s+(\d+)\s+(\d+)\s*$")


def weight_bytes_per_token(env: Env, path: Path) -> dict:
    """Bytes of weights one decode step reads: every matrix except the token embedding (one row is
    read), plus the embedding again when it doubles as the output head (no output.weight); of a
    mixture of experts' `*_exps` tensors, the share of the experts a token uses."""
    out, _ = run([str(env.dino), "inspect", str(path)], f"dino inspect {path.name}", timeout=300)
    tensors = {}
    in_table = False
    experts = {}
    for line in out.splitlines():
        if line.startswith("tensors:"):
            in_table = True
            continue
        me = re.match(r"^\s+\S+\.(expert_count|expert_used_count)\s+(\d+)\s*$", line)
        if me and not in_table:
            experts[me.group(1)] = int(me.group(2))
        mt = _ROW.match(line) if in_table else None
        if mt:
            dims = [d for d in re.split(r"\s*x\s*", mt.group(4).strip()) if d]
            tensors[mt.group(2)] = dict(type=mt.group(3), n_dims=len(dims), bytes=int(mt.group(5)))
    if "token_embd.weight" not in tensors:
        raise Fail(f"dino inspect {path}: no tensor table with token_embd.weight in its output")
    share = 1.0
    if experts.get("expert_count", 0) > 0:
        share = experts.get("expert_used_count", 0) / experts["expert_count"]
    matrices = sum(t["bytes"] * (share if "_exps." in name else 1.0)
                   for name, t in tensors.items() if t["n_dims"] >= 2 and name != "token_embd.weight")
    tied = "output.weight" not in tensors
    head = tensors["token_embd.weight"]["bytes"] if tied else 0
    return dict(bytes=int(matrices) + head, tied_output=tied, n_tensors=len(tensors), expert_share=share,
                tensor_bytes=sum(t["bytes"] for t in tensors.values()))


# ---------------------------------------------------------------- measurements

def membw(env: Env, threads: str, passes: int, when: str) -> dict:
    busy = cpu_busy()
    log(f"memory read bandwidth {when} (membw, 640 MB, threads {threads}; other load {busy:.1f} CPUs)")
    out, _ = run([str(env.example("membw")), "-t", threads, "--mb", "640", "--passes", str(passes)], "membw",
                 timeout=600)
    r = json.loads(out.strip().splitlines()[-1])
    r.update(when=when, other_cpus_busy_before=busy)
    return r


def bandwidth_summary(runs: list[dict]) -> dict | None:
    """Bandwidth is measured before each model and at the end; other processes can only lower it, so
    the roofline uses the highest median seen (and the table shows the range)."""
    if not runs:
        return None
    out = dict(isa=runs[0]["isa"], bytes=runs[0]["bytes"], passes=runs[0]["passes"], n_runs=len(runs),
               results=[])
    for t in sorted({x["threads"] for r in runs for x in r["results"]}):
        rows = [x for r in runs for x in r["results"] if x["threads"] == t]
        meds = [x["median_gbps"] for x in rows]
        out["results"].append(dict(threads=t, median_gbps=max(meds), lowest_median_gbps=min(meds),
                                   best_gbps=max(x["best_gbps"] for x in rows), medians_gbps=meds))
    out["runs"] = runs
    return out


def by_threads(bw: dict) -> dict:
    return {str(x["threads"]): x for x in bw["results"]}


def peak_rss(env: Env, engine: str, model: Path, n: int, threads: int, timeout: float) -> dict:
    cmd, e = bench_cmd(env, engine, model, 0, n, str(threads), 1)
    out, err = run(["/usr/bin/time", "-v", *cmd], f"peak RSS {engine} {model.name}", timeout=timeout, env=e)
    mt = re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", err)
    if not mt:
        raise Fail(f"/usr/bin/time -v printed no 'Maximum resident set size' for {engine}")
    res = dict(peak_rss_bytes=int(mt.group(1)) * 1024, command=shlex.join(cmd))
    try:  # Dino's own figure (getrusage), for comparison
        own = [r.get("dino_peak_rss_bytes") for r in parse_bench_json(out, "peak RSS run")]
        if any(x is not None for x in own):
            res["self_reported_peak_rss_bytes"] = max(x for x in own if x is not None)
    except Fail:
        pass
    return res


def ensure_time() -> None:
    if os.access("/usr/bin/time", os.X_OK):
        return
    log("/usr/bin/time is missing: apt-get install -y time")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    try:
        run([*sudo, "apt-get", "install", "-y", "-qq", "time"], "apt-get install time", timeout=600,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    except Fail:
        run([*sudo, "apt-get", "update", "-qq"], "apt-get update", timeout=600)
        run([*sudo, "apt-get", "install", "-y", "-qq", "time"], "apt-get install time", timeout=600,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def median(xs):
    return statistics.median(xs) if xs else None


def bench_model(env: Env, key: str, info: dict, cfg: dict, run_dir: Path) -> dict:
    a = env.args
    path = info["path"]
    res = dict(key=key, label=MODELS[key]["label"], type=MODELS[key]["type"], path=str(path),
               source=info["source"], file_bytes=path.stat().st_size, calls=[], errors=[],
               samples={"llama": {}, "dino": {}}, per_round={"llama": {}, "dino": {}}, settings={})
    failed = set()  # an engine that failed once is not run again for this model
    for rnd in range(cfg["rounds"]):
        for engine in ("llama", "dino"):
            if engine in failed:
                continue
            cmd, e = bench_cmd(env, engine, path, cfg["p"], cfg["n"], cfg["threads"], cfg["reps"])
            busy, waited = wait_quiet(a.wait_idle)
            log(f"{key} round {rnd + 1}/{cfg['rounds']}: {engine} (other load {busy:.1f} CPUs)")
            t0 = time.time()
            try:
                with OtherLoad() as load:
                    out, _ = run(cmd, f"{engine} bench {key}", timeout=a.timeout, env=e)
                recs = parse_bench_json(out, f"{engine} bench {key}")
            except Fail as err:
                log(f"ERROR: {err}")
                res["errors"].append(dict(engine=engine, round=rnd, error=str(err)))
                failed.add(engine)
                continue
            wall = round(time.time() - t0, 1)
            (run_dir / f"{key}.r{rnd}.{engine}.json").write_text(out)
            res["calls"].append(dict(engine=engine, round=rnd, other_cpus_busy_before=busy, waited_s=waited,
                                     other_cpus_busy_during=load.cpus, wall_s=wall, command=shlex.join(cmd),
                                     results=[{k: r[k] for k in KEEP if k in r} for r in recs]))
            res["settings"].setdefault(engine, {k: recs[0][k] for k in SETTINGS if k in recs[0]})
            for r in recs:
                t = test_name(r)
                if t is None:
                    continue
                if Path(r.get("model_filename", str(path))).resolve() != path.resolve():
                    log(f"warning: {engine} reports model_filename {r.get('model_filename')} for {path}")
                k = f"{t} t{int(r['n_threads'])}"
                s = [float(x) for x in (r.get("samples_ts") or [r["avg_ts"]]) if x is not None]
                res["samples"][engine].setdefault(k, []).extend(s)
                res["per_round"][engine].setdefault(k, {})[str(rnd)] = median(s)
    res["median_ts"] = {eng: {k: median(v) for k, v in d.items()} for eng, d in res["samples"].items()}
    ratios, paired = {}, {}
    for k, ml in res["median_ts"]["llama"].items():
        md = res["median_ts"]["dino"].get(k)
        if md is not None and ml:
            ratios[k] = round(md / ml, 4)
        rl, rd = res["per_round"]["llama"].get(k, {}), res["per_round"]["dino"].get(k, {})
        paired[k] = [round(rd[r] / rl[r], 4) for r in sorted(rl, key=int) if r in rd and rl[r]]
    res["ratio_dino_over_llama"] = ratios
    res["ratio_per_round"] = paired

    if not a.no_rss:
        res["peak_rss"] = {}
        t = max(int(x) for x in cfg["threads"].split(","))
        for engine in ("llama", "dino"):
            log(f"{key}: peak RSS, {engine} (-p 0 -n {cfg['rss_n']} -r 1 -t {t})")
            try:
                res["peak_rss"][engine] = peak_rss(env, engine, path, cfg["rss_n"], t, a.timeout)
            except Fail as err:
                log(f"ERROR: {err}")
                res["errors"].append(dict(engine=engine, step="peak_rss", error=str(err)))
        res["peak_rss_threads"] = t
    try:
        res["weights_per_token"] = weight_bytes_per_token(env, path)
    except Fail as err:
        log(f"ERROR: {err}")
        res["errors"].append(dict(step="weights_per_token", error=str(err)))
    return res


def roofline(res: dict, bw: dict | None, cfg: dict) -> None:
    wpt = res.get("weights_per_token")
    if not bw or not wpt:
        return
    out = {}
    for t, b in by_threads(bw).items():
        bound = b["median_gbps"] * 1e9 / wpt["bytes"]
        row = dict(bandwidth_gbps=b["median_gbps"], bound_ts=bound)
        for eng in ("llama", "dino"):
            v = res["median_ts"][eng].get(f"tg{cfg['n']} t{t}")
            row[f"{eng}_fraction"] = v / bound if v else None
        out[t] = row
    res["roofline"] = out


# ---------------------------------------------------------------- report

def fmt_ts(v):
    if v is None:
        return "–"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def fmt_ratio(l, d):
    return f"{d / l:.2f}" if l and d else "–"


def report(meta: dict, models: list[dict], cfg: dict) -> str:
    p, n, threads = cfg["p"], cfg["n"], [int(x) for x in cfg["threads"].split(",")]
    t_rss = max(threads)
    L = []
    L.append(f"# Dino vs llama.cpp, {meta['date']}")
    L.append("")
    if meta["standin"]:
        L.append("**STAND-IN RUN: `dino bench` was not used; llama-bench played Dino's part, so every "
                 "ratio measures only noise.**")
        L.append("")
    L.append(f"- Dino `{meta['dino_commit']}`{' (uncommitted changes)' if meta['dino_dirty'] else ''}, "
             f"llama.cpp `{meta['llama_commit']}` (PyPI sdist llama-cpp-python==0.3.36, CPU build, "
             f"bench/llamacpp/build.sh); {meta['cpu']}, {meta['n_cpus']} CPUs"
             f"{', AVX-512' if meta['avx512'] else ''}.")
    L.append(f"- `-p {p} -n {n} -t {cfg['threads']}`, same file for both; {cfg['rounds']} "
             f"round{'s' if cfg['rounds'] != 1 else ''} × "
             f"{cfg['reps']} rep{'s' if cfg['reps'] != 1 else ''}, each round llama-bench then `dino bench`; medians of all samples in "
             f"tokens/s; ratio = Dino / llama.cpp (above 1: Dino faster).")
    fa_names = {-1: "auto (on for the CPU backend)", 0: "off", 1: "on", True: "on", False: "off"}
    ls = meta.get("llama_settings") or {}
    if ls:
        fa = fa_names.get(ls.get("flash_attn"), ls.get("flash_attn"))
        L.append(f"- llama.cpp settings (its defaults): flash attention {fa}, KV cache "
                 f"{ls.get('type_k')}/{ls.get('type_v')}, n_batch {ls.get('n_batch')}, n_ubatch "
                 f"{ls.get('n_ubatch')}, weight repacking {'on' if ls.get('repack') else 'off'}, poll "
                 f"{ls.get('poll')}, load mode {ls.get('load_mode')} (mmap).")
    ds = meta.get("dino_settings") or {}
    if ds and not meta["standin"]:
        L.append(f"- Dino settings (`dino bench`'s JSON): ISA {ds.get('dino_isa', '?')}, flash attention "
                 f"{fa_names.get(ds.get('flash_attn'), ds.get('flash_attn'))}, KV cache {ds.get('type_k')}/{ds.get('type_v')}, n_batch "
                 f"{ds.get('n_batch')}, n_ubatch {ds.get('n_ubatch')}.")
    bw = meta.get("bandwidth")
    if bw:
        parts = [f"{t} thread{'s' if t != '1' else ''} {b['median_gbps']:.1f} GB/s (best single pass "
                 f"{b['best_gbps']:.1f}" + (f"; lowest median {b['lowest_median_gbps']:.1f}" if bw["n_runs"] > 1
                                            else "") + ")"
                 for t, b in by_threads(bw).items()]
        L.append(f"- Memory read bandwidth (membw: {bw['isa']} read-only stream over {bw['bytes'] / 1e6:.0f} MB; "
                 f"median of {bw['passes']} passes, highest of {bw['n_runs']} measurements: before each "
                 f"model and at the end): " + ", ".join(parts) + ".")
    L.append(f"- Peak RSS: `/usr/bin/time -v` on `-p 0 -n {cfg['rss_n']} -r 1 -t {t_rss}`, MB = 10⁶ bytes. "
             f"Roofline: tg bound = median bandwidth at {t_rss} threads ÷ weight bytes read per token "
             f"(all matrices and the output head; embeddings and KV cache excluded).")
    busy = meta.get("other_cpus_busy") or {}
    if busy:
        noisy = max(busy["max"], busy["during_max"]) >= 0.5
        L.append(f"- Other processes kept {busy['median']:.1f} CPUs busy just before each bench call (median; "
                 f"max {busy['max']:.1f}) and {busy['during_median']:.1f} during them (median; max "
                 f"{busy['during_max']:.1f}) of {meta['n_cpus']}"
                 + (" — the machine was shared, the numbers are noisy." if noisy else ".")
                 + (f" Waited {busy['waited_s']:.0f} s in all for quiet." if busy.get("waited_s") else ""))
    L.append("")
    cols = [f"pp{p} t{t}" for t in threads] + [f"tg{n} t{t}" for t in threads]
    head = ["model", "type", "size"] + [f"{c} llama / dino / ratio" for c in cols] + \
        ["peak RSS MB llama / dino / ratio", f"tg{n} t{t_rss} % of roofline llama / dino"]
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "|".join(["---", "---", "---:"] + ["---:"] * (len(head) - 3)) + "|")
    for r in models:
        row = [r["label"], r["type"], f"{r['file_bytes'] / 1e6:.0f} MB"]
        for c in cols:
            ml, md = r["median_ts"]["llama"].get(c), r["median_ts"]["dino"].get(c)
            row.append(f"{fmt_ts(ml)} / {fmt_ts(md)} / {fmt_ratio(ml, md)}")
        rss = r.get("peak_rss") or {}
        rl = rss.get("llama", {}).get("peak_rss_bytes")
        rd = rss.get("dino", {}).get("peak_rss_bytes")
        mb = lambda b: f"{b / 1e6:.0f}" if b else "–"  # noqa: E731
        row.append(f"{mb(rl)} / {mb(rd)} / {fmt_ratio(rl, rd)}")
        rf = (r.get("roofline") or {}).get(str(t_rss))
        if rf:
            pct = lambda f: f"{f * 100:.0f} %" if f else "–"  # noqa: E731
            row.append(f"{pct(rf['llama_fraction'])} / {pct(rf['dino_fraction'])}")
        else:
            row.append("–")
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    if bw and any(r.get("roofline") for r in models):
        L.append("| model | type | weight MB / token | " + " | ".join(f"tg bound t{t}" for t in threads) + " |")
        L.append("|---|---|---:|" + "---:|" * len(threads))
        for r in models:
            if not r.get("roofline"):
                continue
            bounds = [fmt_ts(r["roofline"].get(str(t), {}).get("bound_ts")) for t in threads]
            L.append(f"| {r['label']} | {r['type']} | {r['weights_per_token']['bytes'] / 1e6:.0f} | "
                     + " | ".join(bounds) + " |")
        L.append("")
    errs = [(r["key"], e) for r in models for e in r["errors"]]
    if errs:
        L.append("Errors (their cells show –):")
        for k, e in errs:
            L.append(f"- {k}: {e.get('engine', '')} {e.get('step', 'bench')}: "
                     f"{e['error'].splitlines()[0]}")
        L.append("")
    L.append(f"Made by `bench/compare/run{meta['argv']}`; raw samples in the JSON beside this file.")
    return "\n".join(L) + "\n"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def result_paths(out_dir: Path, date: str, quick: bool) -> tuple[Path, Path]:
    """`compare-DATE.md`, then `-2`, `-3`, ...: one past the highest taken today, so the
    numbers follow the order of the runs even when an earlier file was deleted."""
    stem = f"compare-{date}" + ("-quick" if quick else "")
    taken = [1] if (out_dir / f"{stem}.md").exists() or (out_dir / f"{stem}.json").exists() else []
    for p in out_dir.glob(f"{stem}-*.*"):
        m = re.fullmatch(re.escape(stem) + r"-(\d+)\.(md|json)", p.name)
        if m:
            taken.append(int(m.group(1)))
    i = max(taken, default=0) + 1
    s = stem if i == 1 else f"{stem}-{i}"
    return out_dir / f"{s}.md", out_dir / f"{s}.json"


def update_readme(args) -> int:
    readme = Path(args.readme)
    src = Path(args.from_file) if args.from_file else None
    if src is None:
        cands = sorted((p for p in Path(args.out_dir).glob("compare-*.md") if "-quick" not in p.name),
                       key=lambda p: p.stat().st_mtime)
        if not cands:
            raise Fail(f"no {args.out_dir}/compare-*.md to paste (quick runs are never pasted); run "
                       "bench/compare/run first, or name one with --from FILE")
        src = cands[-1]
    body = src.read_text().splitlines()
    if body and body[0].startswith("# "):
        body = body[1:]
    rel = os.path.relpath(src.resolve(), REPO)
    block = "\n".join([README_BEGIN, f"Measured by `bench/compare/run` ([{rel}]({rel})):", *body, README_END])
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text or text.index(README_BEGIN) > text.index(README_END):
        print(f"{readme} has no {README_BEGIN} … {README_END} markers; README was not changed.\n"
              f"Add these two lines where the table belongs (e.g. under '## Benchmarks against llama.cpp'),\n"
              f"then run bench/compare/run --update-readme again:\n\n{README_BEGIN}\n{README_END}\n")
        return 1
    new = text[:text.index(README_BEGIN)] + block + text[text.index(README_END) + len(README_END):]
    write_atomic(readme, new)
    log(f"{readme}: pasted {rel} between the markers")
    return 0


# ---------------------------------------------------------------- main

def parse_args(argv):
    ap = argparse.ArgumentParser(prog="bench/compare/run", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="models: " + ", ".join(MODELS))
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated (default: all)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: -p 128 -n 32, 2 rounds × 1 rep, 3 bandwidth passes")
    ap.add_argument("--rounds", type=int, help="interleaved rounds per model (default 3; quick 2)")
    ap.add_argument("-r", "--reps", type=int, help="repetitions per bench call (default 2; quick 1)")
    ap.add_argument("-p", type=int, help="prompt tokens (default 512; quick 128)")
    ap.add_argument("-n", type=int, help="generated tokens (default 128; quick 32)")
    ap.add_argument("-t", "--threads", default="1,2", help="thread counts (default 1,2)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per bench call (default 3600)")
    ap.add_argument("--pull-timeout", type=float, default=3 * 3600, help="seconds per dino pull")
    ap.add_argument("--wait-idle", type=float,
                    help="before each bench call, wait up to this many seconds until other processes "
                         "keep < 0.3 CPUs busy (default 120; quick 0)")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already built")
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS runs")
    ap.add_argument("--no-membw", action="store_true", help="skip the bandwidth measurement and roofline")
    ap.add_argument("--standin", action="store_true",
                    help="llama-bench plays Dino's part (to test this harness before `dino bench` exists)")
    ap.add_argument("--out-dir", default=str(REPO / "bench" / "results"), help="where results go")
    ap.add_argument("--update-readme", action="store_true",
                    help="paste the newest (non-quick) result into README.md between the compare markers; "
                         "runs no benchmark")
    ap.add_argument("--readme", default=str(REPO / "README.md"), help=argparse.SUPPRESS)
    ap.add_argument("--from", dest="from_file", help="with --update-readme: the .md result to paste")
    a = ap.parse_args(argv)
    keys = [k.strip() for k in a.models.split(",") if k.strip()]
    bad = [k for k in keys if k not in MODELS]
    if bad or not keys:
        ap.error(f"unknown model(s) {', '.join(bad) or '(none)'}; choose from {', '.join(MODELS)}")
    a.model_keys = keys
    if not re.fullmatch(r"\d+(,\d+)*", a.threads):
        ap.error("-t: a list like 1,2")
    for name in ("rounds", "reps", "p", "n"):
        v = getattr(a, name)
        if v is not None and v < (0 if name == "p" else 1):
            ap.error(f"--{name} must be positive")
    return a


def main(argv) -> int:
    a = parse_args(argv)
    if a.update_readme:
        return update_readme(a)
    cfg = dict(p=a.p if a.p is not None else (128 if a.quick else 512),
               n=a.n if a.n is not None else (32 if a.quick else 128),
               rounds=a.rounds or (2 if a.quick else 3),
               reps=a.reps or (1 if a.quick else 2),
               threads=a.threads)
    cfg["rss_n"] = cfg["n"]
    if a.wait_idle is None:
        a.wait_idle = 0 if a.quick else 120
    cfg["wait_idle_s"] = a.wait_idle
    started = dt.datetime.now(dt.timezone.utc)
    env = Env(a)
    setup_llama(env)
    setup_dino(env)
    if not a.no_rss:
        ensure_time()
    infos = {}
    for k in a.model_keys:  # all models first: a missing one stops the run before any benchmark
        try:
            infos[k] = find_model(env, k)
        except Fail as e:
            raise Fail(f"model '{k}' is not available: {e}") from None
        log(f"{k}: {infos[k]['path']}")
    run_dir = BENCH_CACHE / "runs" / started.strftime("%Y%m%dT%H%M%SZ")
    run_dir.mkdir(parents=True, exist_ok=True)
    bw_runs = []
    results = []
    for k in a.model_keys:
        if not a.no_membw:
            bw_runs.append(membw(env, cfg["threads"], 3 if a.quick else 7, f"before {k}"))
        results.append(bench_model(env, k, infos[k], cfg, run_dir))
    if not a.no_membw:
        bw_runs.append(membw(env, cfg["threads"], 3 if a.quick else 7, "at the end"))
    bw = bandwidth_summary(bw_runs)
    for r in results:
        roofline(r, bw, cfg)

    busy = [c["other_cpus_busy_before"] for r in results for c in r["calls"]]
    during = [c["other_cpus_busy_during"] for r in results for c in r["calls"]]
    llama_settings = next((r["settings"]["llama"] for r in results if "llama" in r["settings"]), {})
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    meta = dict(
        date=started.strftime("%Y-%m-%d"), started_utc=started.strftime("%FT%TZ"),
        finished_utc=dt.datetime.now(dt.timezone.utc).strftime("%FT%TZ"),
        dino_commit=git("rev-parse", "--short", "HEAD") or "unknown", dino_dirty=dirty,
        llama_commit=llama_settings.get("build_commit", "unknown"),
        cpu=cpu_name(), n_cpus=os.cpu_count(), avx512="avx512f" in cpu_flags(),
        standin=bool(a.standin), dino_bench_available=env.dino_bench_available,
        config=cfg, llama_settings=llama_settings,
        dino_settings=next((r["settings"]["dino"] for r in results if "dino" in r["settings"]), {}),
        bandwidth=bw,
        other_cpus_busy=dict(median=median(busy), max=max(busy), during_median=median(during),
                             during_max=max(during),
                             waited_s=round(sum(c["waited_s"] for r in results for c in r["calls"]), 1))
        if busy else None,
        argv="".join(" " + shlex.quote(x) for x in argv), raw_dir=str(run_dir),
    )
    md = report(meta, results, cfg)
    md_path, js_path = result_paths(Path(a.out_dir), meta["date"], a.quick)
    write_atomic(js_path, jsonfmt.dumps(dict(meta=meta, models=results)))
    write_atomic(md_path, md)
    print(md)
    log(f"wrote {md_path} and {js_path}")
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_term)
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:  # the terminal went away (not under nohup)
        signal.signal(signal.SIGHUP, _on_term)
    try:
        sys.exit(main(sys.argv[1:]))
    except Fail as e:
        print(f"bench/compare: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("bench/compare: interrupted; no results written", file=sys.stderr)
        sys.exit(130)
