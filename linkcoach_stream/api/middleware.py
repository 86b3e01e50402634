"""Pure ASGI middleware only: Starlette's base-class middleware would hide
`http.disconnect` from streaming responses and break contextvars."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..logging_setup import request_id_var
from ..services.apilog import ApiLogEntry
from ..state import scope_state

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Scope key: the `send` of the outermost layer here (see `RequestContextMiddleware`).
BODY_SEND = "linkcoach.body_send"


class RequestContextMiddleware:
    """Assigns a request id, times the request and writes one API log entry for it.

    An incoming X-Request-ID is kept only if it is short and plain, so nothing a client
    sends can inject lines or markup into logs.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        rid = incoming if incoming and _SAFE_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        # Every layer inside this one looks only at a response's head (status, headers);
        # a streaming response sends its body frames here, past them (`api/sse.py`).
        scope[BODY_SEND] = send
        started = time.perf_counter()
        status = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "websocket.accept":
                status = 101
            elif message["type"] == "websocket.close" and status == 0:
                status = 403
            await send(message)

        error: str | None = None
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            error = type(exc).__name__
            status = status or 500
            raise
        finally:
            request_id_var.reset(token)
            app_state = scope_state(scope)
            if app_state is not None:
                route = scope.get("route")
                path = getattr(route, "path", None)
                endpoint = f"{scope.get('root_path', '')}{path}" if path else "<unmatched>"
                client = scope.get("client")
                app_state.apilog.submit(
                    ApiLogEntry(
                        ts=datetime.now(UTC),
                        request_id=rid,
                        user_id=state.get("user_id"),
                        method=scope.get("method", "WS"),
                        endpoint=endpoint,
                        status=status,
                        duration_ms=(time.perf_counter() - started) * 1000,
                        client_ip=client[0] if client else None,
                        error=error or state.get("error_code"),
                    )
                )
                app_state.metrics.observe_request(
                    scope.get("method", "WS"), endpoint, status, time.perf_counter() - started
                )
