"""Generation jobs and their event logs.

A generation is a job keyed by its message id, running in its own task: a client that
disconnects does not stop it; only `cancel` does. Each event gets a monotonic integer id
and is kept twice:

- in the producing process's memory, so its own clients get every chunk with no round
  trip (readers share the job's event list; nothing is copied per reader);
- in a Redis Stream `{prefix}ev:{message_id}` with entry ids `0-<event id>`, bounded in
  length and given a TTL, so a client can resume on any instance, even after the
  producer died.

Writes to Redis are batched by one writer task for all jobs (one pipeline per batch), so
a chunk never waits for Redis and thousands of streams cost few round trips. A cancel
request that reaches an instance without the job is published on `{prefix}cancel`; every
instance listens and cancels the job if it owns it. Whoever cancels a job names why
(`CancelReason`: `user` here, `remote` from the channel, `shutdown` from `drain`); the job
reads it when the cancellation reaches it.

A running job holds a lease, the key `{prefix}live:{message_id}` with a TTL of
`STREAM_LEASE_TTL` (10 s), renewed every third of it and deleted right after the terminal
event is written, so a reader on another instance can tell a slow producer from a dead
one: a producer killed with SIGKILL simply stops renewing it. A reader that finds the
lease gone and no terminal event in the log gets `ProducerLost` and decides, with the
stored message, how the stream ends (`services/chat.py`); the periodic sweep
(`services/recovery.py`) asks `leases()` the same question for every `streaming` row.

Decisions, and what not to "fix":
- XREAD blocks for 1 s, well under the Redis client's 5 s socket timeout. A block as long
  as the timeout makes every quiet read fail with a timeout, and a reader that only ever
  sees timeouts never gets to ask whether the producer is still alive.
- The lease is written by the batched writer in the same pipeline as the job's first
  events, before them, and deleted after the terminal event. So a reader that sees no
  lease and then reads the log once more sees the terminal event if there is one; a job
  that has only just started (lease not flushed yet, ~25 ms) is protected by the first
  full XREAD block and by the stored row's idle time, checked by the caller.
- The key keeps its old name (`live:`) so instances of the previous version, during a
  rolling deploy, still see each other's producers as alive.

If Redis is down the local path keeps working; only cross-instance resume and cancel are
lost until it is back. Nothing here may raise into a generation because Redis failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import Enum, StrEnum
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .events import StreamEvent
from .leases import Leases

log = logging.getLogger(__name__)

_LOCAL_RETENTION_S = 30.0
_READ_BLOCK_MS = 1000


class LeaseMark(Enum):
    """A change of a job's lease, queued for the batched writer next to its events (so
    the lease is written before them and dropped after them). Never an event: it does
    not reach a stream or its log."""

    HELD = "held"
    RELEASED = "released"


class CancelReason(StrEnum):
    """Why a generation was cancelled; it ends as `finish_reason: "cancelled"` with this
    as `cancel_reason` (stream and stored row), except `timeout`, which ends as an
    `error` `llm_timeout` as it always has and is only stored."""

    USER = "user"  # a cancel request reached the instance running the job
    REMOTE = "remote"  # a cancel request reached another instance, which published it
    SHUTDOWN = "shutdown"  # the server stopped and the job outlived the grace period
    TIMEOUT = "timeout"  # LLM_TOTAL_TIMEOUT


class ProducerLost(Exception):
    """The job's lease is gone and its log has no terminal event: its producer died (or
    Redis lost the lease). `last_id` is the last event the reader got."""

    def __init__(self, message_id: str, last_id: int) -> None:
        super().__init__(message_id)
        self.message_id = message_id
        self.last_id = last_id


class Job:
    def __init__(self, hub: StreamHub, message_id: str) -> None:
        self.hub = hub
        self.message_id = message_id
        self.events: list[StreamEvent] = []
        self.finished = False
        self.task: asyncio.Task[None] | None = None
        # Set by whoever cancels the task, before it does: the job reads it when the
        # cancellation reaches it.
        self.cancel_reason: CancelReason | None = None
        self._changed = asyncio.Event()

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def cancel(self, reason: CancelReason) -> bool:
        """Cancel the job's task for `reason`; False when it has already ended."""
        if not self.running:
            return False
        if self.cancel_reason is None:
            self.cancel_reason = reason
        assert self.task is not None
        self.task.cancel()
        return True

    def emit(self, event: StreamEvent) -> StreamEvent:
        """Append an event (made by `events.py`) under the job's next id."""
        if self.finished:
            raise RuntimeError("job already finished")
        ev = event.at(len(self.events) + 1)
        self.events.append(ev)
        if ev.terminal:
            self.finished = True
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        self.hub._enqueue(self.message_id, ev)
        return ev

    async def follow(self, after: int) -> AsyncIterator[StreamEvent]:
        index = after
        while True:
            while index < len(self.events):
                ev = self.events[index]
                index += 1
                yield ev
                if ev.terminal:
                    return
            if self.finished:
                return
            await self._changed.wait()


