"""Hybrid retrieval over the knowledge base: Chroma (dense) + character n-gram TF-IDF.

Decisions worth keeping (hit@3 figures from `python benchmarks/embedders.py` on the
100 questions of `tests/data/retrieval_eval.jsonl`; rerun it before changing any):

- Hybrid, not dense only. e5-small alone: 0.73; TF-IDF over character n-grams alone:
  0.85; the two fused: 0.91. e5 catches paraphrase, n-grams catch the product's own
  vocabulary ("SBI", "1on1", "참여실무형") that a small multilingual model blurs.
- Fusion is a weighted sum of per-query z-scores over the candidate set, dense weight
  0.5. z-scores keep the weight independent of an embedder's similarity range (e5
  cosines sit in 0.80-0.93, TF-IDF in 0-0.3); whether 0.5 also suits Gemini vectors is
  unmeasured (no key here). Hit@3 is 0.90-0.91 for every weight from 0.3 to 0.7, so
  the value is not a knife edge tuned to the eval set.
- Candidates are Chroma's dense top `candidates` (the category filter as a `where`
  clause) plus the lexical top `candidates`. Every candidate is then scored exactly on
  both sides from an in-process mirror of the collection (ids, texts, metadata,
  vectors and the TF-IDF matrix: a few kB per chunk). Filling a missing dense score
  with a bound instead made the fusion depend on the candidate count.
- The leadership type is a boost, not a filter. Measured: no boost 0.91, boost 0.91,
  filter 0.92 - but a filter makes the nine documents tagged with no leadership type
  (the followership profiles, the dimension overviews) unreachable for every leader
  who has a type, and "my driver team member" questions need exactly those.
  Followership types are a smaller boost, scaled by the share of requested types a
  document covers (unmeasured: the eval set has no such questions). Categories are a
  hard filter: the caller asks for them explicitly.
- At most `max_per_doc` (2) chunks per document, so one long guide cannot fill the
  context. (1 per document scores 0.92 on hit@3, which rewards three distinct
  documents, but gives the model less of the best one.)
- Chroma is synchronous; every call runs in a worker thread (`asyncio.to_thread`), and
  the embedder runs on its own thread, so the event loop never blocks on either.
  Queries longer than 2000 characters are cut.
- Ingestion is content-addressed (chunk id = path + hash): new ids are embedded and
  upserted in batches before stale ids are deleted, so a changed document is never
  missing from the index, an interrupted ingest resumes where it stopped, and two
  processes ingesting at once only repeat work. `kb_version` is written to the
  collection metadata; other instances notice a change within `refresh_interval_s`
  and reload their mirror in the background.
- An embedded `PersistentClient` is single-process (SQLite + HNSW files). Several
  workers or instances need Chroma in client/server mode (`CHROMA_HOST`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..config import Settings
from ..domain.taxonomy import FOLLOWERSHIP_TYPES, resolve_type
from . import analyzer
from .analyzer import ANALYZER_VERSION, Lexicon, without_type_names
from .documents import CATEGORIES, Chunk, load_corpus
from .documents import kb_version as compute_kb_version
from .embedders import E5Embedder, Embedder, make_embedder
from .ranking import BM25Index, ChunkGroups, RankConfig, Ranking, best_of_groups, fuse

log = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "e5"
INGEST_BATCH = 64
PAGE = 1000
MAX_QUERY_CHARS = 2000


class RetrievalError(RuntimeError):
    """The index cannot serve a request (for example, built with another embedder)."""


@dataclass(frozen=True)
class Passage:
    id: str
    path: str
    title: str
    category: str
    section: str
    text: str
    score: float
    leadership_types: tuple[str, ...] = ()
    followership_types: tuple[str, ...] = ()

    def source(self) -> dict[str, str]:
        return {
            "path": self.path,
            "title": self.title,
            "category": self.category,
            "section": self.section,
        }


@dataclass(frozen=True)
class IngestReport:
    added: int
    removed: int
    unchanged: int
    documents: int
    chunks: int
    kb_version: str
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "documents": self.documents,
            "chunks": self.chunks,
            "kb_version": self.kb_version,
            "seconds": round(self.seconds, 2),
        }


def _split_csv(value: object) -> tuple[str, ...]:
    if not isinstance(value, str) or not value:
        return ()
    return tuple(part for part in value.split(",") if part)


class VectorCache:
    """Passage vectors keyed by a hash of the passage text, shipped in `models/`.

    Embedding the whole knowledge base with e5 on a small CPU takes minutes; with the
    vectors of unchanged passages read from this file, a first start embeds only what
    changed since `linkcoach ingest` last wrote it. A stale or missing file only costs
    time: every passage not found is embedded as usual.
    """

    def __init__(self, path: Path, vectors: dict[str, NDArray[np.float32]] | None = None) -> None:
        self.path = path
        self._vectors = vectors or {}

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

    @classmethod
    def load(cls, path: Path) -> VectorCache:
        if not path.exists():
            return cls(path)
        with np.load(path, allow_pickle=False) as data:
            keys = [str(k) for k in data["keys"]]
            vectors = np.asarray(data["vectors"], dtype=np.float32)
        return cls(path, dict(zip(keys, vectors, strict=True)))

    def get(self, text: str) -> NDArray[np.float32] | None:
        return self._vectors.get(self.key(text))

    def __len__(self) -> int:
        return len(self._vectors)

    def save(self, texts: Sequence[str], vectors: NDArray[np.float32]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array([self.key(t) for t in texts])
        tmp = self.path.with_name(self.path.stem + ".tmp.npz")
        np.savez_compressed(tmp, keys=keys, vectors=np.asarray(vectors, dtype=np.float16))
        tmp.replace(self.path)


@dataclass(frozen=True)
class _Mirror:
    """An immutable snapshot of the collection, swapped whole on reload: chunk texts,
    metadata and vectors, the documents they belong to, and the three BM25 indexes."""

    ids: tuple[str, ...]
    texts: tuple[str, ...]
    metas: tuple[dict[str, Any], ...]
    vectors: NDArray[np.float32]
    version: str
    chunk_index: BM25Index
    document_index: BM25Index
    field_index: BM25Index
    example_index: BM25Index
    example_groups: ChunkGroups
    groups: ChunkGroups
    doc_paths: tuple[str, ...]
    doc_category: NDArray[Any]
    doc_flags: dict[str, NDArray[np.float32]]
    position: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        ids: Sequence[str],
        texts: Sequence[str],
        metas: Sequence[dict[str, Any]],
        vectors: NDArray[np.float32],
    ) -> _Mirror:
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
        return cls(
            ids=tuple(ids),
            texts=tuple(texts),
            metas=tuple(metas),
            vectors=vectors,
            version=compute_kb_version(ids),
            chunk_index=BM25Index(chunk_tokens),
            document_index=BM25Index(whole),
            field_index=BM25Index(fields),
            example_index=BM25Index(example_tokens),
            example_groups=ChunkGroups.of(np.array(example_doc, dtype=np.int64), len(doc_pos)),
            groups=ChunkGroups.of(chunk_doc, len(doc_pos)),
            doc_paths=tuple(doc_pos),
            doc_category=np.array([m.get("category", "") for m in doc_metas], dtype=object),
            doc_flags=flags,
            position={chunk_id: i for i, chunk_id in enumerate(ids)},
        )

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


def token_metadata(chunk: Chunk) -> dict[str, str]:
    """What ingest stores beside a chunk so every instance's mirror skips the analysis."""
    return {
        "analyzer": ANALYZER_VERSION,
        "tokens": " ".join(analyzer.tokens(chunk.text)),
        "field_tokens": " ".join(analyzer.tokens(chunk.field_text())),
        "example_tokens": "\n".join(
            " ".join(analyzer.tokens(q)) for q in chunk.example_questions
        ),
    }


