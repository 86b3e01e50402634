"""`/embed.js` in headless Chromium, loaded by a parent page on another origin exactly as
the product's embed script is: `LinkCoach.init(...)` or `data-auto-init`, then the
widget in its iframe streams answers from this server.

The parent page is served by Playwright at `https://parent.example` (listed in the test
server's CORS_ORIGINS); the widget and the script come from the test server.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from linkcoach_stream.services.auth import TokenService
from tests.conftest import ALLOWED_ORIGIN, API_KEY, RunningServer, User, make_user

IFRAME = "#link-coach-widget-iframe"
ASSISTANT = "#lc-log > .lc-msg-assistant:last-child"

INIT_PAGE = """<!doctype html><html><head><meta charset="utf-8"></head><body>
<h1>부모 사이트</h1>
<script src="{server}/embed.js"></script>
<script>
window.events = [];
LinkCoach.init({{
  token: {token},
  userId: {user_id},
  leadershipType: "개별비전형",
  // The product's own demo data: no dimension scores, so the type decides the report.
  assessmentData: {{ scores: {{ extraversion: 75, thinking: 80, judging: 70 }} }},
  width: "420px",
  height: "640px",
  onTokenExpired: async (data) => {{
    window.events.push(["expired", data.code]);
    return await window.mintToken();
  }},
  onError: (data) => window.events.push(["error", data.code]),
}});
</script></body></html>"""

AUTO_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<script src="{server}/embed.js" data-auto-init="true" data-token="{token}"
        data-user-id="{user_id}" data-leadership-type="HLH" data-container="#slot"
        data-position="custom"></script>
</head><body><h1>부모 사이트</h1><div id="slot"></div></body></html>"""


async def serve_parent(page: Any, body: str) -> None:
    async def fulfil(route: Any) -> None:
        await route.fulfill(status=200, content_type="text/html; charset=utf-8", body=body)

    await page.route(f"{ALLOWED_ORIGIN}/**", fulfil)
    # Chromium's Local Network Access check: a public site may frame a loopback server
    # only with this permission (the real deployment is public on both sides).
    await page.context.grant_permissions(["local-network-access"], origin=ALLOWED_ORIGIN)


def widget_frame(page: Any, server: RunningServer) -> Any:
    return next(f for f in page.frames if f.url.startswith(f"{server.url}/widget/"))


async def ask(frame: Any, question: str) -> None:
    box = frame.get_by_label("질문", exact=True)
    await box.fill(question)
    await box.press("Enter")


async def answer(frame: Any) -> dict[str, Any]:
    state: dict[str, Any] = await frame.eval_on_selector(
        ASSISTANT,
        """el => ({text: el.querySelector('.lc-msg-text').textContent,
                   status: el.dataset.status, chars: Number(el.dataset.chars || 0)})""",
    )
    return state


async def finished(frame: Any, n: int) -> dict[str, Any]:
    """The n-th answer once it has finished, with the lengths it was seen at meanwhile."""
    seen: list[int] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if await frame.locator(".lc-msg-assistant").count() >= n:
            state = await answer(frame)
            if state["status"] != "streaming":
                state["seen"] = seen
                return state
            seen.append(state["chars"])
        await asyncio.sleep(0.04)
    raise AssertionError("the answer did not finish")


async def stored_conversation(server: RunningServer, user: User, frame: Any) -> list[Any]:
    conversation_id = await frame.get_attribute("#lc-log", "data-conversation-id")
    async with httpx.AsyncClient(base_url=server.url, headers=user.headers) as c:
        r = await c.get(f"/api/v1/conversations/{conversation_id}")
    assert r.status_code == 200, r.text
    messages: list[Any] = r.json()["messages"]
    return messages


