"""The streaming edge: the rules a turn's stream follows on its way to a client, whichever
transport carries it. `api/coaching.py` (SSE) and `api/ws.py` (WebSocket) only encode
what this module hands them.

- **What a stream is.** One turn's events going to one client: an SSE response, or one
  turn on a WebSocket (a `question`, `regenerate` or `resume` frame). A connection (an
  SSE request, a socket) opens its streams here; `linkcoach_active_streams{transport}`
  counts the open streams the same way on both transports, so a socket with no turn
  running counts as none (`linkcoach_open_websockets` counts sockets).
- **Shutdown.** When the server begins to shut down, each connection is told
  (`Connection.shutdown`): an SSE response by this module's watch of the uvicorn server
  (`Connection.watch_shutdown`, one polling task per process), a socket by the WebSocket
  protocol of `linkcoach serve` (`server.GracefulWebSocketProtocol`), through the
  listener it registers under `server.SHUTDOWN_EXTENSION`. Every open stream then keeps
  going for `SHUTDOWN_GRACE` − 1 s; a stream still open then ends with the farewell,
  `error` `server_shutdown` with the `message_id` and the `last_event_id` to resume from
  (on another instance), framed without an id of its own. A connection refuses new turns
  once it is told (`Connection.admit`, `ServerShutdown`), and one whose last stream has
  ended is closed: the SSE response ends, the socket is closed with
  `ServerShutdown.ws_close` (1012).
- **Refusals.** A turn refused before it starts is an `AppError`; its body (HTTP) and its
  `error` frame (WebSocket) are both `AppError.body()`, so a bad field reads the same on
  both (`common.validate` makes every validation failure one `ValidationFailed`).

Decisions, and what not to "fix":
- The farewell is due at `SHUTDOWN_GRACE` − 1 s (the documented timing): the second
  left lets it reach a slow client before the grace is over.
- A stream waits for its next event inside an `asyncio.Timeout` with no deadline, moved
  to the farewell's time when shutdown begins: no task, queue or timer per stream until
  then. The timeout covers only the wait for the next event, never the transport's send,
  so it cannot cancel a frame half written.
"""

from __future__ import annotations

import asyncio
import signal
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from ..errors import ServerShutdown
from ..metrics import Metrics
from ..services import events as ev
from ..services.events import StreamEvent
from ..state import AppState

FAREWELL_MARGIN_S = 1.0


class Stream:
    """One turn's events on their way to one client. Iterate it once (`relay`)."""

    def __init__(
        self,
        connection: Connection,
        events: AsyncIterator[StreamEvent],
        *,
        message_id: str | None,
        after: int,
    ) -> None:
        self.connection = connection
        self.message_id = message_id
        self.last_event_id = after
        self._events = events
        self._deadline: float | None = None
        self._waiting: asyncio.Timeout | None = None
        self._left = False

    def farewell_at(self, when: float) -> None:
        """End with the farewell once the loop's clock reaches `when`."""
        self._deadline = when
        if self._waiting is not None:
            self._waiting.reschedule(when)

    def leave(self) -> None:
        """The client is gone: end now, without a farewell."""
        self._left = True
        self.farewell_at(asyncio.get_running_loop().time())

    def farewell(self) -> StreamEvent:
        """Unnumbered (id 0, framed without an id): it is no event of the answer's log,
        and a client that took its id as the last one seen would resume one event late."""
        return ev.server_shutdown(message_id=self.message_id, last_event_id=self.last_event_id)

    async def relay(self) -> AsyncGenerator[StreamEvent, None]:
        """The turn's events, then the farewell if the server's grace ran out first."""
        loop = asyncio.get_running_loop()
        events = self._events
        # Counted from its first read, not from `open`: a response that never starts
        # (the client left first) never runs this, and must not stay counted.
        self.connection._opened(self)
        try:
            while True:
                if self._deadline is not None and loop.time() >= self._deadline:
                    if not self._left:
                        yield self.farewell()
                    return
                try:
                    async with asyncio.timeout_at(self._deadline) as waiting:
                        self._waiting = waiting
                        event = await anext(events)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    if not waiting.expired():
                        raise  # raised by the events themselves, not the grace's end
                    if not self._left:
                        yield self.farewell()
                    return
                finally:
                    self._waiting = None
                self.last_event_id = event.id
                if self.message_id is None:
                    self.message_id = event.data.get("message_id")
                yield event
        finally:
            self.connection._closed(self)


