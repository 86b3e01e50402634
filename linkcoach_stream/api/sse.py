"""Server-Sent Events: a turn's stream encoded as SSE frames, sent by a response of its
own. The rules (counting, the shutdown grace and farewell) are the streaming edge's
(`api/streaming.py`); this module frames events and sends them.

An `EventStream` is sent by the request's own task, with one more task per stream that
waits for the client to leave (`http.disconnect`) and sends the `: ping` comments while
it waits. sse-starlette runs four tasks and an anyio task group per response (sending,
pings, shutdown watch, disconnect watch): ~15 KB of a held stream's memory in a
tracemalloc diff over 300 held streams. With this response (and the edge's stream in
place of a pump task and queue) a held stream costs 57.8 KB instead of 78.7 KB at 500
streams, retrieval on (`python benchmarks/streams.py --levels 500 --repeats 0
--skip-scale`, hold phase; the baseline relay measured 68.9 and 69.1 KB in the same two
runs). Kept from sse-starlette: pings (`STREAM_PING_INTERVAL`),
disconnect detection, `Cache-Control: no-store`, `X-Accel-Buffering: no`, an empty body
for HEAD, a per-frame send timeout where the connection does not bound writes itself,
and the shutdown farewell (the edge's, told by its shutdown watch).

Decisions, and what not to "fix":
- Pings are sent by the disconnect watcher, between waits for `receive()` bounded by the
  ping interval: cancelling a wait for `receive()` loses nothing (a disconnect stays
  reported), where cancelling the wait for the next event would end the event stream.
- Frames and pings are sent under one lock: an ASGI server need not accept two sends at
  once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..server import WRITE_TIMEOUT_EXTENSION
from ..services.events import StreamEvent
from ..state import state_of
from . import streaming
from .middleware import BODY_SEND

SSE_HEADERS = {"Cache-Control": "no-store", "Connection": "keep-alive", "X-Accel-Buffering": "no"}
_PING = b": ping\r\n\r\n"


def frame(ev: StreamEvent) -> bytes:
    """One SSE frame, built from the event's shared JSON encoding (compact JSON has no
    line breaks, so it is one `data:` line). An unnumbered event (the farewell) has no
    `id:`, so a browser's `Last-Event-ID` stays the last event of the answer."""
    if ev.id == 0:
        return b"event: %s\r\ndata: %s\r\n\r\n" % (ev.event.encode(), ev.encoded())
    return b"id: %d\r\nevent: %s\r\ndata: %s\r\n\r\n" % (ev.id, ev.event.encode(), ev.encoded())


class EventStream(Response):
    """The response of one SSE stream."""

    media_type = "text/event-stream"

    def __init__(
        self, stream: streaming.Stream, *, ping_s: float, send_timeout_s: float | None
    ) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers(SSE_HEADERS)
        self.stream = stream
        self.ping_s = ping_s
        self.send_timeout_s = send_timeout_s
        self._lock = asyncio.Lock()

    async def _send(self, send: Send, body: bytes, *, more: bool = True) -> None:
        async with self._lock:
            message: dict[str, Any] = {
                "type": "http.response.body",
                "body": body,
                "more_body": more,
            }
            if self.send_timeout_s is None:
                await send(message)
                return
            async with asyncio.timeout(self.send_timeout_s):
                await send(message)

    async def _watch(self, receive: Receive, send: Send) -> None:
        """Until the client leaves: ping while it stays, then end the stream."""
        try:
            while True:
                try:
                    async with asyncio.timeout(self.ping_s if self.ping_s > 0 else None):
                        message = await receive()
                except TimeoutError:
                    await self._send(send, _PING)
                    continue
                if message["type"] == "http.disconnect":
                    return
        except (OSError, TimeoutError):
            pass  # a ping that could not be sent: the client is gone too
        finally:
            self.stream.leave()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        await send(start)
        if scope.get("method") == "HEAD":
            # Headers as for GET; an endless body must not start (sse-starlette's rule).
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        # The head went through every middleware; the frames skip the layers that only
        # look at the head (one call each per frame).
        send = scope.get(BODY_SEND, send)
        watcher = asyncio.create_task(self._watch(receive, send))
        try:
            async with aclosing(self.stream.relay()) as relayed:
                async for ev in relayed:
                    await self._send(send, frame(ev))
            await self._send(send, b"", more=False)
        except (OSError, TimeoutError):
            pass  # the client left, or stopped reading: the generation goes on
        finally:
            watcher.cancel()


def response(
    request: Request,
    events: AsyncIterator[StreamEvent],
    *,
    message_id: str | None,
    after: int = 0,
) -> EventStream:
    """Stream a turn's events (after event `after`) as SSE, by the edge's rules."""
    state = state_of(request)
    settings = state.settings
    conn = streaming.connection(state, "sse")
    conn.watch_shutdown()
    bounded = WRITE_TIMEOUT_EXTENSION in request.scope.get("extensions", ())
    return EventStream(
        conn.open(events, message_id=message_id, after=after),
        ping_s=settings.stream_ping_interval_s,
        # Under `linkcoach serve` the connection itself bounds a stalled write
        # (`server.py`), which costs nothing per frame.
        send_timeout_s=None if bounded else settings.stream_send_timeout_s,
    )
