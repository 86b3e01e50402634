"""Connection limits of `linkcoach serve`: how many connections a process holds and how
long a client may take to send its request.

uvicorn caps connections (`limit_concurrency`: past it a request gets a plain 503 and the
connection is closed) and closes idle keep-alive connections (`timeout_keep_alive`), but
it waits forever for a request's headers and body: a client that connects and sends
nothing, or one header byte every few seconds (slowloris), holds a connection and its
buffers for as long as it likes. `GuardedHttpToolsProtocol` adds the two missing timers:

- headers: from the connection's first byte (or from its opening, for a fresh connection)
  to the end of the headers, at most `HEADER_TIMEOUT`; past it a partial request gets
  `408` and a silent connection is closed;
- body: from the end of the headers to the end of the body, at most `BODY_TIMEOUT`; past
  it the connection is closed and the handler reading the body sees a disconnect.

A third timer bounds writes: when the socket's write buffer stays full and does not
shrink (the client stopped reading) for `STREAM_SEND_TIMEOUT`, the connection is
aborted, which ends any response on it as a client disconnect would. It runs only
while writing is paused, so a frame sent to a client that keeps up costs no timer; the
protocol marks the scope (`WRITE_TIMEOUT_EXTENSION`) so SSE responses leave out their
own per-frame send timeout (one cancel scope per frame, 4-9 % of the server's CPU at
400 streams). Served by a plain `uvicorn` (no such mark), they keep it.

Timers are loop callbacks, not tasks: an open connection costs no task. A WebSocket
upgrade stops them (the socket then has its own ping timeout).

Every limit is a setting (`config.py`). `linkcoach serve` hands them all to uvicorn
(`cli.serve_options`). A bare `uvicorn --factory linkcoach_stream.app:create_app` run
gets the application's own limits either way (admission, body sizes, `SHUTDOWN_GRACE`),
but uvicorn reads its server limits only from its own flags, before the factory runs:
`linkcoach uvicorn-args` prints the flags that give it the same ones as `linkcoach serve`
(`cli.uvicorn_args`), this protocol included (`--http`), which then reads the two timeouts
from the environment.

On shutdown uvicorn closes every WebSocket at once with 1012, while an SSE response is
let finish. `GracefulWebSocketProtocol` lets a socket that asked for it (a coaching
socket, once authenticated) be told instead, so its turns get the same grace and farewell
as SSE streams (`api/streaming.py`); a socket that did not ask is closed as before.
A bare uvicorn gets it with `--ws linkcoach_stream.server:GracefulWebSocketProtocol`
(part of `linkcoach uvicorn-args`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

from .config import Settings

_TIMEOUT_BODY = b'{"error":{"code":"request_timeout","message":"the request was not sent in time"}}'
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: application/json\r\n"
    b"connection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


# Present in `scope["extensions"]` of requests served by `GuardedHttpToolsProtocol`.
WRITE_TIMEOUT_EXTENSION = "linkcoach.write_timeout"
# In `scope["extensions"]` of sockets served by `GracefulWebSocketProtocol`:
# `{"listen": callable}`, through which the app asks to be told of shutdown.
SHUTDOWN_EXTENSION = "linkcoach.shutdown"


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    # A client whose socket accepts nothing for this long is dropped; 0 = never.
    write_timeout_s: float = 0.0


@functools.cache
def limits_from_env() -> ConnectionLimits:
    """The timeouts of `HEADER_TIMEOUT` / `BODY_TIMEOUT` / `STREAM_SEND_TIMEOUT`, read once
    per process."""
    return connection_limits(Settings.from_env())


def connection_limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        write_timeout_s=settings.stream_send_timeout_s,
    )


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body read timeouts; without `limits`
    (uvicorn's `--http linkcoach_stream.server:GuardedHttpToolsProtocol`) they come from
    the environment."""

    def __init__(self, *args: Any, limits: ConnectionLimits | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits if limits is not None else limits_from_env()
        self._read_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._request_begun = False

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(seconds, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self._request_begun and (cycle is None or not cycle.response_started):
            self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._write_resumed()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.limits.write_timeout_s > 0 and self._write_timer is None:
            self._arm_write(self.transport.get_write_buffer_size())

    def _arm_write(self, buffered: int) -> None:
        self._write_timer = self.loop.call_later(
            self.limits.write_timeout_s, self._write_timed_out, buffered
        )

    def resume_writing(self) -> None:
        self._write_resumed()
        super().resume_writing()

    def _write_resumed(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_timed_out(self, buffered: int) -> None:
        self._write_timer = None
        now = self.transport.get_write_buffer_size()
        if now < buffered:
            # The client is reading, only slowly (a large body): still in progress.
            self._arm_write(now)
            return
        # Not close(): that would wait for the very buffer the client does not read.
        self.transport.abort()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.limits.write_timeout_s > 0:
            self.scope["extensions"] = {WRITE_TIMEOUT_EXTENSION: {}}
        self._request_begun = True
        if self._read_timer is None:
            self._arm(self.limits.header_timeout_s)

    def on_headers_complete(self) -> None:
        self._arm(self.limits.body_timeout_s)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._request_begun = False
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        super().handle_websocket_upgrade()


class GracefulWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, with a say in shutdown: the app may register
    a callback under the scope extension `SHUTDOWN_EXTENSION`; on shutdown that callback
    is called instead of closing the socket, and the app closes it when it is done
    (uvicorn's `timeout_graceful_shutdown` still bounds how long it may take)."""

    _on_shutdown: Callable[[], None] | None = None

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][SHUTDOWN_EXTENSION] = {"listen": self._listen}

    def _listen(self, callback: Callable[[], None]) -> None:
        self._on_shutdown = callback

    def shutdown(self) -> None:
        callback, self._on_shutdown = self._on_shutdown, None
        if callback is None or self.close_sent or self.transport.is_closing():
            super().shutdown()
            return
        callback()


def connection_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn options that bound connections (part of `cli.serve_options`)."""
    limits = connection_limits(settings)
    return {
        # A partial of a module-level class: it pickles, so `--workers N` can spawn it.
        "http": functools.partial(GuardedHttpToolsProtocol, limits=limits),
        # uvicorn counts the connection being served too, hence + 1.
        "limit_concurrency": settings.max_connections + 1 if settings.max_connections else None,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
    }