class Connection:
    """The streams of one client connection (one SSE request, or one WebSocket) and what
    the server's shutdown does to them."""

    def __init__(self, *, transport: str, metrics: Metrics, grace_s: float) -> None:
        self.transport = transport
        self.metrics = metrics
        self.grace_s = grace_s
        self.streams: set[Stream] = set()
        self.shutting_down = False
        self._farewell_at: float | None = None
        self._on_drained: Callable[[], None] | None = None

    def admit(self) -> None:
        """Refuse a new turn (before any work) on a connection the server is closing."""
        if self.shutting_down:
            raise ServerShutdown("this server is restarting; reconnect to another instance")

    def open(
        self, events: AsyncIterator[StreamEvent], *, message_id: str | None, after: int = 0
    ) -> Stream:
        return Stream(self, events, message_id=message_id, after=after)

    def watch_shutdown(self) -> None:
        """Be told of the server's shutdown by the edge's own watch (for a transport
        that has no way to say it: an HTTP response)."""
        _ShutdownWatch.of_this_loop().add(self)

    def shutdown(self, on_drained: Callable[[], None] | None = None) -> None:
        """The server is shutting down: every open stream gets the grace, then the
        farewell. `on_drained` is called once no stream is open (at once if none is)."""
        if self.shutting_down:
            return
        self.shutting_down = True
        self._on_drained = on_drained
        delay = max(0.0, self.grace_s - FAREWELL_MARGIN_S)
        self._farewell_at = asyncio.get_running_loop().time() + delay
        for stream in self.streams:
            stream.farewell_at(self._farewell_at)
        self._maybe_drained()

    def _opened(self, stream: Stream) -> None:
        self.streams.add(stream)
        self.metrics.active_streams.labels(self.transport).inc()
        if self._farewell_at is not None:
            stream.farewell_at(self._farewell_at)

    def _closed(self, stream: Stream) -> None:
        if stream in self.streams:
            self.streams.discard(stream)
            self.metrics.active_streams.labels(self.transport).dec()
            self._maybe_drained()

    def _maybe_drained(self) -> None:
        if self.shutting_down and not self.streams and self._on_drained is not None:
            on_drained, self._on_drained = self._on_drained, None
            on_drained()


class _ShutdownWatch:
    """Tells the connections added to it when the uvicorn server running them starts to
    shut down: one task per event loop, only while a connection is watched, polls the
    server's `should_exit` every `POLL_S`. The server is found as sse-starlette finds it,
    by the signal handler uvicorn installs (a bound method of its `Server`), and again at
    every poll, so a server that stopped before (tests start several in one process) is
    never taken for the current one."""

    POLL_S = 0.5
    _of_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _ShutdownWatch] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self) -> None:
        self.connections: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def of_this_loop(cls) -> _ShutdownWatch:
        loop = asyncio.get_running_loop()
        watch = cls._of_loop.get(loop)
        if watch is None:
            watch = cls._of_loop[loop] = cls()
        return watch

    def add(self, conn: Connection) -> None:
        self.connections.add(conn)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._poll(), name="stream-shutdown-watch"
            )

    async def _poll(self) -> None:
        try:
            while self.connections:
                await asyncio.sleep(self.POLL_S)
                if server_exiting():
                    for conn in list(self.connections):
                        conn.shutdown()
                    self.connections.clear()
        finally:
            self._task = None


def server_exiting() -> bool:
    """Whether the uvicorn server of this process has been told to exit (SIGTERM,
    SIGINT, or `should_exit` set by whoever runs it)."""
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return bool(getattr(server, "should_exit", False))


def connection(state: AppState, transport: str) -> Connection:
    """A connection of `transport` with the app's metrics and `SHUTDOWN_GRACE`."""
    return Connection(
        transport=transport, metrics=state.metrics, grace_s=state.settings.shutdown_grace_s
    )
