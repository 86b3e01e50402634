"""The widget's ES modules: served by name from `static/linkcoach/`, free of markup sinks,
the taxonomy rendered by the server, and the chat state machine (a pure module) run in
Chromium."""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from typing import Any

import httpx

from linkcoach_stream.api.widget import widget_modules
from linkcoach_stream.domain.taxonomy import DIMENSION_DESCRIPTIONS, DIMENSIONS, HIGH_THRESHOLD
from tests.conftest import RunningServer

MODULES = resources.files("linkcoach_stream") / "static" / "linkcoach"


def test_every_widget_module_is_listed_and_none_writes_markup() -> None:
    names = sorted(item.name for item in MODULES.iterdir() if item.name.endswith(".js"))
    assert names == sorted(widget_modules())
    assert {"chat-state.js", "sse.js", "ws.js", "parent.js", "report.js"} <= set(names)
    for name in names:
        code = (MODULES / name).read_text(encoding="utf-8")
        text = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith("//"))
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, (name, sink)
        assert len(code.splitlines()) <= 500, name


def test_every_relative_import_names_a_served_module() -> None:
    entry = (MODULES / ".." / "linkcoach.js").read_text(encoding="utf-8")
    sources = {"../linkcoach.js": entry} | {
        name: (MODULES / name).read_text(encoding="utf-8") for name in widget_modules()
    }
    for name, code in sources.items():
        for target in re.findall(r'^import [^;]* from "([^"]+)";', code, re.M):
            module = target.removeprefix("./linkcoach/").removeprefix("./")
            assert module in widget_modules(), (name, target)


async def test_widget_modules_are_served_with_types_and_etags(client: httpx.AsyncClient) -> None:
    r = await client.get("/widget/linkcoach/chat-state.js")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/javascript")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "export function nextPhase" in r.text
    again = await client.get(
        "/widget/linkcoach/chat-state.js", headers={"If-None-Match": r.headers["etag"]}
    )
    assert again.status_code == 304
    for path in (
        "/widget/linkcoach/nope.js",
        "/widget/linkcoach/..%2Flinkcoach.js",
        "/widget/linkcoach/..%2F..%2Fapp.py",
    ):
        assert (await client.get(path)).status_code == 404, path


async def test_widget_page_carries_the_taxonomy_of_the_server(client: httpx.AsyncClient) -> None:
    r = await client.get("/widget/")
    match = re.search(r'<meta name="linkcoach-taxonomy" content="([^"]*)">', r.text)
    assert match is not None
    taxonomy = json.loads(html.unescape(match[1]))
    assert taxonomy["dimensions"] == [[d, DIMENSION_DESCRIPTIONS[d]] for d in DIMENSIONS]
    assert taxonomy["high_threshold"] == HIGH_THRESHOLD
    assert taxonomy["aliases"]["growth"] == "성장"


async def test_the_chat_state_machine_moves_only_along_its_arrows(
    page: Any, server: RunningServer
) -> None:
    await page.goto(f"{server.url}/widget/")
    walk = await page.evaluate(
        """async () => {
          const m = await import("/widget/linkcoach/chat-state.js");
          const run = (events) => events.reduce((p, e) => m.nextPhase(p, e), m.INITIAL_PHASE);
          return {
            streamed: run(["connected"]),
            dropped: run(["connected", "lost"]),
            resumed: run(["connected", "lost", "connected"]),
            stopped: run(["connected", "cancel"]),
            stoppedThenDropped: run(["connected", "cancel", "lost", "connected"]),
            finished: run(["connected", "finish"]),
            afterFinish: run(["connected", "finish", "connected", "cancel", "lost"]),
            unknownEvent: run(["connected", "nonsense"]),
            phases: m.PHASES,
            badPhase: (() => { try { m.nextPhase("nowhere", "connected"); return "no error"; }
                               catch (e) { return e.message; } })(),
          };
        }"""
    )
    assert walk["streamed"] == "streaming"
    assert walk["dropped"] == "reconnecting"
    assert walk["resumed"] == "streaming"
    assert walk["stopped"] == "cancelling"
    assert walk["stoppedThenDropped"] == "cancelling"
    assert walk["finished"] == "finished"
    assert walk["afterFinish"] == "finished"
    assert walk["unknownEvent"] == "streaming"
    assert walk["phases"] == ["connecting", "streaming", "reconnecting", "cancelling", "finished"]
    assert walk["badPhase"] == "unknown chat phase: nowhere"
    page.problems.assert_clean()
