"""Headless Chromium for the widget's end-to-end tests, and a TCP proxy that can cut
connections for real.

The browser is Debian's `/usr/bin/chromium` driven by the `playwright` package
(`executable_path=...`; `playwright install` is never run). Tests that need it skip with
the reason when either is missing (a developer machine); CI installs both. Each session
starts Chromium with a new, empty profile directory.

Playwright's async API is used because the app under test (uvicorn) runs in the same
event loop as the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

CHROMIUM = Path(os.environ.get("LINKCOACH_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = ROOT / "test-artifacts"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
async def browser_context() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install 'playwright>=1.45,<2'")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install chromium")
    ARTIFACTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="linkcoach-chromium-") as profile:
        async with async_playwright() as pw:
            context = await pw.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                args=LAUNCH_ARGS,
                headless=True,
                locale="ko-KR",
                viewport={"width": 1280, "height": 900},
            )
            try:
                yield context
            finally:
                await context.close()


class PageProblems:
    """Uncaught page errors and CSP violations seen by a page."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.csp: list[str] = []
        self.console: list[str] = []

    def on_console(self, message: Any) -> None:
        self.console.append(f"{message.type}: {message.text}")
        if "Content Security Policy" in message.text:
            self.csp.append(message.text)

    def assert_clean(self) -> None:
        assert not self.errors, self.errors
        assert not self.csp, self.csp


@pytest.fixture
async def page(browser_context: Any, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    page = await browser_context.new_page()
    page.set_default_timeout(15_000)
    problems = PageProblems()
    page.on("pageerror", lambda exc: problems.errors.append(str(exc)))
    page.on("console", problems.on_console)
    page.problems = problems
    try:
        yield page
    finally:
        name = request.node.name
        with contextlib.suppress(Exception):
            await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        lines = problems.console + [f"pageerror: {e}" for e in problems.errors]
        (ARTIFACTS / f"{name}.console.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        for other in browser_context.pages:
            await other.close()


class DroppingProxy:
    """A TCP proxy in front of the app. `drop()` resets every open connection, as a lost
    network does, and refuses new ones for a moment; the browser only sees the proxy."""

    def __init__(self, upstream_port: int = 0) -> None:
        self.upstream_port = upstream_port
        self.refusing = False
        self.drops = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> DroppingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.drop_now()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.refusing:
            client_w.transport.abort()
            return
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.transport.abort()
            return
        self._writers.update((client_w, up_w))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort() if dst.transport.is_closing() else dst.close()

        try:
            await asyncio.gather(pipe(client_r, up_w), pipe(up_r, client_w))
        finally:
            self._writers.difference_update((client_w, up_w))

    def drop_now(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()  # RST: the browser sees a network error, not an end
        self._writers.clear()

    async def drop(self, *, refuse_for: float = 0.5) -> None:
        self.drops += 1
        self.refusing = True
        self.drop_now()
        await asyncio.sleep(refuse_for)
        self.refusing = False


@contextlib.asynccontextmanager
async def dropping_proxy(upstream_url: str | None = None) -> AsyncIterator[DroppingProxy]:
    """A started proxy; without `upstream_url`, set `upstream_port` before using it."""
    port = int(upstream_url.rsplit(":", 1)[1]) if upstream_url else 0
    proxy = await DroppingProxy(port).start()
    try:
        yield proxy
    finally:
        await proxy.stop()