async def test_embed_script_streams_refreshes_an_expired_token_and_keeps_the_products_api(
    server: RunningServer, client: httpx.AsyncClient, page: Any
) -> None:
    user = await make_user(client, leadership_type=None)
    minted: list[str] = []

    async def mint_token() -> str:
        r = await client.post(
            "/api/v1/auth/token", json={"user_id": user.user_id}, headers={"X-API-Key": API_KEY}
        )
        assert r.status_code == 201, r.text
        token: str = r.json()["access_token"]
        minted.append(token)
        return token

    streams: list[dict[str, str]] = []
    page.on(
        "request",
        lambda r: streams.append(r.headers) if r.url.endswith("/coaching/query/stream") else None,
    )
    await page.expose_function("mintToken", mint_token)
    await serve_parent(
        page,
        INIT_PAGE.format(
            server=server.url, token=json.dumps(user.token), user_id=json.dumps(user.user_id)
        ),
    )
    await page.goto(f"{ALLOWED_ORIGIN}/coach.html")

    # The product's API and iframe, this server's widget.
    await page.wait_for_function("LinkCoach.isInitialized && LinkCoach.iframe !== null")
    config = await page.evaluate("({...LinkCoach.config, onTokenExpired: null, onError: null})")
    assert config["widgetUrl"] == f"{server.url}/widget/"
    assert config["position"] == "bottom-right" and config["zIndex"] == 9999
    style = await page.eval_on_selector(
        IFRAME,
        "f => ({position: f.style.position, width: f.style.width, height: f.style.height,"
        " right: f.style.right, bottom: f.style.bottom, parent: f.parentElement.tagName})",
    )
    assert style == {
        "position": "fixed",
        "width": "420px",
        "height": "640px",
        "right": "20px",
        "bottom": "20px",
        "parent": "BODY",
    }
    frame = widget_frame(page, server)
    await frame.wait_for_selector("#lc-app[data-state=ready]")
    assert "개별비전형" in await frame.text_content(".lc-type-name")

    # 1. An answer streams: seen growing before it is complete.
    await ask(frame, "팀원들의 목표를 어떻게 맞출까요?")
    first = await finished(frame, 1)
    assert first["status"] == "complete"
    partial = sorted(set(first["seen"]) - {0})
    assert len(partial) >= 3, first["seen"]
    # The offline coach restates the question's own nouns (it never quotes it back).
    assert "팀원들의 목표와 관련해" in first["text"]

    # 2. The widget's token expires: pushing one that is already past `exp` stands in for
    # an hour of waiting. The next call gets 401, the widget posts WIDGET_TOKEN_EXPIRED,
    # the parent mints a new token and the same question goes through.
    tokens = TokenService(server.settings)
    expired, _ = tokens.mint_access(user_id=user.user_id, now=int(time.time()) - 3600, ttl_s=60)
    await page.evaluate("token => LinkCoach.setToken(token)", expired)
    await frame.wait_for_selector("#lc-notice:has-text('인증 정보를 갱신했습니다')")
    await ask(frame, "회의 시간을 줄이고 싶어요")
    second = await finished(frame, 2)
    assert second["status"] == "complete", second
    assert "회의 시간과 관련해" in second["text"], second["text"]
    assert await page.evaluate("window.events") == [
        ["expired", "token_expired"],
        ["error", "token_expired"],  # WIDGET_ERROR {status: 401} as before
    ]
    assert len(minted) == 1
    auth = [h["authorization"] for h in streams]
    assert auth == [
        f"Bearer {user.token}",
        f"Bearer {expired}",
        f"Bearer {minted[0]}",
    ]

    # 3. The parent may push a token at any time (updateUser keeps the product's name).
    pushed = await mint_token()
    await page.evaluate("token => LinkCoach.updateUser({token})", pushed)
    await frame.wait_for_function("() => !document.querySelector('#lc-question').disabled")
    await ask(frame, "칭찬은 어떻게 하나요?")
    assert (await finished(frame, 3))["status"] == "complete"
    assert streams[-1]["authorization"] == f"Bearer {pushed}"
    stored = await stored_conversation(server, user, frame)
    assert [m["role"] for m in stored] == ["user", "assistant"] * 3
    assert [m["status"] for m in stored] == ["complete"] * 6

    # 4. show / hide / toggle, and the widget's own messages.
    display = "LinkCoach.iframe.style.display"
    await page.evaluate("LinkCoach.hide()")
    assert await page.evaluate(display) == "none"
    await page.evaluate("LinkCoach.toggle()")
    assert await page.evaluate(display) == "block"
    await page.evaluate("LinkCoach.toggle(); LinkCoach.show()")
    assert await page.evaluate(display) == "block"
    await frame.evaluate("parent.postMessage({type: 'WIDGET_RESIZE', data: {height: 512}}, '*')")
    await page.wait_for_function("LinkCoach.iframe.style.height === '512px'")
    # The same message from any other window (here the parent itself) is ignored.
    await page.evaluate("window.postMessage({type: 'WIDGET_CLOSE'}, '*')")
    await page.wait_for_timeout(200)
    assert await page.evaluate("LinkCoach.isInitialized") is True
    await frame.evaluate("parent.postMessage({type: 'WIDGET_CLOSE'}, '*')")
    await page.wait_for_function("!LinkCoach.isInitialized && LinkCoach.iframe === null")
    assert await page.locator(IFRAME).count() == 0
    page.problems.assert_clean()


async def test_embed_script_auto_initialises_from_its_data_attributes(
    server: RunningServer, client: httpx.AsyncClient, page: Any
) -> None:
    user = await make_user(client, leadership_type=None)
    await serve_parent(
        page, AUTO_PAGE.format(server=server.url, token=user.token, user_id=user.user_id)
    )
    await page.goto(f"{ALLOWED_ORIGIN}/auto.html")
    await page.wait_for_function("window.LinkCoach && LinkCoach.isInitialized")
    placed = await page.eval_on_selector(
        IFRAME, "f => ({parent: f.parentElement.id, position: f.style.position})"
    )
    assert placed == {"parent": "slot", "position": "relative"}
    frame = widget_frame(page, server)
    await frame.wait_for_selector("#lc-app[data-state=ready]")
    assert "HLH" in await frame.text_content(".lc-type-name")

    await ask(frame, "1:1 면담을 처음 해요")
    done = await finished(frame, 1)
    assert done["status"] == "complete"
    assert "1:1 면담" in done["text"] and "[오프라인 코치]" in done["text"]

    # UPDATE_USER with assessment scores: the widget fetches the report for them.
    scores = {"공유": 2.0, "상호작용": 2.5, "성장": 5.5}
    await page.evaluate("scores => LinkCoach.updateUser({assessmentData: scores})", scores)
    await frame.wait_for_selector(".lc-type-name:has-text('LLH')")
    assert await frame.locator(".lc-dim-score").first.text_content() == "2.0 / 6 · 낮음"
    page.problems.assert_clean()