class StreamHub:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str,
        ttl_s: int,
        max_events: int,
        lease_ttl_s: float = 10.0,
        flush_interval_s: float = 0.025,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.max_events = max_events
        self.lease_ttl_s = lease_ttl_s
        self._lease_ms = max(1, int(lease_ttl_s * 1000))
        self.flush_interval_s = flush_interval_s
        self.jobs: dict[str, Job] = {}
        self._outbox: list[tuple[str, StreamEvent | LeaseMark]] = []
        self._outbox_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._writer_task: asyncio.Task[None] | None = None
        self._stopping = False
        # Redis calls that failed (exported by `/metrics` as linkcoach_stream_redis_failures).
        self.redis_failures = 0
        # The event-log writer's own connections: the same server, no per-reply read
        # timeout. redis-py arms a timer for every reply it reads with `socket_timeout`
        # set, one per XADD of a pipeline (2.4 % of the server's CPU at 400 streams);
        # `_flush` bounds the whole pipeline with one timeout instead.
        base = redis.connection_pool
        self._log_pool = type(base)(
            connection_class=base.connection_class,
            max_connections=4,
            **{**base.connection_kwargs, "socket_timeout": None},
        )
        self._log = aioredis.Redis(connection_pool=self._log_pool)
        self.flush_timeout_s = 5.0

    # -- keys -------------------------------------------------------------------------
    def _events_key(self, message_id: str) -> str:
        return f"{self.prefix}ev:{message_id}"

    def _lease_key(self, message_id: str) -> str:
        return f"{self.prefix}live:{message_id}"

    @property
    def _cancel_channel(self) -> str:
        return f"{self.prefix}cancel"

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        self._stopping = False
        self._writer_task = asyncio.create_task(self._writer(), name="stream-writer")
        self._tasks = [
            self._writer_task,
            asyncio.create_task(self._heartbeat(), name="stream-heartbeat"),
            asyncio.create_task(self._cancel_listener(), name="stream-cancel-listener"),
        ]

    async def drain(self, grace_s: float) -> None:
        """Let running jobs finish for up to `grace_s`, then cancel the rest."""
        running = [j.task for j in self.jobs.values() if j.task and not j.task.done()]
        if running:
            _, pending = await asyncio.wait(running, timeout=grace_s)
            for job in list(self.jobs.values()):
                if job.task in pending:
                    job.cancel(CancelReason.SHUTDOWN)
            if pending:
                await asyncio.wait(pending, timeout=5)

    async def stop(self, grace_s: float = 0.0) -> None:
        await self.drain(grace_s)
        # The writer is told to finish rather than cancelled: cancelled mid-flush, the
        # batch it had taken from the outbox (terminal events among them) would be lost.
        self._stopping = True
        self._outbox_ready.set()
        if self._writer_task is not None:
            with contextlib.suppress(TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(self._writer_task), self.flush_timeout_s + 1)
        await self._flush()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        self._writer_task = None
        with contextlib.suppress(Exception):
            await self._log_pool.disconnect()

    # -- jobs -------------------------------------------------------------------------
    def start_job(
        self,
        message_id: str,
        runner: Callable[[Job], Awaitable[None]],
        *,
        leases: Leases | None = None,
    ) -> Job:
        """Run `runner` as the job of `message_id`. The job owns `leases` (the slots its
        turn took) and gives them back when it ends, however it ends."""
        job = Job(self, message_id)
        self.jobs[message_id] = job

        async def run() -> None:
            try:
                await runner(job)
            finally:
                if leases is not None:
                    await asyncio.shield(leases.release())
                self._mark_live(message_id, alive=False)
                asyncio.get_running_loop().call_later(
                    _LOCAL_RETENTION_S, self.jobs.pop, message_id, None
                )

        job.task = asyncio.create_task(run(), name=f"generation-{message_id}")
        self._mark_live(message_id, alive=True)
        return job

    def local_job(self, message_id: str) -> Job | None:
        return self.jobs.get(message_id)

    async def cancel(self, message_id: str) -> bool:
        """Stop a generation wherever it runs. True when this process owned it."""
        job = self.jobs.get(message_id)
        if job is not None and job.cancel(CancelReason.USER):
            return True
        try:
            await self.redis.publish(self._cancel_channel, message_id)
        except RedisError:
            self.redis_failures += 1
            log.warning("cancel could not be published", extra={"message_id": message_id})
        return False

    # -- reading ----------------------------------------------------------------------
    async def last_event(self, message_id: str) -> StreamEvent | None:
        """The newest event, from this process's job or else from the Redis log; None
        when there is none (expired, never written) or Redis cannot be asked."""
        job = self.jobs.get(message_id)
        if job is not None:
            return job.events[-1] if job.events else None
        try:
            entries: Any = await self.redis.xrevrange(self._events_key(message_id), count=1)
        except RedisError:
            self.redis_failures += 1
            return None
        if not entries:
            return None
        entry_id, fields = entries[0]
        return _decode(entry_id, fields)

    async def leases(self, message_ids: list[str]) -> list[bool] | None:
        """Whether each job's lease is held (one MGET); None when Redis cannot be asked,
        as a slow producer and a dead one then look the same."""
        if not message_ids:
            return []
        try:
            values = await self.redis.mget([self._lease_key(m) for m in message_ids])
        except RedisError:
            self.redis_failures += 1
            return None
        return [value is not None for value in values]

    async def follow(self, message_id: str, after: int) -> AsyncIterator[StreamEvent]:
        """Events after `after`, from this process's job or from Redis; ends after the
        terminal event, or raises `ProducerLost` when the log can no longer end."""
        job = self.jobs.get(message_id)
        if job is not None:
            async for ev in job.follow(after):
                yield ev
            return
        async for ev in self._follow_redis(message_id, after):
            yield ev

    async def _follow_redis(self, message_id: str, after: int) -> AsyncIterator[StreamEvent]:
        key = self._events_key(message_id)
        last = after
        while True:
            job = self.jobs.get(message_id)
            if job is not None:
                # The job started here after all (e.g. a resume raced its own start).
                async for ev in job.follow(last):
                    yield ev
                return
            try:
                reply: Any = await self.redis.xread(
                    {key: f"0-{last}"}, block=_READ_BLOCK_MS, count=500
                )
                held = True
                if not reply:
                    # A quiet second: ask for the lease, then read once more, in this
                    # order, so a terminal event written just before the lease was
                    # dropped is not missed.
                    pipe = self.redis.pipeline(transaction=False)
                    pipe.exists(self._lease_key(message_id))
                    pipe.xread({key: f"0-{last}"}, count=500)
                    exists, reply = await pipe.execute()
                    held = bool(exists)
            except RedisError:
                self.redis_failures += 1
                await asyncio.sleep(0.5)
                continue
            entries: list[Any] = reply[0][1] if reply else []
            if not entries and not held:
                raise ProducerLost(message_id, last)
            for entry_id, fields in entries:
                ev = _decode(entry_id, fields)
                last = ev.id
                yield ev
                if ev.terminal:
                    return

    # -- Redis side -------------------------------------------------------------------
    def _enqueue(self, message_id: str, item: StreamEvent | LeaseMark) -> None:
        self._outbox.append((message_id, item))
        self._outbox_ready.set()

    def _mark_live(self, message_id: str, *, alive: bool) -> None:
        self._enqueue(message_id, LeaseMark.HELD if alive else LeaseMark.RELEASED)

    async def _flush(self) -> None:
        if not self._outbox:
            return
        batch, self._outbox = self._outbox, []
        pipe = self._log.pipeline(transaction=False)
        command = pipe.execute_command
        maxlen = self.max_events
        for message_id, ev in batch:
            if ev is LeaseMark.HELD:
                command("SET", self._lease_key(message_id), b"1", "PX", self._lease_ms)
                continue
            if ev is LeaseMark.RELEASED:
                command("DEL", self._lease_key(message_id))
                continue
            assert isinstance(ev, StreamEvent)
            key = self._events_key(message_id)
            # `XADD key MAXLEN ~ n 0-id e <event> d <json>`, what `pipe.xadd` sends,
            # without its per-call argument assembly (raw commands throughout: redis-py's
            # `set` also inspects its arguments on every call).
            command(
                "XADD", key, "MAXLEN", "~", maxlen, f"0-{ev.id}", "e", ev.event, "d", ev.encoded()
            )
            # The TTL is set when the log starts, renewed by the heartbeat while the job
            # runs, and set again at its end: not once per batch.
            if ev.id == 1 or ev.terminal:
                command("EXPIRE", key, self.ttl_s)
        try:
            async with asyncio.timeout(self.flush_timeout_s):
                await pipe.execute(raise_on_error=False)
        except (RedisError, OSError, TimeoutError):
            self.redis_failures += 1
            log.warning("stream events not buffered in redis", extra={"count": len(batch)})

    async def _writer(self) -> None:
        while not self._stopping:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            if not self._stopping:
                # A short pause lets the chunks of many streams share one pipeline.
                await asyncio.sleep(self.flush_interval_s)
            await self._flush()

    async def _heartbeat(self) -> None:
        """Renew the lease of every running job three times per lease period, so one
        lost renewal still leaves it held."""
        while True:
            await asyncio.sleep(self.lease_ttl_s / 3)
            live = [m for m, j in self.jobs.items() if not j.finished]
            if not live:
                continue
            try:
                pipe = self._log.pipeline(transaction=False)
                # Raw commands: redis-py's `set` inspects its arguments on every call.
                command = pipe.execute_command
                for message_id in live:
                    command("SET", self._lease_key(message_id), b"1", "PX", self._lease_ms)
                    command("EXPIRE", self._events_key(message_id), self.ttl_s)
                async with asyncio.timeout(self.flush_timeout_s):
                    await pipe.execute(raise_on_error=False)
            except (RedisError, OSError, TimeoutError):
                self.redis_failures += 1

    async def _cancel_listener(self) -> None:
        backoff = 0.5
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._cancel_channel)
                backoff = 0.5
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    data = message.get("data")
                    message_id = data.decode() if isinstance(data, bytes) else str(data)
                    job = self.jobs.get(message_id)
                    if job is not None:
                        job.cancel(CancelReason.REMOTE)
            except (RedisError, OSError):
                self.redis_failures += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()


def _decode(entry_id: bytes | str, fields: dict[Any, Any]) -> StreamEvent:
    raw_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    event = fields.get(b"e", fields.get("e"))
    data = fields.get(b"d", fields.get("d"))
    raw = data if isinstance(data, bytes) else (data or "{}").encode()
    return StreamEvent(
        int(raw_id.split("-", 1)[1]),
        event.decode() if isinstance(event, bytes) else str(event),
        orjson.loads(raw) if raw else {},
        raw or None,
    )
