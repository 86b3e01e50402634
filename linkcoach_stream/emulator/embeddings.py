"""The emulator's embeddings: deterministic unit vectors from hashed character n-grams.

Texts that share characters score closer, which is enough for retrieval tests to rank a
relevant passage above an unrelated one without a model.
"""

from __future__ import annotations

import math
import zlib
from functools import lru_cache

from .config import MAX_EMBEDDING_DIM, EmulatorConfig
from .protocol import GeminiError

__all__ = ["embed_text", "embedding_dim"]


def embedding_dim(raw: object, config: EmulatorConfig, where: str) -> int:
    if raw is None:
        return config.embedding_dim
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_EMBEDDING_DIM:
        raise GeminiError(400, f"* {where}: outputDimensionality must be in 1..{MAX_EMBEDDING_DIM}")
    return raw


@lru_cache(maxsize=4096)
def embed_text(text: str, dim: int) -> tuple[float, ...]:
    """A unit vector from a hashed bag of character 1-3-grams; similar texts score closer.

    crc32, not ``hash()``: the vector must be the same in every process.
    """
    vector = [0.0] * dim
    padded = " " + " ".join(text.lower().split())[:8192] + " "
    for n, weight in ((1, 0.5), (2, 1.0), (3, 1.0)):
        for i in range(len(padded) - n + 1):
            h = zlib.crc32(padded[i : i + n].encode())
            vector[h % dim] += weight if h & 0x80000000 else -weight
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return tuple(v / norm for v in vector)
