"""The coaching WebSocket: one socket per conversation, many turns.

Protocol (also in the README):
- Auth before any work. Browsers cannot set headers on a WebSocket, so the token comes
  as the subprotocol pair `["bearer", <token>]` (the server echoes `bearer`, or Chrome
  and Firefox close with 1002) or in a first frame `{"type": "auth", "token": ...}` sent
  within AUTH_TIMEOUT_S. A token in the query string is never read: it lands in logs.
- `Origin`, when present, must be in CORS_ORIGINS (when that list is set).
- Client frames: `question`, `regenerate` (`message_id` of an answer, optional
  `client_message_id`: a new version of that answer, streamed like a turn), `cancel`,
  `resume`, `ping`. Server frames mirror the SSE
  events (`meta`, `delta`, `done`, `error`, each with `id` and `message_id`) plus `pong`,
  `ready` and `cancel_ack`. A bad frame gets an `error` frame; the socket stays open.
- A socket is held to what each HTTP request is held to. `resume` and `cancel` frames pay
  the per-user request limit their HTTP routes pay (a replay can be thousands of frames);
  over it the socket gets an `error` frame and is closed with 4429. A `question` frame
  pays the turn limit inside the chat service, and over that it stays an `error` frame
  with the socket open. Each `question` also looks the user up (one primary-key read,
  as every HTTP request does): a user deleted since the socket opened gets 4401.
- A turn on a socket is a stream like an SSE response, by the streaming edge's rules
  (`api/streaming.py`): counted the same way in `linkcoach_active_streams`, and on
  shutdown each running turn keeps going for the grace, then gets the `server_shutdown`
  farewell frame (with `last_event_id`), and the socket is closed with 1012 once its last
  turn has ended (at once when none runs); a new turn in the grace gets an `error` frame
  `server_shutdown`. This needs the WebSocket protocol of `linkcoach serve`
  (`server.GracefulWebSocketProtocol`); under uvicorn's own, sockets get 1012 at once.
- Close codes, each the `ws_close` of its error in `errors.py`: 4401 auth failed/expired
  or user gone, 4403 origin refused, 4429 rate limited, 1009 frame too large, 1011 server
  error, 1012 server restarting.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ..db.repositories import users
from ..errors import AppError, Forbidden, RateLimited, ServerShutdown, Unauthorized
from ..server import SHUTDOWN_EXTENSION
from ..services import answers
from ..services.auth import Principal, unknown_user
from ..services.chat import ChatService
from ..services.events import StreamEvent
from ..state import state_of
from . import streaming
from .common import authenticate_token, dumps, validate
from .turns import QueryRequest, RegenerateRequest

AUTH_TIMEOUT_S = 10.0
MAX_CONCURRENT_TURNS = 4


class Session:
    def __init__(self, ws: WebSocket, user: Principal) -> None:
        self.ws = ws
        self.user = user
        self.chat: ChatService = state_of(ws).chat
        self.send_timeout: float = state_of(ws).settings.stream_send_timeout_s
        self.forwarders: dict[str, asyncio.Task[None]] = {}
        self.edge = streaming.connection(state_of(ws), "ws")
        self._send_lock = asyncio.Lock()
        self._closing: asyncio.Task[None] | None = None

    async def send_text_frame(self, frame: dict[str, Any]) -> None:
        async with self._send_lock:
            # A client that stops reading must not hold the server's buffers forever.
            await asyncio.wait_for(self.ws.send_text(dumps(frame).decode()), self.send_timeout)

    async def error(self, code: str, message: str, **extra: Any) -> None:
        await self.send_text_frame({"type": "error", "code": code, "message": message, **extra})

    async def refuse(self, exc: AppError) -> None:
        """An error frame with the body HTTP answers the same error with."""
        await self.send_text_frame({"type": "error", **exc.body()["error"]})

    async def close_with(self, exc: AppError) -> None:
        await self.refuse(exc)
        await self.ws.close(code=exc.ws_close, reason=exc.message[:120])

    def listen_for_shutdown(self) -> None:
        """Ask the server's WebSocket protocol to tell this session, not close the
        socket, when the server shuts down (when the protocol offers it)."""
        extension = self.ws.scope.get("extensions", {}).get(SHUTDOWN_EXTENSION)
        if extension is not None:
            extension["listen"](self._server_shutdown)

    def _server_shutdown(self) -> None:
        self.edge.shutdown(on_drained=self._drained)

    def _drained(self) -> None:
        self._closing = asyncio.create_task(self._close_for_shutdown())

    async def _close_for_shutdown(self) -> None:
        with contextlib.suppress(RuntimeError, OSError):
            async with self._send_lock:
                await self.ws.close(code=ServerShutdown.ws_close, reason="server restarting")

    async def paid(self) -> bool:
        """Charge a frame to the per-user request limit; False (socket closed) when over."""
        try:
            await self.chat.limiter.hit("user", self.user.user_id)
        except RateLimited as exc:
            await self.close_with(exc)
            return False
        return True

    async def user_exists(self) -> bool:
        """False (socket closed with 4401) when the user was deleted after connecting."""
        async with state_of(self.ws).db.acquire() as db:
            if await users.is_active(db, user_id=self.user.user_id):
                return True
        await self.close_with(unknown_user())
        return False

    def forward(self, message_id: str, events: AsyncIterator[StreamEvent], after: int = 0) -> None:
        stream = self.edge.open(events, message_id=message_id, after=after)

        async def run() -> None:
            try:
                async with contextlib.aclosing(stream.relay()) as relayed:
                    async for ev in relayed:
                        await self.send_text_frame(_frame(ev, message_id))
            except (WebSocketDisconnect, RuntimeError, TimeoutError, OSError):
                pass
            finally:
                if self.forwarders.get(message_id) is task:
                    del self.forwarders[message_id]

        old = self.forwarders.pop(message_id, None)
        if old is not None:
            old.cancel()
        task = self.forwarders[message_id] = asyncio.create_task(run())

    async def handle(self, raw: str) -> None:
        try:
            frame = orjson.loads(raw)
        except orjson.JSONDecodeError:
            await self.error("bad_frame", "frame is not valid JSON")
            return
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            await self.error("bad_frame", "frame must be a JSON object with a string 'type'")
            return
        kind = frame["type"]
        if self.user.expires_at and self.user.expires_at < time.time():
            await self.error("token_expired", "token has expired; reconnect with a new one")
            await self.ws.close(code=Unauthorized.ws_close, reason="token expired")
            return
        try:
            if kind == "ping":
                await self.send_text_frame({"type": "pong", "t": frame.get("t")})
            elif kind == "question":
                await self._question(frame)
            elif kind == "regenerate":
                await self._regenerate(frame)
            elif kind == "cancel":
                if not await self.paid():
                    return
                message_id = _uuid(frame.get("message_id"), "message_id")
                result = await self.chat.cancel(self.user, message_id)
                await self.send_text_frame({"type": "cancel_ack", **result})
            elif kind == "resume":
                if not await self.paid():
                    return
                message_id = _uuid(frame.get("message_id"), "message_id")
                after = frame.get("last_event_id", 0)
                if not isinstance(after, int) or isinstance(after, bool) or after < 0:
                    raise _FrameError("last_event_id must be a non-negative integer")
                self.edge.admit()
                events = await self.chat.events(self.user, message_id, after=after)
                self.forward(str(message_id), events, after)
            elif kind == "auth":
                await self.error("bad_frame", "already authenticated")
            else:
                await self.error("bad_frame", f"unknown frame type: {kind[:40]}")
        except _FrameError as exc:
            await self.error("bad_frame", str(exc))
        except AppError as exc:
            await self.refuse(exc)

    async def _question(self, frame: dict[str, Any]) -> None:
        self.edge.admit()
        if not await self.user_exists():
            return
        if len(self.forwarders) >= MAX_CONCURRENT_TURNS:
            await self.error("too_many_turns", "wait for a running answer to finish")
            return
        body = validate(QueryRequest, {k: v for k, v in frame.items() if k != "type"})
        started = await self.chat.start_turn(self.user, body.turn())
        events = await self.chat.turn_events(self.user, started)
        self.forward(started.message_id, events)

    async def _regenerate(self, frame: dict[str, Any]) -> None:
        self.edge.admit()
        if not await self.user_exists():
            return
        if len(self.forwarders) >= MAX_CONCURRENT_TURNS:
            await self.error("too_many_turns", "wait for a running answer to finish")
            return
        message_id = _uuid(frame.get("message_id"), "message_id")
        payload = {k: v for k, v in frame.items() if k not in ("type", "message_id")}
        body = validate(RegenerateRequest, payload)
        started = await answers.regenerate(
            self.chat, self.user, message_id, client_message_id=body.client_message_id
        )
        events = await self.chat.turn_events(self.user, started)
        self.forward(started.message_id, events)

    async def close(self) -> None:
        for task in list(self.forwarders.values()):
            task.cancel()
        for task in list(self.forwarders.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._closing is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._closing


class _FrameError(Exception):
    pass


def _uuid(value: Any, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise _FrameError(f"{name} must be a UUID") from None


def _frame(ev: StreamEvent, message_id: str) -> dict[str, Any]:
    """The SSE event as a frame; an unnumbered one (the farewell) has no `id`, as over SSE."""
    if ev.id == 0:
        return {"type": ev.event, "message_id": message_id, **ev.data}
    return {"type": ev.event, "id": ev.id, "message_id": message_id, **ev.data}


def _origin_allowed(ws: WebSocket) -> bool:
    """No Origin (not a browser), an allowed parent origin, or this service's own origin
    (the widget it serves)."""
    allowed = state_of(ws).settings.cors_origins
    origin = ws.headers.get("origin")
    if not allowed or origin is None or origin in allowed:
        return True
    host = ws.headers.get("host")
    scheme = "https" if ws.url.scheme == "wss" else "http"
    return host is not None and origin == f"{scheme}://{host}"


async def _authenticate(ws: WebSocket) -> Principal | None:
    offered = list(ws.scope.get("subprotocols") or [])
    if len(offered) >= 2 and offered[0].lower() == "bearer":
        await ws.accept(subprotocol=offered[0])
        try:
            return await authenticate_token(ws, offered[1])
        except AppError as exc:
            await ws.close(code=Unauthorized.ws_close, reason=exc.message[:120])
            return None
    await ws.accept()
    try:
        raw = await asyncio.wait_for(ws.receive_text(), AUTH_TIMEOUT_S)
        frame = orjson.loads(raw)
        token = frame.get("token") if isinstance(frame, dict) else None
        if not isinstance(frame, dict) or frame.get("type") != "auth" or not isinstance(token, str):
            raise Unauthorized('first frame must be {"type": "auth", "token": ...}')
        return await authenticate_token(ws, token)
    except TimeoutError:
        await ws.close(code=Unauthorized.ws_close, reason="no auth frame in time")
    except (orjson.JSONDecodeError, KeyError):
        await ws.close(code=Unauthorized.ws_close, reason="auth frame is not valid JSON")
    except AppError as exc:
        await ws.close(code=Unauthorized.ws_close, reason=exc.message[:120])
    return None


async def coaching_ws(ws: WebSocket) -> None:
    if not _origin_allowed(ws):
        await ws.close(code=Forbidden.ws_close, reason="origin not allowed")
        return
    try:
        user = await _authenticate(ws)
    except WebSocketDisconnect:
        return
    if user is None:
        return
    session = Session(ws, user)
    metrics = state_of(ws).metrics
    metrics.open_websockets.inc()
    session.listen_for_shutdown()
    try:
        await session.send_text_frame({"type": "ready", "user_id": user.user_id})
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            if text is None:
                await session.error("bad_frame", "binary frames are not accepted; send JSON text")
                continue
            await session.handle(text)
            if ws.application_state == WebSocketState.DISCONNECTED:
                break
    except (WebSocketDisconnect, TimeoutError, RuntimeError):
        pass
    finally:
        metrics.open_websockets.dec()
        await session.close()


routes = [WebSocketRoute("/coaching/ws", coaching_ws, name="coaching:ws")]
