"""Chroma set-up: the client, the collection of one embedder, and its stored metadata.

- An embedded `PersistentClient` is single-process (SQLite + HNSW files). Several
  workers or instances need Chroma in client/server mode (`CHROMA_HOST`).
- A collection records the embedder that filled it; opening it with another one is
  refused, so vectors from two models never meet in one index.
- `kb_version` lives in the collection metadata: it is how other instances notice that
  an ingest elsewhere changed the knowledge base.

Every function here is synchronous, like Chroma itself; callers run them in a worker
thread (`asyncio.to_thread`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Settings
from .embedders import E5Embedder, Embedder

# Chroma calls are paged: reads and deletes take this many ids at a time.
PAGE = 1000


class RetrievalError(RuntimeError):
    """The index cannot serve a request (for example, built with another embedder)."""


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


def collection_name(settings: Settings, embedder: Embedder) -> str:
    """`settings.chroma_collection` for the default embedder, else with its name appended."""
    if embedder.name == E5Embedder.name:
        return settings.chroma_collection
    return f"{settings.chroma_collection}-{embedder.name}"


def open_collection(client: Any, name: str, embedder: Embedder) -> Any:
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


def stored_kb_version(client: Any, name: str) -> str | None:
    """The `kb_version` last written to the collection, read fresh from the server."""
    meta = client.get_collection(name).metadata or {}
    value = meta.get("kb_version")
    return str(value) if value else None


def write_kb_version(collection: Any, version: str) -> None:
    meta = dict(collection.metadata or {})
    meta["kb_version"] = version
    collection.modify(metadata=meta)
