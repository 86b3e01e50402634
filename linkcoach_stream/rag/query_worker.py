"""A question's morphemes and lexicon expansions, analysed in a child process.

kiwi's analysis is ~0.8 ms of the ~1.3 ms CPU of a search and holds the GIL the whole
time (two threads analysing at once take longer than one after the other), so on the
server's one event loop every search queues every other request behind it. A burst of
50 turns arriving within 50 ms made the last of them go upstream ~100 ms late
(`benchmarks/streams.py --levels 50`: added TTFT p99 +72 to +111 ms against the relay;
with retrieval off, +4 ms). Here the analysis runs in a child process on the other
core and the loop only writes a line and reads one back.

Decisions worth keeping:

- One child per server process, a line protocol on its stdin/stdout (a JSON string in,
  a JSON object out) read by the event loop itself: no executor, no feeder thread that
  would take the GIL back from the loop. Answers come back in request order, so a deque
  of futures matches them.
- The child computes exactly what `Retriever.rank` would compute in process (the same
  `analyzer.tokens` and `Lexicon.expansion_tokens`, over the server's own lexicon, sent
  as the first line), so a ranking never depends on where its question was analysed.
- It never fails a search. While the child is down, starting, stuck (no answer at all
  for `timeout_s`: it is killed) or gives `null` for one text, that question is analysed
  in the server process, as before; the child is started again after `restart_delay_s`.
  A child that is slow but answering (a long queue) is left alone.
- The child ends when its stdin closes, so it never outlives the server, even a killed
  one; it ignores SIGINT (a terminal's Ctrl-C reaches it too) and waits for that.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import sys
import time
from dataclasses import dataclass

import orjson

from . import analyzer
from .analyzer import Lexicon, LexiconGroup

log = logging.getLogger(__name__)

_READY = b"ready\n"
_LINE_LIMIT = 1 << 20


@dataclass(frozen=True, slots=True)
class QueryTokens:
    """What a search scores: the question's own morphemes and its lexicon expansions."""

    query: list[str]
    expansion: list[str]


def analyse(text: str, lexicon: Lexicon, *, use_lexicon: bool = True) -> QueryTokens:
    """The in-process analysis, also the child's."""
    return QueryTokens(
        analyzer.tokens(text), lexicon.expansion_tokens(text) if use_lexicon else []
    )


