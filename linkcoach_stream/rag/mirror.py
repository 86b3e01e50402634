"""The in-process mirror of the Chroma collection that every search ranks over.

- Every chunk is scored exactly on every signal from this mirror (ids, texts, metadata,
  vectors and the BM25 indexes: a few kB per chunk); Chroma stores, the mirror
  searches. Filling the dense scores missing from a Chroma top-k with a bound instead
  made the fusion depend on the candidate count.
- Immutable and swapped whole on reload, so a search that started on the previous
  mirror finishes on it.
- Morphemes are analysed once, at ingest, and stored beside each chunk
  (`token_metadata`); building a mirror reads them back and re-analyses only what an
  older analyzer version wrote. Both sides of that contract live here.
- So are each chunk's words with their in-context morphemes (`words`), from which the
  mirror builds the word memo questions are analysed with (`analyzer.WordMemo`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import analyzer
from .analyzer import ANALYZER_VERSION, WordMemo
from .chroma import PAGE
from .documents import Chunk
from .documents import kb_version as compute_kb_version
from .ranking import BM25Index, ChunkGroups


@dataclass(frozen=True)
class Mirror:
    """An immutable snapshot of the collection, swapped whole on reload: chunk texts,
    metadata and vectors, the documents they belong to, and the three BM25 indexes."""

    ids: tuple[str, ...]
    texts: tuple[str, ...]
    metas: tuple[dict[str, Any], ...]
    vectors: NDArray[np.float32]
    version: str
    # The chunk, whole-document, front-matter and example-question indexes, stacked
    # (`BM25Index.stacked`); `lexical_scores` splits a search's scores back into four.
    lexical: BM25Index
    lexical_ends: tuple[int, int, int, int]
    example_groups: ChunkGroups
    groups: ChunkGroups
    doc_paths: tuple[str, ...]
    doc_category: NDArray[Any]
    doc_flags: dict[str, NDArray[np.float32]]
    position: dict[str, int] = field(default_factory=dict)
    words: WordMemo = field(default_factory=WordMemo)

    @classmethod
    def build(
        cls,
        ids: Sequence[str],
        texts: Sequence[str],
        metas: Sequence[dict[str, Any]],
        vectors: NDArray[np.float32],
    ) -> Mirror:
        chunk_tokens = [_stored_tokens(m, "tokens", t) for m, t in zip(metas, texts, strict=True)]
        doc_pos: dict[str, int] = {}
        chunk_doc = np.array(
            [doc_pos.setdefault(str(m.get("path", "")), len(doc_pos)) for m in metas],
            dtype=np.int64,
        )
        first_meta: dict[int, dict[str, Any]] = {}
        whole: list[list[str]] = [[] for _ in doc_pos]
        for row, doc in enumerate(chunk_doc.tolist()):
            first_meta.setdefault(doc, metas[row])
            whole[doc].extend(chunk_tokens[row])
        doc_metas = [first_meta[d] for d in range(len(doc_pos))]
        fields = [_stored_tokens(m, "field_tokens", _field_text(m)) for m in doc_metas]
        example_tokens: list[list[str]] = []
        example_doc: list[int] = []
        for d, meta in enumerate(doc_metas):
            for question in _example_tokens(meta):
                example_tokens.append(question)
                example_doc.append(d)
        flags: dict[str, NDArray[np.float32]] = {}
        for d, meta in enumerate(doc_metas):
            for key in meta:
                if key.startswith(("lt_", "ft_")) and meta[key]:
                    flags.setdefault(key, np.zeros(len(doc_metas), dtype=np.float32))[d] = 1.0
        indexes = [BM25Index(t) for t in (chunk_tokens, whole, fields, example_tokens)]
        sizes = np.cumsum([index.size for index in indexes]).tolist()
        ends = (sizes[0], sizes[1], sizes[2], sizes[3])
        return cls(
            ids=tuple(ids),
            texts=tuple(texts),
            metas=tuple(metas),
            vectors=vectors,
            version=compute_kb_version(ids),
            lexical=BM25Index.stacked(indexes),
            lexical_ends=ends,
            example_groups=ChunkGroups.of(np.array(example_doc, dtype=np.int64), len(doc_pos)),
            groups=ChunkGroups.of(chunk_doc, len(doc_pos)),
            doc_paths=tuple(doc_pos),
            doc_category=np.array([m.get("category", "") for m in doc_metas], dtype=object),
            doc_flags=flags,
            position={chunk_id: i for i, chunk_id in enumerate(ids)},
            words=WordMemo.of([_stored_words(m, t) for m, t in zip(metas, texts, strict=True)]),
        )

    def lexical_scores(
        self, *weighted: tuple[float, Sequence[str]]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        """BM25 of the weighted token lists for every chunk, document, front-matter field
        and example question, in one pass."""
        scores = self.lexical.scores(*weighted)
        a, b, c, d = self.lexical_ends
        return scores[:a], scores[a:b], scores[b:c], scores[c:d]

    def flag(self, key: str) -> NDArray[np.float32]:
        """1.0 for each document whose metadata carries the boolean `key` (lt_HHH, ft_driver)."""
        found = self.doc_flags.get(key)
        return found if found is not None else np.zeros(len(self.doc_paths), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.ids)


def _field_text(meta: dict[str, Any]) -> str:
    return "\n".join(
        (
            str(meta.get("title", "")),
            str(meta.get("tags", "")).replace(",", " "),
            str(meta.get("example_questions", "")),
        )
    )


def _example_tokens(meta: dict[str, Any]) -> list[list[str]]:
    """Morphemes of each of a document's example questions, one list per question."""
    stored = meta.get("example_tokens")
    if meta.get("analyzer") == ANALYZER_VERSION and isinstance(stored, str):
        return [q.split() for q in stored.split("\n") if q.strip()]
    questions = str(meta.get("example_questions", "")).split("\n")
    return [t for q in questions if q.strip() and (t := analyzer.tokens(q))]


