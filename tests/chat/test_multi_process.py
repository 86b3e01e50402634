"""Two `linkcoach serve` processes with retrieval on, as a deployment of several workers
or machines runs them: one Chroma server (`chroma run`), one Postgres schema and one
Redis prefix. A stream started on one process is resumed and cancelled on the other.

Embedded Chroma is a single-process store, so this is the set-up `WEB_CONCURRENCY>1`
needs (README, "Several workers").
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from linkcoach_stream.config import Settings
from tests.conftest import (
    ROOT,
    free_port,
    gemini_settings,
    make_user,
    read_sse,
    settings_env,
    text_of,
    until,
)

STREAM = "/api/v1/coaching/query/stream"
CHROMA = Path(sys.executable).with_name("chroma")

pytestmark = pytest.mark.slow
needs_chroma = pytest.mark.skipif(
    not CHROMA.exists() and shutil.which("chroma") is None,
    reason="the chroma CLI (chromadb package) is not installed",
)


async def _wait_for_port(port: int, proc: asyncio.subprocess.Process, *, what: str) -> None:
    for _ in range(300):
        if proc.returncode is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port}")


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


class ServeProcess:
    """`python -m linkcoach_stream.cli serve`: the `linkcoach serve` of this checkout."""

    def __init__(self, settings: Settings, *, chroma_port: int) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = settings_env(settings) | {
            "HOST": "127.0.0.1",
            "CHROMA_HOST": "127.0.0.1",
            "CHROMA_PORT": str(chroma_port),
            "RAG_EMBEDDER": "hash",
        }
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, *, collection: str) -> ServeProcess:
        self.env["CHROMA_COLLECTION"] = collection
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "linkcoach_stream.cli",
            "serve",
            "--port",
            str(self.port),
            env=self.env,
            cwd=str(ROOT),
            stdout=asyncio.subprocess.DEVNULL,
        )
        async with httpx.AsyncClient() as c:
            for _ in range(600):
                try:
                    if (await c.get(f"{self.url}/ready")).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                if self.proc.returncode is not None:
                    raise RuntimeError(f"linkcoach serve exited with {self.proc.returncode}")
                await asyncio.sleep(0.1)
        raise RuntimeError("linkcoach serve did not become ready")

    async def stop(self) -> None:
        if self.proc is not None:
            await _stop(self.proc)


@pytest.fixture(scope="module")
async def pair(  # type: ignore[no-untyped-def]
    settings, emulator, tmp_path_factory
) -> AsyncIterator[tuple[ServeProcess, ServeProcess]]:
    chroma_port = free_port()
    chroma = await asyncio.create_subprocess_exec(
        str(CHROMA) if CHROMA.exists() else "chroma",
        "run",
        "--path",
        str(tmp_path_factory.mktemp("chroma-server")),
        "--host",
        "127.0.0.1",
        "--port",
        str(chroma_port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    base = gemini_settings(settings, emulator).with_overrides(retrieval_enabled=True)
    collection = f"kb_{uuid.uuid4().hex[:8]}"
    servers: list[ServeProcess] = []
    try:
        await _wait_for_port(chroma_port, chroma, what="chroma run")
        # Each process has its own data dir: the only store they share for retrieval is
        # the Chroma server. The first ingests; the second finds the collection current.
        for name in ("a", "b"):
            own = base.with_overrides(data_dir=tmp_path_factory.mktemp(f"data-{name}"))
            servers.append(
                await ServeProcess(own, chroma_port=chroma_port).start(collection=collection)
            )
        yield servers[0], servers[1]
    finally:
        for server in servers:
            await server.stop()
        await _stop(chroma)


async def _stored(settings: Settings, message_id: str) -> asyncpg.Record:
    conn = await asyncpg.connect(settings.database_url)
    try:
        row = await conn.fetchrow(
            "SELECT content, status, cancel_reason FROM messages WHERE id = $1",
            uuid.UUID(message_id),
        )
    finally:
        await conn.close()
    assert row is not None
    return row


@needs_chroma
async def test_both_processes_answer_from_the_shared_chroma_server(
    pair: tuple[ServeProcess, ServeProcess],
) -> None:
    a, b = pair
    for server in (a, b):
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            ready = (await client.get("/ready")).json()
            user = await make_user(client, leadership_type="HLH")
            q = "팀원들이 제가 어렵대요. 말 걸기 무섭다는데 어떻게 하죠?"
            async with client.stream(
                "POST", STREAM, json={"question": q}, headers=user.headers
            ) as r:
                events = await read_sse(r)
        assert ready["checks"]["chroma"] == "ok", ready
        assert events[0].data["sources"], f"{server.url}: no sources retrieved"
        assert events[-1].event == "done"
        assert not (Path(server.settings.data_dir) / "chroma").exists(), "embedded Chroma"


@needs_chroma
async def test_a_stream_started_on_one_process_resumes_on_the_other_without_gaps(
    pair: tuple[ServeProcess, ServeProcess],
) -> None:
    a, b = pair
    q = "다른 프로세스에서 이어받기 [[emulator:chunks=40,chunk_interval_ms=40]]"
    async with httpx.AsyncClient(base_url=a.url, timeout=60) as on_a:
        user = await make_user(on_a)
        async with on_a.stream("POST", STREAM, json={"question": q}, headers=user.headers) as r:
            first = await read_sse(r, stop_after=5)
    mid = first[0].data["message_id"]
    assert first[0].data["sources"], "retrieval ran on the first process"
    async with httpx.AsyncClient(base_url=b.url, timeout=60) as on_b:
        async with on_b.stream(
            "GET",
            f"/api/v1/coaching/streams/{mid}",
            headers={**user.headers, "Last-Event-ID": str(first[-1].id)},
        ) as r:
            assert r.status_code == 200
            rest = await read_sse(r)
    ids = [e.id for e in first + rest]
    assert ids == list(range(1, len(ids) + 1)), "gap or duplicate in event ids"
    assert rest[-1].event == "done"
    full = text_of(first) + text_of(rest)
    row = await _stored(a.settings, mid)
    assert row["status"] == "complete"
    assert row["content"] == full
    assert len(full) >= 40 * 7


@needs_chroma
async def test_a_cancel_sent_to_the_other_process_stops_the_generation(
    pair: tuple[ServeProcess, ServeProcess],
) -> None:
    a, b = pair
    q = "다른 프로세스에서 취소 [[emulator:chunks=300,chunk_interval_ms=30]]"
    async with httpx.AsyncClient(base_url=a.url, timeout=60) as on_a:
        user = await make_user(on_a)
        async with on_a.stream("POST", STREAM, json={"question": q}, headers=user.headers) as r:
            events: list = []
            reader = asyncio.create_task(read_sse(r, on_event=events))
            await until(lambda: len(events) >= 3, what="three events", task=reader)
            mid = events[0].data["message_id"]
            async with httpx.AsyncClient(base_url=b.url, timeout=30) as on_b:
                c = await on_b.post(f"/api/v1/coaching/streams/{mid}/cancel", headers=user.headers)
            assert c.status_code == 202, c.text
            assert c.json()["local"] is False
            await asyncio.wait_for(reader, 15)
    assert events[-1].event == "done"
    assert events[-1].data["finish_reason"] == "cancelled"
    assert events[-1].data["cancel_reason"] == "remote"
    row = await _stored(a.settings, mid)
    assert row["status"] == "interrupted" and row["cancel_reason"] == "remote"
    assert row["content"] == text_of(events)
    assert len(row["content"]) < 300 * 7


async def test_several_workers_with_embedded_chroma_are_refused_at_start(
    settings: Settings, tmp_path: Path
) -> None:
    env = settings_env(settings.with_overrides(retrieval_enabled=True, data_dir=tmp_path))
    env.pop("CHROMA_HOST", None)
    env["WEB_CONCURRENCY"] = "2"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "linkcoach_stream.cli",
        "serve",
        "--port",
        str(free_port()),
        env=env,
        cwd=str(ROOT),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 2
    assert "CHROMA_HOST" in err.decode()
    assert not (tmp_path / "chroma").exists(), "nothing was written to an embedded store"
