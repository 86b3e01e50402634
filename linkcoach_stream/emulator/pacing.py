"""Playing a plan: paced SSE events, a JSON-array stream or one unary JSON answer.

Deliberate decisions (do not "fix"):

- Response headers go out with the first chunk, after the time-to-first-token wait: a
  status is only known once the model has produced something, so a failure before the
  first chunk is an HTTP error status. (google-genai 3.6 sends the request lazily, on the
  first ``__anext__``, so a client sees the wait there either way.)
- Every frame of a stream is encoded before the first wait; the pacing loop only sleeps
  and sends bytes. One extra task per stream watches for the client's disconnect so a
  stall or a long TTFT ends as soon as the client goes away, silently.
- A mid-stream error is, as on the real API, a pretty-printed error object after the
  ``data:`` events, with HTTP status 200 already sent.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .faults import InjectedAbort, fault_error
from .plan import Plan
from .state import Stats

__all__ = ["GenerationResponse"]

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-content-type-options", b"nosniff"),
]
_JSON_STREAM_HEADERS = [(b"content-type", b"application/json; charset=UTF-8")]


def _response_obj(plan: Plan, text: str, *, last: bool) -> dict[str, object]:
    candidate: dict[str, object] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if last:
        candidate["finishReason"] = plan.finish_reason
    candidate["index"] = 0
    obj: dict[str, object] = {"candidates": [candidate]}
    if last:
        obj["usageMetadata"] = plan.usage
    obj["modelVersion"] = plan.model_version
    obj["responseId"] = plan.response_id
    return obj


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _pause(seconds: float, disconnected: asyncio.Future[None]) -> bool:
    """Waits ``seconds``; True when the client went away meanwhile."""
    if seconds > 0:
        done, _ = await asyncio.wait((disconnected,), timeout=seconds)
        return bool(done)
    return disconnected.done()


class GenerationResponse(Response):
    """Plays a plan: paced SSE events, a JSON-array stream, or one unary JSON answer."""

    def __init__(self, plan: Plan, stats: Stats, *, mode: Literal["sse", "array", "unary"]) -> None:
        self.plan = plan
        self.stats = stats
        self.mode = mode
        self.status_code = 200
        self.background = None

    def _frames(self) -> list[bytes]:
        last = len(self.plan.pieces) - 1
        bodies = [
            orjson.dumps(_response_obj(self.plan, piece, last=i == last))
            for i, piece in enumerate(self.plan.pieces)
        ]
        if self.mode == "sse":
            return [b"data: " + body + b"\r\n\r\n" for body in bodies]
        return [(b"[" if i == 0 else b",\r\n") + body for i, body in enumerate(bodies)]

    def _cut(self) -> int:
        """How many frames go out before the fault."""
        if self.plan.fault in ("mid_stream", "stall"):
            return min(self.plan.config.fault_after_chunks, len(self.plan.pieces) - 1)
        return len(self.plan.pieces)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            if self.mode == "unary":
                await self._unary(send, watcher)
            else:
                self.stats.stream_started()
                try:
                    await self._stream(send, watcher)
                finally:
                    self.stats.streaming -= 1
        finally:
            watcher.cancel()

    async def _stream(self, send: Send, disconnected: asyncio.Future[None]) -> None:
        plan, stats = self.plan, self.stats
        frames = self._frames()
        cut = self._cut()
        headers = _SSE_HEADERS if self.mode == "sse" else _JSON_STREAM_HEADERS
        started = False
        for i in range(cut):
            if await _pause(plan.delays[i], disconnected):
                stats.disconnects += 1
                return
            if not started:
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                started = True
            await send({"type": "http.response.body", "body": frames[i], "more_body": True})
            stats.chunks_sent += 1
        if plan.fault is None:
            tail = b"]" if self.mode == "array" else b""
            await send({"type": "http.response.body", "body": tail, "more_body": False})
            stats.streams_completed += 1
            return
        stats.faults[plan.fault] += 1
        if await _pause(plan.delays[cut], disconnected):
            stats.disconnects += 1
            return
        if plan.fault == "stall":
            await disconnected
            stats.disconnects += 1
            return
        if plan.config.mid_stream_action == "abort":
            raise InjectedAbort("injected mid-stream connection abort")
        if not started:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
        error = fault_error(plan.config.fault_status)
        # As the real API does: a bare pretty-printed error object after the events.
        tail = (b"" if self.mode == "sse" else b",\r\n") + error.body(pretty=True) + b"\n"
        if self.mode == "array":
            tail += b"]"
        await send({"type": "http.response.body", "body": tail, "more_body": False})
        stats.errors[str(error.code)] += 1

    async def _unary(self, send: Send, disconnected: asyncio.Future[None]) -> None:
        plan, stats = self.plan, self.stats
        if await _pause(sum(plan.delays[: len(plan.pieces)]), disconnected):
            stats.disconnects += 1
            return
        if plan.fault == "stall":
            stats.faults["stall"] += 1
            await disconnected
            stats.disconnects += 1
            return
        if plan.fault == "mid_stream":
            stats.faults["mid_stream"] += 1
            if plan.config.mid_stream_action == "abort":
                raise InjectedAbort("injected connection abort")
            error = fault_error(plan.config.fault_status)
            stats.errors[str(error.code)] += 1
            await _send_bytes(send, error.code, error.body())
            return
        body = orjson.dumps(_response_obj(plan, "".join(plan.pieces), last=True))
        await _send_bytes(send, 200, body)


async def _send_bytes(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json; charset=UTF-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