def _stored_tokens(meta: dict[str, Any], key: str, text: str) -> list[str]:
    """Tokens written at ingest by this analyzer version, else analysed now (slower)."""
    if meta.get("analyzer") == ANALYZER_VERSION and isinstance(meta.get(key), str):
        return str(meta[key]).split()
    return analyzer.tokens(text)


def _stored_words(meta: dict[str, Any], text: str) -> list[tuple[str, tuple[str, ...]]]:
    """The chunk's words and their morphemes as ingest wrote them, else analysed now."""
    stored = meta.get("words")
    if meta.get("analyzer") == ANALYZER_VERSION and isinstance(stored, str):
        return analyzer.decode_word_analyses(stored)
    return sorted(_words_of(text, _field_text(meta)))


def _words_of(text: str, field_text: str) -> set[tuple[str, tuple[str, ...]]]:
    """The chunk's and its document's front matter's (title, tags, example questions)."""
    return analyzer.word_analyses(text) | analyzer.word_analyses(field_text)


def read_mirror(collection: Any) -> Mirror:
    """Every chunk of `collection`, page by page, built into a mirror."""
    ids: list[str] = []
    texts: list[str] = []
    metas: list[dict[str, Any]] = []
    vectors: list[NDArray[np.float32]] = []
    offset = 0
    while True:
        page = collection.get(
            include=["documents", "metadatas", "embeddings"], limit=PAGE, offset=offset
        )
        got = page["ids"]
        if not got:
            break
        ids.extend(got)
        texts.extend(doc or "" for doc in page["documents"] or [])
        metas.extend(dict(m or {}) for m in page["metadatas"] or [])
        vectors.append(np.asarray(page["embeddings"], dtype=np.float32))
        offset += len(got)
        if len(got) < PAGE:
            break
    matrix = np.vstack(vectors) if vectors else np.zeros((0, 1), dtype=np.float32)
    return Mirror.build(ids, texts, metas, matrix)


def token_metadata(chunk: Chunk) -> dict[str, str]:
    """What ingest stores beside a chunk so every instance's mirror skips the analysis."""
    return {
        "analyzer": ANALYZER_VERSION,
        "tokens": " ".join(analyzer.tokens(chunk.text)),
        "field_tokens": " ".join(analyzer.tokens(chunk.field_text())),
        "example_tokens": "\n".join(" ".join(analyzer.tokens(q)) for q in chunk.example_questions),
        "words": analyzer.encode_word_analyses(_words_of(chunk.text, chunk.field_text())),
    }
