"""Cached-report latency and throughput, against a bare Starlette JSON endpoint.

    python benchmarks/report_cache.py                       # embedded Postgres + Redis
    DATABASE_URL=... REDIS_URL=... python benchmarks/report_cache.py
    python benchmarks/report_cache.py --concurrency 1,16,64 --duration 10

What it does, in one run:

1. Starts the app (`uvicorn linkcoach_stream.app:create_app --factory`, one worker,
   uvloop + httptools, access log off) in its own process. Postgres and Redis are the ones
   in DATABASE_URL / REDIS_URL when set, else the app's embedded ones in a temp dir. The
   offline provider and no retrieval: the measured path never reaches either. The per-user
   rate limit is lifted (RATE_LIMIT_USER_PER_MIN), since one user sends every request.
2. Mints a token, generates one report (`cached: false`) and checks that the next request
   is a cache hit. Every measured request is that same request: a Redis hit.
3. Starts a bare Starlette app in another process, same uvicorn flags, whose one POST
   endpoint parses the JSON body and returns the warmed report's JSON (same bytes, rendered
   with orjson per request): the floor for "an HTTP JSON round trip of this size".
4. For each concurrency, runs each target for `--duration` seconds in total, alternating
   the two in `--rounds` slices (each after a short warm-up) so load from elsewhere on the
   machine hits both alike, with an asyncio httpx client, one connection per concurrent
   worker, and records every request's latency.

Prints a table and writes benchmarks/results/report_cache.json with p50/p99 latency,
requests/s and the full/bare ratios. The client is a single Python process, so at high
concurrency the bare figures are bounded by the client as much as by the server; the
ratio is the useful number, and the JSON records the machine it came from.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "report_cache.json"
API_KEY = "bench-api-key-0123456789"
PATH = "/api/v1/coaching/interpretation"
BODY = {"assessment": {"공유": 4.8, "상호작용": 3.9, "성장": 5.1}}
UVICORN_FLAGS = [
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--no-access-log",
    "--log-level",
    "warning",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- bare app


def bare_app(payload_file: str) -> Any:
    import orjson
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    payload = orjson.loads(Path(payload_file).read_bytes())

    async def endpoint(request: Request) -> Response:
        orjson.loads(await request.body())
        return Response(orjson.dumps(payload), media_type="application/json")

    async def health(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(routes=[Route(PATH, endpoint, methods=["POST"]), Route("/health", health)])


def serve_bare(port: int, payload_file: str) -> None:
    import uvicorn

    uvicorn.run(
        bare_app(payload_file),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


# --------------------------------------------------------------------------- processes


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, env=env, cwd=str(ROOT))
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{url}: server exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{url}/health")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url}: not healthy after {timeout_s}s")


# --------------------------------------------------------------------------- measuring


@dataclass
class Row:
    target: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def run_load(
    url: str,
    headers: dict[str, str],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    check: bytes | None,
) -> tuple[list[float], int, float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    body = json.dumps(BODY, ensure_ascii=False).encode()
    req_headers = {**headers, "Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0
    statuses: Counter[str] = Counter()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def worker(until: float, record: bool) -> None:
            nonlocal errors
            while True:
                started = time.perf_counter()
                if started >= until:
                    return
                try:
                    r = await client.post(PATH, content=body, headers=req_headers)
                    ok = r.status_code == 200 and (check is None or check in r.content)
                    outcome = str(r.status_code)
                except httpx.HTTPError as exc:
                    ok, outcome = False, type(exc).__name__
                elapsed = time.perf_counter() - started
                if record:
                    if ok:
                        latencies.append(elapsed)
                    else:
                        errors += 1
                        statuses[outcome] += 1

        now = time.perf_counter()
        await asyncio.gather(*(worker(now + warmup_s, False) for _ in range(concurrency)))
        began = time.perf_counter()
        await asyncio.gather(*(worker(began + duration_s, True) for _ in range(concurrency)))
        seconds = time.perf_counter() - began
    if statuses:
        sys.stderr.write(f"{url}: failed requests by outcome: {dict(statuses)}\n")
    return latencies, errors, seconds


def row(target: str, concurrency: int, latencies: list[float], errors: int, seconds: float) -> Row:
    values = sorted(latencies)
    return Row(
        target=target,
        concurrency=concurrency,
        requests=len(values),
        errors=errors,
        seconds=round(seconds, 3),
        rps=round(len(values) / seconds, 1),
        p50_ms=round(percentile(values, 0.50) * 1000, 3),
        p99_ms=round(percentile(values, 0.99) * 1000, 3),
        mean_ms=round(statistics.fmean(values) * 1000, 3) if values else float("nan"),
    )


async def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="linkcoach-bench-", dir="/tmp") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GEMINI_")}
        env.update(
            APP_ENV="development",
            LINKCOACH_DATA_DIR=str(Path(tmp) / "data"),
            LINKCOACH_API_KEYS=API_KEY,
            LLM_PROVIDER="offline",
            RETRIEVAL_ENABLED="false",
            KNOWLEDGE_BASE_DIR=str(ROOT / "knowledge_base"),
            MODELS_DIR=str(ROOT / "models"),
            REDIS_PREFIX=f"bench:{os.getpid()}:",
            # One user sends every request here; the per-user limit would answer 429.
            RATE_LIMIT_USER_PER_MIN="1000000000",
            LOG_LEVEL="warning",
        )
        app_port, bare_port = free_port(), free_port()
        app_url, bare_url = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{bare_port}"
        app_cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "linkcoach_stream.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(app_port),
            "--workers",
            "1",
            *UVICORN_FLAGS,
        ]
        with process(app_cmd, env) as app_proc:
            await wait_healthy(app_url, app_proc)
            async with httpx.AsyncClient(base_url=app_url, timeout=60) as client:
                user_id = f"bench-{os.getpid()}"
                r = await client.post(
                    "/api/v1/auth/token", json={"user_id": user_id}, headers={"X-API-Key": API_KEY}
                )
                r.raise_for_status()
                headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
                first = await client.post(PATH, json=BODY, headers=headers)
                first.raise_for_status()
                second = await client.post(PATH, json=BODY, headers=headers)
                second.raise_for_status()
                if not second.json()["cached"]:
                    raise RuntimeError("the second request was not a cache hit")
            payload = Path(tmp) / "payload.json"
            payload.write_bytes(second.content)
            bare_cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--serve-bare",
                str(bare_port),
                "--payload",
                str(payload),
            ]
            with process(bare_cmd, env) as bare_proc:
                await wait_healthy(bare_url, bare_proc)
                rows: list[Row] = []
                targets: tuple[tuple[str, str, dict[str, str], bytes | None], ...] = (
                    ("full", app_url, headers, b'"cached":true'),
                    ("bare", bare_url, {}, None),
                )
                for c in concurrencies:
                    # Alternate the two targets in short slices so a busy neighbour on the
                    # machine slows both alike instead of whichever happened to run then.
                    acc: dict[str, tuple[list[float], int, float]] = {
                        t[0]: ([], 0, 0.0) for t in targets
                    }
                    for _ in range(args.rounds):
                        for target, url, hdrs, check in targets:
                            lat, errors, seconds = await run_load(
                                url, hdrs, c, args.duration / args.rounds, args.warmup, check
                            )
                            prev = acc[target]
                            acc[target] = (prev[0] + lat, prev[1] + errors, prev[2] + seconds)
                    for target, _, _, _ in targets:
                        rows.append(row(target, c, *acc[target]))
                        print_row(rows[-1])
    ratios = []
    for c in concurrencies:
        full = next(r for r in rows if r.target == "full" and r.concurrency == c)
        bare = next(r for r in rows if r.target == "bare" and r.concurrency == c)
        ratios.append(
            {
                "concurrency": c,
                "rps_full_over_bare": round(full.rps / bare.rps, 3),
                "p50_full_over_bare": round(full.p50_ms / bare.p50_ms, 3),
                "p99_full_over_bare": round(full.p99_ms / bare.p99_ms, 3),
            }
        )
    return {
        "command": "python benchmarks/report_cache.py " + " ".join(sys.argv[1:]),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "setup": {
            "postgres": "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded",
            "redis": "REDIS_URL" if os.environ.get("REDIS_URL") else "embedded",
            "server": "uvicorn, 1 worker, uvloop, httptools, access log off",
            "client": "httpx.AsyncClient in one process, one connection per worker",
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "response_bytes": len(second.content),
            "request": BODY,
        },
        "results": [asdict(r) for r in rows],
        "ratios": ratios,
    }


def print_row(r: Row) -> None:
    sys.stdout.write(
        f"{r.target:>5} c={r.concurrency:<4} {r.requests:>7} req  {r.errors:>3} err  "
        f"{r.rps:>9.1f} req/s  p50 {r.p50_ms:>8.2f} ms  p99 {r.p99_ms:>8.2f} ms\n"
    )
    sys.stdout.flush()


def print_table(result: dict[str, Any]) -> None:
    out = [
        "",
        "| concurrency | target | req/s | p50 ms | p99 ms | errors |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in result["results"]:
        out.append(
            f"| {r['concurrency']} | {r['target']} | {r['rps']:.1f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} |"
        )
    out += [
        "",
        "| concurrency | req/s full/bare | p50 full/bare | p99 full/bare |",
        "|---:|---:|---:|---:|",
    ]
    for q in result["ratios"]:
        out.append(
            f"| {q['concurrency']} | {q['rps_full_over_bare']:.3f} | "
            f"{q['p50_full_over_bare']:.3f} | {q['p99_full_over_bare']:.3f} |"
        )
    out.append(
        f"\nresponse size {result['setup']['response_bytes']} bytes; "
        f"wrote {RESULTS.relative_to(ROOT)}\n"
    )
    sys.stdout.write("\n".join(out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--concurrency",
        default="1,8,32,64",
        help="comma-separated concurrencies (default: 1,8,32,64)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=5.0,
        help="measured seconds per target and concurrency (default: 5)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=0.5,
        help="unmeasured seconds before each slice (default: 0.5)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="slices per target, alternating full and bare (default: 3)",
    )
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--payload", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare:
        serve_bare(args.serve_bare, args.payload)
        return 0
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    result = asyncio.run(benchmark(args))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print_table(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
