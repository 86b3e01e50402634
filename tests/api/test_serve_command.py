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


async def test_serve_prints_the_demo_page_and_how_to_get_a_token_once_ready(
    settings: Settings,
) -> None:
    port = free_port()
    env = settings_env(settings.with_overrides(retrieval_enabled=False))
    # What `make run` gets: development defaults, the published development API key.
    env.update(APP_ENV="development", LINKCOACH_API_KEYS="", JWT_SECRET_KEY="", PORT=str(port))
    env["HOST"] = "127.0.0.1"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "linkcoach_stream.cli",
        "serve",
        env=env,
        cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        first = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
        base = f"http://127.0.0.1:{port}"
        assert first.strip() == f"Link-Coach Stream is ready on {base}"
        banner = first
        while "embed.js" not in banner:
            banner += (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert f"{base}/demo\n" in banner
        async with httpx.AsyncClient(base_url=base) as client:
            # Printed once ready: the very first request is answered.
            demo = await client.get("/demo")
            assert demo.status_code == 200
            assert "linkcoach-dev-api-key" in banner
            minted = await client.post(
                "/api/v1/auth/token",
                json={"user_id": "u1"},
                headers={"X-API-Key": "linkcoach-dev-api-key"},
            )
            assert minted.status_code == 201, minted.text
            assert f"{base}/demo/token" in banner
            demo_token = await client.post("/demo/token", json={})
            assert demo_token.status_code == 201
            for token in (minted.json()["access_token"], demo_token.json()["access_token"]):
                r = await client.get(
                    "/api/v1/conversations", headers={"Authorization": f"Bearer {token}"}
                )
                assert r.status_code == 200
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


def test_the_banner_shows_no_demo_page_and_no_key_in_production() -> None:
    from linkcoach_stream.cli import ready_banner

    production = Settings(
        app_env="production", host="0.0.0.0", jwt_secret_key="x", api_keys=("k" * 40,)
    )
    banner = ready_banner(production, port=9000)
    assert "/demo" not in banner
    assert "k" * 40 not in banner and "linkcoach-dev-api-key" not in banner
    assert "http://127.0.0.1:9000/api/v1/auth/token" in banner
