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
from .documents import CATEGORIES, Chunk, load_corpus
from .documents import kb_version as compute_kb_version
from .embedders import E5Embedder, Embedder, LexicalIndex, make_embedder

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
        return {"path": self.path, "title": self.title, "category": self.category}


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
    """An immutable snapshot of the collection, swapped whole on reload."""

    ids: tuple[str, ...]
    texts: tuple[str, ...]
    metas: tuple[dict[str, Any], ...]
    vectors: NDArray[np.float32]
    lexical: LexicalIndex
    version: str
    position: dict[str, int] = field(default_factory=dict)
    category: NDArray[Any] = field(default_factory=lambda: np.zeros(0, dtype=object))
    paths: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        ids: Sequence[str],
        texts: Sequence[str],
        metas: Sequence[dict[str, Any]],
        vectors: NDArray[np.float32],
    ) -> _Mirror:
        return cls(
            ids=tuple(ids),
            texts=tuple(texts),
            metas=tuple(metas),
            vectors=vectors,
            lexical=LexicalIndex(ids, texts),
            version=compute_kb_version(ids),
            position={chunk_id: i for i, chunk_id in enumerate(ids)},
            category=np.array([m.get("category", "") for m in metas], dtype=object),
            paths=tuple(str(m.get("path", "")) for m in metas),
        )

    def has(self, key: str, rows: NDArray[np.int64]) -> NDArray[np.float32]:
        """1.0 where the chunk's metadata carries the boolean `key` (lt_HHH, ft_driver)."""
        flags = (1.0 if self.metas[i].get(key) else 0.0 for i in rows)
        return np.fromiter(flags, dtype=np.float32, count=len(rows))

    def __len__(self) -> int:
        return len(self.ids)


def _zscore(values: NDArray[np.float32]) -> NDArray[np.float32]:
    std = float(values.std())
    if std < 1e-9:
        return np.zeros_like(values)
    return np.asarray((values - values.mean()) / std, dtype=np.float32)


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
        dense_weight: float = 0.5,
        type_boost: float = 0.3,
        followership_boost: float = 0.15,
        candidates: int = 40,
        max_per_doc: int = 2,
        refresh_interval_s: float = 30.0,
        max_embed_queue: int = 8,
        embed_cpu_share: float = 1.0,
        embed_max_loop_lag_s: float | None = None,
    ) -> None:
        self._client = client
        self._collection = collection
        self.embedder = embedder
        self.dense_weight = dense_weight
        self.type_boost = type_boost
        self.followership_boost = followership_boost
        self.candidates = candidates
        self.max_per_doc = max_per_doc
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

        qvec = await self._embed_query_or_shed(text)
        allowed: NDArray[np.bool_] | None = None
        if cats is not None:
            allowed = np.isin(mirror.category, list(cats))
            if not allowed.any():
                return []
        n_dense = min(self.candidates, len(mirror))
        where = {"category": {"$in": list(cats)}} if cats is not None else None
        dense_ids: list[str] = []
        if len(mirror) <= _INLINE_LEXICAL_MAX:
            # ~0.1 ms at the shipped corpus size: cheaper than a hop to a thread.
            lexical = mirror.lexical.scores(text)
            if qvec is not None:
                dense_ids = await asyncio.to_thread(self._dense_ids, qvec, n_dense, where)
        elif qvec is None:
            lexical = await asyncio.to_thread(mirror.lexical.scores, text)
        else:
            dense_ids, lexical = await asyncio.gather(
                asyncio.to_thread(self._dense_ids, qvec, n_dense, where),
                asyncio.to_thread(mirror.lexical.scores, text),
            )
        if allowed is not None:
            lexical = np.where(allowed, lexical, -np.inf).astype(np.float32)
        n_lex = min(self.candidates, len(mirror))
        lexical_top = np.argpartition(-lexical, n_lex - 1)[:n_lex]
        candidate_set = {int(i) for i in lexical_top if np.isfinite(lexical[i])}
        stale = False
        for chunk_id in dense_ids:
            pos = mirror.position.get(chunk_id)
            if pos is None:
                stale = True
            else:
                candidate_set.add(pos)
        if stale:
            # Chroma has chunks this mirror has not seen: another instance ingested.
            self._checked_at = 0.0
        if not candidate_set:
            return []
        cand = np.fromiter(sorted(candidate_set), dtype=np.int64)
        if qvec is None:
            fused = _zscore(lexical[cand])
        else:
            dense = mirror.vectors[cand] @ qvec.astype(np.float32)
            fused = (
                self.dense_weight * _zscore(dense)
                + (1 - self.dense_weight) * _zscore(lexical[cand])
            ).astype(np.float32)
        if code is not None:
            fused = fused + self.type_boost * mirror.has(f"lt_{code}", cand)
        if followers:
            share = np.zeros(len(cand), dtype=np.float32)
            for ft in followers:
                share += mirror.has(f"ft_{ft}", cand)
            fused = (fused + self.followership_boost * share / len(followers)).astype(np.float32)
        return self._top(mirror, cand, fused, k)

    async def _embed_query_or_shed(self, text: str) -> NDArray[np.float32] | None:
        """The query vector, or None when the embedder is saturated: ranking then falls
        back to the lexical score alone (hit@3 0.85 against 0.91 hybrid on the eval set)
        instead of making every answer's first chunk wait in line or the embedding
        thread take the CPU the streams need. Saturated means too many queries already
        wait for the one embedding thread, or (for an embedder that reports its CPU
        time) it has used up its share of a core (`RAG_EMBED_CPU_SHARE`), or this
        process is short of CPU: its event loop runs late (`RAG_EMBED_MAX_LOOP_LAG_MS`),
        so an embedding would slow every open stream."""
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
        self.hybrid_searches += 1
        try:
            return await self.embedder.embed_query(text)
        finally:
            self._embeds_waiting -= 1

    def _dense_ids(self, qvec: NDArray[np.float32], n: int, where: Any) -> list[str]:
        result = self._collection.query(
            query_embeddings=[qvec.tolist()], n_results=n, where=where, include=[]
        )
        ids = result.get("ids") or [[]]
        return list(ids[0])

    def _top(
        self, mirror: _Mirror, cand: NDArray[np.int64], scores: NDArray[np.float32], k: int
    ) -> list[Passage]:
        per_doc: dict[str, int] = {}
        out: list[Passage] = []
        for j in np.argsort(-scores, kind="stable"):
            i = int(cand[j])
            path = mirror.paths[i]
            if per_doc.get(path, 0) >= self.max_per_doc:
                continue
            per_doc[path] = per_doc.get(path, 0) + 1
            meta = mirror.metas[i]
            out.append(
                Passage(
                    id=mirror.ids[i],
                    path=path,
                    title=str(meta.get("title", "")),
                    category=str(meta.get("category", "")),
                    section=str(meta.get("section", "")),
                    text=mirror.texts[i],
                    score=float(scores[j]),
                    leadership_types=_split_csv(meta.get("leadership_types")),
                    followership_types=_split_csv(meta.get("followership_types")),
                )
            )
            if len(out) >= k:
                break
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
        await asyncio.to_thread(
            self._collection.upsert,
            ids=[c.id for c in chunks],
            embeddings=vectors,
            documents=[c.text for c in chunks],
            metadatas=[c.metadata() for c in chunks],
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
    warm = asyncio.create_task(embedder.warm_up())
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
