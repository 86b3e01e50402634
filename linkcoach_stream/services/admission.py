"""Admission control: how many answers this process generates at once.

A turn takes a slot before any work is done for it (before the rate limit, retrieval or
a database write) and the slot is handed to the generation job, which gives it back when
it ends, however it ends. Past `MAX_ACTIVE_STREAMS` a new turn is refused at once with
`503 server_busy` and a jittered `Retry-After`; the HTTP routes check first of all, before
authentication, so a refusal waits for no database connection. `/ready` answers
`503 overloaded` while the slots in use are at or above the high-water mark, so a load
balancer sends new connections to another instance before this one has to refuse turns.

Decisions (do not "fix"):
- The limit counts generations, not connections: a stream that is being resumed or a
  WebSocket waiting for its next question costs a few KB and no CPU; a generation costs
  the provider read, persistence and the resume log for its whole length.
- The default, 150, is one worker's measured capacity on two shared cores with the
  benchmark's answers (12 chunks, ~1.8 s; `python benchmarks/streams.py --overload 150
  --turns 2 --ramp-ms 10`): offered 300 streams, the admitted kept TTFT p99 at 1.16x
  the unloaded value (932 vs 806 ms) and the refusals came in 13 ms (p50). At 200 the
  admitted still stayed within 2x (1.36-1.79x) but refusals took 63-103 ms (p50), the
  event loop being busy with the admitted turns' starts. Longer answers cost less CPU per
  second each, so a deployment with long answers can raise it.
- Refusing is cheaper than queueing: a refused client retries elsewhere or later, while a
  queued one waits behind everyone and makes every admitted stream late too.
- The count is per process and in memory: it must answer in microseconds, and a slot
  shared through Redis would outlive a crashed process.
"""

from __future__ import annotations

import math
import random

from ..errors import ServerBusy
from ..metrics import Metrics

BUSY_MESSAGE = "the coach is answering as many questions as it can; please retry shortly"


class Slot:
    """One admitted generation, held in a turn's `Leases`; `release` is idempotent."""

    __slots__ = ("_admission", "_released")

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._release()


class Admission:
    def __init__(
        self,
        *,
        max_active: int,
        high_water: float,
        retry_after_s: float,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.max_active = max_active
        self.high_water_mark = max(1, math.ceil(max_active * high_water)) if max_active else 0
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self.active = 0
        self.refused = 0
        self._rng = rng or random.Random()

    @classmethod
    def unlimited(cls) -> Admission:
        """No limit (`MAX_ACTIVE_STREAMS=0`): every turn is admitted, nothing is refused,
        so callers never ask whether there is an admission."""
        return cls(max_active=0, high_water=1.0, retry_after_s=0.0)

    @property
    def enabled(self) -> bool:
        return self.max_active > 0

    @property
    def overloaded(self) -> bool:
        return self.enabled and self.active >= self.high_water_mark

    def retry_after(self) -> float:
        # Between one and two base periods: refused clients spread over a whole period
        # instead of returning together. Cut to whole milliseconds (what the body
        # shows), so that a draw just under two periods does not round up to two.
        return math.floor(self.retry_after_s * (1.0 + self._rng.random()) * 1000) / 1000

    def refuse_if_full(self) -> None:
        """The same refusal as `admit`, taking no slot: HTTP routes call it before auth
        and the body, so a refusal waits for no database connection or Redis round trip
        (a full process is exactly when those queue)."""
        if self.enabled and self.active >= self.max_active:
            self._refuse()

    def admit(self) -> Slot:
        """A slot for one generation, or ServerBusy when every slot is taken."""
        if self.enabled and self.active >= self.max_active:
            self._refuse()
        self.active += 1
        self._publish()
        return Slot(self)

    def _refuse(self) -> None:
        self.refused += 1
        if self.metrics is not None:
            self.metrics.admission_refused.inc()
        raise ServerBusy(BUSY_MESSAGE, retry_after=self.retry_after())

    def _release(self) -> None:
        self.active -= 1
        self._publish()

    def _publish(self) -> None:
        if self.metrics is not None:
            self.metrics.admitted_generations.set(self.active)
