from __future__ import annotations

from pathlib import Path

import pytest

from linkcoach_stream.rag.documents import (
    MAX_CHARS,
    DocumentError,
    chunk_document,
    kb_version,
    load_corpus,
    parse_document,
)

from .conftest import KB_DIR


def doc_text(front: str, body: str = "# 제목\n\n도입 문단입니다.\n") -> str:
    return f"---\n{front.strip()}\n---\n\n{body}"


GOOD_FRONT = """
title: SBI 피드백
category: coaching_guides
leadership_types: [참여코칭형, 과도기형]
followership_types: [driver, Thinker]
tags: [코칭, 피드백]
"""


def section(heading: str, chars: int, fill: str = "가") -> str:
    return f"## {heading}\n{fill * chars}\n\n"


def test_front_matter_is_parsed_into_codes_and_followership_ids() -> None:
    doc = parse_document(doc_text(GOOD_FRONT), "coaching_guides/sbi.md")
    assert doc.title == "SBI 피드백"
    assert doc.category == "coaching_guides"
    assert doc.leadership_types == ("HHH", "LLL")
    assert doc.followership_types == ("driver", "thinker")
    assert doc.tags == ("코칭", "피드백")


def test_leadership_types_may_be_written_as_codes() -> None:
    front = GOOD_FRONT.replace("[참여코칭형, 과도기형]", "[HLH, 참여비전형]")
    doc = parse_document(doc_text(front), "coaching_guides/x.md")
    assert doc.leadership_types == ("HLH",)


def test_unknown_leadership_type_names_the_file() -> None:
    front = GOOD_FRONT.replace("과도기형", "참여코치형")
    with pytest.raises(DocumentError, match=r"coaching_guides/typo\.md.*참여코치형"):
        parse_document(doc_text(front), "coaching_guides/typo.md")


def test_unknown_followership_type_names_the_file() -> None:
    front = GOOD_FRONT.replace("driver", "leader")
    with pytest.raises(DocumentError, match=r"coaching_guides/f\.md.*'leader'"):
        parse_document(doc_text(front), "coaching_guides/f.md")


def test_unknown_front_matter_key_is_rejected() -> None:
    with pytest.raises(DocumentError, match=r"x\.md: unknown front matter key.*'autor'"):
        parse_document(doc_text(GOOD_FRONT + "autor: 김코치\n"), "coaching_guides/x.md")


def test_missing_title_is_rejected() -> None:
    front = "\n".join(line for line in GOOD_FRONT.splitlines() if not line.startswith("title"))
    with pytest.raises(DocumentError, match=r"missing front matter key.*'title'"):
        parse_document(doc_text(front), "coaching_guides/x.md")


def test_missing_front_matter_is_rejected() -> None:
    with pytest.raises(DocumentError, match=r"dimensions/x\.md: missing front matter"):
        parse_document("# 제목\n\n본문\n", "dimensions/x.md")


def test_invalid_yaml_is_reported() -> None:
    with pytest.raises(DocumentError, match="not valid YAML"):
        parse_document(doc_text("title: [열린 괄호\ncategory: dimensions"), "dimensions/x.md")


def test_unknown_category_and_folder_mismatch_are_rejected() -> None:
    with pytest.raises(DocumentError, match="unknown category 'guides'"):
        parse_document(doc_text(GOOD_FRONT.replace("coaching_guides", "guides")), "x.md")
    with pytest.raises(DocumentError, match="does not match folder 'dimensions'"):
        parse_document(doc_text(GOOD_FRONT), "dimensions/x.md")


def test_chunks_follow_h2_sections_and_start_with_title_and_heading() -> None:
    body = "# SBI 피드백\n\n" + "도입" * 100 + "\n\n" + section("첫째", 300) + section("둘째", 300)
    chunks = chunk_document(parse_document(doc_text(GOOD_FRONT, body), "coaching_guides/s.md"))
    assert [c.section for c in chunks] == ["SBI 피드백", "첫째", "둘째"]
    assert chunks[1].text.startswith("SBI 피드백\n첫째\n\n가가")
    assert "# SBI" not in chunks[0].text.split("\n", 1)[1]
    assert [c.ordinal for c in chunks] == [0, 1, 2]
    meta = chunks[1].metadata()
    assert meta["path"] == "coaching_guides/s.md"
    assert meta["leadership_types"] == "HHH,LLL"
    assert meta["lt_HHH"] is True and meta["lt_LLL"] is True and "lt_HLH" not in meta
    assert meta["ft_driver"] is True and meta["followership_types"] == "driver,thinker"


