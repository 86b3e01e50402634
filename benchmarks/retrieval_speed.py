"""Search latency at the knowledge base's size and at 10x.

    python benchmarks/retrieval_speed.py [--data-dir DIR] [--searches 300]
                                         [--concurrency 8] [--scale 10]

Opens the e5 index under DATA_DIR (ingesting it first if needed), then copies its
vectors, texts and metadata into two throw-away collections in a temporary directory:
`1x` (the real chunks) and `Nx` (the real chunks plus N-1 synthetic replicas). A
synthetic chunk recombines the first half of one real chunk's sentences with the
second half of another's, under a new path per replica, and its vector is the
normalised mix 0.7 * own + 0.3 * partner + small Gaussian noise, so no extra
embedding is needed and the index has realistic neighbour structure. The real index
is never modified.

Queries are the eval-set questions, cycled, with their leadership types. Each size is
measured sequentially (one search at a time: wall time and the process CPU time of the
search) and with `--concurrency` searches in flight, whose rankings are compared with
the sequential ones; "loop" is this process's CPU per search when the question is
analysed in the query process (`RAG_QUERY_PROCESS`, what a server's event loop pays; the
child's share is the rest of "cpu"), its rankings compared with the sequential ones too;
"e5" is the e5 query embedding alone, which the default ranking does not use
(`RAG_DENSE_WEIGHT=0`). The word cache is off, so a repeated question costs what it cost
the first time. Prints a table and writes
benchmarks/results/retrieval_speed.json. Latency depends on CPU count and load: the
load average at the start is recorded with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from linkcoach_stream.config import Settings  # noqa: E402
from linkcoach_stream.rag.chroma import make_chroma_client  # noqa: E402
from linkcoach_stream.rag.cli import load_eval_file  # noqa: E402
from linkcoach_stream.rag.mirror import Mirror  # noqa: E402
from linkcoach_stream.rag.query_worker import QueryAnalyzer  # noqa: E402
from linkcoach_stream.rag.retriever import Retriever, open_retriever  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "retrieval_speed.json"
SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def percentiles(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values) * 1000
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 2),
        "p99_ms": round(float(np.percentile(arr, 99)), 2),
        "mean_ms": round(float(arr.mean()), 2),
    }


Synthetic = tuple[list[str], list[str], list[dict[str, Any]], NDArray[np.float32]]


def synthesise(mirror: Mirror, scale: int, seed: int = 7) -> Synthetic:
    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    ids, texts, metas = list(mirror.ids), list(mirror.texts), [dict(m) for m in mirror.metas]
    vectors = [mirror.vectors]
    n = len(mirror)
    for replica in range(1, scale):
        partners = rng.integers(0, n, size=n)
        noise = rng.normal(0, 0.02, size=mirror.vectors.shape).astype(np.float32)
        mixed = 0.7 * mirror.vectors + 0.3 * mirror.vectors[partners] + noise
        mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
        vectors.append(mixed.astype(np.float32))
        for i in range(n):
            own = [s for s in SENTENCE.split(mirror.texts[i]) if s.strip()]
            other = [s for s in SENTENCE.split(mirror.texts[int(partners[i])]) if s.strip()]
            body = own[: max(1, len(own) // 2)] + other[len(other) // 2 :]
            pick.shuffle(body)
            meta = dict(mirror.metas[i])
            meta["path"] = f"synthetic{replica}/{meta.get('path', '')}"
            # Stored tokens recombined like the text, so the mirror need not re-analyse.
            own_t = str(mirror.metas[i].get("tokens", "")).split()
            other_t = str(mirror.metas[int(partners[i])].get("tokens", "")).split()
            meta["tokens"] = " ".join(own_t[: len(own_t) // 2] + other_t[len(other_t) // 2 :])
            ids.append(f"{meta['path']}#{replica}-{i}")
            texts.append("\n".join(body))
            metas.append(meta)
    return ids, texts, metas, np.vstack(vectors).astype(np.float32)


async def fill(client: Any, name: str, data: Synthetic) -> Any:
    ids, texts, metas, vectors = data
    collection = client.get_or_create_collection(
        name, embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
    )
    step = 2000
    for i in range(0, len(ids), step):
        await asyncio.to_thread(
            collection.add,
            ids=ids[i : i + step],
            documents=texts[i : i + step],
            metadatas=metas[i : i + step],
            embeddings=vectors[i : i + step],
        )
    return collection


async def measure_with_process(
    r: Retriever,
    queries: list[tuple[str, str | None]],
    searches: int,
    analyzer: QueryAnalyzer,
    alone: dict[int, list[str]],
) -> dict[str, Any]:
    """CPU of this process per search with the question analysed in the query process
    (what the server's event loop pays), and whether any ranking changed."""
    r.query_analyzer = analyzer
    try:
        cpu: list[float] = []
        differ = 0
        for i in range(searches):
            q, lt = queries[i % len(queries)]
            c = time.process_time()
            got = await r.search(q, leadership_type=lt, k=4)
            cpu.append(time.process_time() - c)
            differ += [p.id for p in got] != alone[i]
    finally:
        r.query_analyzer = None
    return {**percentiles(cpu), "rankings_differing_from_sequential": differ}


async def measure(
    r: Retriever,
    queries: list[tuple[str, str | None]],
    searches: int,
    concurrency: int,
    analyzer: QueryAnalyzer,
) -> dict[str, Any]:
    for q, lt in queries[:10]:
        await r.search(q, leadership_type=lt, k=4)
    sequential: list[float] = []
    cpu: list[float] = []
    embed: list[float] = []
    alone: dict[int, list[str]] = {}
    for i in range(searches):
        q, lt = queries[i % len(queries)]
        if i < 50:
            t = time.perf_counter()
            await r.embedder.embed_query(q)
            embed.append(time.perf_counter() - t)
        c, t = time.process_time(), time.perf_counter()
        got = await r.search(q, leadership_type=lt, k=4)
        sequential.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        alone[i] = [p.id for p in got]
    loop_cpu = await measure_with_process(r, queries, searches, analyzer, alone)

    concurrent: list[float] = []
    counter = iter(range(searches))
    differ = 0

    async def worker() -> None:
        nonlocal differ
        for i in counter:
            q, lt = queries[i % len(queries)]
            t = time.perf_counter()
            got = await r.search(q, leadership_type=lt, k=4)
            concurrent.append(time.perf_counter() - t)
            differ += [p.id for p in got] != alone[i]

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return {
        "chunks": r.size,
        "sequential": percentiles(sequential),
        "cpu_per_search": percentiles(cpu),
        "loop_cpu_per_search_with_query_process": loop_cpu,
        "embed_only": percentiles(embed),
        f"concurrency_{concurrency}": {
            **percentiles(concurrent),
            "searches_per_s": round(searches / wall, 1),
            "rankings_differing_from_sequential": differ,
        },
    }


async def run(settings: Settings, searches: int, concurrency: int, scale: int) -> dict[str, Any]:
    real = await open_retriever(settings)
    await real.ingest(settings.knowledge_base_dir)
    queries = [
        (c.question, c.leadership_type)
        for c in load_eval_file(ROOT / "tests" / "data" / "retrieval_eval.jsonl")
    ]
    mirror = real._mirror
    results: dict[str, Any] = {}
    analyzer = QueryAnalyzer()
    await analyzer.start()
    with tempfile.TemporaryDirectory(prefix="linkcoach-speed-") as tmp:
        tmp_settings = settings.with_overrides(data_dir=Path(tmp), chroma_host=None)
        client = make_chroma_client(tmp_settings)
        try:
            for label, factor in (("1x", 1), (f"{scale}x", scale)):
                started = time.perf_counter()
                data = synthesise(mirror, factor)
                collection = await fill(client, f"speed_{label}", data)
                build_s = time.perf_counter() - started
                # No word cache: the questions repeat, so every search pays kiwi on its
                # unknown words as a first-time question would.
                r = Retriever(
                    client,
                    collection,
                    real.embedder,
                    lexicon=real.lexicon,
                    refresh_interval_s=1e9,
                    word_cache_size=0,
                )
                await r.reload()
                results[label] = {
                    **await measure(r, queries, searches, concurrency, analyzer),
                    "build_s": round(build_s, 1),
                }
                sys.stderr.write(f"{label}: {json.dumps(results[label])}\n")
        finally:
            client.close()
            await analyzer.close()
    await real.close()
    return results


def table(results: dict[str, Any], concurrency: int) -> str:
    key = f"concurrency_{concurrency}"
    lines = [
        f"{'size':<5} {'chunks':>7}  {'cpu p50':>8} {'p99':>7}  {'loop p50':>8} {'p99':>7}"
        f"  {'wall p50':>8} {'p99':>7}"
        f"  {'@' + str(concurrency) + ' p50':>8} {'p99':>7} {'search/s':>8}  {'e5 p50':>7}",
        "-" * 108,
    ]
    for label, r in results.items():
        loop = r["loop_cpu_per_search_with_query_process"]
        lines.append(
            f"{label:<5} {r['chunks']:>7}"
            f"  {r['cpu_per_search']['p50_ms']:>6.2f}ms {r['cpu_per_search']['p99_ms']:>5.2f}ms"
            f"  {loop['p50_ms']:>6.2f}ms {loop['p99_ms']:>5.2f}ms"
            f"  {r['sequential']['p50_ms']:>6.2f}ms {r['sequential']['p99_ms']:>5.2f}ms"
            f"  {r[key]['p50_ms']:>6.1f}ms {r[key]['p99_ms']:>5.1f}ms"
            f" {r[key]['searches_per_s']:>8.1f}  {r['embed_only']['p50_ms']:>5.1f}ms"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--searches", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--scale", type=int, default=10)
    args = parser.parse_args()

    settings = Settings.from_env()
    if args.data_dir:
        settings = settings.with_overrides(data_dir=Path(args.data_dir))
    if not settings.knowledge_base_dir.is_absolute():
        settings = settings.with_overrides(knowledge_base_dir=ROOT / settings.knowledge_base_dir)
    load = os.getloadavg()[0]
    results = asyncio.run(run(settings, args.searches, args.concurrency, args.scale))
    sys.stdout.write(table(results, args.concurrency) + "\n")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "command": "python benchmarks/retrieval_speed.py",
                "searches": args.searches,
                "k": 4,
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_avg_1m_at_start": round(load, 2),
                },
                "results": results,
            },
            ensure_ascii=False,
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
