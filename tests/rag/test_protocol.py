"""The one citation of a passage and the one leadership-type resolution of a request and
of a turn."""

from __future__ import annotations

from pathlib import Path

import pytest

from linkcoach_stream.domain.taxonomy import leadership_code
from linkcoach_stream.rag.protocol import source_of, sources_of
from linkcoach_stream.rag.retriever import Passage
from linkcoach_stream.services.auth import Principal
from linkcoach_stream.services.chat import turn_code
from linkcoach_stream.services.reports.knowledge import KBSection, ReportKnowledge

KB = Path(__file__).resolve().parents[2] / "knowledge_base"


def _passage(path: str, section: str) -> Passage:
    return Passage(
        id=f"{path}#{section}",
        path=path,
        title="참여코칭형 리더",
        category="leadership_types",
        section=section,
        text="본문",
        score=1.0,
    )


def test_a_retrieved_passage_cites_its_section() -> None:
    p = _passage("leadership_types/participative-coaching.md", "강점")
    assert source_of(p) == {
        "path": "leadership_types/participative-coaching.md",
        "title": "참여코칭형 리더",
        "category": "leadership_types",
        "section": "강점",
    }
    assert p.source() == source_of(p)


def test_a_knowledge_base_file_read_whole_cites_the_file_only() -> None:
    kb = ReportKnowledge.load(KB)
    doc = kb.profiles["HHH"]
    section = doc.passages()[1]
    assert isinstance(section, KBSection) and section.section
    expected = {"path": doc.path, "title": doc.title, "category": doc.category}
    assert source_of(section) == expected
    assert doc.source() == expected


def test_sources_name_each_document_once_in_rank_order() -> None:
    a1, b1, a2 = _passage("a.md", "첫째"), _passage("b.md", "둘째"), _passage("a.md", "셋째")
    assert [(s["path"], s["section"]) for s in sources_of([a1, b1, a2])] == [
        ("a.md", "첫째"),
        ("b.md", "둘째"),
    ]


@pytest.mark.parametrize("name", ["HLH", "hlh", "PARTICIPATIVE_VISION", " 참여비전형 "])
def test_a_type_resolves_by_code_id_or_korean_name(name: str) -> None:
    assert leadership_code(name) == "HLH"


def test_no_type_is_none_and_an_unknown_one_is_refused() -> None:
    assert leadership_code(None) is None and leadership_code("") is None
    with pytest.raises(ValueError, match="슈퍼형"):
        leadership_code("슈퍼형")


def _user(code: str | None) -> Principal:
    return Principal(user_id="u-1", email=None, leadership_type=code, jti="j", expires_at=0)


def test_a_turn_is_coached_for_its_conversations_type_before_the_tokens() -> None:
    assert turn_code(_user("LLL"), {"leadership_type": "HLH"}) == "HLH"  # type: ignore[arg-type]
    assert turn_code(_user("LLL"), {"leadership_type": None}) == "LLL"  # type: ignore[arg-type]
    assert turn_code(_user("LLL"), None) == "LLL"
    assert turn_code(_user(None), None) is None
