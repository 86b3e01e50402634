"""Knowledge-base documents: front matter, validation and chunking.

Decisions worth keeping:

- Front matter is strict. Unknown keys, a category that disagrees with the folder, or a
  leadership/followership type the taxonomy does not know raise `DocumentError` naming
  the file: a typo would otherwise silently drop a document out of every type filter.
- Leadership types are stored as codes ("HLH"), whatever the author wrote (Korean name,
  code or id), so filters never depend on spelling.
- A chunk is one `##` section, prefixed with the document title and the section heading:
  e5 embeds a short self-contained passage best, and a section alone ("강점") often does
  not say whose strengths it lists. Text before the first `##` becomes its own chunk.
- Sections shorter than `MIN_CHARS` are merged into the next one (a lone checklist line
  embeds poorly); sections longer than `MAX_CHARS` are split on paragraph boundaries
  (then lines, then sentences) into pieces of about equal size, so no chunk exceeds
  the e5 512-token window (Korean runs at about 0.55 tokens per character) and no
  split leaves a one-sentence stub. The 105 documents make about 700 chunks of
  180-900 characters.
- A chunk id is `<relative path>#<hash>` where the hash covers the path, the chunk text
  and its metadata. Ingestion diffs ids only: an unchanged chunk keeps its id and is
  never re-embedded; editing front matter changes every chunk of that document.
- `kb_version` hashes the sorted chunk ids, so it changes whenever any document does.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]

from ..domain.taxonomy import FOLLOWERSHIP_TYPES, resolve_type

CATEGORIES: tuple[str, ...] = (
    "leadership_types",
    "dimensions",
    "followership",
    "coaching_guides",
    "case_studies",
)
REQUIRED_KEYS = frozenset({"title", "category"})
ALLOWED_KEYS = frozenset(
    {"title", "category", "leadership_types", "followership_types", "tags", "example_questions"}
)
EXAMPLE_QUESTIONS = (3, 5)
EXAMPLE_QUESTION_MAX_CHARS = 200
MIN_CHARS = 160
# Sections that only link to other documents ("## 함께 보기"): kept in the file for the
# reader, never chunked - a list of titles would match many questions and answer none.
LINK_SECTIONS = frozenset({"함께 보기"})
MAX_CHARS = 900

_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)
_H1 = re.compile(r"^#[ \t]+(.+?)[ \t]*$", re.MULTILINE)
_H2 = re.compile(r"^##[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.!?。])\s+")


class DocumentError(ValueError):
    """A knowledge-base file is malformed; the message names the file."""


@dataclass(frozen=True, slots=True)
class Document:
    path: str
    title: str
    category: str
    leadership_types: tuple[str, ...]
    followership_types: tuple[str, ...]
    tags: tuple[str, ...]
    body: str
    example_questions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Chunk:
    id: str
    path: str
    title: str
    category: str
    section: str
    text: str
    leadership_types: tuple[str, ...]
    followership_types: tuple[str, ...]
    tags: tuple[str, ...]
    ordinal: int
    example_questions: tuple[str, ...] = ()

    def field_text(self) -> str:
        """The document's front-matter text: title, tags and example questions."""
        return "\n".join((self.title, " ".join(self.tags), *self.example_questions))

    def metadata(self) -> dict[str, str | int | bool]:
        """Flat metadata for Chroma: lists as CSV plus one boolean key per type."""
        meta: dict[str, str | int | bool] = {
            "path": self.path,
            "title": self.title,
            "category": self.category,
            "section": self.section,
            "leadership_types": ",".join(self.leadership_types),
            "followership_types": ",".join(self.followership_types),
            "tags": ",".join(self.tags),
            "ordinal": self.ordinal,
            "example_questions": "\n".join(self.example_questions),
        }
        for code in self.leadership_types:
            meta[f"lt_{code}"] = True
        for ft in self.followership_types:
            meta[f"ft_{ft}"] = True
        return meta


@dataclass(frozen=True, slots=True)
class Corpus:
    documents: tuple[Document, ...]
    chunks: tuple[Chunk, ...]
    version: str = field(default="")


