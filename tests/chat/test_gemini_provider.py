"""The Gemini provider against the emulator, over both stream transports: the direct
`alt=sse` reader and google-genai. Both must give the same text, usage and failures."""

from __future__ import annotations

import httpx
import pytest

from linkcoach_stream.config import Settings
from linkcoach_stream.llm.base import ChatPrompt, LLMError, StreamResult, Turn
from linkcoach_stream.llm.gemini import GeminiProvider, _EventReader
from linkcoach_stream.llm.prompts import user_message

from ..conftest import emulator_stats, free_port, gemini_settings

TRANSPORTS = ["direct", "sdk"]


def provider(settings: Settings, emulator: str, transport: str) -> GeminiProvider:
    return GeminiProvider(
        gemini_settings(settings, emulator).with_overrides(gemini_stream_transport=transport)
    )


def prompt(question: str) -> ChatPrompt:
    return ChatPrompt(
        system="당신은 리더십 코치입니다.",
        history=[Turn("user", "안녕하세요"), Turn("assistant", "반갑습니다.")],
        question=question,
    )


async def collect(p: GeminiProvider, question: str) -> tuple[list[str], StreamResult]:
    result = StreamResult()
    chunks = [chunk async for chunk in p.stream(prompt(question), result)]
    return chunks, result


async def unary_answer(emulator: str, question: str) -> str:
    """The emulator's non-streamed answer for the same request, fetched without either
    transport under test."""
    body = {"contents": [{"role": "user", "parts": [{"text": user_message(question, ())}]}]}
    async with httpx.AsyncClient() as c:
        r = await c.post(
            f"{emulator}/v1beta/models/m:generateContent",
            json=body,
            headers={"x-goog-api-key": "k"},
        )
    r.raise_for_status()
    return r.json()["candidates"][0]["content"]["parts"][0]["text"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stream_gives_the_whole_korean_answer_with_usage(
    settings: Settings, emulator: str, transport: str
) -> None:
    p = provider(settings, emulator, transport)
    try:
        chunks, result = await collect(p, "팀원에게 피드백을 주는 방법")
    finally:
        await p.aclose()
    assert len(chunks) == 12
    assert "".join(chunks) == await unary_answer(emulator, "팀원에게 피드백을 주는 방법")
    assert result.finish_reason == "stop"
    assert result.usage.total_tokens and result.usage.prompt_tokens
    assert result.usage.completion_tokens


async def stream_requests(emulator: str) -> int:
    return int((await emulator_stats(emulator))["requests"].get("streamGenerateContent", 0))


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("status", "retryable", "requests"),
    [(400, False, 1), (503, True, 2)],  # llm_retries=1 in the test settings
)
async def test_error_before_the_first_chunk_is_retried_only_when_retryable(
    settings: Settings, emulator: str, transport: str, status: int, retryable: bool, requests: int
) -> None:
    p = provider(settings, emulator, transport)
    before = await stream_requests(emulator)
    try:
        with pytest.raises(LLMError) as caught:
            await collect(p, f"실패 [[emulator:fault=before_first,fault_status={status}]]")
    finally:
        await p.aclose()
    assert caught.value.kind == f"http_{status}"
    assert caught.value.retryable is retryable
    assert await stream_requests(emulator) - before == requests


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_error_after_some_chunks_raises_after_yielding_them(
    settings: Settings, emulator: str, transport: str
) -> None:
    p = provider(settings, emulator, transport)
    result = StreamResult()
    seen: list[str] = []
    try:
        with pytest.raises(LLMError) as caught:
            async for chunk in p.stream(
                prompt("중간 실패 [[emulator:fault=mid_stream,fault_after_chunks=3]]"), result
            ):
                seen.append(chunk)
    finally:
        await p.aclose()
    assert len(seen) == 3
    assert caught.value.kind == "http_503"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stall_and_abort_mid_stream_are_reported(
    settings: Settings, emulator: str, transport: str
) -> None:
    p = provider(settings, emulator, transport)
    try:
        with pytest.raises(LLMError) as stalled:
            await collect(p, "멈춤 [[emulator:fault=stall,fault_after_chunks=2]]")
        with pytest.raises(LLMError) as aborted:
            await collect(
                p, "끊김 [[emulator:fault=mid_stream,mid_stream_action=abort,fault_after_chunks=2]]"
            )
    finally:
        await p.aclose()
    assert stalled.value.kind == "stall"
    assert aborted.value.kind in {"connection", "protocol"}


def test_event_reader_joins_split_lines_and_reads_a_bare_error_object() -> None:
    reader = _EventReader()
    body = (
        b'data: {"candidates": [{"content": {"parts": [{"text": "\xea\xb0\x80"}]}}]}\r\n\r\n'
        b'data: {"candidates": [{"content": {"parts": [{"text": "x", "thought": true}]}}]}\n\n'
        b": comment\n"
        b'{\n  "error": {\n    "code": 500,\n    "message": "boom"\n  }\n}\n'
    )
    events = []
    for i in range(0, len(body), 5):  # cut everywhere, mid-character included
        events += reader.feed(body[i : i + 5])
    events += reader.close()
    assert events[0]["candidates"][0]["content"]["parts"][0]["text"] == "가"
    assert events[2] == {"error": {"code": 500, "message": "boom"}}
    assert len(events) == 3


