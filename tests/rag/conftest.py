"""Retrieval fixtures: one index over the real knowledge base per session.

The session index uses the hashing embedder: e5 needs minutes of CPU to embed the
whole knowledge base, the hashing embedder well under a second, and everything these
tests check (ingestion, filters, fusion, dedupe, the CLI) is the same code path. The
e5 model itself is exercised directly in `test_search.py` on a few passages.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from linkcoach_stream.config import Settings
from linkcoach_stream.rag.retriever import Retriever, open_retriever

ROOT = Path(__file__).resolve().parents[2]
KB_DIR = ROOT / "knowledge_base"
SMALL_KB = (
    "leadership_types/participative-vision.md",
    "leadership_types/participative-task.md",
    "followership/driver.md",
    "coaching_guides/feedback-sbi.md",
)


@pytest.fixture(scope="session")
def rag_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rag")


@pytest.fixture(scope="session")
def rag_settings(rag_dir: Path) -> Settings:
    return Settings(
        app_env="test",
        data_dir=rag_dir / "data",
        knowledge_base_dir=KB_DIR,
        chroma_collection="test_kb",
        rag_embedder="hash",
    )


@pytest.fixture(scope="session")
async def retriever(rag_settings: Settings) -> AsyncIterator[Retriever]:
    r = await open_retriever(rag_settings)
    try:
        yield r
    finally:
        await r.close()


@pytest.fixture
def small_kb(tmp_path: Path) -> Iterator[Path]:
    """A writable copy of four real documents."""
    kb = tmp_path / "kb"
    for rel in SMALL_KB:
        target = kb / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(KB_DIR / rel, target)
    yield kb


@pytest.fixture
def small_settings(tmp_path: Path, small_kb: Path) -> Settings:
    return Settings(
        app_env="test",
        data_dir=tmp_path / "data",
        knowledge_base_dir=small_kb,
        chroma_collection="small_kb",
        rag_embedder="hash",
    )
