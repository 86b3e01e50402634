"""What a user does with an answer in the widget, in headless Chromium against the real
app: 👍/👎 (shown only once an answer has finished, stored on the server, replaced by
the other button) and 다시 답변 받기 (a new version streamed in the old one's place)."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from tests.browser.test_widget_e2e import (
    ASSISTANT,
    SLOW,
    ask,
    open_widget,
    stored_message,
    wait_finished,
    wait_until_chars,
)
from tests.conftest import RunningServer, make_user


async def pressed(page: Any) -> dict[str, str]:
    state: dict[str, str] = await page.eval_on_selector_all(
        f"{ASSISTANT} .lc-feedback-btn",
        "els => Object.fromEntries("
        "els.map(b => [b.dataset.rating, b.getAttribute('aria-pressed')]))",
    )
    return state


async def test_thumbs_appear_after_the_answer_and_store_one_replaceable_rating(
    gemini_server: RunningServer, gclient: httpx.AsyncClient, page: Any
) -> None:
    user = await make_user(gclient)
    await open_widget(page, gemini_server.url, user)
    posts: list[dict[str, Any]] = []
    page.on(
        "request",
        lambda r: posts.append(r.post_data_json) if r.url.endswith("/feedback") else None,
    )
    await ask(page, "회의 분위기를 바꾸고 싶어요 " + SLOW.format(chunks=40, ms=40))
    await wait_until_chars(page, 10)
    assert await page.locator(f"{ASSISTANT} .lc-feedback").count() == 0  # still streaming

    final = await wait_finished(page)
    assert final["status"] == "complete"
    up = page.locator(ASSISTANT).get_by_role("button", name="도움이 됐어요")
    down = page.locator(ASSISTANT).get_by_role("button", name="도움이 되지 않았어요")
    assert await up.text_content() == "👍" and await down.text_content() == "👎"
    assert await pressed(page) == {"up": "false", "down": "false"}

    await up.click()
    await page.wait_for_selector(f"{ASSISTANT}[data-feedback=up]")
    assert await pressed(page) == {"up": "true", "down": "false"}
    stored = await stored_message(gemini_server.url, user, page, final["messageId"])
    assert stored["feedback"]["rating"] == "up"

    await down.click()
    await page.wait_for_selector(f"{ASSISTANT}[data-feedback=down]")
    assert await pressed(page) == {"up": "false", "down": "true"}
    stored = await stored_message(gemini_server.url, user, page, final["messageId"])
    assert stored["feedback"]["rating"] == "down"
    assert posts == [{"rating": "up"}, {"rating": "down"}]
    conn = await asyncpg.connect(gemini_server.settings.database_url)
    try:
        ratings = await conn.fetch(
            "SELECT f.rating FROM message_feedback f JOIN messages m ON m.id = f.message_id"
            " WHERE m.user_id = $1",
            user.user_id,
        )
    finally:
        await conn.close()
    assert [r["rating"] for r in ratings] == ["down"]
    status = page.locator(f"{ASSISTANT} .lc-feedback-status")
    assert await status.text_content() == "의견을 보내 주셔서 고맙습니다."
    page.problems.assert_clean()


async def test_a_failed_answer_gets_no_thumbs(
    gemini_server: RunningServer, gclient: httpx.AsyncClient, page: Any
) -> None:
    user = await make_user(gclient)
    await open_widget(page, gemini_server.url, user)
    await ask(page, "실패 [[emulator:fault=before_first,fault_status=400]]")
    final = await wait_finished(page)
    assert final["status"] == "error"
    assert await page.locator(f"{ASSISTANT} .lc-feedback").count() == 0
    assert await page.locator(f"{ASSISTANT} .lc-regen-btn").count() == 1
    # The next, good answer gets them.
    await ask(page, "다시 물어볼게요")
    final = await wait_finished(page)
    assert final["status"] == "complete"
    assert await page.locator(f"{ASSISTANT} .lc-feedback-btn").count() == 2
    page.problems.assert_clean()


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_regenerate_button_streams_a_new_version_in_place_of_the_old(
    gemini_server: RunningServer, gclient: httpx.AsyncClient, page: Any, transport: str
) -> None:
    user = await make_user(gclient)
    await open_widget(page, gemini_server.url, user, transport=transport)
    regenerations: list[dict[str, Any]] = []
    page.on(
        "request",
        lambda r: regenerations.append(r.post_data_json) if r.url.endswith("/regenerate") else None,
    )
    await ask(page, "팀원이 회의에서 말을 안 해요 " + SLOW.format(chunks=30, ms=30))
    first = await wait_finished(page)
    assert first["status"] == "complete"
    regen = page.locator(ASSISTANT).get_by_role("button", name="다시 답변 받기")
    assert await regen.is_enabled()
    await regen.click()
    await page.wait_for_selector("#lc-log .lc-msg-assistant[data-version='2']")
    assert await page.get_by_role("button", name="보내기").is_disabled()
    final = await wait_finished(page)
    assert final["status"] == "complete" and final["messageId"] != first["messageId"]
    assert await page.locator("#lc-log .lc-msg-assistant").count() == 1
    assert await page.locator("#lc-log .lc-msg-user").count() == 1

    stored = await stored_message(gemini_server.url, user, page, final["messageId"])
    assert stored["content"] == final["text"]
    assert stored["version"] == 2
    assert stored["version_ids"] == [first["messageId"], final["messageId"]]
    if transport == "sse":
        assert len(regenerations) == 1 and regenerations[0]["client_message_id"]
    else:
        assert regenerations == []  # the socket's regenerate frame carried it
    # The new answer can be rated and regenerated in turn.
    assert await page.locator(f"{ASSISTANT} .lc-feedback-btn").count() == 2
    assert await page.locator(ASSISTANT).get_by_role("button", name="다시 답변 받기").is_enabled()
    page.problems.assert_clean()
