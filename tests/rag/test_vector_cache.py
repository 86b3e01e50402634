from __future__ import annotations

from pathlib import Path

import numpy as np

from linkcoach_stream.rag.documents import load_corpus
from linkcoach_stream.rag.retriever import VectorCache

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_vectors_cover_every_chunk_of_the_knowledge_base() -> None:
    # If this fails, run `linkcoach ingest` and commit models/kb_vectors_e5small.npz.
    cache = VectorCache.load(ROOT / "models" / "kb_vectors_e5small.npz")
    corpus = load_corpus(ROOT / "knowledge_base")
    missing = [c.id for c in corpus.chunks if cache.get(c.text) is None]
    assert missing == []
    vec = cache.get(corpus.chunks[0].text)
    assert vec is not None and vec.shape == (384,)
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 0.01


def test_vector_cache_round_trip_and_misses(tmp_path: Path) -> None:
    path = tmp_path / "v.npz"
    vectors = np.eye(3, 4, dtype=np.float32)
    VectorCache(path).save(["가", "나", "다"], vectors)
    cache = VectorCache.load(path)
    assert len(cache) == 3
    got = cache.get("나")
    assert got is not None and np.allclose(got, vectors[1])
    assert cache.get("라") is None
    assert len(VectorCache.load(tmp_path / "absent.npz")) == 0


async def test_a_burst_of_searches_sheds_to_lexical_ranking(tmp_path: Path) -> None:
    import asyncio

    from linkcoach_stream.config import Settings
    from linkcoach_stream.rag.retriever import open_retriever

    settings = Settings(
        data_dir=tmp_path, knowledge_base_dir=ROOT / "knowledge_base", models_dir=ROOT / "models"
    )
    retriever = await open_retriever(settings)
    try:
        retriever.max_embed_queue = 2
        results = await asyncio.gather(
            *(
                retriever.search("참여비전형 리더의 강점", leadership_type="HLH", k=3)
                for _ in range(12)
            )
        )
    finally:
        await retriever.close()
    assert retriever.shed_searches >= 8
    for passages in results:
        assert passages, "every search answers, shed or not"
        assert any("participative-vision" in p.path for p in passages)
