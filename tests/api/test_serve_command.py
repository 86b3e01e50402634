"""`linkcoach serve` itself: the command the README and the Procfile run."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys

import httpx
import pytest

from linkcoach_stream.config import Settings

from ..conftest import ROOT, free_port, settings_env


def listen_backlog(port: int) -> int | None:
    """The accept-queue limit of the socket listening on `port` (`ss` shows it as
    Send-Q for a listening socket)."""
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            return int(fields[2])
    return None


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
async def test_serve_answers_and_listens_with_the_configured_backlog(settings: Settings) -> None:
    port = free_port()
    env = settings_env(settings.with_overrides(retrieval_enabled=False))
    env.update(LISTEN_BACKLOG="1234", PORT=str(port), HOST="127.0.0.1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "linkcoach_stream.cli", "serve", env=env, cwd=str(ROOT)
    )
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                try:
                    health = await client.get(f"http://127.0.0.1:{port}/health")
                    break
                except httpx.HTTPError:
                    assert proc.returncode is None, "linkcoach serve exited"
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("linkcoach serve did not start")
        assert health.status_code == 200
        assert listen_backlog(port) == 1234
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
