"""Server-Sent Events: a turn's stream encoded as SSE frames. The rules (counting, the
shutdown grace and farewell) are the streaming edge's (`api/streaming.py`); this module
only frames events and hands them to sse-starlette, which adds the pings, disconnect
detection, the send timeout (where the connection does not bound writes itself) and
tells the edge when the server shuts down."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

from sse_starlette import EventSourceResponse
from starlette.requests import Request

from ..server import WRITE_TIMEOUT_EXTENSION
from ..services.events import StreamEvent
from . import streaming

SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def frame(ev: StreamEvent) -> bytes:
    """One SSE frame, built from the event's shared JSON encoding (compact JSON has no
    line breaks, so it is one `data:` line). An unnumbered event (the farewell) has no
    `id:`, so a browser's `Last-Event-ID` stays the last event of the answer."""
    if ev.id == 0:
        return b"event: %s\r\ndata: %s\r\n\r\n" % (ev.event.encode(), ev.encoded())
    return b"id: %d\r\nevent: %s\r\ndata: %s\r\n\r\n" % (ev.id, ev.event.encode(), ev.encoded())


class _ShutdownNotice:
    """Given to sse-starlette as its `shutdown_event`, which it only ever `set()`s, when
    the server shuts down: instead of a waiting task per stream, it tells the edge."""

    def __init__(self, notify: Callable[[], None]) -> None:
        self._notify = notify

    def set(self) -> None:
        self._notify()


def response(
    request: Request,
    events: AsyncIterator[StreamEvent],
    *,
    message_id: str | None,
    after: int = 0,
) -> EventSourceResponse:
    """Stream a turn's events (after event `after`) as SSE, by the edge's rules."""
    settings = request.state.settings
    conn = streaming.connection(request.state, "sse")
    stream = conn.open(events, message_id=message_id, after=after)

    async def frames() -> AsyncIterator[bytes]:
        async with aclosing(stream.relay()) as relayed:
            async for ev in relayed:
                yield frame(ev)

    return EventSourceResponse(
        frames(),
        headers=SSE_HEADERS,
        ping=settings.stream_ping_interval_s,
        # Under `linkcoach serve` the connection itself bounds a stalled write
        # (`server.py`), which costs nothing per frame.
        send_timeout=None
        if WRITE_TIMEOUT_EXTENSION in request.scope.get("extensions", ())
        else settings.stream_send_timeout_s,
        shutdown_event=_ShutdownNotice(conn.shutdown),  # type: ignore[arg-type]
        shutdown_grace_period=settings.shutdown_grace_s,
    )
