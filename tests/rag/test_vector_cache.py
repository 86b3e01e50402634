from __future__ import annotations

from pathlib import Path

import numpy as np

from linkcoach_stream.rag.documents import load_corpus
from linkcoach_stream.rag.ranking import RankConfig
from linkcoach_stream.rag.vector_cache import VectorCache

# Query embedding (and so its shedding) happens only with the dense signal on.
DENSE = RankConfig(dense_weight=0.5)

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
    retriever = await open_retriever(settings, config=DENSE)
    try:
        retriever.max_embed_queue = 2
        results = await asyncio.gather(
            *(retriever.search("참여비전형 리더의 강점", k=3) for _ in range(12))
        )
    finally:
        await retriever.close()
    assert retriever.shed_searches >= 8
    for passages in results:
        assert passages, "every search answers, shed or not"
        assert any("participative-vision" in p.path for p in passages)


async def test_query_embedding_stays_within_its_cpu_share(tmp_path: Path) -> None:
    import asyncio

    from linkcoach_stream.config import Settings
    from linkcoach_stream.rag.retriever import open_retriever
    from linkcoach_stream.rag.shedding import CpuBudget

    settings = Settings(
        data_dir=tmp_path, knowledge_base_dir=ROOT / "knowledge_base", models_dir=ROOT / "models"
    )
    retriever = await open_retriever(settings, config=DENSE)
    question = "팀원에게 피드백을 어떻게 줘야 할까요"
    try:
        # A full core: every sequential search embeds its query.
        retriever._budget = CpuBudget(1.0)
        before = retriever.hybrid_searches
        for _ in range(4):
            await retriever.search(question, k=3)
        assert retriever.hybrid_searches - before == 4

        # No share at all: lexical ranking only, and still an answer.
        retriever._budget = CpuBudget(0.0)
        shed = retriever.shed_searches
        assert await retriever.search(question, k=3)
        assert retriever.shed_searches == shed + 1

        # A small share: the embedder's CPU time (tens of ms a query) soon uses up the
        # 2-second bucket, later searches go lexical, and the share refills with time.
        share = 0.02
        retriever._budget = CpuBudget(share)
        hybrid, shed = retriever.hybrid_searches, retriever.shed_searches
        for _ in range(12):
            assert await retriever.search(question, k=3)
        embedded = retriever.hybrid_searches - hybrid
        assert 1 <= embedded < 12
        assert retriever.shed_searches - shed == 12 - embedded
        spent = retriever.embedder.cpu_seconds  # type: ignore[attr-defined]
        assert spent > 0
        await asyncio.sleep(3.0)  # refills 3 * share CPU-seconds, more than one query costs
        hybrid = retriever.hybrid_searches
        await retriever.search(question, k=3)
        assert retriever.hybrid_searches == hybrid + 1
    finally:
        await retriever.close()


async def test_query_embedding_is_shed_while_the_event_loop_runs_late(tmp_path: Path) -> None:
    import asyncio
    import time

    from linkcoach_stream.config import Settings
    from linkcoach_stream.rag.retriever import open_retriever
    from linkcoach_stream.rag.shedding import CpuBudget, LoopLag

    settings = Settings(
        data_dir=tmp_path, knowledge_base_dir=ROOT / "knowledge_base", models_dir=ROOT / "models"
    )
    retriever = await open_retriever(settings, config=DENSE)
    question = "팀원에게 피드백을 어떻게 줘야 할까요"
    try:
        retriever._budget = CpuBudget(1.0)
        assert retriever._lag is None, "no shedding outside the server unless asked"
        retriever._lag = LoopLag()
        retriever.embed_max_loop_lag_s = 0.05
        retriever._lag.lag_s(asyncio.get_running_loop())
        await asyncio.sleep(0.2)
        hybrid = retriever.hybrid_searches
        await retriever.search(question, k=3)
        assert retriever.hybrid_searches == hybrid + 1, "a punctual loop embeds"

        time.sleep(0.3)  # hold the event loop, as a CPU-starved process does
        await asyncio.sleep(0.06)
        shed = retriever.shed_searches
        assert await retriever.search(question, k=3)
        assert retriever.shed_searches == shed + 1

        await asyncio.sleep(1.0)  # the lag figure decays once the loop is punctual again
        hybrid = retriever.hybrid_searches
        await retriever.search(question, k=3)
        assert retriever.hybrid_searches == hybrid + 1
    finally:
        await retriever.close()
