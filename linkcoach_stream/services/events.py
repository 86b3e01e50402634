"""The events of a turn, as values: one constructor per kind.

A turn's stream is `meta`, `delta`..., then one terminal event, `done` or `error`. The
live generation, a replay from a stored row, the end a reader adds when the producer
died (`stream_lost`) and the farewell the edge sends on shutdown (`server_shutdown`) all
build their events here, so a field is named, ordered and typed in one place, and a
replay cannot drift from the live stream. `TurnOutcome.of` reads a finished stream back
for the transports that answer in one body.

An event is made unnumbered (`id` 0) and numbered where it enters a stream (`at`): by
the job for live events, by the reader for replays and endings.

Liveness of a producer is not an event: the hub's lease marks (`streams.LeaseMark`) never
reach a stream or its log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import ServerShutdown

META = "meta"
DELTA = "delta"
DONE = "done"
ERROR = "error"
TERMINAL = frozenset({DONE, ERROR})

# What a client is told when the provider fails. The provider's own text (which can quote
# keys, prompts, internal addresses) goes to the log only; clients switch on the code.
PROVIDER_FAILED = "the coach could not answer this time; please ask again"
GENERATION_FAILED = "the answer could not be generated; please ask again"
STREAM_LOST = (
    "the instance generating this answer stopped; the stored message keeps what was generated"
)
SERVER_SHUTDOWN = "this server is restarting; resume the stream"


@dataclass(frozen=True, slots=True)
class StreamEvent:
    id: int
    event: str
    data: dict[str, Any]
    # `data` as JSON, encoded once and shared by the Redis log and every SSE reader.
    raw: bytes | None = field(default=None, compare=False, repr=False)

    def encoded(self) -> bytes:
        raw = self.raw
        if raw is None:
            # orjson hands back its whole output buffer (4 KB for a 200-byte event);
            # an event is kept for the life of its stream, so keep an exact-size copy.
            raw = bytes(memoryview(orjson.dumps(self.data, option=orjson.OPT_NON_STR_KEYS)))
            object.__setattr__(self, "raw", raw)
        return raw

    @property
    def terminal(self) -> bool:
        return self.event in TERMINAL

    def at(self, event_id: int) -> StreamEvent:
        """This event under the id it has in its stream."""
        return StreamEvent(event_id, self.event, self.data, self.raw)


def meta(
    *,
    conversation_id: str,
    message_id: str,
    sources: list[dict[str, Any]],
    provider: str,
    model: str,
    extra: Mapping[str, Any] | None = None,
    timings: dict[str, Any] | None = None,
    replay: bool = False,
) -> StreamEvent:
    """The first event: which message this is, what it was grounded on, who writes it.
    `replay: true` tells a client that had part of the text to replace what it shows."""
    data: dict[str, Any] = {
        "conversation_id": conversation_id,
        "message_id": message_id,
        "sources": sources,
        "provider": provider,
        "model": model,
        **(extra or {}),
    }
    if timings is not None:
        data["timings"] = timings
    if replay:
        data["replay"] = True
    return StreamEvent(0, META, data)


def delta(text: str) -> StreamEvent:
    return StreamEvent(0, DELTA, {"text": text})


def done(
    *,
    message_id: str,
    finish_reason: str | None,
    usage: dict[str, Any],
    provider: str | None,
    status: str,
    cancel_reason: str | None = None,
) -> StreamEvent:
    """The end of an answer that was written, wholly or until it was cancelled; a
    cancelled one (`finish_reason: "cancelled"`) says why in `cancel_reason`."""
    data: dict[str, Any] = {
        "message_id": message_id,
        "finish_reason": finish_reason,
        "usage": usage,
        "provider": provider,
        "status": status,
    }
    if cancel_reason is not None:
        data["cancel_reason"] = cancel_reason
    return StreamEvent(0, DONE, data)


def error(*, code: str, message: str, message_id: str | None, partial: bool) -> StreamEvent:
    return StreamEvent(
        0, ERROR, {"code": code, "message": message, "message_id": message_id, "partial": partial}
    )


def failed(*, code: str, message_id: str, partial: bool) -> StreamEvent:
    """The end of a generation that failed, with the client-safe text for its code."""
    text = PROVIDER_FAILED if code == "llm_error" else GENERATION_FAILED
    return error(code=code, message=text, message_id=message_id, partial=partial)


def stream_lost(*, message_id: str, partial: bool) -> StreamEvent:
    """The end of a stream whose producer died, live or replayed."""
    return error(code="stream_lost", message=STREAM_LOST, message_id=message_id, partial=partial)


def server_shutdown(*, message_id: str | None, last_event_id: int) -> StreamEvent:
    """The last event of a stream this server cuts when it shuts down: where to resume."""
    return StreamEvent(
        0,
        ERROR,
        {
            "code": ServerShutdown.code,
            "message": SERVER_SHUTDOWN,
            "message_id": message_id,
            "last_event_id": last_event_id,
            "retry_after": 1,
        },
    )


@dataclass(frozen=True, slots=True)
class TurnOutcome:
    """A whole turn read back from its events."""

    text: str
    conversation_id: str | None = None
    message_id: str | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)
    provider: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    status: str | None = None
    cancel_reason: str | None = None
    # (code, message) when the turn ended with `error`.
    error: tuple[str | None, str | None] | None = None

    @classmethod
    def of(cls, events: Iterable[StreamEvent]) -> TurnOutcome:
        text: list[str] = []
        head: dict[str, Any] = {}
        end: StreamEvent | None = None
        for ev in events:
            if ev.event == META and not head:
                head = ev.data
            elif ev.event == DELTA:
                text.append(ev.data["text"])
            if ev.terminal:
                end = ev
        fields: dict[str, Any] = {
            "text": "".join(text),
            "conversation_id": head.get("conversation_id"),
            "message_id": head.get("message_id"),
            "sources": head.get("sources", []),
            "provider": head.get("provider"),
        }
        if end is not None and end.event == ERROR:
            fields["error"] = (end.data.get("code"), end.data.get("message"))
        elif end is not None:
            fields.update(
                finish_reason=end.data.get("finish_reason"),
                usage=end.data.get("usage"),
                status=end.data.get("status"),
                cancel_reason=end.data.get("cancel_reason"),
            )
        return cls(**fields)
