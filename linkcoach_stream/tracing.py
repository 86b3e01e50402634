"""Where a request's time goes: `Server-Timing`, the `timings` of a stream's `meta` event,
and OpenTelemetry spans of a turn.

Every HTTP request gets a `Timings` in a context variable (`api/timing.py`); code that
spends time on a named part wraps it in `part(name)`, which adds its duration and, when
tracing is on, opens a span. Tasks started while handling a request (the generation job)
copy the context, so they add to the same `Timings` and their spans join the request's
trace. Parts nest: `auth` includes its own rate-limit check and user lookup, which are
also counted under `ratelimit` and `db`.

Decisions (do not "fix"):
- `db` is the wall time during which the request held at least one pooled connection,
  measured by the pool's own `setup`/`reset` hooks (`db/pool.py`): one place covers every
  repository, and two connections held at once are not counted twice.
- A stream's response head is sent before the answer starts, so its `Server-Timing`
  names only the parts before streaming; `llm_ttfb` (the provider's first chunk) appears
  on non-streaming turns and as `gen_ai.response.time_to_first_chunk` on the span.
- OpenTelemetry is optional (the `otel` extra). Without `OTEL_ENABLED` no tracer exists and
  `part` costs two clock reads and a dict update.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from .config import Settings

log = logging.getLogger(__name__)

# Server-Timing names, in the order the header lists them.
ORDER = ("auth", "ratelimit", "db", "retrieval", "llm_ttfb", "persistence")


class Timings:
    __slots__ = ("started", "parts", "tracer", "per_turn", "_db_depth", "_db_since")

    def __init__(self, tracer: Any = None, *, per_turn: bool = False) -> None:
        self.started = time.perf_counter()
        # True for a WebSocket turn's timings: the next turn on the socket starts afresh.
        self.per_turn = per_turn
        self.parts: dict[str, float] = {}
        self.tracer = tracer
        self._db_depth = 0
        self._db_since = 0.0

    def add(self, name: str, seconds: float) -> None:
        self.parts[name] = self.parts.get(name, 0.0) + seconds

    def db_begin(self) -> None:
        if self._db_depth == 0:
            self._db_since = time.perf_counter()
        self._db_depth += 1

    def db_end(self) -> None:
        if self._db_depth > 0:
            self._db_depth -= 1
            if self._db_depth == 0:
                self.add("db", time.perf_counter() - self._db_since)

    def as_ms(self) -> dict[str, float]:
        known = [n for n in ORDER if n in self.parts]
        names = known + sorted(n for n in self.parts if n not in ORDER)
        return {n: round(self.parts[n] * 1000, 2) for n in names}

    def header(self) -> bytes:
        """`Server-Timing` value: each part so far, then `app`, the time until now."""
        items = [f"{n};dur={ms}" for n, ms in self.as_ms().items()]
        items.append(f"app;dur={round((time.perf_counter() - self.started) * 1000, 2)}")
        return ", ".join(items).encode()


_current: ContextVar[Timings | None] = ContextVar("linkcoach_timings", default=None)


def current() -> Timings | None:
    return _current.get()


def begin(tracer: Any = None, *, per_turn: bool = False) -> Timings:
    """A fresh `Timings` for the current context (a request, or one WebSocket turn)."""
    timings = Timings(tracer, per_turn=per_turn)
    _current.set(timings)
    return timings


def snapshot_ms() -> dict[str, float]:
    timings = _current.get()
    return timings.as_ms() if timings is not None else {}


@contextlib.contextmanager
def part(
    name: str, attributes: dict[str, Any] | None = None, *, span: bool = True
) -> Iterator[Any]:
    """Time `name` for this request; with tracing on, also a span (yielded, else None)."""
    timings = _current.get()
    if timings is None:
        yield None
        return
    started = time.perf_counter()
    try:
        if span and timings.tracer is not None:
            with timings.tracer.start_as_current_span(name, attributes=attributes) as s:
                yield s
        else:
            yield None
    finally:
        timings.add(name, time.perf_counter() - started)


def db_begin() -> None:
    timings = _current.get()
    if timings is not None:
        timings.db_begin()


def db_end() -> None:
    timings = _current.get()
    if timings is not None:
        timings.db_end()


class GenerationTrace:
    """The provider call of one answer: the `chat <model>` span with the `gen_ai.*`
    attributes, and `llm_ttfb` in the request's timings. Started and ended by hand, as
    the generation loop it measures must not be re-indented by every change here."""

    __slots__ = ("span", "timings")

    def __init__(self, *, provider: str, model: str | None, message_id: str) -> None:
        self.timings = _current.get()
        tracer = self.timings.tracer if self.timings is not None else None
        self.span: Any = None
        if tracer is not None:
            from opentelemetry.trace import SpanKind

            self.span = tracer.start_span(
                f"chat {model or provider}",
                kind=SpanKind.CLIENT,
                attributes={
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": provider,
                    "gen_ai.system": provider,
                    "gen_ai.request.model": model or provider,
                    "linkcoach.message_id": message_id,
                },
            )

    def first_chunk(self, seconds: float) -> None:
        if self.timings is not None:
            self.timings.add("llm_ttfb", seconds)
        if self.span is not None:
            self.span.set_attribute("gen_ai.response.time_to_first_chunk", seconds)
            self.span.add_event("gen_ai.first_chunk")

    def end(
        self,
        *,
        finish_reason: str,
        usage: dict[str, Any],
        chunks: int,
        error_code: str | None,
    ) -> None:
        span = self.span
        if span is None:
            return
        span.set_attribute("gen_ai.response.finish_reasons", [finish_reason])
        if usage.get("prompt_tokens") is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage["prompt_tokens"])
        if usage.get("completion_tokens") is not None:
            span.set_attribute("gen_ai.usage.output_tokens", usage["completion_tokens"])
        span.set_attribute("linkcoach.chunks", chunks)
        if error_code is not None:
            from opentelemetry.trace import Status, StatusCode

            span.set_attribute("error.type", error_code)
            span.set_status(Status(StatusCode.ERROR, error_code))
        span.end()


def open_tracer_provider(settings: Settings) -> Any:
    """An SDK tracer provider exporting OTLP (the standard `OTEL_EXPORTER_OTLP_*` and
    `OTEL_SERVICE_NAME` variables apply), or None when tracing is off or not installed."""
    if not settings.otel_enabled:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "OTEL_ENABLED is set but OpenTelemetry is not installed "
            "(pip install 'linkcoach-stream[otel]')"
        )
        return None
    resource = Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME") or "linkcoach-stream"}
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider
