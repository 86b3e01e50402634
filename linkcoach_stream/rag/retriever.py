"""Search over the knowledge base: `Retriever` (search, reload, ingest) and `open_retriever`.

A search resolves the leader's types and categories, takes the current mirror of the
collection (`mirror`), computes the signals - BM25 over kiwi morphemes for chunks,
whole documents, front matter and example questions, the lexicon's expansions, and the
dense e5 signal when it is switched on - and hands them to the fusion step
(`ranking.fuse`, pure and unit-tested). The ranking's own decisions and their figures
are in `ranking`; the ones below belong to this module.

- The leadership type is a boost, not a filter. Measured on the earlier ranking
  (character n-gram TF-IDF fused with e5, hit@3 on the 100 questions of
  `tests/data/retrieval_eval.jsonl`): no boost 0.91, boost 0.91, filter 0.92 - but a
  filter makes the nine documents tagged with no leadership type (the followership
  profiles, the dimension overviews) unreachable for every leader who has a type, and
  "my driver team member" questions need exactly those. Followership types are a
  smaller boost, scaled by the share of requested types a document covers
  (unmeasured: the eval set has no such questions). Categories are a hard filter: the
  caller asks for them explicitly.
- Chroma is synchronous; every call runs in a worker thread (`asyncio.to_thread`), and
  the embedder runs on its own thread, so the event loop never blocks on either.
  Ranking stays on the loop up to `_INLINE_LEXICAL_MAX` chunks (cheaper than a hop to a
  thread at the shipped size). Queries longer than 2000 characters are cut.
- A question is analysed word by word (`analyzer.question_tokens`): the mirror's word
  memo knows most words; the rest go to kiwi one word at a time, in a child process when
  the server asks for one (`query_worker`, `RAG_QUERY_PROCESS`), and are cached
  (`RAG_WORD_CACHE` words). A turn starts the analysis (`prefetch`) before it reads its
  conversation and budget, so the child's work overlaps those round trips. The rest of
  the ranking (~0.15 ms: one pass over the four stacked BM25 indexes, fusion) stays on
  the loop. A search with a prefetched analysis of other text (the conversation's type
  differs from the token's) or over another mirror analyses its question again.
- With the dense signal on, a query whose embedding would wait on a saturated
  embedder is ranked on the lexical signals alone (`shedding`).
- Another instance's ingest changes `kb_version` in the collection metadata; this one
  notices within `refresh_interval_s` and reloads its mirror in the background, while
  searches go on over the previous mirror.

Around this module: `ingest` (making the collection match the knowledge base), `chroma`
(client, collection, its metadata), `vector_cache` (shipped passage vectors) and
`shedding` (when a query goes without its embedding).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..config import Settings
from ..domain.taxonomy import FOLLOWERSHIP_TYPES, leadership_code
from . import analyzer
from .analyzer import Lexicon, WordMemo, split_question, without_type_names
from .chroma import collection_name, make_chroma_client, open_collection, stored_kb_version
from .documents import CATEGORIES
from .embedders import Embedder, make_embedder
from .ingest import IngestReport, ingest_corpus
from .mirror import Mirror, read_mirror
from .protocol import source_of
from .query_worker import QueryAnalyzer, QueryTokens, WordCache, analyse
from .ranking import RankConfig, Ranking, best_of_groups, fuse
from .shedding import CpuBudget, LoopLag, should_shed
from .vector_cache import VectorCache, vector_cache_path

log = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "e5"
MAX_QUERY_CHARS = 2000


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
        return source_of(self)


@dataclass(frozen=True, slots=True)
class Prefetched:
    """A question's analysis under way (`Retriever.prefetch`)."""

    text: str
    memo: WordMemo
    tokens: asyncio.Future[QueryTokens]

    def cancel(self) -> None:
        """Drop the analysis if nobody took it (a turn refused before its search)."""
        if not self.tokens.done():
            self.tokens.cancel()
        elif not self.tokens.cancelled():
            self.tokens.exception()  # retrieved, so a failure is not logged as lost


