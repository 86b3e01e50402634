"""The emulator's runtime state: counters for ``/_emulator/stats``, the random source, the
last requests and the remembered prompt prefixes.

Deliberate decisions (do not "fix"):

- Runtime state lives on ``app.state``, not in a lifespan: httpx's ``ASGITransport``
  never runs the lifespan, and tests use it.
- Implicit prefix caching: every prefix of a request (model, system instruction, then
  each content in turn) is remembered; a later request sharing one of at least
  ``cache_min_tokens`` tokens (1024, gemini-2.5-flash's minimum) reports it as
  ``cachedContentTokenCount``. Prefixes are compared per content, not per token.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import cast

from starlette.requests import Request

from .config import EmulatorConfig
from .protocol import GenerateRequest

__all__ = ["Runtime", "Stats", "runtime_of"]


@dataclass(slots=True)
class Stats:
    requests: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    streaming: int = 0
    max_streaming: int = 0
    streams_completed: int = 0
    disconnects: int = 0
    chunks_sent: int = 0

    def reset(self) -> None:
        self.requests.clear()
        self.errors.clear()
        self.faults.clear()
        # Live streams are still live: keep the gauge, restart its high-water mark from it.
        self.max_streaming = self.streaming
        self.streams_completed = self.disconnects = self.chunks_sent = 0

    def stream_started(self) -> None:
        self.streaming += 1
        self.max_streaming = max(self.max_streaming, self.streaming)

    def snapshot(self) -> dict[str, object]:
        return {
            "requests": dict(self.requests),
            "total_requests": sum(self.requests.values()),
            "errors": dict(self.errors),
            "faults": dict(self.faults),
            "streaming": self.streaming,
            "max_streaming": self.max_streaming,
            "streams_completed": self.streams_completed,
            "disconnects": self.disconnects,
            "chunks_sent": self.chunks_sent,
        }


_PREFIXES_KEPT = 50_000
_REQUESTS_KEPT = 64


@dataclass(slots=True)
class Runtime:
    config: EmulatorConfig
    stats: Stats
    rng: random.Random
    response_ids: itertools.count[int]
    # Prefix digests seen, oldest first (an LRU), for implicit caching.
    prefixes: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    recent: deque[dict[str, object]] = field(default_factory=lambda: deque(maxlen=_REQUESTS_KEPT))

    def cached_bytes(self, req: GenerateRequest) -> int:
        """Bytes of the longest remembered prefix of `req`; remembers all of its own."""
        best = 0
        for digest, size in req.prefixes:
            if digest in self.prefixes:
                self.prefixes.move_to_end(digest)
                best = size
            else:
                self.prefixes[digest] = None
        while len(self.prefixes) > _PREFIXES_KEPT:
            self.prefixes.popitem(last=False)
        return best


def runtime_of(request: Request) -> Runtime:
    return cast(Runtime, request.app.state.emulator)
