from __future__ import annotations

import copy
from collections import Counter

import httpx
import numpy as np
import pytest

from linkcoach_stream.config import Settings
from linkcoach_stream.emulator.config import EmulatorConfig
from linkcoach_stream.emulator.gemini import create_emulator_app
from linkcoach_stream.rag.embedders import E5Embedder, GeminiEmbedder
from linkcoach_stream.rag.ranking import RankConfig
from linkcoach_stream.rag.retriever import Passage, Retriever, open_retriever


async def test_korean_question_about_a_type_finds_that_types_profile(
    retriever: Retriever,
) -> None:
    results = await retriever.search("참여비전형 리더의 강점", k=3)
    assert "leadership_types/participative-vision.md" in [p.path for p in results]


async def test_a_practical_question_finds_the_matching_guide(retriever: Retriever) -> None:
    results = await retriever.search("팀원에게 SBI 모델로 구체적인 피드백을 주는 방법", k=3)
    assert results[0].path == "coaching_guides/feedback-sbi.md"


async def test_a_question_worded_like_a_documents_example_question_finds_it(
    retriever: Retriever,
) -> None:
    # One of the rating guide's example questions, reworded by a leader.
    question = "다들 열심히 했는데 C를 한 명은 무조건 줘야 한대요 누구 줘야 돼요 ㅠㅠ"
    target = "coaching_guides/rating-distribution.md"
    mirror = retriever._mirror
    doc = mirror.doc_paths.index(target)

    def margin(config: RankConfig) -> float:
        ranking = replace_config(retriever, config).rank(mirror, question, code=None, limit=5)
        assert int(ranking.documents[0]) == doc
        return float(ranking.scores[0] - ranking.scores[1])

    assert margin(RankConfig(example_weight=1.0)) > margin(RankConfig(example_weight=0.0))


def replace_config(retriever: Retriever, config: RankConfig) -> Retriever:
    clone = copy.copy(retriever)
    clone.config = config
    return clone


async def test_passages_carry_their_metadata_and_a_source(retriever: Retriever) -> None:
    results = await retriever.search("참여비전형 리더의 강점", k=3)
    (top,) = [p for p in results if p.path == "leadership_types/participative-vision.md"]
    assert isinstance(top, Passage)
    assert top.leadership_types == ("HLH",)
    assert top.category == "leadership_types"
    assert top.text.startswith(top.title)
    assert top.source() == {
        "path": "leadership_types/participative-vision.md",
        "title": top.title,
        "category": "leadership_types",
        "section": top.section,
    }
    assert top.section and top.section in top.text


async def test_category_filter_keeps_only_those_categories(retriever: Retriever) -> None:
    results = await retriever.search(
        "피드백 후 위축된 팀원", categories=["case_studies", "followership"], k=6
    )
    assert results
    assert {p.category for p in results} <= {"case_studies", "followership"}


async def test_each_document_appears_once_in_rank_order(retriever: Retriever) -> None:
    results = await retriever.search("참여비전형 리더 코칭 포인트 강점 리스크 상황", k=8)
    assert len(results) == 8
    assert max(Counter(p.path for p in results).values()) == 1
    scores = [p.score for p in results]
    assert scores == sorted(scores, reverse=True)


async def test_leadership_type_boost_raises_documents_of_that_type(
    retriever: Retriever,
) -> None:
    query = "팀원과 1on1 대화를 어떻게 시작하나요"
    plain = await retriever.search(query, k=6)
    boosted = await retriever.search(query, leadership_type="LHL", k=6)
    typed = sum("LHL" in p.leadership_types for p in boosted)
    assert typed >= sum("LHL" in p.leadership_types for p in plain)
    assert typed >= 1
    # A boost, not a filter: untyped documents stay reachable.
    followers = await retriever.search("주도형 팀원을 알아보는 신호", leadership_type="LHL", k=3)
    assert "followership/driver.md" in [p.path for p in followers]


async def test_leadership_type_accepts_a_korean_name(retriever: Retriever) -> None:
    by_code = await retriever.search("강점", leadership_type="HLH", k=3)
    by_name = await retriever.search("강점", leadership_type="참여비전형", k=3)
    assert [p.id for p in by_code] == [p.id for p in by_name]


async def test_unknown_filters_are_rejected(retriever: Retriever) -> None:
    with pytest.raises(ValueError, match="unknown leadership type"):
        await retriever.search("질문", leadership_type="XYZ")
    with pytest.raises(ValueError, match="unknown followership type"):
        await retriever.search("질문", followership_types=["boss"])
    with pytest.raises(ValueError, match="unknown categories"):
        await retriever.search("질문", categories=["blog"])


async def test_empty_query_returns_nothing(retriever: Retriever) -> None:
    assert await retriever.search("   ") == []


async def test_chroma_where_filters_work_on_the_boolean_type_keys(retriever: Retriever) -> None:
    collection = retriever._collection
    got = collection.get(where={"lt_HLH": True}, include=["metadatas"])
    assert got["ids"]
    assert all("HLH" in m["leadership_types"].split(",") for m in got["metadatas"])
    both = collection.get(
        where={"$and": [{"ft_driver": True}, {"category": "followership"}]},
        include=["metadatas"],
    )
    assert both["ids"]
    assert all(m["category"] == "followership" for m in both["metadatas"])


async def test_ping_and_kb_version(retriever: Retriever) -> None:
    await retriever.ping()
    assert len(retriever.kb_version) == 16


async def test_e5_ranks_the_korean_passage_that_answers_the_question() -> None:
    embedder = E5Embedder()
    try:
        passages = await embedder.embed_passages(
            [
                "참여비전형 리더의 강점: 팀의 비전을 분명히 하고 성장 기회를 만들어 줍니다.",
                "재택근무 팀의 메신저 응답 시간 규칙을 정하는 방법입니다.",
                "신규 입사자 온보딩 첫 주 체크리스트입니다.",
            ]
        )
        query = await embedder.embed_query("비전을 제시하는 리더의 장점은?")
        assert passages.shape == (3, 384)
        assert np.allclose(np.linalg.norm(passages, axis=1), 1.0, atol=1e-4)
        assert int(np.argmax(passages @ query)) == 0
    finally:
        await embedder.aclose()


async def test_gemini_embedder_batches_through_google_genai_against_the_emulator(
    small_settings: Settings,
) -> None:
    app = create_emulator_app(EmulatorConfig(embedding_dim=48))
    embedder = GeminiEmbedder(
        api_key="test",
        base_url="http://gemini.test",
        transport=httpx.ASGITransport(app=app),
    )
    passages = await embedder.embed_passages([f"문단 {i}" for i in range(150)])
    assert passages.shape == (150, 48)
    assert np.allclose(np.linalg.norm(passages, axis=1), 1.0, atol=1e-4)
    assert (await embedder.embed_query("문단 7")).shape == (48,)

    # The same pipeline with the dense signal on: the query is embedded by Gemini too.
    r = await open_retriever(small_settings, embedder=embedder, config=RankConfig(dense_weight=0.5))
    try:
        assert r.collection_name == "small_kb-gemini-text-embedding-004"
        assert r.size > 0
        before = r.hybrid_searches
        assert await r.search("SBI 피드백 모델", k=2)
        assert (r.hybrid_searches - before, r.shed_searches) == (1, 0)
    finally:
        await r.close()