def _clean(query: str) -> str:
    return " ".join(query.split())[:MAX_QUERY_CHARS]


def _split_csv(value: object) -> tuple[str, ...]:
    if not isinstance(value, str) or not value:
        return ()
    return _split(value)


@functools.lru_cache(maxsize=4096)
def _split(value: str) -> tuple[str, ...]:
    # Metadata holds few distinct lists; each search splits eight of them.
    return tuple(part for part in value.split(",") if part)


# Up to this many chunks the lexical score is computed on the event loop.
_INLINE_LEXICAL_MAX = 5000


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
        word_cache_size: int = 50_000,
    ) -> None:
        self._client = client
        self._collection = collection
        self.embedder = embedder
        self.config = config or RankConfig()
        self.lexicon = lexicon or Lexicon()
        self.refresh_interval_s = refresh_interval_s
        self._mirror = Mirror.build([], [], [], np.zeros((0, 1), dtype=np.float32))
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
        self._budget = CpuBudget(embed_cpu_share)
        self._lag = LoopLag() if embed_max_loop_lag_s is not None else None
        self.embed_max_loop_lag_s = embed_max_loop_lag_s or 0.0
        # Unknown words analysed in a child process (`query_worker`); None: in this one.
        self.query_analyzer: QueryAnalyzer | None = None
        self.word_cache = WordCache(word_cache_size)
        # The words of questions, by where their morphemes came from.
        self.words_from = {"memo": 0, "cache": 0, "kiwi": 0}

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
        if self.query_analyzer is not None:
            await self.query_analyzer.close()
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

    async def reload(self) -> None:
        async with self._reload_lock:
            self._mirror = await asyncio.to_thread(read_mirror, self._collection)
            self._checked_at = time.monotonic()

    async def _stored_version(self) -> str | None:
        return await asyncio.to_thread(stored_kb_version, self._client, self._collection.name)

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
            # In the background: rebuilding the BM25 indexes takes seconds at 10x the
            # corpus (15.7 s in benchmarks/retrieval_speed.py), and this search can finish
            # on the previous mirror.
            log.info("knowledge base changed elsewhere; reloading", extra={"kb_version": stored})
            self._reload_task = asyncio.create_task(self.reload(), name="kb-reload")

    def _reloading(self) -> bool:
        return self._reload_task is not None and not self._reload_task.done()

    # -- search ---------------------------------------------------------------------

    def prefetch(self, query: str, *, leadership_type: str | None = None) -> Prefetched | None:
        """Start analysing `query` in the query process now, so that `search(query,
        prefetched=...)` later finds its morphemes ready: a turn sends its question
        before it reads its conversation and budget, and the analysis runs meanwhile.
        None without a query process (nothing would run in parallel)."""
        if self.query_analyzer is None or not self.query_analyzer.ready:
            return None
        text = _clean(query)
        try:
            code = self._resolve_code(leadership_type)
        except ValueError:
            return None  # the search says so
        if not text:
            return None
        ranked = self._ranked_text(text, code)
        memo = self._mirror.words
        return Prefetched(ranked, memo, asyncio.ensure_future(self.analyse(ranked, memo)))

    async def search(
        self,
        query: str,
        *,
        leadership_type: str | None = None,
        followership_types: Sequence[str] = (),
        categories: Sequence[str] | None = None,
        k: int = 4,
        prefetched: Prefetched | None = None,
    ) -> list[Passage]:
        """The best chunk of each of the `k` best documents, best first. `prefetched`
        (from `prefetch`) is used if it analysed the same text; whoever prefetched
        cancels it."""
        text = _clean(query)
        code = self._resolve_code(leadership_type)
        followers = self._resolve_followers(followership_types)
        cats = self._resolve_categories(categories)
        if not text or k <= 0:
            return []
        await self._maybe_refresh()
        mirror = self._mirror
        if not len(mirror):
            return []
        ranked = self._ranked_text(text, code)
        if prefetched is not None and prefetched.text == ranked and prefetched.memo is mirror.words:
            tokens = await prefetched.tokens
        else:
            tokens = await self.analyse(ranked, mirror.words)
        qvec = None
        if self.config.dense_weight:
            qvec = await self._embed_query_or_shed(text)
        else:
            self.lexical_searches += 1
        rank = functools.partial(
            self.rank,
            mirror,
            text,
            code=code,
            followers=followers,
            cats=cats,
            qvec=qvec,
            limit=k,
            tokens=tokens,
        )
        # ~0.15 ms at the shipped corpus size: cheaper than a hop to a thread.
        ranking = rank() if len(mirror) <= _INLINE_LEXICAL_MAX else await asyncio.to_thread(rank)
        return self._passages(mirror, ranking, k)

    def _ranked_text(self, text: str, code: str | None) -> str:
        """The question as it is analysed: without type names when the type is known."""
        if code is not None and self.config.strip_type_names:
            return without_type_names(text)
        return text

    async def analyse(self, text: str, memo: WordMemo) -> QueryTokens:
        """`text`'s morphemes (word by word: `memo`, the word cache, then kiwi in the
        query process if there is one) and its lexicon expansions."""
        specials, words = split_question(text)
        forms = self._known_forms(words, memo)
        unknown = list(dict.fromkeys(w for w in words if w not in forms))
        if unknown:
            if self.query_analyzer is not None:
                found = await self.query_analyzer.analyse_words(unknown)
            else:
                found = [analyzer.word_tokens(w) for w in unknown]
            for word, got in zip(unknown, found, strict=True):
                forms[word] = tuple(got)
                self.word_cache.put(word, got)
        return self._query_tokens(text, specials, words, forms)

    def _known_forms(self, words: Sequence[str], memo: WordMemo) -> dict[str, tuple[str, ...]]:
        forms: dict[str, tuple[str, ...]] = {}
        counts = self.words_from
        for word in words:
            known = memo.get(word)
            if known is not None:
                counts["memo"] += 1
            elif (known := self.word_cache.get(word)) is not None:
                counts["cache"] += 1
            else:
                counts["kiwi"] += 1
                continue
            forms[word] = known
        return forms

    def _query_tokens(
        self,
        text: str,
        specials: list[str],
        words: Sequence[str],
        forms: dict[str, tuple[str, ...]],
    ) -> QueryTokens:
        query = specials
        for word in words:
            query.extend(forms[word])
        expansion = self.lexicon.expansion_tokens(text) if self.config.use_lexicon else []
        return QueryTokens(query, expansion)

    def rank(
        self,
        mirror: Mirror,
        text: str,
        *,
        code: str | None,
        followers: Sequence[str] = (),
        cats: Sequence[str] | None = None,
        qvec: NDArray[np.float32] | None = None,
        limit: int = 10,
        tokens: QueryTokens | None = None,
    ) -> Ranking:
        """Score every document of `mirror` for `text` (see `ranking` for the fusion);
        `tokens`, when given, are `text`'s analysis (`analyse`), done already."""
        cfg = self.config
        if tokens is None:
            tokens = analyse(
                self._ranked_text(text, code),
                self.lexicon,
                mirror.words,
                use_lexicon=cfg.use_lexicon,
            )
        w = cfg.expansion_weight
        chunk_bm25, whole_bm25, field_bm25, example_bm25 = mirror.lexical_scores(
            (1.0, tokens.query), (w, tokens.expansion)
        )
        chunk_signals: list[tuple[float, NDArray[np.floating]]] = [(cfg.chunk_weight, chunk_bm25)]
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
                (cfg.whole_weight, whole_bm25),
                (cfg.field_weight, field_bm25),
                (
                    cfg.example_weight,
                    best_of_groups(mirror.example_groups, example_bm25)
                    if cfg.example_weight
                    else np.zeros(0),
                ),
            ],
            document_boosts=boosts,
            allowed=allowed,
        )

    async def _embed_query_or_shed(self, text: str) -> NDArray[np.float32] | None:
        """The query vector, or None when the embedder is saturated (see `shedding`)."""
        if should_shed(
            waiting=self._embeds_waiting,
            max_queue=self.max_embed_queue,
            budget=self._budget,
            cpu_seconds=getattr(self.embedder, "cpu_seconds", None),
            lag=self._lag,
            max_lag_s=self.embed_max_loop_lag_s,
        ):
            self.shed_searches += 1
            return None
        self._embeds_waiting += 1
        try:
            return await self.embedder.embed_query(text)
        finally:
            self._embeds_waiting -= 1

    def _passages(self, mirror: Mirror, ranking: Ranking, k: int) -> list[Passage]:
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
        return leadership_code(leadership_type)

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
            return await ingest_corpus(
                self._client,
                self._collection,
                self.embedder,
                Path(kb_dir),
                vector_cache=self.vector_cache,
                reload=self.reload,
                progressive=progressive,
            )

    async def export_vectors(self, path: Path) -> int:
        """Write every stored passage vector to `path` (see VectorCache)."""
        await self.reload()
        mirror = self._mirror
        await asyncio.to_thread(VectorCache(path).save, mirror.texts, mirror.vectors)
        return len(mirror.texts)


