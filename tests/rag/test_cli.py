from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from linkcoach_stream.config import Settings
from linkcoach_stream.domain.taxonomy import FOLLOWERSHIP_TYPES, resolve_type
from linkcoach_stream.rag.cli import (
    EvalFileError,
    eval_main,
    ingest_main,
    load_eval_file,
    passage_matches,
)
from linkcoach_stream.rag.documents import CATEGORIES
from linkcoach_stream.rag.retriever import Passage, Retriever

from .conftest import KB_DIR, ROOT

EVAL_FILE = ROOT / "tests" / "data" / "retrieval_eval.jsonl"


def write_lines(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


async def test_eval_main_reports_misses_and_ends_with_the_json_summary(
    retriever: Retriever,
    rag_settings: Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The session fixture has already built the index eval_main opens.
    rows: list[dict[str, object]] = [
        {"question": "참여비전형 리더의 강점", "expect": {"path": "participative-vision"}},
        {
            "question": "SBI 피드백 모델로 구체적으로 말하는 법",
            "leadership_type": "참여실무형",
            "expect": {"category": "coaching_guides", "leadership_types": ["참여실무형"]},
        },
        # A real document no search for this question ranks in the top 3.
        {
            "question": "참여비전형 리더의 강점",
            "expect": {"path": "case_studies/manufacturing-safety"},
        },
    ]
    eval_file = write_lines(tmp_path / "eval.jsonl", rows)
    capsys.readouterr()
    code = await _run_sync(eval_main, rag_settings, file=str(eval_file), k=3)
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    summary = json.loads(out[-1])
    assert summary["hit_at_k"] == summary["hit_at_3"] == round(2 / 3, 4)
    assert (summary["n"], summary["k"]) == (3, 3)
    assert summary["hit_at_1"] <= summary["hit_at_3"] <= summary["hit_at_5"]
    assert 0 < summary["mrr"] <= 1
    assert len(out) == 2 and out[0].startswith("MISS line 3:")


async def test_eval_main_refuses_a_path_that_matches_no_document(
    retriever: Retriever,
    rag_settings: Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows: list[dict[str, object]] = [
        {"question": "참여비전형 리더의 강점", "expect": {"path": "participative-vision"}},
        {"question": "참여비전형 리더의 강점", "expect": {"path": "no/such-doc"}},
    ]
    eval_file = write_lines(tmp_path / "eval.jsonl", rows)
    capsys.readouterr()
    code = await _run_sync(eval_main, rag_settings, file=str(eval_file), k=3)
    captured = capsys.readouterr()
    assert code == 2
    assert "line 2" in captured.err and "no/such-doc" in captured.err
    assert captured.out == ""


async def test_ingest_main_prints_counts(
    small_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await _run_sync(ingest_main, small_settings) == 0
    first = capsys.readouterr().out
    assert "ingested 4 documents" in first and "0 removed" in first
    assert await _run_sync(ingest_main, small_settings) == 0
    assert " 0 chunks added, 0 removed" in capsys.readouterr().out


async def test_ingest_main_names_a_broken_file(
    small_settings: Settings, small_kb: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (small_kb / "followership" / "bad.md").write_text(
        "---\ntitle: x\ncategory: followership\nfollowership_types: [boss]\n---\n# x\n", "utf-8"
    )
    assert await _run_sync(ingest_main, small_settings) == 1
    assert "followership/bad.md" in capsys.readouterr().err


def test_eval_file_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "expect": {"path": "x"}}\n{"question": "q"}\n', "utf-8")
    with pytest.raises(EvalFileError, match=r"bad\.jsonl:2: 'expect'"):
        load_eval_file(bad)
    bad.write_text('{"question": "q", "expect": {"title": "x"}}\n', "utf-8")
    with pytest.raises(EvalFileError, match="unknown expect keys"):
        load_eval_file(bad)


def test_eval_main_refuses_an_unreadable_file(
    rag_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert eval_main(rag_settings, file=str(tmp_path / "missing.jsonl")) == 2
    assert "cannot read eval file" in capsys.readouterr().err


def test_passage_matches_needs_every_expected_key() -> None:
    p = Passage(
        id="x",
        path="coaching_guides/feedback-sbi.md",
        title="t",
        category="coaching_guides",
        section="s",
        text="t",
        score=1.0,
        leadership_types=("HLL", "LLL"),
        followership_types=("doer",),
    )
    assert passage_matches(p, {"path": "feedback-sbi", "leadership_types": ("HLL",)})
    assert passage_matches(p, {"category": "coaching_guides", "followership_types": ("doer",)})
    assert not passage_matches(p, {"path": "feedback-sbi", "category": "case_studies"})
    assert not passage_matches(p, {"leadership_types": ("HLL", "HHH")})


def test_the_shipped_eval_set_is_large_and_points_at_real_documents() -> None:
    cases = load_eval_file(EVAL_FILE)
    assert len(cases) >= 80
    assert len({c.question for c in cases}) == len(cases)
    paths = [p.relative_to(KB_DIR).as_posix() for p in KB_DIR.rglob("*.md")]
    for case in cases:
        if "path" in case.expect:
            matching = [p for p in paths if case.expect["path"] in p]
            assert len(matching) == 1, (case.line, case.expect["path"], matching)
        if "category" in case.expect:
            assert case.expect["category"] in CATEGORIES
        assert all(resolve_type(c) for c in case.expect.get("leadership_types", ()))
        assert set(case.expect.get("followership_types", ())) <= set(FOLLOWERSHIP_TYPES)


async def _run_sync(fn: Callable[..., int], *args: object, **kwargs: object) -> int:
    """The CLI entry points call asyncio.run, so they must run off this loop's thread."""
    return await asyncio.to_thread(fn, *args, **kwargs)
