"""The query process: unknown words analysed in a child process exactly as in the server
process, answered in order under a burst, and never a failed search when the child is
killed, stuck or gone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from linkcoach_stream.rag.analyzer import split_question, word_tokens
from linkcoach_stream.rag.query_worker import QueryAnalyzer, QueryTokens, WordCache, analyse
from linkcoach_stream.rag.retriever import Retriever

BLIND = Path(__file__).resolve().parents[1] / "data" / "retrieval_eval_blind.jsonl"
QUESTIONS = [
    json.loads(line)["question"] for line in BLIND.read_text(encoding="utf-8").splitlines()[:40]
] + [
    "요즘 완전 방전됐어요 ㅠㅠ 술자리도 많고 윗분 눈치도 보이고",
    "1:1 미팅을 30-60-90 플랜으로?? 😅",
    "줄바꿈이\n있는 질문\t탭도",
    "   ",
    "회의 " * 400,
]
# What a search sends: the words of each question (the memo's words too, here).
WORDS = [split_question(q)[1] for q in QUESTIONS]


def here(words: list[str]) -> list[list[str]]:
    return [word_tokens(w) for w in words]


@pytest.fixture
async def queries() -> AsyncIterator[QueryAnalyzer]:
    analyzer = QueryAnalyzer(timeout_s=1.0, restart_delay_s=0.2)
    await analyzer.start()
    assert analyzer.ready, "the query process started"
    try:
        yield analyzer
    finally:
        await analyzer.close()


async def eventually(check, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_the_query_process_analyses_every_word_as_the_server_process_would(
    queries: QueryAnalyzer,
) -> None:
    for words in WORDS:
        assert await queries.analyse_words(words) == here(words), words
    assert queries.remote == len(WORDS)
    assert queries.inline == 0
    assert any(here(w) for w in WORDS), "kiwi found morphemes"


async def test_a_burst_of_questions_is_answered_each_with_its_own_analysis(
    queries: QueryAnalyzer,
) -> None:
    burst = WORDS * 3
    answers = await asyncio.gather(*(queries.analyse_words(w) for w in burst))
    assert answers == [here(w) for w in burst]
    assert queries.remote == len(burst)


async def test_a_cancelled_question_does_not_shift_the_answers_of_the_others(
    queries: QueryAnalyzer,
) -> None:
    first = asyncio.ensure_future(queries.analyse_words(WORDS[0]))
    rest = [asyncio.ensure_future(queries.analyse_words(w)) for w in WORDS[1:6]]
    await asyncio.sleep(0)
    first.cancel()
    assert await asyncio.gather(*rest) == [here(w) for w in WORDS[1:6]]


def signal_child(queries: QueryAnalyzer, signum: int) -> int:
    pid = queries.pid
    assert pid is not None
    os.kill(pid, signum)
    return pid


async def test_a_killed_query_process_is_replaced_and_no_question_fails_meanwhile(
    queries: QueryAnalyzer,
) -> None:
    pid = signal_child(queries, signal.SIGKILL)
    # Asked while the child is dying or gone: answered here, same analysis.
    answers = [await queries.analyse_words(w) for w in WORDS[:10]]
    assert answers == [here(w) for w in WORDS[:10]]
    await eventually(lambda: queries.ready and queries.starts == 2)
    assert queries.pid != pid
    before = queries.remote
    assert await queries.analyse_words(WORDS[0]) == here(WORDS[0])
    assert queries.remote == before + 1, "the new child answers again"


async def test_a_stuck_query_process_is_killed_and_its_questions_answered_here(
    queries: QueryAnalyzer,
) -> None:
    pid = signal_child(queries, signal.SIGSTOP)
    started = time.monotonic()
    try:
        answer = await queries.analyse_words(WORDS[1])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert answer == here(WORDS[1])
    assert time.monotonic() - started < 5 * queries.timeout_s
    assert queries.inline == 1
    await eventually(lambda: queries.ready and queries.starts == 2)


async def test_a_slow_query_process_that_still_answers_is_not_replaced() -> None:
    # Lines of 300 words, enough of them to take the child three timeouts, but it
    # answers one every few ms: it is busy, not stuck.
    analyzer = QueryAnalyzer(timeout_s=1.0)
    await analyzer.start()
    try:
        line = ["회의가", "너무", "길어서", "지쳐요"] * 75
        started = time.monotonic()
        await analyzer.analyse_words(line)
        each_s = time.monotonic() - started
        # Enough lines to keep it busy for three timeouts, one answer every each_s.
        count = max(20, math.ceil(3 * analyzer.timeout_s / each_s))
        long = [[f"{n}번째{w}" for w in line] for n in range(count)]
        started = time.monotonic()
        answers = await asyncio.gather(*(analyzer.analyse_words(w) for w in long))
        assert time.monotonic() - started > analyzer.timeout_s, "the queue outlasted it"
        assert answers == [here(w) for w in long]
        assert analyzer.starts == 1 and analyzer.remote == len(long) + 1 and analyzer.inline == 0
    finally:
        await analyzer.close()


async def test_answers_left_in_the_pipe_of_a_child_killed_as_stuck_are_dropped() -> None:
    # The loop stalled past the timeout while the child went on answering: the watchdog
    # gave its questions to the fallback and killed it; the lines it had written still
    # come in and belong to no one.
    analyzer = QueryAnalyzer()
    stale = asyncio.StreamReader()
    stale.feed_data(b'[["\xed\x9a\x8c\xec\x9d\x98"]]\n[["a"]]\n')
    stale.feed_eof()
    await analyzer._read(stale)  # not ready: dropped, no error
    alive = asyncio.StreamReader()
    alive.feed_data(b'[["a"]]\n')
    alive.feed_eof()
    analyzer._ready = True
    with pytest.raises(RuntimeError, match="not asked"):
        await analyzer._read(alive)


async def test_ctrl_c_in_a_terminal_does_not_end_the_query_process(
    queries: QueryAnalyzer,
) -> None:
    pid = signal_child(queries, signal.SIGINT)
    await asyncio.sleep(0.2)
    assert await queries.analyse_words(WORDS[3]) == here(WORDS[3])
    assert queries.pid == pid and queries.remote == 1 and queries.inline == 0


async def test_closing_ends_the_query_process() -> None:
    analyzer = QueryAnalyzer()
    await analyzer.start()
    proc = analyzer._proc
    assert proc is not None and proc.returncode is None
    await analyzer.close()
    assert proc.returncode == 0, "the child ended on its closed stdin"
    # Closed: questions are still answered, here.
    assert await analyzer.analyse_words(WORDS[0]) == here(WORDS[0])
    assert analyzer.inline == 1


async def test_a_child_that_cannot_start_leaves_questions_to_the_server_process(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'no interpreter here' >&2\nexit 3\n", encoding="utf-8")
    broken.chmod(0o755)
    analyzer = QueryAnalyzer(restart_delay_s=60, start_timeout_s=30, python=str(broken))
    try:
        await analyzer.start()
        assert not analyzer.ready and analyzer.starts == 1
        assert await analyzer.analyse_words(WORDS[2]) == here(WORDS[2])
        assert analyzer.inline == 1 and analyzer.remote == 0
    finally:
        await analyzer.close()


def test_the_word_cache_keeps_at_most_its_size_dropping_the_oldest() -> None:
    cache = WordCache(2)
    cache.put("방전됐어요", ["방전"])
    cache.put("윗분", ["윗분"])
    cache.put("술자리", ["술자리"])
    assert len(cache) == 2
    assert cache.get("방전됐어요") is None
    assert cache.get("윗분") == ("윗분",) and cache.get("술자리") == ("술자리",)
    off = WordCache(0)
    off.put("윗분", ["윗분"])
    assert len(off) == 0 and off.get("윗분") is None
    long_word = "가" * (WordCache.MAX_WORD_CHARS + 1)
    cache.put(long_word, ["가"])
    assert cache.get(long_word) is None, "a long word is analysed again, not kept"


async def test_a_prefetched_search_ranks_exactly_like_a_plain_one(
    retriever: Retriever, queries: QueryAnalyzer
) -> None:
    assert retriever.prefetch("회의가 너무 길어요") is None, "no query process, nothing to start"
    retriever.query_analyzer = queries
    try:
        for question, kind in (
            ("회의가 너무 길어요 다들 지쳐요", "HLH"),
            ("참여비전형인데 팀원이 번아웃 온 것 같아요", "HLH"),
            ("피드백을 어떻게 줘야 할지 모르겠어요", None),
        ):
            plain = await retriever.search(question, leadership_type=kind, k=4)
            prefetched = retriever.prefetch(question, leadership_type=kind)
            assert prefetched is not None
            used = await retriever.search(
                question, leadership_type=kind, k=4, prefetched=prefetched
            )
            assert [p.id for p in used] == [p.id for p in plain]
            assert prefetched.tokens.done() and not prefetched.tokens.cancelled()
        # Prefetched for no type, searched for one: the type name is stripped only in
        # the second, so the prefetched analysis is dropped and the question analysed again.
        question = "참여비전형인데 회의가 길어요"
        stale = retriever.prefetch(question, leadership_type=None)
        assert stale is not None
        used = await retriever.search(question, leadership_type="HLH", k=4, prefetched=stale)
        plain = await retriever.search(question, leadership_type="HLH", k=4)
        assert [p.id for p in used] == [p.id for p in plain]
        assert retriever.prefetch(question, leadership_type="NOPE") is None
    finally:
        retriever.query_analyzer = None


async def test_a_question_ranks_the_same_analysed_here_in_the_child_or_from_the_cache(
    retriever: Retriever, queries: QueryAnalyzer
) -> None:
    questions = QUESTIONS[:25]
    memo = retriever._mirror.words
    assert len(memo) > 5000, "the mirror carries the knowledge base's words"

    async def ranked() -> list[list[str]]:
        return [[p.id for p in await retriever.search(q, k=5)] for q in questions]

    retriever.word_cache = WordCache(0)
    here_ranks = await ranked()
    whole = [analyse_here(retriever, q) for q in questions]
    retriever.query_analyzer = queries
    try:
        child_ranks = await ranked()
        assert queries.remote > 0, "unknown words went to the child"
        retriever.word_cache = WordCache(10_000)
        before = dict(retriever.words_from)
        first = await ranked()
        sent = queries.remote
        again = await ranked()
        assert queries.remote == sent, "every unknown word came from the cache the second time"
    finally:
        retriever.query_analyzer = None
    assert child_ranks == here_ranks == first == again
    assert [await retriever.analyse(q, memo) for q in questions] == whole
    counts = {k: v - before[k] for k, v in retriever.words_from.items()}
    assert counts["memo"] > counts["kiwi"] > 0 and counts["cache"] >= counts["kiwi"]


def analyse_here(retriever: Retriever, question: str) -> QueryTokens:
    return analyse(question, retriever.lexicon, retriever._mirror.words)