def _log_failure(task: asyncio.Task[IngestReport]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background ingestion failed", exc_info=task.exception())


async def open_retriever(
    settings: Settings,
    *,
    auto_ingest: bool = True,
    background_ingest: bool = False,
    embedder: Embedder | str | None = None,
    query_process: bool = False,
    **options: Any,
) -> Retriever:
    """Connect to Chroma, load the index mirror and warm the embedder up.

    With an empty collection and `auto_ingest`, the knowledge base is ingested first;
    with e5 that embeds every chunk (minutes on a small CPU), so a server may prefer
    `background_ingest=True`: it returns at once and searches return what is stored
    so far (nothing, at the very start) until `retriever.ingesting` turns false.

    `embedder` defaults to `settings.rag_embedder` (`RAG_EMBEDDER`, "e5": offline). The
    default embedder uses `settings.chroma_collection` as is; any other gets its name
    appended, so vectors from two models never share a collection.

    `query_process` analyses questions in a child process (`query_worker`, the server's
    `RAG_QUERY_PROCESS`); offline tools analyse them in this one.
    """
    if embedder is None or isinstance(embedder, str):
        kind = embedder or settings.rag_embedder or DEFAULT_EMBEDDER
        embedder = make_embedder(kind, settings=settings)
    client: Any = None
    retriever: Retriever | None = None
    options.setdefault("lexicon", Lexicon.load(Path(settings.knowledge_base_dir) / "lexicon.yaml"))
    config = options.get("config") or RankConfig()
    queries = QueryAnalyzer() if query_process else None
    # e5 (~100 MB) is loaded only when queries use it; ingest loads it on demand. kiwi is
    # loaded here too with a query process: ingestion and the fallback use it.
    warm = asyncio.gather(
        embedder.warm_up() if config.dense_weight else asyncio.sleep(0),
        asyncio.to_thread(analyzer.warm_up),
        queries.start() if queries is not None else asyncio.sleep(0),
    )
    try:
        client = await asyncio.to_thread(make_chroma_client, settings)
        name = collection_name(settings, embedder)
        collection = await asyncio.to_thread(open_collection, client, name, embedder)
        retriever = Retriever(client, collection, embedder, **options)
        retriever.query_analyzer, queries = queries, None
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
        await asyncio.to_thread(retriever.lexicon.warm)
        if retriever.size:
            # The first search pays for lazy set-up (kiwi's first analysis, numpy paths).
            await retriever.search("리더십 코칭 워밍업", k=1)
    except BaseException:
        warm.cancel()
        await asyncio.gather(warm, return_exceptions=True)
        if queries is not None:
            await queries.close()
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
