"""`linkcoach loadtest`: hold many concurrent coaching streams against any deployment.

The SSE client is a few dozen lines over `asyncio.open_connection` (HTTP/1.1, chunked
transfer decoding, SSE parsing) rather than httpx: thousands of streams from one process
need a client that costs little more than its socket. WebSocket mode uses `websockets`.
Both time each turn from the request to the first `delta` (TTFT) and between deltas.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

DEFAULT_QUESTIONS = [
    "팀원에게 피드백을 줬더니 의기소침해졌어요. 어떻게 다시 이야기하면 좋을까요?",
    "1on1에서 매번 할 말이 없대요. 무슨 질문을 하면 좋을까요?",
    "회의 때 아무도 의견을 안 내요 ㅠ",
    "일 잘하는 팀원이 번아웃 온 것 같은데 업무를 어떻게 조정하죠?",
    "처음 팀장이 됐는데 예전 동기들을 어떻게 대해야 할지 모르겠어요",
    "OKR 처음 도입하려는데 팀원들이 부담스러워해요",
]


@dataclass(slots=True)
class TurnResult:
    ok: bool
    reason: str = "ok"
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    chunks: int = 0
    message_id: str | None = None
    started: float = 0.0
    last: float | None = None
    # Seconds until a refusal (a non-200 status) arrived.
    refused_after: float | None = None
    # Seconds until the `meta` event arrived, and the server's `timings` in it (ms).
    to_meta: float | None = None
    timings: dict[str, float] | None = None

    def observe(self, kind: str, data: dict[str, Any]) -> bool:
        """Record one event of the turn; True when it ends the turn."""
        now = time.perf_counter()
        if kind == "meta":
            self.message_id = data.get("message_id")
            self.to_meta = now - self.started
            timings = data.get("timings")
            if isinstance(timings, dict):
                self.timings = timings
        elif kind == "delta":
            self.chunks += 1
            if self.ttft is None:
                self.ttft = now - self.started
            elif self.last is not None:
                self.gaps.append(now - self.last)
            self.last = now
        elif kind == "done":
            self.ok, self.reason = True, "ok"
            return True
        elif kind == "error":
            self.reason = f"event_{data.get('code', 'error')}"
            return True
        return False


@dataclass(slots=True)
class Stats:
    started: float = field(default_factory=time.perf_counter)
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    ttfts: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    chunks: int = 0
    active: int = 0
    server_errors: int = 0
    refusals: list[float] = field(default_factory=list)
    to_meta: list[float] = field(default_factory=list)
    timings: dict[str, list[float]] = field(default_factory=dict)

    def add(self, r: TurnResult) -> None:
        if r.ok:
            self.ok += 1
        else:
            self.failed[r.reason] += 1
            if r.reason.startswith(("http_5", "event_internal", "event_llm")):
                self.server_errors += 1
        if r.ttft is not None:
            self.ttfts.append(r.ttft)
        if r.refused_after is not None:
            self.refusals.append(r.refused_after)
        if r.to_meta is not None:
            self.to_meta.append(r.to_meta)
        for name, ms in (r.timings or {}).items():
            if isinstance(ms, int | float):
                self.timings.setdefault(name, []).append(ms / 1000)
        self.gaps.extend(r.gaps)
        self.chunks += r.chunks


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


class SSEParser:
    def __init__(self) -> None:
        self.buffer = b""
        self.fields: dict[str, str] = {}

    def feed(self, data: bytes) -> list[tuple[str, dict[str, Any]]]:
        self.buffer += data
        events: list[tuple[str, dict[str, Any]]] = []
        while True:
            nl = self.buffer.find(b"\n")
            if nl < 0:
                return events
            line = self.buffer[:nl].rstrip(b"\r").decode("utf-8")
            self.buffer = self.buffer[nl + 1 :]
            if not line:
                if "data" in self.fields:
                    events.append(
                        (self.fields.get("event", "message"), json.loads(self.fields["data"]))
                    )
                self.fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                self.fields[name] = value[1:] if value.startswith(" ") else value


async def sse_turn(url: str, token: str, body: dict[str, Any], timeout: float) -> TurnResult:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = (parts.path.rstrip("/") or "") + "/api/v1/coaching/query/stream"
    payload = orjson.dumps(body)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode()
    result = TurnResult(ok=False, reason="incomplete", started=time.perf_counter())
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=parts.scheme == "https" or None
            )
            try:
                writer.write(head + payload)
                status_line = await reader.readline()
                status = int(status_line.split()[1]) if status_line else 0
                chunked = False
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    if (
                        line.lower().startswith(b"transfer-encoding:")
                        and b"chunked" in line.lower()
                    ):
                        chunked = True
                if status != 200:
                    return TurnResult(
                        ok=False,
                        reason=f"http_{status}",
                        refused_after=time.perf_counter() - result.started,
                    )
                parser = SSEParser()
                while True:
                    if chunked:
                        size_line = await reader.readline()
                        if not size_line:
                            break
                        size = int(size_line.split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            break
                        data = await reader.readexactly(size + 2)
                        data = data[:-2]
                    else:
                        data = await reader.read(65536)
                        if not data:
                            break
                    for event, payload_obj in parser.feed(data):
                        if result.observe(event, payload_obj):
                            return result
                return result
            finally:
                writer.close()
    except TimeoutError:
        result.reason = "timeout"
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        result.reason = f"conn_{type(exc).__name__}"
    return result


async def ws_session(
    url: str, token: str, questions: list[dict[str, Any]], timeout: float, on_result: Any
) -> None:
    from websockets.asyncio.client import connect

    ws_url = url.replace("http://", "ws://").replace("https://", "wss://").rstrip("/")
    try:
        async with asyncio.timeout(timeout * max(1, len(questions))):
            async with connect(
                f"{ws_url}/api/v1/coaching/ws",
                subprotocols=["bearer", token],  # type: ignore[list-item]
                max_size=2**20,
                compression=None,
            ) as ws:
                json.loads(await ws.recv())
                for body in questions:
                    result = TurnResult(ok=False, reason="incomplete")
                    result.started = time.perf_counter()
                    await ws.send(orjson.dumps({"type": "question", **body}).decode())
                    while True:
                        frame = json.loads(await ws.recv())
                        if result.observe(str(frame.get("type")), frame):
                            break
                    on_result(result)
    except TimeoutError:
        on_result(TurnResult(ok=False, reason="timeout"))
    except Exception as exc:  # noqa: BLE001 - any failure is a failed stream, by kind
        on_result(TurnResult(ok=False, reason=f"conn_{type(exc).__name__}"))


async def mint_tokens(url: str, api_key: str, n: int, prefix: str) -> list[str]:
    sem = asyncio.Semaphore(32)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(i: int) -> str:
            async with sem:
                r = await client.post(
                    "/api/v1/auth/token",
                    json={
                        "user_id": f"{prefix}-{i}",
                        "leadership_type": random.choice(
                            ["HHH", "HLL", "HLH", "HHL", "LHH", "LLH", "LHL", "LLL"]
                        ),
                    },
                    headers={"X-API-Key": api_key},
                )
                r.raise_for_status()
                return str(r.json()["access_token"])

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def summary(stats: Stats, args: argparse.Namespace, wall: float) -> dict[str, Any]:
    failed = sum(stats.failed.values())
    return {
        "mode": args.mode,
        "urls": args.urls,
        "concurrency": args.concurrency,
        "turns_ok": stats.ok,
        "turns_failed": failed,
        "failed_by_reason": dict(stats.failed),
        "server_errors": stats.server_errors,
        "ttft_ms": {f"p{q}": _ms(percentile(stats.ttfts, q)) for q in (50, 90, 99)},
        "gap_ms": {f"p{q}": _ms(percentile(stats.gaps, q)) for q in (50, 99)},
        "refused_ms": {f"p{q}": _ms(percentile(stats.refusals, q)) for q in (50, 99, 100)},
        # Until the stream's `meta` event: the server's work before the answer starts.
        "meta_ms": {f"p{q}": _ms(percentile(stats.to_meta, q)) for q in (50, 99)},
        # The server's own account of that work (`meta.timings`), per part.
        "server_timings_ms": {
            name: {f"p{q}": _ms(percentile(values, q)) for q in (50, 99)}
            for name, values in sorted(stats.timings.items())
        },
        "chunks": stats.chunks,
        "chunks_per_s": round(stats.chunks / wall, 1) if wall else None,
        "turns_per_s": round(stats.ok / wall, 2) if wall else None,
        "wall_s": round(wall, 2),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    urls: list[str] = args.urls
    questions = DEFAULT_QUESTIONS
    if args.questions:
        questions = [q for q in Path(args.questions).read_text(encoding="utf-8").splitlines() if q]
    if args.token:
        tokens = [args.token]
    else:
        n_users = args.users or args.concurrency
        tokens = await mint_tokens(urls[0], args.api_key, n_users, f"load-{uuid.uuid4().hex[:6]}")
    stats = Stats()
    deadline = time.perf_counter() + args.duration if args.duration else None

    def body() -> dict[str, Any]:
        q = random.choice(questions) + (f" {args.suffix}" if args.suffix else "")
        return {"question": q}

    def keep_going(done: int) -> bool:
        if deadline is not None:
            return time.perf_counter() < deadline
        return done < args.turns

    async def worker(i: int) -> None:
        await asyncio.sleep(args.ramp_up * i / max(1, args.concurrency))
        url = urls[i % len(urls)]
        token = tokens[i % len(tokens)]
        stats.active += 1
        try:
            if args.mode == "ws":
                count = args.turns if deadline is None else 1
                while True:
                    await ws_session(
                        url, token, [body() for _ in range(count)], args.timeout, stats.add
                    )
                    if deadline is None or time.perf_counter() >= deadline:
                        break
            else:
                done = 0
                while keep_going(done):
                    stats.add(await sse_turn(url, token, body(), args.timeout))
                    done += 1
        finally:
            stats.active -= 1

    async def progress() -> None:
        while True:
            await asyncio.sleep(1)
            p50 = _ms(percentile(stats.ttfts[-2000:], 50))
            sys.stderr.write(
                f"\r{time.perf_counter() - stats.started:6.1f}s active={stats.active:5d} "
                f"ok={stats.ok:6d} failed={sum(stats.failed.values()):5d} ttft_p50={p50}ms   "
            )
            sys.stderr.flush()

    t0 = time.perf_counter()
    reporter = asyncio.create_task(progress()) if not args.quiet else None
    await asyncio.gather(*(worker(i) for i in range(args.concurrency)))
    wall = time.perf_counter() - t0
    if reporter is not None:
        reporter.cancel()
        sys.stderr.write("\n")
    return summary(stats, args, wall)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        dest="urls",
        action="append",
        default=None,
        help="server base URL; repeat to spread over several instances",
    )
    parser.add_argument("--mode", choices=["sse", "ws"], default="sse")
    parser.add_argument("--concurrency", "-c", type=int, default=100)
    parser.add_argument("--ramp-up", type=float, default=2.0, help="seconds to start all workers")
    parser.add_argument(
        "--turns", type=int, default=1, help="turns per worker (without --duration)"
    )
    parser.add_argument("--duration", type=float, default=None, help="run for this many seconds")
    parser.add_argument("--questions", help="file with one question per line")
    parser.add_argument("--suffix", default="", help="text appended to every question")
    parser.add_argument(
        "--api-key",
        default="linkcoach-dev-api-key",
        help="API key to mint one user token per worker",
    )
    parser.add_argument(
        "--users", type=int, default=None, help="distinct users (default: one per worker)"
    )
    parser.add_argument("--token", help="use this access token for every stream instead of minting")
    parser.add_argument("--timeout", type=float, default=120.0, help="per-turn timeout, seconds")
    parser.add_argument("--out", default="loadtest-results.json")
    parser.add_argument("--quiet", action="store_true")


def main(args: argparse.Namespace) -> int:
    if not args.urls:
        args.urls = ["http://127.0.0.1:8000"]
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    text = json.dumps(result, ensure_ascii=False, indent=2)
    Path(args.out).write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(text + "\n")
    return 0 if result["turns_failed"] == 0 else 1
