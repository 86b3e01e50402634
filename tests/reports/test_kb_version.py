"""The two knowledge-base versions a report can store, and what each one hashes."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from linkcoach_stream.rag.documents import load_corpus
from linkcoach_stream.services.reports.knowledge import ReportKnowledge

KB = Path(__file__).resolve().parents[2] / "knowledge_base"


def test_the_files_version_is_prefixed_and_the_corpus_version_is_not() -> None:
    files, corpus = ReportKnowledge.load(KB).version, load_corpus(KB).version
    assert re.fullmatch(r"files-[0-9a-f]{16}", files)
    assert re.fullmatch(r"[0-9a-f]{16}", corpus)


def test_a_readme_edit_moves_only_the_files_version(tmp_path: Path) -> None:
    root = tmp_path / "kb"
    shutil.copytree(KB, root)
    before = ReportKnowledge.load(root).version, load_corpus(root).version
    (root / "README.md").write_text("# 안내\n\n바뀐 설명\n", encoding="utf-8")
    after = ReportKnowledge.load(root).version, load_corpus(root).version
    assert after[0] != before[0]
    assert after[1] == before[1]


def test_a_document_edit_moves_both(tmp_path: Path) -> None:
    root = tmp_path / "kb"
    shutil.copytree(KB, root)
    before = ReportKnowledge.load(root).version, load_corpus(root).version
    doc = next(iter(sorted((root / "leadership_types").glob("*.md"))))
    doc.write_text(doc.read_text(encoding="utf-8") + "\n## 추가 절\n\n새 내용입니다.\n", "utf-8")
    after = ReportKnowledge.load(root).version, load_corpus(root).version
    assert after[0] != before[0] and after[1] != before[1]