def test_tiny_sections_merge_into_the_next_and_long_ones_split_on_paragraphs() -> None:
    paragraphs = "\n\n".join("나" * 300 for _ in range(6))
    body = "# T\n\n" + section("짧은", 20) + section("보통", 300) + f"## 긴\n{paragraphs}\n"
    chunks = chunk_document(parse_document(doc_text(GOOD_FRONT, body), "coaching_guides/m.md"))
    assert chunks[0].section == "짧은 · 보통"
    long_parts = [c for c in chunks if c.section == "긴"]
    assert len(long_parts) >= 2
    assert all(len(c.text) <= MAX_CHARS for c in chunks)
    # Paragraphs are never cut in the middle.
    assert all(run == "나" * 300 for c in long_parts for run in c.text.split("\n\n")[1:])


def test_a_paragraph_without_breaks_is_still_split_below_the_limit() -> None:
    body = "# T\n\n" + section("벽", 5000)
    chunks = chunk_document(parse_document(doc_text(GOOD_FRONT, body), "coaching_guides/w.md"))
    assert len(chunks) > 1
    assert all(len(c.text) <= MAX_CHARS for c in chunks)


def test_chunk_ids_are_stable_and_change_only_with_their_content() -> None:
    body = "# T\n\n" + section("하나", 300) + section("둘", 300, "다")
    first = chunk_document(parse_document(doc_text(GOOD_FRONT, body), "coaching_guides/a.md"))
    again = chunk_document(parse_document(doc_text(GOOD_FRONT, body), "coaching_guides/a.md"))
    assert [c.id for c in first] == [c.id for c in again]
    assert all(c.id.startswith("coaching_guides/a.md#") for c in first)

    edited = body.replace("다" * 300, "라" * 300)
    changed = chunk_document(parse_document(doc_text(GOOD_FRONT, edited), "coaching_guides/a.md"))
    assert changed[0].id == first[0].id
    assert changed[1].id != first[1].id

    moved = chunk_document(parse_document(doc_text(GOOD_FRONT, body), "coaching_guides/b.md"))
    assert {c.id for c in moved}.isdisjoint(c.id for c in first)

    retyped = chunk_document(
        parse_document(
            doc_text(GOOD_FRONT.replace("과도기형", "참여비전형"), body), "coaching_guides/a.md"
        )
    )
    assert {c.id for c in retyped}.isdisjoint(c.id for c in first)
    assert kb_version(c.id for c in first) != kb_version(c.id for c in changed)


def test_the_whole_knowledge_base_parses_and_chunks_within_limits() -> None:
    corpus = load_corpus(KB_DIR)
    assert len(corpus.documents) >= 100
    assert {d.category for d in corpus.documents} == {
        "leadership_types",
        "dimensions",
        "followership",
        "coaching_guides",
        "case_studies",
    }
    assert len({c.id for c in corpus.chunks}) == len(corpus.chunks)
    assert all(len(c.text) <= MAX_CHARS for c in corpus.chunks)
    profile = [c for c in corpus.chunks if c.path == "leadership_types/participative-vision.md"]
    assert profile and all(c.leadership_types == ("HLH",) for c in profile)


def test_load_corpus_names_the_broken_file(tmp_path: Path) -> None:
    (tmp_path / "dimensions").mkdir()
    (tmp_path / "dimensions" / "bad.md").write_text(
        doc_text("title: x\ncategory: dimensions\nleadership_types: [없는형]"), encoding="utf-8"
    )
    with pytest.raises(DocumentError, match=r"dimensions/bad\.md"):
        load_corpus(tmp_path)