def _as_str_list(value: Any, key: str, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise DocumentError(f"{where}: '{key}' must be a list of strings, got {value!r}")
    return [str(v).strip() for v in value if str(v).strip()]


def parse_front_matter(text: str, where: str) -> tuple[dict[str, Any], str]:
    """Split `text` into its YAML front matter and the markdown body."""
    match = _FRONT_MATTER.match(text.lstrip("\ufeff"))
    if match is None:
        raise DocumentError(f"{where}: missing front matter (a '---' block at the top)")
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        raise DocumentError(f"{where}: front matter is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise DocumentError(f"{where}: front matter must be a mapping")
    return data, text.lstrip("\ufeff")[match.end() :]


def validate_front_matter(
    data: Mapping[str, Any], where: str, *, folder: str | None = None
) -> tuple[str, str, tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Return (title, category, leadership codes, followership ids, tags) or raise."""
    unknown = sorted(set(data) - ALLOWED_KEYS)
    if unknown:
        raise DocumentError(
            f"{where}: unknown front matter key(s) {unknown}; allowed: {sorted(ALLOWED_KEYS)}"
        )
    missing = sorted(REQUIRED_KEYS - set(data))
    if missing:
        raise DocumentError(f"{where}: missing front matter key(s) {missing}")
    title = data["title"]
    if not isinstance(title, str) or not title.strip():
        raise DocumentError(f"{where}: 'title' must be a non-empty string")
    category = data["category"]
    if category not in CATEGORIES:
        raise DocumentError(
            f"{where}: unknown category {category!r}; expected one of {list(CATEGORIES)}"
        )
    if folder is not None and folder in CATEGORIES and folder != category:
        raise DocumentError(f"{where}: category {category!r} does not match folder {folder!r}")

    codes: list[str] = []
    for name in _as_str_list(data.get("leadership_types"), "leadership_types", where):
        resolved = resolve_type(name)
        if resolved is None:
            raise DocumentError(
                f"{where}: unknown leadership type {name!r} "
                "(use a Korean name such as 참여코칭형 or a code such as HHH)"
            )
        if resolved.code not in codes:
            codes.append(resolved.code)
    followers: list[str] = []
    for name in _as_str_list(data.get("followership_types"), "followership_types", where):
        key = name.lower()
        if key not in FOLLOWERSHIP_TYPES:
            raise DocumentError(
                f"{where}: unknown followership type {name!r}; "
                f"expected one of {list(FOLLOWERSHIP_TYPES)}"
            )
        if key not in followers:
            followers.append(key)
    tags = tuple(dict.fromkeys(_as_str_list(data.get("tags"), "tags", where)))
    return title.strip(), category, tuple(codes), tuple(followers), tags


def parse_document(text: str, path: str) -> Document:
    """Parse one markdown file; `path` is relative to the knowledge-base root."""
    data, body = parse_front_matter(text, path)
    folder = path.split("/", 1)[0] if "/" in path else None
    title, category, codes, followers, tags = validate_front_matter(data, path, folder=folder)
    examples = validate_example_questions(data.get("example_questions"), path)
    return Document(path, title, category, codes, followers, tags, body.strip(), examples)


def validate_example_questions(value: Any, where: str) -> tuple[str, ...]:
    """`example_questions`: 3-5 questions in a leader's voice, each one line."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DocumentError(f"{where}: 'example_questions' must be a list of strings")
    questions = tuple(dict.fromkeys(v.strip() for v in value if v.strip()))
    low, high = EXAMPLE_QUESTIONS
    if not low <= len(questions) <= high:
        raise DocumentError(
            f"{where}: 'example_questions' needs {low}-{high} distinct questions, "
            f"got {len(questions)}"
        )
    for question in questions:
        if len(question) > EXAMPLE_QUESTION_MAX_CHARS or "\n" in question:
            raise DocumentError(
                f"{where}: each example question must be one line of at most "
                f"{EXAMPLE_QUESTION_MAX_CHARS} characters: {question[:40]!r}"
            )
    return questions


_BREAKS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("\n\n", re.compile(r"\n\s*\n")),
    ("\n", re.compile(r"\n")),
    (" ", _SENTENCE_END),
)


def _atoms(text: str, limit: int, joiner: str = "\n\n") -> list[tuple[str, str]]:
    """(joiner, piece) pairs: paragraphs, with oversized ones broken into lines, then
    sentences, then hard cuts, so packing can still join small neighbours."""
    for separator, pattern in _BREAKS:
        parts = [u.strip() for u in pattern.split(text) if u.strip()]
        if len(parts) > 1:
            atoms: list[tuple[str, str]] = []
            for i, part in enumerate(parts):
                sep = joiner if i == 0 else separator
                if len(part) <= limit:
                    atoms.append((sep, part))
                else:
                    atoms.extend(_atoms(part, limit, sep))
            return atoms
    return [(joiner, text[i : i + limit]) for i in range(0, len(text), limit)]


def _split_long(text: str, limit: int) -> list[str]:
    """Pack atoms into pieces of about equal size, none longer than `limit`.

    Aiming at len/ceil(len/limit) rather than filling each piece to the limit avoids a
    tiny last piece that would embed as noise.
    """
    if len(text) <= limit:
        return [text]
    target = len(text) / math.ceil(len(text) / limit)
    pieces: list[str] = []
    current = ""
    for sep, atom in _atoms(text, math.ceil(target)):
        if current and (len(current) + len(sep) + len(atom) > limit or len(current) >= target):
            pieces.append(current)
            current = ""
        current = f"{current}{sep}{atom}" if current else atom
    if current:
        if pieces and len(current) < MIN_CHARS and len(pieces[-1]) + len(current) < limit:
            pieces[-1] = f"{pieces[-1]}\n{current}"
        else:
            pieces.append(current)
    return pieces


def split_sections(doc: Document) -> tuple[str, list[tuple[str, str]]]:
    """The text before the first `##` (the `#` title line dropped) and every `##` section
    as (heading, text), empty ones included; the one section parser of the knowledge base."""
    body = doc.body
    h1 = _H1.search(body)
    if h1 is not None and not body[: h1.start()].strip():
        body = body[h1.end() :]
    matches = list(_H2.finditer(body))
    intro = body[: matches[0].start()] if matches else body
    sections = [
        (
            m.group(1).strip(),
            body[m.end() : matches[i + 1].start() if i + 1 < len(matches) else len(body)].strip(),
        )
        for i, m in enumerate(matches)
    ]
    return intro.strip(), sections


def _sections(doc: Document) -> list[tuple[str, str]]:
    intro, sections = split_sections(doc)
    head = [(doc.title, intro)] if intro else []
    return head + [(heading, text) for heading, text in sections if text]


def _merge_tiny(
    sections: list[tuple[str, str]], min_chars: int, doc_title: str
) -> list[tuple[str, str]]:
    merged: list[tuple[str, str]] = []
    carry: tuple[str, str] | None = None
    for heading, content in sections:
        if carry is not None:
            heading = heading if carry[0] == doc_title else f"{carry[0]} · {heading}"
            content = f"{carry[1]}\n\n{content}"
            carry = None
        if len(content) < min_chars:
            carry = (heading, content)
        else:
            merged.append((heading, content))
    if carry is not None:
        if merged:
            last_heading, last_content = merged[-1]
            merged[-1] = (f"{last_heading} · {carry[0]}", f"{last_content}\n\n{carry[1]}")
        else:
            merged.append(carry)
    return merged


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def chunk_document(
    doc: Document, *, min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS
) -> list[Chunk]:
    chunks: list[Chunk] = []
    seen: set[str] = set()
    header_meta = "|".join(
        (
            doc.title,
            doc.category,
            ",".join(doc.leadership_types),
            ",".join(doc.followership_types),
            ",".join(doc.tags),
            "\n".join(doc.example_questions),
        )
    )
    sections = [(h, text) for h, text in _sections(doc) if h.strip() not in LINK_SECTIONS]
    for heading, content in _merge_tiny(sections, min_chars, doc.title):
        prefix = doc.title if heading == doc.title else f"{doc.title}\n{heading}"
        for piece in _split_long(content, max_chars - len(prefix) - 2):
            text = f"{prefix}\n\n{piece}"
            digest = _digest(doc.path, header_meta, heading, text)[:16]
            if digest in seen:
                # Identical sections in one document still need distinct ids.
                digest = _digest(digest, str(len(chunks)))[:16]
            seen.add(digest)
            chunks.append(
                Chunk(
                    id=f"{doc.path}#{digest}",
                    path=doc.path,
                    title=doc.title,
                    category=doc.category,
                    section=heading,
                    text=text,
                    leadership_types=doc.leadership_types,
                    followership_types=doc.followership_types,
                    tags=doc.tags,
                    ordinal=len(chunks),
                    example_questions=doc.example_questions,
                )
            )
    return chunks


def kb_version(chunk_ids: Iterable[str]) -> str:
    return _digest(*sorted(chunk_ids))[:16]


def iter_markdown(kb_dir: Path) -> list[Path]:
    return sorted(p for p in kb_dir.rglob("*.md") if p.is_file() and p.name.lower() != "readme.md")


def load_corpus(kb_dir: Path | str, *, paths: Sequence[Path] | None = None) -> Corpus:
    """Parse and chunk every markdown file under `kb_dir` (README.md files excluded)."""
    root = Path(kb_dir)
    if not root.is_dir():
        raise DocumentError(f"{root}: knowledge base directory not found")
    documents: list[Document] = []
    chunks: list[Chunk] = []
    for file in paths if paths is not None else iter_markdown(root):
        rel = file.relative_to(root).as_posix()
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DocumentError(f"{rel}: not valid UTF-8") from exc
        doc = parse_document(text, rel)
        documents.append(doc)
        chunks.extend(chunk_document(doc))
    return Corpus(tuple(documents), tuple(chunks), kb_version(c.id for c in chunks))
