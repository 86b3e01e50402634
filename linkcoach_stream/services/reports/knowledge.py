"""The knowledge-base files a report is built from: each type's profile, its pairing guide
and the dimension guides, parsed once at start (front matter through `rag.documents`).

The knowledge-base version a report stores (and keys its cache by) is the retriever's
when there is one, `ReportKnowledge.version` otherwise. The two are kept apart on purpose,
as a fixed mapping rather than one hash:

- with retrieval: `rag.documents.kb_version`, 16 hex digits over the sorted chunk ids
  (README.md files excluded), the version ingest writes to the collection;
- without (RETRIEVAL_ENABLED=false): `files-` and 16 hex digits of a SHA-256 over every
  markdown file's path and bytes, READMEs included.

The prefix tells which one a stored row carries. Computing the second like the first
would change the `kb_version` of every report stored without retrieval, so each cached
report there would miss once and be generated again; do not "unify" them without a
migration that rewrites the stored keys.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ...domain.taxonomy import BY_CODE, LeadershipType
from ...rag.documents import parse_document, split_sections
from ...rag.protocol import source_of

log = logging.getLogger(__name__)


@dataclass(slots=True)
class KBSection:
    """One `##` section of a knowledge-base file; satisfies `PassageLike`.

    A report read from whole files cites the file (`rag.protocol.source_of`)."""

    cites_section: ClassVar[bool] = False

    path: str
    title: str
    category: str
    section: str
    text: str


@dataclass(frozen=True, slots=True)
class KBDocument:
    cites_section: ClassVar[bool] = False

    path: str
    title: str
    category: str
    intro: str
    sections: tuple[tuple[str, str], ...]

    def find(self, *needles: str) -> str:
        for heading, body in self.sections:
            if all(n in heading for n in needles):
                return body
        return ""

    def passages(self) -> list[KBSection]:
        out = [KBSection(self.path, self.title, self.category, self.title, self.intro)]
        out += [KBSection(self.path, self.title, self.category, h, b) for h, b in self.sections]
        return [p for p in out if p.text]

    def source(self) -> dict[str, Any]:
        return source_of(self)


def _parse_kb_file(root: Path, path: Path) -> KBDocument:
    rel = path.relative_to(root).as_posix()
    doc = parse_document(path.read_text(encoding="utf-8"), rel)
    intro, sections = split_sections(doc)
    return KBDocument(rel, doc.title, doc.category, intro, tuple(sections))


def _slug(t: LeadershipType) -> str:
    return t.id.lower().replace("_", "-")


_DIMENSION_SLUGS = {"공유": "sharing", "상호작용": "interaction", "성장": "growth"}


@dataclass(slots=True)
class ReportKnowledge:
    """The knowledge-base files a report is built from, parsed once at start."""

    root: Path
    profiles: dict[str, KBDocument] = field(default_factory=dict)
    pairings: dict[str, KBDocument] = field(default_factory=dict)
    dimensions: dict[str, list[KBDocument]] = field(default_factory=dict)
    version: str = ""

    @classmethod
    def load(cls, root: Path) -> ReportKnowledge:
        kb = cls(root=root)
        digest = hashlib.sha256()
        files = sorted(root.rglob("*.md")) if root.is_dir() else []
        for path in files:
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(b"\0")
            digest.update(path.read_bytes())
            digest.update(b"\0")
        kb.version = "files-" + digest.hexdigest()[:16]
        for t in BY_CODE.values():
            for target, rel in (
                (kb.profiles, f"leadership_types/{_slug(t)}.md"),
                (kb.pairings, f"followership/pairing-{_slug(t)}.md"),
            ):
                try:
                    target[t.code] = _parse_kb_file(root, root / rel)
                except (OSError, ValueError) as exc:
                    log.warning(
                        "knowledge-base file unusable for reports",
                        extra={"path": rel, "error": str(exc)},
                    )
        for dim, slug in _DIMENSION_SLUGS.items():
            docs = []
            for path in sorted((root / "dimensions").glob(f"{slug}-*.md")):
                try:
                    docs.append(_parse_kb_file(root, path))
                except (OSError, ValueError) as exc:
                    log.warning(
                        "knowledge-base file unusable for reports",
                        extra={"path": str(path), "error": str(exc)},
                    )
            kb.dimensions[dim] = docs
        return kb
