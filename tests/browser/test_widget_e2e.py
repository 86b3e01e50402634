"""The widget in headless Chromium against the real app: the report, streamed answers,
stop, resume after a real connection drop, safe rendering, WebSocket transport, parent
origin rules and the demo page.

Slow answers come from the Gemini emulator (`gemini_server`) with per-question markers.
The offline coach answers from passages and never quotes the question, so the markup test
runs on a server whose knowledge base carries markup in its advice (`markup_server`).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from tests.browser.conftest import ARTIFACTS, dropping_proxy
from tests.conftest import (
    ALLOWED_ORIGIN,
    ROOT,
    RunningServer,
    User,
    gemini_settings,
    make_user,
    serving,
    start_server,
    stop_server,
)

ASSISTANT = "#lc-log > .lc-msg-assistant:last-child"
SLOW = "[[emulator:chunks={chunks},chunk_interval_ms={ms}]]"


def widget_url(base: str, user: User, **extra: str) -> str:
    params = {"token": user.token, "userId": user.user_id, **extra}
    return f"{base}/widget/#{urlencode(params)}"


async def open_widget(page: Any, base: str, user: User, **extra: str) -> None:
    await page.goto(widget_url(base, user, **extra))
    await page.wait_for_selector("#lc-app[data-state=ready]")
    await page.wait_for_selector("#lc-report[aria-busy=false]")


async def ask(page: Any, question: str) -> None:
    box = page.get_by_label("질문", exact=True)
    await box.fill(question)
    await box.press("Enter")
    await page.wait_for_selector(f"{ASSISTANT}[data-status]")


async def answer_state(page: Any) -> dict[str, Any]:
    state: dict[str, Any] = await page.eval_on_selector(
        ASSISTANT,
        """el => ({
            text: el.querySelector('.lc-msg-text').textContent,
            status: el.dataset.status,
            busy: el.getAttribute('aria-busy'),
            typing: !!el.querySelector('.lc-typing'),
            messageId: el.dataset.messageId || null,
            reconnects: Number(el.dataset.reconnects || 0),
        })""",
    )
    return state


async def wait_until_chars(page: Any, n: int) -> None:
    await page.wait_for_function(
        "n => { const m = document.querySelectorAll('.lc-msg-assistant');"
        " const el = m[m.length - 1]; return el && Number(el.dataset.chars || 0) >= n; }",
        arg=n,
    )


async def wait_finished(page: Any, timeout: float = 20_000) -> dict[str, Any]:
    await page.wait_for_selector(f"{ASSISTANT}:not([data-status=streaming])", timeout=timeout)
    return await answer_state(page)


async def stored_message(base: str, user: User, page: Any, message_id: str) -> dict[str, Any]:
    conversation_id = await page.get_attribute("#lc-log", "data-conversation-id")
    async with httpx.AsyncClient(base_url=base, headers=user.headers) as c:
        r = await c.get(f"/api/v1/conversations/{conversation_id}")
        assert r.status_code == 200, r.text
    messages = {m["id"]: m for m in r.json()["messages"]}
    message: dict[str, Any] = messages[message_id]
    return message


# -- the report ------------------------------------------------------------------------


async def test_report_renders_with_real_data_in_korean(
    server: RunningServer, client: httpx.AsyncClient, page: Any
) -> None:
    user = await make_user(client, leadership_type="HHH")
    scores = {"공유": 4.8, "상호작용": 3.9, "성장": 5.1}
    await open_widget(page, server.url, user, assessment=json.dumps(scores, ensure_ascii=False))

    r = await client.post(
        "/api/v1/coaching/interpretation", json={"assessment": scores}, headers=user.headers
    )
    assert r.status_code == 200, r.text
    expected = r.json()
    assert expected["cached"] is True  # the widget's one request generated it
    report = expected["report"]

    assert page.url.endswith("/widget/")  # the token left the address bar
    name = await page.text_content(".lc-type-name")
    assert expected["leadership_type"] in name and "HLH" in name
    assert await page.text_content(".lc-summary") == report["summary"]
    dims = await page.locator(".lc-dim-score").all_text_contents()
    assert dims == ["4.8 / 6 · 높음", "3.9 / 6 · 낮음", "5.1 / 6 · 높음"]
    cards = await page.locator(".lc-card h3").all_text_contents()
    assert cards == [s["title"] for s in report["strengths"]] + [
        s["title"] for s in report["improvements"]
    ]
    plan = await page.locator(".lc-plan dd").all_text_contents()
    assert plan == [
        report["action_plan"]["immediate"],
        report["action_plan"]["short_term"],
        report["action_plan"]["long_term"],
    ]
    followers = page.locator(".lc-follower")
    assert await followers.count() == 5
    first = report["followership"][0]
    await followers.first.locator("summary").click()
    assert f"궁합 {first['score']}점" in await followers.first.text_content()
    assert first["synergy"] in await followers.first.text_content()
    assert await page.locator(".lc-risks li").count() == len(report["risk_signals"])
    page.problems.assert_clean()


# -- streaming -------------------------------------------------------------------------


async def sample_until_finished(page: Any, timeout_s: float = 20) -> list[dict[str, Any]]:
    samples = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = await answer_state(page)
        samples.append(state)
        if state["status"] != "streaming":
            return samples
        await asyncio.sleep(0.08)
    raise AssertionError(f"answer did not finish: {samples[-1]}")


async def test_answer_streams_in_visibly_growing_text_with_typing_indicator(
    gemini_server: RunningServer, gclient: httpx.AsyncClient, page: Any
) -> None:
    user = await make_user(gclient, leadership_type="HLH")
    await open_widget(page, gemini_server.url, user)
    bodies: list[dict[str, Any]] = []
    page.on(
        "request",
        lambda r: bodies.append(r.post_data_json) if r.url.endswith("/query/stream") else None,
    )
    question = "회의에서 아무도 말을 안 해요 " + SLOW.format(chunks=50, ms=40)
    await ask(page, question)

    samples = await sample_until_finished(page)
    streaming = [s for s in samples if s["status"] == "streaming"]
    lengths = [len(s["text"]) for s in streaming]
    growing = sorted(set(lengths) - {0})
    assert len(growing) >= 5, lengths  # seen at several partial lengths, not only the end
    assert lengths == sorted(lengths)  # text only grows
    assert all(s["typing"] and s["busy"] == "true" for s in streaming)

    final = samples[-1]
    assert final["status"] == "complete"
    assert not final["typing"] and final["busy"] == "false"
    assert len(final["text"]) > max(growing[:-1], default=0)
    assert "회의에서”에 대해 이야기해 주셔서 고맙습니다." in final["text"]
    assert "emulator" not in final["text"]
    stored = await stored_message(gemini_server.url, user, page, final["messageId"])
    assert stored["content"] == final["text"]
    assert stored["status"] == "complete"
    assert len(bodies) == 1 and bodies[0]["question"] == question
    assert bodies[0]["client_message_id"] and bodies[0]["conversation_id"]
    # The user's question is shown as sent, Korean intact.
    assert await page.locator(".lc-msg-user .lc-msg-text").last.text_content() == question
    assert await page.get_attribute("#lc-log", "role") == "log"
    assert await page.get_attribute("#lc-log", "aria-live") == "polite"
    page.problems.assert_clean()


async def test_stop_button_cancels_the_answer_and_keeps_the_partial_text(
    gemini_server: RunningServer, gclient: httpx.AsyncClient, page: Any
) -> None:
    user = await make_user(gclient)
    await open_widget(page, gemini_server.url, user)
    cancels: list[str] = []
    page.on("request", lambda r: cancels.append(r.url) if r.url.endswith("/cancel") else None)
    await ask(page, "팀장이 처음이에요 " + SLOW.format(chunks=200, ms=40))
    await wait_until_chars(page, 30)
    stop = page.get_by_role("button", name="답변 중지")
    assert await stop.is_enabled()
    await stop.click()

    final = await wait_finished(page, timeout=10_000)
    assert final["status"] == "interrupted"
    assert "답변이 중지되었습니다." in await page.locator(ASSISTANT).text_content()
    assert len(cancels) == 1 and final["messageId"] in cancels[0]
    assert 30 <= len(final["text"]) < 200 * 7
    stored = await stored_message(gemini_server.url, user, page, final["messageId"])
    assert stored["status"] == "interrupted"
    assert stored["finish_reason"] == "cancelled"
    assert stored["content"] == final["text"]
    assert await stop.is_disabled()
    assert await page.get_by_role("button", name="보내기").is_enabled()
    page.problems.assert_clean()


async def test_dropped_connection_resumes_from_the_last_event_id(
    gemini_server: RunningServer, gclient: httpx.AsyncClient, page: Any
) -> None:
    user = await make_user(gclient)
    resumes: list[dict[str, str]] = []

    def on_request(request: Any) -> None:
        if "/coaching/streams/" in request.url and request.method == "GET":
            resumes.append(request.headers)

    async with dropping_proxy(gemini_server.url) as proxy:
        await open_widget(page, proxy.url, user)
        page.on("request", on_request)
        await ask(page, "팀원이 지쳐 보여요 " + SLOW.format(chunks=70, ms=40))
        await wait_until_chars(page, 60)
        before = len((await answer_state(page))["text"])
        await proxy.drop(refuse_for=0.6)  # every connection reset; new ones refused a while

        final = await wait_finished(page)

    assert proxy.drops == 1
    assert final["status"] == "complete"
    assert final["reconnects"] >= 1
    assert resumes and int(resumes[0]["last-event-id"]) >= 2
    assert len(final["text"]) > before
    stored = await stored_message(gemini_server.url, user, page, final["messageId"])
    assert stored["content"] == final["text"]  # nothing lost, nothing doubled
    assert len(final["text"]) == 70 * 7
    page.problems.assert_clean()


# -- safe rendering --------------------------------------------------------------------


SCRIPT = "<script>__lcXss=1</script>"
IMG = "<img src=x onerror=__lcImg=1>"
MARKUP_DOC = f"""---
title: 안건 메모의 태그 다루기
category: coaching_guides
leadership_types: []
followership_types: []
tags: [안건, 메모, 태그]
example_questions:
  - "안건 메모에 태그가 있어요"
  - "메모의 태그는 어떻게 보여 주나요?"
  - "회의 안건 메모를 어떻게 쓰나요?"
