from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer, make_user, read_sse, serving, text_of


@pytest.fixture(scope="module")
async def rag_server(settings, tmp_path_factory) -> AsyncIterator[RunningServer]:  # type: ignore[no-untyped-def]
    data_dir: Path = tmp_path_factory.mktemp("rag-data")
    async with serving(
        settings.with_overrides(retrieval_enabled=True, data_dir=data_dir)
    ) as running:
        yield running


async def test_streamed_answer_lists_and_cites_retrieved_sources(rag_server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=rag_server.url, timeout=60) as client:
        user = await make_user(client, leadership_type="HLH")
        q = "팀원들이 제가 어렵대요. 말 걸기 무섭다는데 어떻게 하죠?"
        async with client.stream(
            "POST", "/api/v1/coaching/query/stream", json={"question": q}, headers=user.headers
        ) as r:
            events = await read_sse(r)
        ready = await client.get("/ready")
        metrics = (await client.get("/metrics")).text
    searches = {
        line.split('mode="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("linkcoach_retrieval_searches{")
    }
    assert set(searches) == {"hybrid", "lexical_shed", "lexical"}
    assert searches["lexical"] >= 1, "the turn's search is counted (dense signal off)"
    analyses = {
        line.split('where="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("linkcoach_retrieval_query_analyses{")
    }
    words = {
        line.split('source="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("linkcoach_retrieval_query_words{")
    }
    assert words["memo"] >= 1, "words the knowledge base uses come from its word memo"
    assert words["kiwi"] >= 1, "the question has words the knowledge base never uses"
    assert analyses["process"] >= 1, "those were analysed in the query process"
    assert analyses["inline"] == 0
    meta = events[0].data
    assert meta["sources"], "meta lists the retrieved sources"
    paths = [source["path"] for source in meta["sources"]]
    assert len(paths) == len(set(paths)), "each document once"
    for source in meta["sources"]:
        assert set(source) == {"path", "title", "category", "section"}
        assert source["path"].endswith(".md") and source["section"]
    text = text_of(events)
    assert "[1]" in text
    assert meta["sources"][0]["title"] in text
    assert ready.json()["checks"]["chroma"] == "ok"


async def test_the_leaders_type_steers_retrieval(rag_server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=rag_server.url, timeout=60) as client:
        user = await make_user(client, leadership_type="LLL")
        r = await client.post(
            "/api/v1/coaching/query",
            json={"question": "제 리더십 유형의 강점과 약점이 뭔가요?"},
            headers=user.headers,
        )
    paths = [s["path"] for s in r.json()["sources"]]
    assert any("transitional" in p for p in paths), paths
