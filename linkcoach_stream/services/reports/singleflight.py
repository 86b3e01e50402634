"""Request collapsing: one execution of a piece of work per key, within a process and
across processes.

- `SingleFlight`: within a process the first caller starts a task and later callers of
  the same key await that same task.
- `once_across_processes`: the work takes a Redis lock (`SET NX PX` with a random token,
  kept alive by a heartbeat, released by compare-and-delete); the others poll for the
  result until it lands, the lock frees up (a waiter then takes it over), or the wait
  bound passes.

Deliberate decisions (do not "fix"):

- Waiting is polling, not pub/sub: a waiter needs the result even if it subscribed after
  the publish, and polling the key it would read anyway has no such race. The interval
  backs off from 20 ms to 250 ms; only one caller per process polls (the rest await its
  task).
- The work runs in its own task, shielded from the callers awaiting it: a client that
  disconnects does not cancel the work the others are waiting for.
- Redis is an accelerator, never a dependency: when the lock cannot be taken the work
  runs without it, and the caller's storage must make concurrent writers converge.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

LOCK_TTL_MS = 15_000
_HEARTBEAT_S = LOCK_TTL_MS / 1000 / 3
_POLL_MIN_S = 0.02
_POLL_MAX_S = 0.25

_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)
_EXTEND = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)

RedisFailed = Callable[[str, BaseException], None]


class SingleFlight(Generic[K, T]):
    """At most one running task per key in this process."""

    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Task[T]] = {}

    async def run(self, key: K, work: Callable[[], Coroutine[Any, Any, T]]) -> tuple[T, bool]:
        """(the work's result, whether this caller started it)."""
        task = self._inflight.get(key)
        leader = task is None
        if task is None:
            task = asyncio.create_task(work())
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        return await asyncio.shield(task), leader

    def _done(self, key: K, task: asyncio.Task[T]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            # Retrieved so an error nobody awaited any more (all callers left) is not
            # reported as "never retrieved"; the awaiting callers have their own copy.
            task.exception()

    async def aclose(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def once_across_processes(
    redis: Redis,
    lock_key: str,
    *,
    work: Callable[[], Awaitable[T]],
    lookup: Callable[[], Awaitable[T | None]],
    peek: Callable[[], Awaitable[T | None]],
    wait_s: float,
    pending: Callable[[], BaseException],
    redis_failed: RedisFailed,
) -> T:
    """Run `work` under the lock unless a result appears first.

    `lookup` is the full check for a finished result, made before `work` runs (another
    process may have finished between the caller's miss and the lock); `peek` is the
    cheap check a waiter polls. After `wait_s` a waiter raises `pending()`.
    """
    token = secrets.token_hex(16)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    delay = _POLL_MIN_S
    while True:
        try:
            acquired = await redis.set(lock_key, token, nx=True, px=LOCK_TTL_MS)
        except (RedisError, OSError) as exc:
            redis_failed("lock", exc)
            # No cross-process lock: this process still runs the work once.
            found = await lookup()
            return found if found is not None else await work()
        if acquired:
            try:
                found = await lookup()
                if found is not None:
                    return found
                async with _heartbeat(redis, lock_key, token, redis_failed):
                    return await work()
            finally:
                await _release(redis, lock_key, token, redis_failed)
        found = await peek()
        if found is not None:
            return found
        if loop.time() >= deadline:
            raise pending()
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, _POLL_MAX_S)


@contextlib.asynccontextmanager
async def _heartbeat(
    redis: Redis, key: str, token: str, redis_failed: RedisFailed
) -> AsyncIterator[None]:
    async def beat() -> None:
        while True:
            await asyncio.sleep(_HEARTBEAT_S)
            try:
                await redis.eval(_EXTEND, 1, key, token, str(LOCK_TTL_MS))
            except (RedisError, OSError) as exc:
                redis_failed("lock-extend", exc)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _release(redis: Redis, key: str, token: str, redis_failed: RedisFailed) -> None:
    try:
        await redis.eval(_RELEASE, 1, key, token)
    except (RedisError, OSError) as exc:
        # The lock expires on its own after LOCK_TTL_MS.
        redis_failed("unlock", exc)