---

# 안건 메모의 태그 다루기

## 태그를 글자로 보여 주기

회의 안건 메모에 {SCRIPT} 같은 태그가 있으면 글자 그대로 팀원에게 보여 주세요.

안건 메모의 {IMG} 표시도 그림이 아니라 글자로 읽히게 하세요.
"""


@pytest.fixture(scope="module")
async def markup_server(
    settings: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningServer]:
    kb: Path = tmp_path_factory.mktemp("markup-kb")
    (kb / "coaching_guides").mkdir()
    (kb / "coaching_guides" / "memo-tags.md").write_text(MARKUP_DOC, encoding="utf-8")
    async with serving(
        settings.with_overrides(
            retrieval_enabled=True,
            knowledge_base_dir=kb,
            data_dir=tmp_path_factory.mktemp("markup-data"),
            rag_embedder="hash",
        )
    ) as running:
        yield running


async def test_markup_in_the_answer_is_shown_as_text_and_never_runs(
    markup_server: RunningServer, page: Any
) -> None:
    async with httpx.AsyncClient(base_url=markup_server.url, timeout=30) as client:
        user = await make_user(client)
    await open_widget(page, markup_server.url, user)
    question = f"회의 안건 메모의 태그는 어떻게 보여 주나요? {SCRIPT}{IMG}"
    await ask(page, question)
    final = await wait_finished(page)
    assert final["status"] == "complete"
    # the offline coach quotes the passage's advice, markup and all
    assert SCRIPT in final["text"] and IMG in final["text"], final["text"]
    await asyncio.sleep(0.3)  # an injected <img> would have fired onerror by now
    flags = await page.evaluate("[typeof window.__lcXss, typeof window.__lcImg]")
    assert flags == ["undefined", "undefined"]
    assert await page.locator("#lc-log img, #lc-log script").count() == 0
    assert await page.locator(".lc-msg-user .lc-msg-text").last.text_content() == question
    page.problems.assert_clean()


# -- WebSocket -------------------------------------------------------------------------


async def test_websocket_transport_streams_resumes_after_a_drop_and_cancels(
    settings: Any, emulator: str, page: Any
) -> None:
    # ws.py checks Origin against CORS_ORIGINS, and the widget's origin is the server's
    # own, so this server lists it (the browser reaches it through the proxy's origin).
    async with dropping_proxy() as proxy:
        running = await start_server(
            gemini_settings(settings, emulator).with_overrides(
                cors_origins=(ALLOWED_ORIGIN, proxy.url)
            )
        )
        proxy.upstream_port = int(running.url.rsplit(":", 1)[1])
        try:
            async with httpx.AsyncClient(base_url=running.url) as c:
                user = await make_user(c)
            sockets: list[Any] = []
            sent: list[dict[str, Any]] = []
            http_cancels: list[str] = []

            def on_socket(ws: Any) -> None:
                sockets.append(ws)
                ws.on("framesent", lambda payload: sent.append(json.loads(payload)))

            page.on("websocket", on_socket)
            page.on(
                "request",
                lambda r: http_cancels.append(r.url) if r.url.endswith("/cancel") else None,
            )
            await open_widget(page, proxy.url, user, transport="ws")
            assert await page.get_by_label("웹소켓").is_checked()

            # 1. A drop mid-answer: the widget reconnects and sends `resume`.
            await ask(page, "신입 팀원이 조용해요 " + SLOW.format(chunks=60, ms=40))
            await wait_until_chars(page, 40)
            await proxy.drop(refuse_for=0.4)
            final = await wait_finished(page)
            assert final["status"] == "complete"
            assert final["reconnects"] >= 1
            assert len(sockets) >= 2
            assert all(user.token not in ws.url for ws in sockets)  # token never in the URL
            resume = [f for f in sent if f["type"] == "resume"]
            assert resume and resume[0]["message_id"] == final["messageId"]
            assert resume[0]["last_event_id"] >= 2
            question = next(f for f in sent if f["type"] == "question")
            assert question["client_message_id"] and question["conversation_id"]
            stored = await stored_message(running.url, user, page, final["messageId"])
            assert stored["content"] == final["text"]
            assert len(final["text"]) == 60 * 7

            # 2. Esc stops the next answer with a WebSocket `cancel` frame.
            await ask(page, "보고가 늦어요 " + SLOW.format(chunks=200, ms=40))
            await wait_until_chars(page, 20)
            await page.keyboard.press("Escape")
            final = await wait_finished(page, timeout=10_000)
            assert final["status"] == "interrupted"
            cancel = [f for f in sent if f["type"] == "cancel"]
            assert cancel == [{"type": "cancel", "message_id": final["messageId"]}]
            assert http_cancels == []
            stored = await stored_message(running.url, user, page, final["messageId"])
            assert stored["status"] == "interrupted"
            assert stored["content"] == final["text"]
            page.problems.assert_clean()
        finally:
            await stop_server(running)


async def test_websocket_from_the_widgets_own_origin_is_accepted(
    server: RunningServer, client: httpx.AsyncClient, page: Any
) -> None:
    # The test server's CORS_ORIGINS lists only the parent site; the widget's own origin
    # (this service) is still accepted for the WebSocket.
    user = await make_user(client)
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if r.url.endswith("/query/stream") else None)
    await open_widget(page, server.url, user, transport="ws")
    await ask(page, "동료와 갈등이 있어요")
    final = await wait_finished(page)
    assert final["status"] == "complete"
    assert "동료·갈등과 관련해" in final["text"]  # the offline coach restates the situation
    assert streams == []
    assert await page.get_by_label("웹소켓").is_checked()


# -- who may initialise the widget -----------------------------------------------------

PARENT_PAGE = """<!doctype html><html><head><meta charset="utf-8"></head><body>
<iframe id="w" src="{widget}" title="widget" width="900" height="600"></iframe>
<button id="open">open</button>
<script>
window.received = [];
const widgetOrigin = {origin};
const payload = {payload};
window.addEventListener("message", (e) => {{
  window.received.push({{origin: e.origin, type: e.data && e.data.type}});
  if (e.origin === widgetOrigin && e.data && e.data.type === "WIDGET_READY") {{
    e.source.postMessage({{type: "INIT_WIDGET", payload}}, widgetOrigin);
  }}
}});
document.getElementById("open").addEventListener("click", () => {{
  const popup = window.open(widgetOrigin + "/widget/", "lcpopup");
  // Keep sending, whatever the widget says: only the origin decides.
  setInterval(() => popup.postMessage({{type: "INIT_WIDGET", payload}}, "*"), 100);
}});
</script></body></html>"""


async def serve_parent(page: Any, origin: str, server_url: str, user: User) -> None:
    body = PARENT_PAGE.format(
        widget=f"{server_url}/widget/",
        origin=json.dumps(server_url),
        payload=json.dumps({"token": user.token, "userId": user.user_id, "leadershipType": "HHL"}),
    )

    async def fulfil(route: Any) -> None:
        await route.fulfill(status=200, content_type="text/html; charset=utf-8", body=body)

    await page.route(f"{origin}/**", fulfil)
    # Chromium's Local Network Access check: a public site may frame a loopback server
    # only with this permission (the real deployment is public on both sides).
    await page.context.grant_permissions(["local-network-access"], origin=origin)


async def test_allowed_parent_origin_initialises_the_widget(
    server: RunningServer, client: httpx.AsyncClient, page: Any
) -> None:
    user = await make_user(client)
    await serve_parent(page, ALLOWED_ORIGIN, server.url, user)
    await page.goto(f"{ALLOWED_ORIGIN}/host.html")
    frame = page.frame_locator("#w")
    await frame.locator("#lc-app[data-state=ready]").wait_for()
    assert "참여친밀형" in await frame.locator(".lc-type-name").text_content()
    await page.wait_for_function("window.received.some(m => m.type === 'WIDGET_REPORT_LOADED')")
    received = await page.evaluate("window.received")
    assert received[0] == {"origin": server.url, "type": "WIDGET_READY"}

    # The same parent may also open the widget as a popup (window.opener).
    async with page.expect_popup() as info:
        await page.click("#open")
    popup = await info.value
    await popup.wait_for_selector("#lc-app[data-state=ready]")
    page.problems.assert_clean()


async def test_disallowed_parent_origin_can_neither_frame_nor_initialise_the_widget(
    server: RunningServer, client: httpx.AsyncClient, page: Any
) -> None:
    user = await make_user(client)
    reports: list[str] = []
    page.context.on(
        "request",
        lambda r: reports.append(r.url) if r.url.endswith("/interpretation") else None,
    )
    evil = "https://evil.example"
    await serve_parent(page, evil, server.url, user)
    await page.goto(f"{evil}/host.html")

    # frame-ancestors: the browser refuses to render the widget inside evil.example.
    await page.wait_for_timeout(800)
    assert any("frame-ancestors" in m for m in page.problems.csp)
    assert await page.evaluate("window.received") == []
    widget_frame = next((f for f in page.frames if f != page.main_frame), None)
    assert widget_frame is None or await widget_frame.query_selector("#lc-app") is None

    # A popup can be opened, but its INIT_WIDGET (sent every 100 ms) is ignored.
    async with page.expect_popup() as info:
        await page.click("#open")
    popup = await info.value
    await popup.wait_for_selector("#lc-app")
    await popup.wait_for_timeout(1200)
    assert await popup.get_attribute("#lc-app", "data-state") in ("waiting", "error")
    assert await popup.locator(".lc-type-name").count() == 0
    assert await popup.get_by_label("질문", exact=True).is_disabled()
    assert reports == []


# -- the demo page and keyboard use ----------------------------------------------------


async def test_demo_page_mints_a_token_and_embeds_the_widget(
    server: RunningServer, settings: Any, page: Any
) -> None:
    docs = bool(os.environ.get("LINKCOACH_DOCS_SCREENSHOT"))
    running = server
    if docs:
        # docs/widget.png: the same flow with retrieval on, so the answer cites the KB.
        # The index is built first (minutes, once: it is kept in test-artifacts/) because
        # embedding the whole KB takes longer than a server start is given.
        from linkcoach_stream.rag.retriever import open_retriever

        docs_settings = settings.with_overrides(
            retrieval_enabled=True, data_dir=ARTIFACTS / "docs-index"
        )
        retriever = await open_retriever(docs_settings)
        await retriever.close()
        running = await start_server(docs_settings)
    try:
        await demo_flow(running, page, docs=docs)
    finally:
        if running is not server:
            await stop_server(running)


async def demo_flow(server: RunningServer, page: Any, *, docs: bool) -> None:
    await page.set_viewport_size({"width": 1280, "height": 1000})
    minted: list[str] = []
    page.on("request", lambda r: minted.append(r.method) if r.url.endswith("/demo/token") else None)
    await page.goto(f"{server.url}/demo")
    frame = page.frame_locator("#linkcoach-widget")
    await frame.locator("#lc-app[data-state=ready]").wait_for()
    assert "참여코칭형" in await frame.locator(".lc-type-name").text_content()
    assert "리포트를 불러왔습니다" in await page.text_content("#demo-status")

    # A new demo user with assessment scores: the type follows the scores (HLH).
    for name, value in (("공유", "4.8"), ("상호작용", "3.9"), ("성장", "5.1")):
        await page.get_by_label(name, exact=True).fill(value)
    await page.get_by_role("button", name="새 데모 사용자로 위젯 열기").click()
    await frame.locator(".lc-type-name:has-text('HLH')").wait_for()
    assert minted == ["POST", "POST"]
    assert await frame.locator(".lc-dim-score").first.text_content() == "4.8 / 6 · 높음"

    box = frame.get_by_label("질문", exact=True)
    await box.fill("회의에서 아무도 말을 하지 않아요. 어떻게 시작하면 좋을까요?")
    await box.press("Enter")
    done = frame.locator("#lc-log > .lc-msg-assistant[data-status=complete]")
    await done.wait_for()
    answer = await done.text_content()
    assert "[오프라인 코치]" in answer and "회의와 관련해" in answer
    await frame.locator("#lc-log").evaluate("log => { log.scrollTop = 0; }")
    await page.screenshot(path=str(ARTIFACTS / "demo.png"))
    if docs:
        (ROOT / "docs").mkdir(exist_ok=True)
        await page.screenshot(path=str(ROOT / "docs" / "widget.png"))
    page.problems.assert_clean()


async def test_widget_is_usable_with_the_keyboard_alone(
    server: RunningServer, client: httpx.AsyncClient, page: Any
) -> None:
    user = await make_user(client)
    await open_widget(page, server.url, user)
    assert await page.get_by_role("region", name="리더십 리포트").count() == 1
    assert await page.get_by_role("log", name="대화 내용").count() == 1

    async def focused() -> str:
        result: str = await page.evaluate(
            "document.activeElement.id || document.activeElement.textContent.trim()"
        )
        return result

    await page.keyboard.press("Tab")
    assert await focused() == "질문 입력으로 건너뛰기"
    await page.keyboard.press("Enter")
    assert await focused() == "lc-question"
    await page.keyboard.type("팀원에게 피드백을 어떻게 주나요?")
    await page.keyboard.press("Enter")
    final = await wait_finished(page)
    assert final["status"] == "complete"
    assert await focused() == "lc-question"
    await page.keyboard.press("Tab")
    assert await focused() == "lc-send"  # the stop button is disabled, so skipped
    await page.keyboard.press("Shift+Tab")
    await page.keyboard.press("Shift+Tab")
    assert await page.evaluate("document.activeElement.value") == "sse"  # the transport
    page.problems.assert_clean()
