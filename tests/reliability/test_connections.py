"""Connection limits of `linkcoach serve`: slow and silent clients are dropped, idle
keep-alive connections closed, and connections past MAX_CONNECTIONS refused."""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn

from linkcoach_stream.app import create_app
from linkcoach_stream.cli import serve_options
from linkcoach_stream.config import Settings
from linkcoach_stream.server import GuardedHttpToolsProtocol

from ..conftest import API_KEY, free_port, gemini_settings, make_user, running

HEADER_TIMEOUT = 0.6
BODY_TIMEOUT = 0.8
KEEP_ALIVE = 0.5
MAX_CONNECTIONS = 6


class SmallSendBuffer(GuardedHttpToolsProtocol):
    """The guarded protocol with a small kernel send buffer, so a client that does not
    read fills the connection after a few frames instead of megabytes."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        super().connection_made(transport)


@asynccontextmanager
async def serve_like_the_cli(
    settings: Settings, *, protocol: type[GuardedHttpToolsProtocol] | None = None
) -> AsyncIterator[tuple[str, int]]:
    """The app under uvicorn with the options `linkcoach serve` passes, the HTTP protocol
    and its limits included (less workers, event loop and factory)."""
    options: dict[str, Any] = serve_options(settings.with_overrides(port=free_port()))
    for name in ("factory", "workers", "loop"):
        options.pop(name)
    if protocol is not None:
        options["http"] = functools.partial(protocol, **options["http"].keywords)
    async with running(uvicorn.Config(create_app(settings), lifespan="on", **options)):
        yield f"http://127.0.0.1:{options['port']}", options["port"]


@pytest.fixture(scope="module")
async def guarded(settings: Settings) -> AsyncIterator[tuple[str, int]]:
    async with serve_like_the_cli(
        settings.with_overrides(
            header_timeout_s=HEADER_TIMEOUT,
            body_timeout_s=BODY_TIMEOUT,
            keep_alive_timeout_s=KEEP_ALIVE,
            max_connections=MAX_CONNECTIONS,
        )
    ) as served:
        yield served


async def tiny_window_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection whose receive window is a few KB, so what it does not read backs up
    into the server at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock, limit=1024)


async def closed_after(reader: asyncio.StreamReader, limit: float) -> tuple[float, bytes]:
    """Seconds until the server closes the connection, and what it sent before."""
    started = time.perf_counter()
    data = await asyncio.wait_for(reader.read(), limit)
    return time.perf_counter() - started, data


def test_serve_uses_the_guarded_protocol_and_the_connection_settings() -> None:
    options = serve_options(
        Settings(max_connections=100, keep_alive_timeout_s=7, header_timeout_s=3)
    )
    assert options["limit_concurrency"] == 101
    assert options["timeout_keep_alive"] == 7
    assert options["http"].func is GuardedHttpToolsProtocol
    assert options["http"].keywords["limits"].header_timeout_s == 3
    assert serve_options(Settings(max_connections=0))["limit_concurrency"] is None
    env = {"MAX_CONNECTIONS": "50", "HEADER_TIMEOUT": "4", "BODY_TIMEOUT": "9"}
    parsed = Settings.from_env(env | {"KEEP_ALIVE_TIMEOUT": "2"})
    assert (parsed.max_connections, parsed.header_timeout_s) == (50, 4.0)
    assert (parsed.body_timeout_s, parsed.keep_alive_timeout_s) == (9.0, 2.0)


async def test_a_connection_that_sends_nothing_is_closed(guarded: tuple[str, int]) -> None:
    _, port = guarded
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        waited, data = await closed_after(reader, 5)
    finally:
        writer.close()
    assert data == b""
    assert HEADER_TIMEOUT * 0.8 <= waited < HEADER_TIMEOUT + 1.0


async def test_a_slowloris_client_is_dropped_with_408(guarded: tuple[str, int]) -> None:
    _, port = guarded
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nUser-Agent: " + b"s" * 200

    async def drip() -> None:
        # One byte every 50 ms: each arrives long before any per-read timeout would fire.
        for byte in request:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)

    started = time.perf_counter()
    dripping = asyncio.create_task(drip())
    try:
        data = await asyncio.wait_for(reader.read(4096), 5)
    finally:
        dripping.cancel()
        writer.close()
    elapsed = time.perf_counter() - started
    assert elapsed < HEADER_TIMEOUT + 1.5, "the server held the slow client"
    assert data.startswith(b"HTTP/1.1 408"), data
    assert b"request_timeout" in data


async def test_a_body_sent_too_slowly_is_cut_off(guarded: tuple[str, int]) -> None:
    _, port = guarded
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /api/v1/auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-API-Key: " + API_KEY.encode() + b"\r\nContent-Length: 100\r\n\r\n{"
    )
    await writer.drain()
    try:
        waited, data = await closed_after(reader, 5)
    finally:
        writer.close()
    assert BODY_TIMEOUT * 0.8 <= waited < BODY_TIMEOUT + 1.0
    assert not data.startswith(b"HTTP/1.1 2"), data


async def test_normal_requests_pass_and_idle_keep_alive_connections_close(
    guarded: tuple[str, int],
) -> None:
    _, port = guarded
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(2):
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        waited, data = await closed_after(reader, 5)
    finally:
        writer.close()
    assert data == b""
    assert KEEP_ALIVE * 0.8 <= waited < KEEP_ALIVE + 1.0


async def test_connections_past_the_cap_are_refused_until_some_close(
    guarded: tuple[str, int],
) -> None:
    url, port = guarded
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(MAX_CONNECTIONS)]
    try:
        await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            refused = await client.get("/health")
        assert refused.status_code == 503
    finally:
        for _, writer in idle:
            writer.close()
    await asyncio.sleep(0.1)
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        assert (await client.get("/health")).status_code == 200


async def test_a_client_that_stops_reading_a_stream_is_dropped_and_its_answer_completes(
    settings: Settings, emulator: str, db: Any
) -> None:
    """The connection's write timer, not a timeout per frame: a reader whose socket
    takes nothing for STREAM_SEND_TIMEOUT is cut off, and the answer is still written."""
    send_timeout = 0.8
    served = gemini_settings(settings, emulator).with_overrides(
        stream_send_timeout_s=send_timeout, llm_max_output_tokens=500_000
    )
    async with serve_like_the_cli(served, protocol=SmallSendBuffer) as (url, port):
        async with httpx.AsyncClient(base_url=url) as client:
            user = await make_user(client)
        # A large answer (~500 KB of frames), fast, to a socket with a tiny receive window.
        marker = "[[emulator:ttft_ms=10,chunk_interval_ms=1,chunks=400,chunk_chars=400]]"
        body = json.dumps({"question": f"긴 답 {marker}"}).encode()
        reader, writer = await tiny_window_client(port)
        writer.write(
            b"POST /api/v1/coaching/query/stream HTTP/1.1\r\nhost: x\r\n"
            b"authorization: Bearer %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (user.token.encode(), len(body), body)
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        # Read nothing for longer than the timeout, then everything that is left.
        await asyncio.sleep(send_timeout + 3)
        try:
            tail = await asyncio.wait_for(reader.read(), 10)
        except ConnectionError:
            tail = b""  # reset: the server aborted the connection
        finally:
            writer.close()
        assert not tail.endswith(b"0\r\n\r\n"), "the whole stream was delivered"
        assert b"event: done" not in tail

        async def stored() -> Any:
            return await db.fetchrow(
                "SELECT status, length(content) AS n FROM messages"
                " WHERE user_id = $1 AND role = 'assistant'",
                user.user_id,
            )

        row = None
        for _ in range(300):
            row = await stored()
            if row is not None and row["status"] == "complete":
                break
            await asyncio.sleep(0.1)
        assert row is not None and row["status"] == "complete", row
        assert row["n"] >= 400 * 400 * 0.9


async def test_a_large_body_to_a_slow_client_that_keeps_reading_is_not_cut_off() -> None:
    """The write timer bounds a stall, not a slow download: while the client takes bytes
    the buffer shrinks and the timer starts over."""
    from linkcoach_stream.server import ConnectionLimits

    size = 1_500_000

    async def big(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(size).encode())],
            }
        )
        await send({"type": "http.response.body", "body": b"x" * size})

    limits = ConnectionLimits(header_timeout_s=5, body_timeout_s=5, write_timeout_s=0.5)
    port = free_port()
    config = uvicorn.Config(
        big,
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_config=None,
        http=functools.partial(SmallSendBuffer, limits=limits),  # type: ignore[arg-type]
    )
    async with running(config):
        reader, writer = await tiny_window_client(port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        got = 0
        started = time.perf_counter()
        while got < size:
            data = await asyncio.wait_for(reader.read(32 * 1024), 5)
            if not data:
                break
            got += len(data)
            await asyncio.sleep(0.05)  # ~600 KB/s: the download takes several timeouts
        writer.close()
    assert got == size
    assert time.perf_counter() - started > 2 * limits.write_timeout_s
