"""`Server-Timing` on every HTTP response, and the request's server span when tracing is
on (`tracing.py` says what is measured). Pure ASGI, like every middleware here."""

from __future__ import annotations

import contextlib
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import tracing
from ..state import scope_state


class ServerTimingMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        app_state = scope_state(scope)
        tracer = app_state.tracer if app_state is not None else None
        timings = tracing.begin(tracer)
        span: Any = None

        async def send_with_timing(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"server-timing", timings.header()))
                message = {**message, "headers": headers}
                if span is not None:
                    span.set_attribute("http.response.status_code", message["status"])
            await send(message)

        if tracer is None:
            await self.app(scope, receive, send_with_timing)
            return
        from opentelemetry.trace import SpanKind

        method = scope.get("method", "GET")
        with contextlib.ExitStack() as stack:
            span = stack.enter_context(
                tracer.start_as_current_span(
                    f"{method} {scope.get('path', '')}",
                    kind=SpanKind.SERVER,
                    attributes={"http.request.method": method, "url.path": scope.get("path", "")},
                )
            )
            await self.app(scope, receive, send_with_timing)
            route = scope.get("route")
            template = getattr(route, "path", None)
            if template:
                full = f"{scope.get('root_path', '')}{template}"
                span.set_attribute("http.route", full)
                span.update_name(f"{method} {full}")