# Up to this many chunks the lexical score is computed on the event loop.
_INLINE_LEXICAL_MAX = 5000


class _CpuBudget:
    """A token bucket of CPU seconds: refills at `share` seconds per second, holds at
    most two seconds' worth, and is charged with the CPU time the embedder reports."""

    def __init__(self, share: float) -> None:
        self.share = share
        self._cap = 2.0 * share
        self._level = self._cap
        self._at = time.monotonic()
        self._seen: float | None = None

    def allows(self, cpu_seconds: float | None) -> bool:
        if self.share >= 1.0 or cpu_seconds is None:
            return True  # one thread cannot use more than a core anyway
        if self.share <= 0.0:
            return False
        now = time.monotonic()
        spent = 0.0 if self._seen is None else cpu_seconds - self._seen
        self._seen = cpu_seconds
        self._level = min(self._cap, self._level + (now - self._at) * self.share - spent)
        self._at = now
        return self._level > 0.0


class _LoopLag:
    """How late this event loop runs: a timer every 50 ms notes its own delay; the
    figure rises at once and decays by a fifth per tick. Started on first use."""

    interval_s = 0.05

    def __init__(self) -> None:
        self._lag = 0.0
        self._task: asyncio.Task[None] | None = None

    def lag_s(self, loop: asyncio.AbstractEventLoop) -> float:
        if self._task is None:
            self._task = loop.create_task(self._watch(), name="loop-lag")
        return self._lag

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.interval_s)
            late = loop.time() - started - self.interval_s
            self._lag = max(late, self._lag * 0.8)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


