"""`Server-Timing` on every HTTP response, and the request's server span when tracing is
on (`tracing.py` says what is measured). Pure ASGI, like every middleware here.

`Timing-Allow-Origin` lets a page on another origin read those timings (the browser's
Resource Timing `serverTiming`, which is empty cross-origin without it). It follows
`CORS_ORIGINS`, the origins allowed to call this API at all:

- none configured: no header (no cross-origin caller is allowed either);
- `*` among them: `*`;
- one origin: that origin, on every response (it does not depend on the request);
- several: the request's `Origin` echoed when it is one of them, with `Vary: Origin`
  on every response, as `Access-Control-Allow-Origin` does; the allow-list itself is
  never sent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import tracing
from ..state import scope_state


class ServerTimingMiddleware:
    def __init__(self, app: ASGIApp, *, allow_origins: Collection[str] = ()) -> None:
        self.app = app
        # A browser's Origin is ASCII (IDNs as punycode): other entries can never match.
        origins = {o.encode() for o in allow_origins if o.isascii()}
        # One value for every response, or None: then echo from `echo_origins`.
        self.timing_allow_origin: bytes | None = None
        self.echo_origins: frozenset[bytes] = frozenset()
        if b"*" in origins:
            self.timing_allow_origin = b"*"
        elif len(origins) == 1:
            self.timing_allow_origin = next(iter(origins))
        else:
            self.echo_origins = frozenset(origins)

    def _allow_timing(self, scope: Scope, headers: list[tuple[bytes, bytes]]) -> None:
        if self.timing_allow_origin is not None:
            headers.append((b"timing-allow-origin", self.timing_allow_origin))
            return
        if not self.echo_origins:
            return
        origin = next((v for k, v in scope["headers"] if k == b"origin"), None)
        if origin is not None and origin in self.echo_origins:
            headers.append((b"timing-allow-origin", origin))
        vary = [v.lower() for k, v in headers if k.lower() == b"vary"]
        if not any(b"origin" in (p.strip() for p in v.split(b",")) for v in vary):
            headers.append((b"vary", b"Origin"))

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
                self._allow_timing(scope, headers)
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
