"""The slots a turn holds while it runs, and who gives them back.

A turn takes an admission slot (`admission.py`, this process's cap) and one of its
user's stream slots (`ratelimit.py`, the per-user cap shared through Redis). Both must
be given back exactly once, whatever happens between taking them and the end of the
generation. So they are held in one `Leases`, owned by one party at a time:

- the start of the turn, as `async with Leases() as leases:` — leaving the block gives
  back whatever it still holds: the start failed, or it replayed an earlier answer;
- the generation job, once `hand_over()` moved them to it (`StreamHub.start_job`): it
  gives them back when its task ends, however it ends.

`release` is the one place a slot is given back.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable
from types import TracebackType
from typing import Protocol, TypeVar

log = logging.getLogger(__name__)


class Lease(Protocol):
    """Something held until released; `release` is idempotent."""

    def release(self) -> Awaitable[None] | None: ...


L = TypeVar("L", bound=Lease)


class Leases:
    def __init__(self) -> None:
        self._held: list[Lease] = []

    def take(self, lease: L) -> L:
        self._held.append(lease)
        return lease

    def hand_over(self) -> Leases:
        """Move every lease to a new owner; this one then holds none."""
        moved = Leases()
        moved._held, self._held = self._held, []
        return moved

    async def release(self) -> None:
        held, self._held = self._held, []
        for lease in reversed(held):
            try:
                result = lease.release()
                if inspect.isawaitable(result):
                    await result
            except Exception:  # noqa: BLE001 - one failed release must not keep the others
                log.warning("a slot could not be given back", exc_info=True)

    async def __aenter__(self) -> Leases:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(self.release())
