"""The words of a question that the knowledge base never uses, analysed in a child process.

A question is analysed word by word (`analyzer.question_tokens`): a word the knowledge
base uses has its morphemes in the mirror's word memo; a word it does not is analysed
by kiwi alone (~0.07 ms each, ~3 words of a leader's question of ~16, GIL held the whole
time), then cached (`WordCache`: the analysis depends on the word only). Analysing whole
questions with kiwi on the server's one event loop made a burst of 50 turns arriving
within 50 ms send the last of them upstream ~100 ms late (`benchmarks/streams.py
--levels 50`: added TTFT p99 +72 to +111 ms against the relay); here the unknown words
go to a child process on the other core and the loop only writes a line and reads one
back.

Decisions worth keeping:

- One child per server process, a line protocol on its stdin/stdout (a JSON list of
  words in, a JSON list of their morpheme lists out) read by the event loop itself: no
  executor, no feeder thread that would take the GIL back from the loop. Answers come
  back in request order, so a deque of futures matches them.
- The child computes exactly what the server process would (`analyzer.word_tokens`), so
  a ranking never depends on where its words were analysed, or whether they were cached.
- It never fails a search. While the child is down, starting, stuck (no answer at all
  for `timeout_s`: it is killed) or gives `null` for one line, those words are analysed
  in the server process; the child is started again after `restart_delay_s`. A child
  that is slow but answering (a long queue) is left alone.
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
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from . import analyzer
from .analyzer import Lexicon, WordMemo

log = logging.getLogger(__name__)

_READY = b"ready\n"
_LINE_LIMIT = 1 << 20


@dataclass(frozen=True, slots=True)
class QueryTokens:
    """What a search scores: the question's own morphemes and its lexicon expansions."""

    query: list[str]
    expansion: list[str]


def analyse(
    text: str, lexicon: Lexicon, memo: WordMemo, *, use_lexicon: bool = True
) -> QueryTokens:
    """The whole analysis in this process (offline tools, and what the server's equals)."""
    return QueryTokens(
        analyzer.question_tokens(text, memo),
        lexicon.expansion_tokens(text) if use_lexicon else [],
    )


class WordCache:
    """Unknown words' morphemes (`analyzer.word_tokens`), at most `size` of them; the
    oldest go first. A function of the word alone, so a cached answer is the answer.
    Words longer than `MAX_WORD_CHARS` are not kept (they rarely repeat, and a question
    of long made-up words would otherwise fill memory a 2000-character string at a time)."""

    MAX_WORD_CHARS = 32

    def __init__(self, size: int = 50_000) -> None:
        self.size = size
        self._forms: dict[str, tuple[str, ...]] = {}

    def __len__(self) -> int:
        return len(self._forms)

    def get(self, word: str) -> tuple[str, ...] | None:
        return self._forms.get(word)

    def put(self, word: str, forms: Sequence[str]) -> None:
        if self.size <= 0 or len(word) > self.MAX_WORD_CHARS:
            return
        if len(self._forms) >= self.size:
            del self._forms[next(iter(self._forms))]
        self._forms[word] = tuple(forms)


class QueryAnalyzer:
    """Sends unknown words to the child; `analyse_words` falls back to this process."""

    def __init__(
        self,
        *,
        timeout_s: float = 2.0,
        restart_delay_s: float = 1.0,
        start_timeout_s: float = 60.0,
        python: str = sys.executable,
    ) -> None:
        self.python = python
        self.timeout_s = timeout_s
        self.restart_delay_s = restart_delay_s
        self.start_timeout_s = start_timeout_s
        self._proc: asyncio.subprocess.Process | None = None
        self._ready = False
        self._pending: collections.deque[tuple[asyncio.Future[list[list[str]] | None], float]] = (
            collections.deque()
        )
        self._supervisor: asyncio.Task[None] | None = None
        self._first_ready: asyncio.Event = asyncio.Event()
        self._closing = False
        self._answered_at = 0.0
        self.remote = 0  # lines of words analysed by the child
        self.inline = 0  # lines analysed here while the child was not available
        self.starts = 0

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        """Start the child and wait (at most `start_timeout_s`) until it has loaded kiwi;
        if it cannot start, words are analysed here until it can."""
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name="query-analyzer")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_ready.wait(), self.start_timeout_s)
        if not self._ready:
            log.warning("query analyzer process not ready; analysing in the server process")

    async def analyse_words(self, words: Sequence[str]) -> list[list[str]]:
        """`analyzer.word_tokens` of each word, in the child if it is up, else here."""
        proc = self._proc
        if self._ready and proc is not None and proc.stdin is not None:
            future: asyncio.Future[list[list[str]] | None] = (
                asyncio.get_running_loop().create_future()
            )
            self._pending.append((future, time.monotonic()))
            try:
                proc.stdin.write(orjson.dumps(list(words)) + b"\n")
            except (ConnectionError, RuntimeError):
                self._pending.pop()
            else:
                with contextlib.suppress(ConnectionError):
                    forms = await future
                    if forms is not None and len(forms) == len(words):
                        self.remote += 1
                        return forms
        self.inline += 1
        return [analyzer.word_tokens(w) for w in words]

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
                log.warning("query analyzer process ended", extra={"returncode": proc.returncode})

    async def _read(self, stdout: asyncio.StreamReader) -> None:
        while True:
            line = await stdout.readline()
            if not line:
                return
            if not self._pending:
                if not self._ready:
                    continue  # killed as stuck: its questions went to the fallback already
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


def _decode(line: bytes) -> list[list[str]] | None:
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, list) or not all(
        isinstance(forms, list) and all(isinstance(f, str) for f in forms) for forms in data
    ):
        return None
    return data


def main() -> None:
    """The child: kiwi loaded once, then one answer per line until EOF."""
    # Ctrl-C in a terminal reaches the whole process group: the server shuts down and
    # closes our stdin, which is when we end, without a traceback of our own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    analyzer.warm_up()
    out = sys.stdout.buffer
    out.write(_READY)
    out.flush()
    for line in sys.stdin.buffer:
        try:
            answer = orjson.dumps([analyzer.word_tokens(str(w)) for w in orjson.loads(line)])
        except Exception:  # noqa: BLE001 - the parent analyses these itself
            answer = b"null"
        out.write(answer + b"\n")
        out.flush()


if __name__ == "__main__":
    main()
