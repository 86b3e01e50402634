"""Passage vectors shipped in `models/`, so a first start embeds only what changed."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ..config import Settings
from .embedders import Embedder


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


def vector_cache_path(settings: Settings, embedder: Embedder) -> Path:
    return Path(settings.models_dir) / f"kb_vectors_{embedder.name}.npz"
