from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from linkcoach_stream.config import Settings
from linkcoach_stream.rag.chroma import RetrievalError, make_chroma_client, open_collection
from linkcoach_stream.rag.documents import load_corpus
from linkcoach_stream.rag.embedders import HashingEmbedder
from linkcoach_stream.rag.retriever import Retriever, open_retriever


def stored_ids(r: Retriever) -> set[str]:
    return set(r._collection.get(include=[])["ids"])


async def test_first_open_ingests_and_a_second_ingest_changes_nothing(
    small_settings: Settings, small_kb: Path
) -> None:
    r = await open_retriever(small_settings)
    try:
        corpus = load_corpus(small_kb)
        assert stored_ids(r) == {c.id for c in corpus.chunks}
        assert r.kb_version == corpus.version

        report = await r.ingest(small_kb)
        assert (report.added, report.removed) == (0, 0)
        assert report.unchanged == len(corpus.chunks) == report.chunks
        assert report.documents == 4
        assert report.kb_version == r.kb_version == corpus.version
    finally:
        await r.close()


async def test_editing_one_document_replaces_only_its_chunks(
    small_settings: Settings, small_kb: Path
) -> None:
    r = await open_retriever(small_settings)
    try:
        before = stored_ids(r)
        version = r.kb_version
        doc = small_kb / "followership" / "driver.md"
        text = doc.read_text(encoding="utf-8")
        doc.write_text(
            text.replace("주도형", "드라이버형", 1) + "\n## 추가 섹션\n" + "새 내용 " * 40
        )

        report = await r.ingest(small_kb)
        after = stored_ids(r)
        touched = {i for i in before ^ after}
        assert touched and all(i.startswith("followership/driver.md#") for i in touched)
        assert report.removed == len(before - after)
        assert report.added == len(after - before)
        assert report.unchanged == len(before & after)
        assert r.kb_version != version

        hits = await r.search("추가 섹션 새 내용", k=1)
        assert hits[0].path == "followership/driver.md"
    finally:
        await r.close()


async def test_deleting_a_document_removes_its_chunks(
    small_settings: Settings, small_kb: Path
) -> None:
    r = await open_retriever(small_settings)
    try:
        before = stored_ids(r)
        (small_kb / "coaching_guides" / "feedback-sbi.md").unlink()
        report = await r.ingest(small_kb)
        gone = {i for i in before if i.startswith("coaching_guides/feedback-sbi.md#")}
        assert gone and report.removed == len(gone) and report.added == 0
        assert stored_ids(r) == before - gone
        results = await r.search("SBI 피드백 모델", k=4)
        assert all(p.path != "coaching_guides/feedback-sbi.md" for p in results)
    finally:
        await r.close()


async def test_reopening_keeps_the_index_without_reingesting(
    small_settings: Settings, small_kb: Path
) -> None:
    first = await open_retriever(small_settings)
    version, size = first.kb_version, first.size
    await first.close()
    # Any ingest would now fail on this file, so a clean reopen proves none ran.
    (small_kb / "dimensions").mkdir()
    (small_kb / "dimensions" / "broken.md").write_text("no front matter", encoding="utf-8")
    again = await open_retriever(small_settings)
    try:
        assert (again.kb_version, again.size) == (version, size)
    finally:
        await again.close()


async def test_a_collection_built_by_another_embedder_is_refused(
    small_settings: Settings,
) -> None:
    r = await open_retriever(small_settings)
    name = r.collection_name
    await r.close()
    assert name == "small_kb-hash1024"

    class Other(HashingEmbedder):
        name = "other"

    client = make_chroma_client(small_settings)
    try:
        with pytest.raises(RetrievalError, match="holds 'hash1024' vectors, not 'other'"):
            open_collection(client, name, Other())
    finally:
        client.close()


async def test_background_ingest_returns_at_once_and_fills_the_index(
    small_settings: Settings, small_kb: Path
) -> None:
    r = await open_retriever(small_settings, background_ingest=True)
    try:
        task = r.start_background_ingest(small_kb)  # the running task, not a second one
        report = await task
        assert not r.ingesting
        assert report.added == r.size == len(load_corpus(small_kb).chunks)
        assert await r.search("SBI 피드백", k=1)
    finally:
        await r.close()


@pytest.mark.slow
async def test_client_server_mode_ingests_searches_and_reports_an_unreachable_server(
    small_settings: Settings, tmp_path: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    chroma = Path(sys.executable).with_name("chroma")
    server = subprocess.Popen(
        [str(chroma), "run", "--path", str(tmp_path / "srv"), "--host", "127.0.0.1"]
        + ["--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    settings = small_settings.with_overrides(chroma_host="127.0.0.1", chroma_port=port)
    try:
        r = None
        for _ in range(100):
            try:
                r = await open_retriever(settings)
                break
            except Exception:  # noqa: BLE001 - the server is still starting
                await asyncio.sleep(0.1)
        assert r is not None, "chroma server did not start"
        try:
            assert r.size == len(load_corpus(settings.knowledge_base_dir).chunks)
            assert (await r.search("SBI 피드백 모델", k=1))[0].path.endswith("feedback-sbi.md")
            await r.ping()
            server.terminate()
            server.wait(timeout=10)
            with pytest.raises(Exception):  # noqa: B017 - whatever the client raises
                await r.ping()
        finally:
            await r.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


async def test_another_instance_notices_an_ingest_and_reloads(
    small_settings: Settings, small_kb: Path
) -> None:
    writer = await open_retriever(small_settings)
    reader = await open_retriever(small_settings, refresh_interval_s=0.0)
    try:
        (small_kb / "coaching_guides" / "feedback-sbi.md").unlink()
        await writer.ingest(small_kb)
        assert reader.kb_version != writer.kb_version
        await reader.search("피드백", k=1)  # notices the new version, reloads behind
        assert reader._reload_task is not None
        await reader._reload_task
        assert reader.kb_version == writer.kb_version
        assert reader.size == writer.size
    finally:
        await reader.close()
        await writer.close()
