"""The query process: questions analysed in a child process exactly as in the server
process, answered in order under a burst, and never a failed search when the child is
killed, stuck or gone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from linkcoach_stream.rag.analyzer import Lexicon, LexiconGroup
from linkcoach_stream.rag.query_worker import QueryAnalyzer, analyse
from linkcoach_stream.rag.retriever import Retriever

from .conftest import KB_DIR

LEXICON = KB_DIR / "lexicon.yaml"
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


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return Lexicon.load(LEXICON)


@pytest.fixture
async def queries(lexicon: Lexicon) -> AsyncIterator[QueryAnalyzer]:
    analyzer = QueryAnalyzer(lexicon, timeout_s=1.0, restart_delay_s=0.2)
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


async def test_the_query_process_analyses_every_question_as_the_server_process_would(
    queries: QueryAnalyzer, lexicon: Lexicon
) -> None:
    for question in QUESTIONS:
        assert await queries.analyse(question) == analyse(question, lexicon), question
    assert queries.remote == len(QUESTIONS)
    assert queries.inline == 0
    assert any(analyse(q, lexicon).expansion for q in QUESTIONS), "the lexicon was applied"


async def test_a_burst_of_questions_is_answered_each_with_its_own_analysis(
    queries: QueryAnalyzer, lexicon: Lexicon
) -> None:
    burst = QUESTIONS * 3
    answers = await asyncio.gather(*(queries.analyse(q) for q in burst))
    assert answers == [analyse(q, lexicon) for q in burst]
    assert queries.remote == len(burst)


async def test_a_cancelled_question_does_not_shift_the_answers_of_the_others(
    queries: QueryAnalyzer, lexicon: Lexicon
) -> None:
    first = asyncio.ensure_future(queries.analyse(QUESTIONS[0]))
    rest = [asyncio.ensure_future(queries.analyse(q)) for q in QUESTIONS[1:6]]
    await asyncio.sleep(0)
    first.cancel()
    assert await asyncio.gather(*rest) == [analyse(q, lexicon) for q in QUESTIONS[1:6]]


def signal_child(queries: QueryAnalyzer, signum: int) -> int:
    pid = queries.pid
    assert pid is not None
    os.kill(pid, signum)
    return pid


async def test_a_killed_query_process_is_replaced_and_no_question_fails_meanwhile(
    queries: QueryAnalyzer, lexicon: Lexicon
) -> None:
    pid = signal_child(queries, signal.SIGKILL)
    # Asked while the child is dying or gone: answered here, same analysis.
    answers = [await queries.analyse(q) for q in QUESTIONS[:10]]
    assert answers == [analyse(q, lexicon) for q in QUESTIONS[:10]]
    await eventually(lambda: queries.ready and queries.starts == 2)
    assert queries.pid != pid
    before = queries.remote
    assert await queries.analyse(QUESTIONS[0]) == analyse(QUESTIONS[0], lexicon)
    assert queries.remote == before + 1, "the new child answers again"


async def test_a_stuck_query_process_is_killed_and_its_questions_answered_here(
    queries: QueryAnalyzer, lexicon: Lexicon
) -> None:
    pid = signal_child(queries, signal.SIGSTOP)
    started = time.monotonic()
    try:
        answer = await queries.analyse(QUESTIONS[1])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert answer == analyse(QUESTIONS[1], lexicon)
    assert time.monotonic() - started < 5 * queries.timeout_s
    assert queries.inline == 1
    await eventually(lambda: queries.ready and queries.starts == 2)


async def test_a_slow_query_process_that_still_answers_is_not_replaced(
    lexicon: Lexicon,
) -> None:
    # 60 long questions take the child ~1 s, far past the timeout, but it answers one
    # every ~20 ms: it is busy, not stuck.
    analyzer = QueryAnalyzer(lexicon, timeout_s=0.3)
    await analyzer.start()
    try:
        long = [f"{n}번째 회의가 너무 길어서 팀원들이 지쳐요. " * 60 for n in range(60)]
        started = time.monotonic()
        answers = await asyncio.gather(*(analyzer.analyse(q) for q in long))
        assert time.monotonic() - started > analyzer.timeout_s, "the queue outlasted it"
        assert answers == [analyse(q, lexicon) for q in long]
        assert analyzer.starts == 1 and analyzer.remote == len(long) and analyzer.inline == 0
    finally:
        await analyzer.close()


async def test_ctrl_c_in_a_terminal_does_not_end_the_query_process(
    queries: QueryAnalyzer, lexicon: Lexicon
) -> None:
    pid = signal_child(queries, signal.SIGINT)
    await asyncio.sleep(0.2)
    assert await queries.analyse(QUESTIONS[3]) == analyse(QUESTIONS[3], lexicon)
    assert queries.pid == pid and queries.remote == 1 and queries.inline == 0


async def test_closing_ends_the_query_process(lexicon: Lexicon) -> None:
    analyzer = QueryAnalyzer(lexicon)
    await analyzer.start()
    proc = analyzer._proc
    assert proc is not None and proc.returncode is None
    await analyzer.close()
    assert proc.returncode == 0, "the child ended on its closed stdin"
    # Closed: questions are still answered, here.
    assert await analyzer.analyse(QUESTIONS[0]) == analyse(QUESTIONS[0], lexicon)
    assert analyzer.inline == 1


async def test_a_child_that_cannot_start_leaves_questions_to_the_server_process(
    lexicon: Lexicon, tmp_path: Path
) -> None:
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'no interpreter here' >&2\nexit 3\n", encoding="utf-8")
    broken.chmod(0o755)
    analyzer = QueryAnalyzer(lexicon, restart_delay_s=60, start_timeout_s=30, python=str(broken))
    try:
        await analyzer.start()
        assert not analyzer.ready and analyzer.starts == 1
        assert await analyzer.analyse(QUESTIONS[2]) == analyse(QUESTIONS[2], lexicon)
        assert analyzer.inline == 1 and analyzer.remote == 0
    finally:
        await analyzer.close()


async def test_the_child_expands_with_the_servers_own_lexicon_not_a_file() -> None:
    own = Lexicon((LexiconGroup(("퇴사각",), ("이직", "퇴사")),))
    analyzer = QueryAnalyzer(own)
    await analyzer.start()
    try:
        question = "요즘 완전 퇴사각이에요"
        got = await analyzer.analyse(question)
        assert got == analyse(question, own) and got.expansion, "expanded by the given groups"
        assert got != analyse(question, Lexicon.load(LEXICON))
        assert analyzer.remote == 1
    finally:
        await analyzer.close()


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