class QueryAnalyzer:
    """Sends questions to the child; `analyse` falls back to the server process."""

    def __init__(
        self,
        lexicon: Lexicon,
        *,
        timeout_s: float = 2.0,
        restart_delay_s: float = 1.0,
        start_timeout_s: float = 60.0,
        python: str = sys.executable,
    ) -> None:
        self.lexicon = lexicon
        self.python = python
        self.timeout_s = timeout_s
        self.restart_delay_s = restart_delay_s
        self.start_timeout_s = start_timeout_s
        self._proc: asyncio.subprocess.Process | None = None
        self._ready = False
        self._pending: collections.deque[tuple[asyncio.Future[QueryTokens | None], float]] = (
            collections.deque()
        )
        self._supervisor: asyncio.Task[None] | None = None
        self._first_ready: asyncio.Event = asyncio.Event()
        self._closing = False
        self._answered_at = 0.0
        self.remote = 0  # questions analysed by the child
        self.inline = 0  # questions analysed here while the child was not available
        self.starts = 0

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        """Start the child and wait (at most `start_timeout_s`) until it has loaded kiwi;
        if it cannot start, questions are analysed here until it can."""
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name="query-analyzer")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_ready.wait(), self.start_timeout_s)
        if not self._ready:
            log.warning("query analyzer process not ready; analysing in the server process")

    async def analyse(self, text: str, *, use_lexicon: bool = True) -> QueryTokens:
        proc = self._proc
        if self._ready and proc is not None and proc.stdin is not None and use_lexicon:
            future: asyncio.Future[QueryTokens | None] = (
                asyncio.get_running_loop().create_future()
            )
            self._pending.append((future, time.monotonic()))
            try:
                proc.stdin.write(orjson.dumps(text) + b"\n")
            except (ConnectionError, RuntimeError):
                self._pending.pop()
            else:
                with contextlib.suppress(ConnectionError):
                    tokens = await future
                    if tokens is not None:
                        self.remote += 1
                        return tokens
        self.inline += 1
        return analyse(text, self.lexicon, use_lexicon=use_lexicon)

    async def close(self) -> None:
        """End the child (its stdin closed, killed after 5 s) and stop restarting it."""
        self._closing = True
        self._ready = False
        if self._proc is not None:
            await _end(self._proc)
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        self._fail_pending()

    # -- the child's lifecycle ----------------------------------------------------

    async def _supervise(self) -> None:
        while not self._closing:
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the next start may work; searches go on
                log.warning("query analyzer process failed", exc_info=True)
            self._ready = False
            self._fail_pending()
            if self._closing:
                break
            self._first_ready.set()  # a caller waiting for the first start stops waiting
            await asyncio.sleep(self.restart_delay_s)

    async def _run_once(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            self.python,
            "-m",
            __name__,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=_LINE_LIMIT,
        )
        self._proc = proc
        self.starts += 1
        assert proc.stdin is not None and proc.stdout is not None
        try:
            # The first line is the lexicon itself, so the child expands exactly as the
            # server does, whatever file (or none) the server's lexicon came from.
            proc.stdin.write(_encode_lexicon(self.lexicon) + b"\n")
            line = await asyncio.wait_for(proc.stdout.readline(), self.start_timeout_s)
            if line != _READY:
                raise RuntimeError(f"query analyzer process said {line[:80]!r} at start")
            self._ready = True
            self._first_ready.set()
            watchdog = asyncio.create_task(self._watch(proc), name="query-analyzer-watchdog")
            try:
                await self._read(proc.stdout)
            finally:
                watchdog.cancel()
        finally:
            self._ready = False
            await _end(proc)
            if not self._closing:
                log.warning(
                    "query analyzer process ended", extra={"returncode": proc.returncode}
                )

    async def _read(self, stdout: asyncio.StreamReader) -> None:
        while True:
            line = await stdout.readline()
            if not line:
                return
            if not self._pending:
                raise RuntimeError("query analyzer process answered a question not asked")
            future, _ = self._pending.popleft()
            self._answered_at = time.monotonic()
            if not future.done():
                future.set_result(_decode(line))

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """Kill a child that stopped answering; its questions go to the fallback. A child
        that is slow but answering (a long queue on a starved machine) is left alone:
        its replacement would spend 1.5 s of CPU loading kiwi."""
        while True:
            await asyncio.sleep(self.timeout_s / 4)
            if not self._pending:
                continue
            waiting_since = max(self._pending[0][1], self._answered_at)
            if time.monotonic() - waiting_since > self.timeout_s:
                log.warning("query analyzer process stopped answering; restarting it")
                self._ready = False
                self._fail_pending()
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                return

    def _fail_pending(self) -> None:
        while self._pending:
            future, _ = self._pending.popleft()
            if not future.done():
                future.set_exception(ConnectionError("query analyzer process is gone"))


async def _end(proc: asyncio.subprocess.Process, grace_s: float = 5.0) -> None:
    """Close the child's stdin and wait for it to exit; kill it only if it has not after
    `grace_s`. A child that is exiting anyway is never signalled: `Popen.send_signal`
    polls first, reaping the child under asyncio's watcher, which then reports exit
    code 255 for it."""
    if proc.stdin is not None and not proc.stdin.is_closing():
        proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def _decode(line: bytes) -> QueryTokens | None:
    try:
        data = orjson.loads(line)
        return QueryTokens(list(data["q"]), list(data["x"]))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


def _encode_lexicon(lexicon: Lexicon) -> bytes:
    return orjson.dumps([[list(g.terms), list(g.expand)] for g in lexicon.groups])


def _decode_lexicon(line: bytes) -> Lexicon:
    return Lexicon(tuple(LexiconGroup(tuple(t), tuple(e)) for t, e in orjson.loads(line)))


def main() -> None:
    """The child: the lexicon (first line) and kiwi loaded once, then one answer per
    line until EOF."""
    # Ctrl-C in a terminal reaches the whole process group: the server shuts down and
    # closes our stdin, which is when we end, without a traceback of our own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lexicon = _decode_lexicon(sys.stdin.buffer.readline())
    analyzer.warm_up()
    out = sys.stdout.buffer
    out.write(_READY)
    out.flush()
    for line in sys.stdin.buffer:
        try:
            tokens = analyse(orjson.loads(line), lexicon)
            answer = orjson.dumps({"q": tokens.query, "x": tokens.expansion})
        except Exception:  # noqa: BLE001 - the parent analyses this one itself
            answer = b"null"
        out.write(answer + b"\n")
        out.flush()


if __name__ == "__main__":
    main()