class Retriever:
    def __init__(
        self,
        client: Any,
        collection: Any,
        embedder: Embedder,
        *,
        config: RankConfig | None = None,
        lexicon: Lexicon | None = None,
        refresh_interval_s: float = 30.0,
        max_embed_queue: int = 8,
        embed_cpu_share: float = 1.0,
        embed_max_loop_lag_s: float | None = None,
    ) -> None:
        self._client = client
        self._collection = collection
        self.embedder = embedder
        self.config = config or RankConfig()
        self.lexicon = lexicon or Lexicon()
        self.refresh_interval_s = refresh_interval_s
        self._mirror = _Mirror.build([], [], [], np.zeros((0, 1), dtype=np.float32))
        self._checked_at = 0.0
        self._ingest_lock = asyncio.Lock()
        self._reload_lock = asyncio.Lock()
        self._background: asyncio.Task[IngestReport] | None = None
        self._reload_task: asyncio.Task[None] | None = None
        self.vector_cache: VectorCache | None = None
        self.max_embed_queue = max_embed_queue
        self._embeds_waiting = 0
        self.shed_searches = 0
        self.hybrid_searches = 0
        self.lexical_searches = 0
        self._budget = _CpuBudget(embed_cpu_share)
        self._lag = _LoopLag() if embed_max_loop_lag_s is not None else None
        self.embed_max_loop_lag_s = embed_max_loop_lag_s or 0.0

    @property
    def collection_name(self) -> str:
        return str(self._collection.name)

    @property
    def kb_version(self) -> str:
        return self._mirror.version

    @property
    def size(self) -> int:
        return len(self._mirror)

    @property
    def document_paths(self) -> tuple[str, ...]:
        return self._mirror.doc_paths

    async def ping(self) -> None:
        await asyncio.to_thread(self._client.heartbeat)

    @property
    def ingesting(self) -> bool:
        return self._background is not None and not self._background.done()

    def start_background_ingest(self, kb_dir: Path | str) -> asyncio.Task[IngestReport]:
        """Ingest without blocking; searches see each batch as soon as it is stored."""
        if self._background is None or self._background.done():
            self._background = asyncio.create_task(
                self.ingest(kb_dir, progressive=True), name="kb-ingest"
            )
            self._background.add_done_callback(_log_failure)
        return self._background

    async def close(self) -> None:
        if self._lag is not None:
            await self._lag.stop()
        for task in (self._background, self._reload_task):
            if task is not None and not task.done():
                # Safe to cut: batches are upserted by content id, the next ingest resumes.
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.embedder.aclose()
        close = getattr(self._client, "close", None)
        if close is not None:
            await asyncio.to_thread(close)

    # -- mirror ---------------------------------------------------------------------

    def _read_all(self) -> _Mirror:
        ids: list[str] = []
        texts: list[str] = []
        metas: list[dict[str, Any]] = []
        vectors: list[NDArray[np.float32]] = []
        offset = 0
        while True:
            page = self._collection.get(
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
        return _Mirror.build(ids, texts, metas, matrix)

    async def reload(self) -> None:
        async with self._reload_lock:
            self._mirror = await asyncio.to_thread(self._read_all)
            self._checked_at = time.monotonic()

    async def _stored_version(self) -> str | None:
        def read() -> str | None:
            meta = self._client.get_collection(self._collection.name).metadata or {}
            value = meta.get("kb_version")
            return str(value) if value else None

        return await asyncio.to_thread(read)

    async def _maybe_refresh(self) -> None:
        if time.monotonic() - self._checked_at < self.refresh_interval_s:
            return
        self._checked_at = time.monotonic()
        try:
            stored = await self._stored_version()
        except Exception:  # noqa: BLE001 - a failed check must not fail the search
            log.warning("kb version check failed", exc_info=True)
            return
        if stored is not None and stored != self._mirror.version and not self._reloading():
            # In the background: refitting TF-IDF takes seconds at 10x the corpus, and
            # this search can finish on the previous mirror.
            log.info("knowledge base changed elsewhere; reloading", extra={"kb_version": stored})
            self._reload_task = asyncio.create_task(self.reload(), name="kb-reload")

    def _reloading(self) -> bool:
        return self._reload_task is not None and not self._reload_task.done()

    # -- search ---------------------------------------------------------------------

    async def search(
        self,
        query: str,
        *,
        leadership_type: str | None = None,
        followership_types: Sequence[str] = (),
        categories: Sequence[str] | None = None,
        k: int = 4,
    ) -> list[Passage]:
        """The best chunk of each of the `k` best documents, best first."""
        text = " ".join(query.split())[:MAX_QUERY_CHARS]
        code = self._resolve_code(leadership_type)
        followers = self._resolve_followers(followership_types)
        cats = self._resolve_categories(categories)
        if not text or k <= 0:
            return []
        await self._maybe_refresh()
        mirror = self._mirror
        if not len(mirror):
            return []
        qvec = None
        if self.config.dense_weight:
            qvec = await self._embed_query_or_shed(text)
        else:
            self.lexical_searches += 1
        if len(mirror) <= _INLINE_LEXICAL_MAX:
            # ~2 ms at the shipped corpus size: cheaper than a hop to a thread.
            ranking = self.rank(
                mirror, text, code=code, followers=followers, cats=cats, qvec=qvec, limit=k
            )
        else:
            ranking = await asyncio.to_thread(
                self.rank,
                mirror,
                text,
                code=code,
                followers=followers,
                cats=cats,
                qvec=qvec,
                limit=k,
            )
        return self._passages(mirror, ranking, k)

    def rank(
        self,
        mirror: _Mirror,
        text: str,
        *,
        code: str | None,
        followers: Sequence[str] = (),
        cats: Sequence[str] | None = None,
        qvec: NDArray[np.float32] | None = None,
        limit: int = 10,
    ) -> Ranking:
        """Score every document of `mirror` for `text` (see `ranking` for the fusion)."""
        cfg = self.config
        if code is not None and cfg.strip_type_names:
            text = without_type_names(text)
        query = analyzer.tokens(text)
        expansion = self.lexicon.expansion_tokens(text) if cfg.use_lexicon else []
        w = cfg.expansion_weight

        def bm25(index: BM25Index) -> NDArray[np.float32]:
            return index.scores((1.0, query), (w, expansion))

        chunk_signals: list[tuple[float, NDArray[np.floating]]] = [
            (cfg.chunk_weight, bm25(mirror.chunk_index))
        ]
        if qvec is not None:
            chunk_signals.append((cfg.dense_weight, mirror.vectors @ qvec.astype(np.float32)))
            self.hybrid_searches += 1
        boosts: list[tuple[float, NDArray[np.floating]]] = []
        if code is not None:
            boosts.append((cfg.type_boost, mirror.flag(f"lt_{code}")))
        if followers:
            share = sum(mirror.flag(f"ft_{ft}") for ft in followers) / len(followers)
            boosts.append((cfg.followership_boost, np.asarray(share, dtype=np.float32)))
        allowed = np.isin(mirror.doc_category, list(cats)) if cats is not None else None
        return fuse(
            groups=mirror.groups,
            limit=limit,
            chunk_signals=chunk_signals,
            document_signals=[
                (cfg.whole_weight, bm25(mirror.document_index)),
                (cfg.field_weight, bm25(mirror.field_index)),
                (
                    cfg.example_weight,
                    best_of_groups(mirror.example_groups, bm25(mirror.example_index))
                    if cfg.example_weight
                    else np.zeros(0),
                ),
            ],
            document_boosts=boosts,
            allowed=allowed,
        )

    async def _embed_query_or_shed(self, text: str) -> NDArray[np.float32] | None:
        """The query vector, or None when the embedder is saturated: ranking then uses the
        lexical signals alone instead of making every answer's first chunk wait in line
        or the embedding thread take the CPU the streams need. Only used when the dense
        signal is switched on (`RAG_DENSE_WEIGHT` > 0). Saturated means too many queries
        already wait for the one embedding thread, or (for an embedder that reports its
        CPU time) it has used up its share of a core (`RAG_EMBED_CPU_SHARE`), or this
        process is short of CPU: its event loop runs late (`RAG_EMBED_MAX_LOOP_LAG_MS`)."""
        cpu = getattr(self.embedder, "cpu_seconds", None)
        starved = (
            self._lag is not None
            and cpu is not None
            and self._lag.lag_s(asyncio.get_running_loop()) > self.embed_max_loop_lag_s
        )
        if starved or self._embeds_waiting >= self.max_embed_queue or not self._budget.allows(cpu):
            self.shed_searches += 1
            return None
        self._embeds_waiting += 1
        try:
            return await self.embedder.embed_query(text)
        finally:
            self._embeds_waiting -= 1

    def _passages(self, mirror: _Mirror, ranking: Ranking, k: int) -> list[Passage]:
        out: list[Passage] = []
        for doc, row, score in zip(
            ranking.documents[:k], ranking.best_chunk[:k], ranking.scores[:k], strict=True
        ):
            i = int(row)
            meta = mirror.metas[i]
            out.append(
                Passage(
                    id=mirror.ids[i],
                    path=mirror.doc_paths[int(doc)],
                    title=str(meta.get("title", "")),
                    category=str(meta.get("category", "")),
                    section=str(meta.get("section", "")),
                    text=mirror.texts[i],
                    score=float(score),
                    leadership_types=_split_csv(meta.get("leadership_types")),
                    followership_types=_split_csv(meta.get("followership_types")),
                )
            )
        return out

    @staticmethod
    def _resolve_code(leadership_type: str | None) -> str | None:
        if not leadership_type:
            return None
        resolved = resolve_type(leadership_type)
        if resolved is None:
            raise ValueError(f"unknown leadership type {leadership_type!r}")
        return resolved.code

    @staticmethod
    def _resolve_followers(values: Sequence[str]) -> tuple[str, ...]:
        out: list[str] = []
        for value in values:
            key = value.strip().lower()
            if key not in FOLLOWERSHIP_TYPES:
                raise ValueError(f"unknown followership type {value!r}")
            if key not in out:
                out.append(key)
        return tuple(out)

    @staticmethod
    def _resolve_categories(categories: Sequence[str] | None) -> tuple[str, ...] | None:
        if categories is None:
            return None
        if isinstance(categories, str):
            categories = [categories]
        unknown = [c for c in categories if c not in CATEGORIES]
        if unknown:
            raise ValueError(f"unknown categories {unknown}; expected some of {list(CATEGORIES)}")
        return tuple(dict.fromkeys(categories))

    # -- ingestion ------------------------------------------------------------------

    async def ingest(self, kb_dir: Path | str, *, progressive: bool = False) -> IngestReport:
        """Make the collection match `kb_dir`: embed new chunks, drop vanished ones.

        `progressive` reloads the mirror after every batch, so searches during a first
        ingestion already see what is stored (used by background ingestion).
        """
        async with self._ingest_lock:
            started = time.perf_counter()
            corpus = await asyncio.to_thread(load_corpus, Path(kb_dir))
            existing = set(await asyncio.to_thread(self._all_ids))
            wanted = {c.id: c for c in corpus.chunks}
            to_add = [c for c in corpus.chunks if c.id not in existing]
            to_remove = sorted(existing - wanted.keys())
            for i in range(0, len(to_add), INGEST_BATCH):
                await self._add(to_add[i : i + INGEST_BATCH])
                if progressive:
                    await self.reload()
                log.info(
                    "ingest progress",
                    extra={"embedded": min(i + INGEST_BATCH, len(to_add)), "total": len(to_add)},
                )
            for i in range(0, len(to_remove), PAGE):
                batch = to_remove[i : i + PAGE]
                await asyncio.to_thread(self._collection.delete, ids=batch)
            if to_add or to_remove or await self._stored_version() != corpus.version:
                await asyncio.to_thread(self._write_version, corpus.version)
            await self.reload()
            report = IngestReport(
                added=len(to_add),
                removed=len(to_remove),
                unchanged=len(corpus.chunks) - len(to_add),
                documents=len(corpus.documents),
                chunks=len(corpus.chunks),
                kb_version=corpus.version,
                seconds=time.perf_counter() - started,
            )
            log.info("knowledge base ingested", extra=report.as_dict())
            return report

    def _all_ids(self) -> list[str]:
        ids: list[str] = []
        offset = 0
        while True:
            got = self._collection.get(include=[], limit=PAGE * 10, offset=offset)["ids"]
            ids.extend(got)
            offset += len(got)
            if len(got) < PAGE * 10:
                return ids

    async def _add(self, chunks: Sequence[Chunk]) -> None:
        texts = [c.text for c in chunks]
        cached = [self.vector_cache.get(t) if self.vector_cache else None for t in texts]
        missing = [i for i, v in enumerate(cached) if v is None]
        vectors = np.zeros((len(texts), 0), dtype=np.float32)
        if missing:
            fresh = await self.embedder.embed_passages([texts[i] for i in missing])
            vectors = np.zeros((len(texts), fresh.shape[1]), dtype=np.float32)
            vectors[missing] = fresh
        for i, vec in enumerate(cached):
            if vec is not None:
                if vectors.shape[1] == 0:
                    vectors = np.zeros((len(texts), len(vec)), dtype=np.float32)
                vectors[i] = vec
        tokens = await asyncio.to_thread(lambda: [token_metadata(c) for c in chunks])
        await asyncio.to_thread(
            self._collection.upsert,
            ids=[c.id for c in chunks],
            embeddings=vectors,
            documents=[c.text for c in chunks],
            metadatas=[{**c.metadata(), **t} for c, t in zip(chunks, tokens, strict=True)],
        )

    async def export_vectors(self, path: Path) -> int:
        """Write every stored passage vector to `path` (see VectorCache)."""
        await self.reload()
        mirror = self._mirror
        await asyncio.to_thread(VectorCache(path).save, mirror.texts, mirror.vectors)
        return len(mirror.texts)

    def _write_version(self, version: str) -> None:
        meta = dict(self._collection.metadata or {})
        meta["kb_version"] = version
        self._collection.modify(metadata=meta)


def _log_failure(task: asyncio.Task[IngestReport]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background ingestion failed", exc_info=task.exception())


def vector_cache_path(settings: Settings, embedder: Embedder) -> Path:
    return Path(settings.models_dir) / f"kb_vectors_{embedder.name}.npz"


def _collection_name(settings: Settings, embedder: Embedder) -> str:
    if embedder.name == E5Embedder.name:
        return settings.chroma_collection
    return f"{settings.chroma_collection}-{embedder.name}"


def make_chroma_client(settings: Settings) -> Any:
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False)
    if settings.chroma_host:
        return chromadb.HttpClient(
            host=settings.chroma_host, port=settings.chroma_port, settings=chroma_settings
        )
    path = Path(settings.data_dir) / "chroma"
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=chroma_settings)


