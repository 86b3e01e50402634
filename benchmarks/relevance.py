"""Retrieval relevance per technique: hit@1/3/5 and MRR on each eval set.

    python benchmarks/relevance.py [--file tests/data/retrieval_eval_blind.jsonl]
                                   [--file tests/data/retrieval_eval.jsonl]
                                   [--data-dir DIR] [--no-dense]

Opens the e5 index under DATA_DIR (ingesting it first if needed) and ranks every
question of every file under each configuration below, changing only the ranking
weights between rows (one index, one set of vectors). Rows:

- `shipped`: the default configuration (`RankConfig()`).
- `- X`: the default with technique X switched off (what X adds on top of the rest).
- `base + X`: chunk-level BM25 over morphemes alone, plus X alone (what X does by itself).
- `+ e5 w`: the default plus the dense e5 signal at weight w (`RAG_DENSE_WEIGHT`).
- `shipped, question analysed whole`: the default ranking with each question analysed by
  kiwi as one text instead of word by word (the word memo and kiwi per unknown word).

`tests/data/retrieval_eval_blind.jsonl` was written from the documents alone, before any
of these techniques were tried, and is never used to choose weights. Weights are chosen
on `tests/data/retrieval_eval_dev.jsonl` (written the same way, later, over every
document including the newer ones) and on the older regression set. Prints a table per
file and writes benchmarks/results/relevance.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from linkcoach_stream.config import Settings  # noqa: E402
from linkcoach_stream.rag import analyzer  # noqa: E402
from linkcoach_stream.rag.cli import check_paths, evaluate, load_eval_file  # noqa: E402
from linkcoach_stream.rag.query_worker import QueryTokens  # noqa: E402
from linkcoach_stream.rag.ranking import RankConfig  # noqa: E402
from linkcoach_stream.rag.retriever import Retriever, open_retriever  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "relevance.json"
FILES = (
    "tests/data/retrieval_eval_blind.jsonl",
    "tests/data/retrieval_eval_dev.jsonl",
    "tests/data/retrieval_eval.jsonl",
)

SHIPPED = RankConfig()
BASE = RankConfig(
    whole_weight=0.0,
    field_weight=0.0,
    expansion_weight=0.0,
    type_boost=0.0,
    followership_boost=0.0,
    example_weight=0.0,
    strip_type_names=False,
    use_lexicon=False,
)
TECHNIQUES: dict[str, dict[str, Any]] = {
    "lexicon expansion": {"use_lexicon": True, "expansion_weight": SHIPPED.expansion_weight},
    "front matter (title, tags, example_questions)": {"field_weight": SHIPPED.field_weight},
    "whole-document BM25": {"whole_weight": SHIPPED.whole_weight},
    "each example question alone (best per document)": {
        "example_weight": SHIPPED.example_weight
    },
    "type boost": {"type_boost": SHIPPED.type_boost},
    "type names dropped when the type is known": {"strip_type_names": True},
}
OFF: dict[str, dict[str, Any]] = {
    "lexicon expansion": {"use_lexicon": False},
    "front matter (title, tags, example_questions)": {"field_weight": 0.0},
    "whole-document BM25": {"whole_weight": 0.0},
    "each example question alone (best per document)": {"example_weight": 0.0},
    "type boost": {"type_boost": 0.0},
    "type names dropped when the type is known": {"strip_type_names": False},
}


WHOLE = "shipped, question analysed whole"


def plan(dense: bool) -> list[tuple[str, RankConfig]]:
    rows = [("shipped", SHIPPED), (WHOLE, SHIPPED)]
    rows += [(f"- {name}", replace(SHIPPED, **change)) for name, change in OFF.items()]
    rows.append(("base: chunk BM25 over morphemes only", BASE))
    rows += [(f"base + {name}", replace(BASE, **change)) for name, change in TECHNIQUES.items()]
    if dense:
        rows += [(f"+ e5 {w}", replace(SHIPPED, dense_weight=w)) for w in (0.3, 0.5, 1.0)]
    return rows


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings.from_env()
    if args.data_dir:
        settings = settings.with_overrides(data_dir=Path(args.data_dir))
    files = args.file or list(FILES)
    retriever = await open_retriever(settings)
    results: dict[str, Any] = {}
    try:
        sets = {f: load_eval_file(ROOT / f if not Path(f).is_absolute() else f) for f in files}
        for cases in sets.values():
            check_paths(cases, retriever.document_paths)
        word_by_word = retriever.analyse
        for name, config in plan(not args.no_dense):
            retriever.config = config
            analyse = analysed_whole(retriever) if name == WHOLE else word_by_word
            retriever.analyse = analyse  # type: ignore[method-assign]
            for file, cases in sets.items():
                started = time.perf_counter()
                result = await evaluate(retriever, cases, k=3)
                summary = result.summary()
                summary["seconds"] = round(time.perf_counter() - started, 2)
                results.setdefault(file, {})[name] = summary
                sys.stdout.write(
                    f"{Path(file).name:32s} {name:52s} hit@1 {summary['hit_at_1']:.2f} "
                    f"hit@3 {summary['hit_at_3']:.2f} hit@5 {summary['hit_at_5']:.2f} "
                    f"mrr {summary['mrr']:.3f}\n"
                )
                sys.stdout.flush()
    finally:
        await retriever.close()
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "documents": len(retriever.document_paths),
        "chunks": retriever.size,
        "results": results,
    }


def analysed_whole(retriever: Retriever) -> Any:
    async def analyse(text: str, memo: object) -> QueryTokens:
        return QueryTokens(analyzer.tokens(text), retriever.lexicon.expansion_tokens(text))

    return analyse


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--file", action="append", help="eval file (repeatable)")
    parser.add_argument("--data-dir", help="service data dir holding the e5 index")
    parser.add_argument("--no-dense", action="store_true", help="skip the e5 rows")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    sys.stdout.write(f"wrote {RESULTS.relative_to(ROOT)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