def test_event_reader_refuses_garbage() -> None:
    reader = _EventReader()
    with pytest.raises(LLMError):
        reader.feed(b"data: {not json\n\n")
    reader = _EventReader()
    reader.feed(b"<html>proxy error\n")
    with pytest.raises(LLMError):
        reader.close()


async def test_chunk_deadline_counts_only_the_time_spent_waiting_for_a_part() -> None:
    """A reader that is slow between parts is not a stalled upstream; a read that waits
    past the limit is; a cancel from elsewhere stays a cancel."""
    import asyncio

    from linkcoach_stream.llm.gemini import _ChunkDeadline

    made: list[_ChunkDeadline] = []

    async def reads(waits: list[float], *, first: float, idle: float, pause: float) -> str:
        deadline = _ChunkDeadline(first_s=first, idle_s=idle)
        made.append(deadline)
        try:
            for wait in waits:
                deadline.reading()
                try:
                    await asyncio.sleep(wait)
                except asyncio.CancelledError:
                    if deadline.expired_here():
                        return "timed out"
                    raise
                deadline.part(text=True)
                await asyncio.sleep(pause)  # the reader's own work between parts
            return "complete"
        finally:
            deadline.close()

    # Parts 0.05 s apart, the reader pausing 0.2 s after each: well past the 0.1 s limit
    # in all, never while waiting.
    assert await reads([0.05] * 4, first=0.3, idle=0.1, pause=0.2) == "complete"
    # The third part takes 0.4 s to come: the idle limit (0.1 s) applies after text.
    assert await reads([0.05, 0.05, 0.4], first=1.0, idle=0.1, pause=0) == "timed out"
    # No first part within its own limit.
    assert await reads([0.4], first=0.1, idle=5.0, pause=0) == "timed out"

    # Cancelled from elsewhere in the same moment the deadline passes: still a cancel.
    task = asyncio.create_task(reads([5.0], first=5.0, idle=5.0, pause=0))
    await asyncio.sleep(0.05)
    task.cancel()
    made[-1]._last -= 10  # the read has waited past its limit
    made[-1]._fire()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_retry_backoff_past_the_first_chunk_limit_is_not_a_cancel(
    settings: Settings,
) -> None:
    """An upstream error just before the first-chunk limit, then a backoff that outlasts
    it: the retries run and the turn fails with the upstream's error, not a bare cancel."""
    import asyncio

    from aiohttp import web

    calls = 0

    async def overloaded(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        await request.read()
        await asyncio.sleep(0.2)
        return web.json_response({"error": {"code": 503, "message": "overloaded"}}, status=503)

    app = web.Application()
    app.router.add_post("/{tail:.*}", overloaded)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    p = GeminiProvider(
        settings.with_overrides(
            llm_provider="gemini",
            gemini_api_key="k",
            gemini_base_url=f"http://127.0.0.1:{port}",
            llm_first_chunk_timeout_s=0.5,
            llm_idle_timeout_s=1.0,
            llm_retries=2,
            gemini_stream_transport="direct",
        )
    )

    async def slow_backoff(attempt: int) -> None:
        await asyncio.sleep(0.5)  # ends past the attempt's 0.5 s first-chunk limit

    p._backoff = slow_backoff  # type: ignore[method-assign]
    try:
        with pytest.raises(LLMError) as failed:
            await collect(p, "질문")
    finally:
        await p.aclose()
        await runner.cleanup()
    assert failed.value.kind == "http_503"
    assert calls == 3
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_direct_stream_goes_through_the_proxy_the_environment_names(
    settings: Settings, emulator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing listens on the upstream port: only a request sent to the proxy (here the
    # emulator itself, which serves the absolute-form request) can be answered.
    monkeypatch.setenv("HTTP_PROXY", emulator)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    p = GeminiProvider(
        gemini_settings(settings, emulator).with_overrides(
            gemini_stream_transport="direct", gemini_base_url="http://127.0.0.1:1"
        )
    )
    try:
        chunks, result = await collect(p, "프록시를 거쳐도 답이 오나요?")
    finally:
        await p.aclose()
    assert "".join(chunks) == await unary_answer(emulator, "프록시를 거쳐도 답이 오나요?")
    assert result.usage is not None

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    bypassing = GeminiProvider(
        gemini_settings(settings, emulator).with_overrides(
            gemini_stream_transport="direct", gemini_base_url="http://127.0.0.1:1", llm_retries=0
        )
    )
    try:
        with pytest.raises(LLMError):
            await collect(bypassing, "프록시 없이")
    finally:
        await bypassing.aclose()
