"""Ingestion: make a Chroma collection match `knowledge_base/`, and what it reports.

- Content-addressed (chunk id = path + hash): new ids are embedded and upserted in
  batches before stale ids are deleted, so a changed document is never missing from
  the index, an interrupted ingest resumes where it stopped, and two processes
  ingesting at once only repeat work.
- `kb_version` is written to the collection metadata once the chunks match; other
  instances notice a change within the retriever's `refresh_interval_s` and reload
  their mirror in the background.
- Vectors of unchanged passages come from the shipped `VectorCache` when it has them;
  only the rest are embedded.
- Each chunk is stored with its morphemes (`mirror.token_metadata`), so building a
  mirror on any instance does not analyse the corpus again.

`Retriever.ingest` runs this under its lock and hands it its `reload`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .chroma import PAGE, stored_kb_version, write_kb_version
from .documents import Chunk, load_corpus
from .embedders import Embedder
from .mirror import token_metadata
from .vector_cache import VectorCache

log = logging.getLogger(__name__)

INGEST_BATCH = 64


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


async def ingest_corpus(
    client: Any,
    collection: Any,
    embedder: Embedder,
    kb_dir: Path,
    *,
    vector_cache: VectorCache | None,
    reload: Callable[[], Awaitable[None]],
    progressive: bool = False,
) -> IngestReport:
    """Embed and store the chunks of `kb_dir` the collection lacks, then drop the ones
    it no longer has. `reload` refreshes the caller's view of the collection: after
    every batch when `progressive`, and once at the end."""
    started = time.perf_counter()
    corpus = await asyncio.to_thread(load_corpus, kb_dir)
    existing = set(await asyncio.to_thread(stored_ids, collection))
    wanted = {c.id: c for c in corpus.chunks}
    to_add = [c for c in corpus.chunks if c.id not in existing]
    to_remove = sorted(existing - wanted.keys())
    for i in range(0, len(to_add), INGEST_BATCH):
        await add_chunks(collection, embedder, to_add[i : i + INGEST_BATCH], vector_cache)
        if progressive:
            await reload()
        log.info(
            "ingest progress",
            extra={"embedded": min(i + INGEST_BATCH, len(to_add)), "total": len(to_add)},
        )
    for i in range(0, len(to_remove), PAGE):
        batch = to_remove[i : i + PAGE]
        await asyncio.to_thread(collection.delete, ids=batch)
    if (
        to_add
        or to_remove
        or corpus.version != await asyncio.to_thread(stored_kb_version, client, collection.name)
    ):
        await asyncio.to_thread(write_kb_version, collection, corpus.version)
    await reload()
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


def stored_ids(collection: Any) -> list[str]:
    ids: list[str] = []
    offset = 0
    while True:
        got = collection.get(include=[], limit=PAGE * 10, offset=offset)["ids"]
        ids.extend(got)
        offset += len(got)
        if len(got) < PAGE * 10:
            return ids


async def add_chunks(
    collection: Any,
    embedder: Embedder,
    chunks: Sequence[Chunk],
    vector_cache: VectorCache | None,
) -> None:
    """Upsert `chunks` with their vectors (cached or freshly embedded) and morphemes."""
    texts = [c.text for c in chunks]
    cached = [vector_cache.get(t) if vector_cache else None for t in texts]
    missing = [i for i, v in enumerate(cached) if v is None]
    vectors = np.zeros((len(texts), 0), dtype=np.float32)
    if missing:
        fresh = await embedder.embed_passages([texts[i] for i in missing])
        vectors = np.zeros((len(texts), fresh.shape[1]), dtype=np.float32)
        vectors[missing] = fresh
    for i, vec in enumerate(cached):
        if vec is not None:
            if vectors.shape[1] == 0:
                vectors = np.zeros((len(texts), len(vec)), dtype=np.float32)
            vectors[i] = vec
    tokens = await asyncio.to_thread(lambda: [token_metadata(c) for c in chunks])
    await asyncio.to_thread(
        collection.upsert,
        ids=[c.id for c in chunks],
        embeddings=vectors,
        documents=[c.text for c in chunks],
        metadatas=[{**c.metadata(), **t} for c, t in zip(chunks, tokens, strict=True)],
    )