def _open_collection(client: Any, name: str, embedder: Embedder) -> Any:
    collection = client.get_or_create_collection(
        name,
        embedding_function=None,
        configuration={"hnsw": {"space": "cosine"}},
        metadata={"embedder": embedder.name},
    )
    stored = (collection.metadata or {}).get("embedder")
    if stored is not None and stored != embedder.name:
        raise RetrievalError(
            f"Chroma collection {name!r} holds {stored!r} vectors, not {embedder.name!r}; "
            "use another CHROMA_COLLECTION or re-ingest into an empty one"
        )
    return collection


async def open_retriever(
    settings: Settings,
    *,
    auto_ingest: bool = True,
    background_ingest: bool = False,
    embedder: Embedder | str | None = None,
    **options: Any,
) -> Retriever:
    """Connect to Chroma, load the index mirror and warm the embedder up.

    With an empty collection and `auto_ingest`, the knowledge base is ingested first;
    with e5 that embeds every chunk (minutes on a small CPU), so a server may prefer
    `background_ingest=True`: it returns at once and searches return what is stored
    so far (nothing, at the very start) until `retriever.ingesting` turns false.

    `embedder` defaults to `settings.extra["RAG_EMBEDDER"]`, else "e5" (offline). The
    default embedder uses `settings.chroma_collection` as is; any other gets its name
    appended, so vectors from two models never share a collection.
    """
    if embedder is None or isinstance(embedder, str):
        kind = embedder or settings.extra.get("RAG_EMBEDDER") or DEFAULT_EMBEDDER
        embedder = make_embedder(kind, settings=settings)
    client: Any = None
    retriever: Retriever | None = None
    options.setdefault("lexicon", Lexicon.load(Path(settings.knowledge_base_dir) / "lexicon.yaml"))
    config = options.get("config") or RankConfig()
    # e5 (~100 MB) is loaded only when queries use it; ingest loads it on demand.
    warm = asyncio.gather(
        embedder.warm_up() if config.dense_weight else asyncio.sleep(0),
        asyncio.to_thread(analyzer.warm_up),
    )
    try:
        client = await asyncio.to_thread(make_chroma_client, settings)
        name = _collection_name(settings, embedder)
        collection = await asyncio.to_thread(_open_collection, client, name, embedder)
        retriever = Retriever(client, collection, embedder, **options)
        retriever.vector_cache = await asyncio.to_thread(
            VectorCache.load, vector_cache_path(settings, embedder)
        )
        await retriever.reload()
        if auto_ingest and retriever.size == 0:
            if background_ingest:
                retriever.start_background_ingest(settings.knowledge_base_dir)
            else:
                await retriever.ingest(settings.knowledge_base_dir)
        await warm
        if retriever.size:
            # The first search pays for lazy set-up in Chroma and scikit-learn (~150 ms).
            await retriever.search("리더십 코칭 워밍업", k=1)
    except BaseException:
        warm.cancel()
        await asyncio.gather(warm, return_exceptions=True)
        if retriever is not None:
            await retriever.close()
        else:
            await embedder.aclose()
            if client is not None:
                await asyncio.to_thread(client.close)
        raise
    log.info(
        "retriever ready",
        extra={"collection": name, "chunks": retriever.size, "kb_version": retriever.kb_version},
    )
    return retriever
