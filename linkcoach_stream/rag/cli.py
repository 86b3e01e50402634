"""Operator commands for retrieval: `linkcoach ingest` and `linkcoach eval-retrieval`.

Both write to stdout with `sys.stdout.write` (never print) and return an exit code.
`eval_main` prints one line per miss and, as its last line, a JSON object
`{"hit_at_1", "hit_at_3", "hit_at_5", "mrr", "hit_at_k", "n", "k"}` so scripts can read
the figures with `tail -n 1`. Ranking is per document (a search returns one passage per
document), so hit@k asks whether the expected document is among the first k.

Eval file format, one JSON object per line (blank lines and `#` lines skipped):
`{"question", "leadership_type"?, "expect": {"path"?, "category"?, "leadership_types"?,
"followership_types"?}}`. A question is a hit when any of the top-k passages matches
every given expect key: `path` as a substring of the passage's path, `category` exactly,
and the list keys when the passage's document lists include all expected values.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Settings
from ..domain.taxonomy import resolve_type
from .documents import DocumentError
from .retriever import Passage, Retriever, open_retriever
from .vector_cache import vector_cache_path

EXPECT_KEYS = frozenset({"path", "category", "leadership_types", "followership_types"})


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


@dataclass(frozen=True)
class EvalCase:
    line: int
    question: str
    leadership_type: str | None
    expect: Mapping[str, Any]
    followership_types: tuple[str, ...] = field(default=())


class EvalFileError(ValueError):
    """An eval file line is malformed; the message names the line."""


def _codes(names: Sequence[str], where: str) -> tuple[str, ...]:
    out = []
    for name in names:
        resolved = resolve_type(name)
        if resolved is None:
            raise EvalFileError(f"{where}: unknown leadership type {name!r}")
        out.append(resolved.code)
    return tuple(out)


def load_eval_file(path: Path | str) -> list[EvalCase]:
    cases: list[EvalCase] = []
    with open(path, encoding="utf-8") as fh:
        for number, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{path}:{number}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalFileError(f"{where}: not valid JSON ({exc.msg})") from exc
            question = data.get("question") if isinstance(data, dict) else None
            expect = data.get("expect") if isinstance(data, dict) else None
            if not isinstance(question, str) or not question.strip():
                raise EvalFileError(f"{where}: 'question' must be a non-empty string")
            if not isinstance(expect, dict) or not expect:
                raise EvalFileError(f"{where}: 'expect' must be a non-empty object")
            unknown = set(expect) - EXPECT_KEYS
            if unknown:
                raise EvalFileError(f"{where}: unknown expect keys {sorted(unknown)}")
            normalised = dict(expect)
            if "leadership_types" in expect:
                normalised["leadership_types"] = _codes(expect["leadership_types"], where)
            if "followership_types" in expect:
                normalised["followership_types"] = tuple(
                    str(f).lower() for f in expect["followership_types"]
                )
            lt = data.get("leadership_type")
            code = None
            if lt:
                code = _codes([lt], where)[0]
            followers = tuple(str(f).lower() for f in data.get("followership_types") or ())
            cases.append(EvalCase(number, question, code, normalised, followers))
    return cases


def passage_matches(passage: Passage, expect: Mapping[str, Any]) -> bool:
    """`expect` as normalised by `load_eval_file` (leadership types as codes)."""
    if "path" in expect and str(expect["path"]) not in passage.path:
        return False
    if "category" in expect and expect["category"] != passage.category:
        return False
    if "leadership_types" in expect and not set(expect["leadership_types"]) <= set(
        passage.leadership_types
    ):
        return False
    if "followership_types" in expect and not set(expect["followership_types"]) <= set(
        passage.followership_types
    ):
        return False
    return True


RANK_DEPTH = 10


@dataclass(frozen=True)
class EvalResult:
    """Ranks (1-based; 0 = not in the top `RANK_DEPTH`) of the first matching document."""

    ranks: tuple[int, ...]
    k: int
    misses: tuple[tuple[EvalCase, tuple[str, ...]], ...]

    @property
    def n(self) -> int:
        return len(self.ranks)

    @property
    def hits(self) -> int:
        return self.hits_at(self.k)

    def hits_at(self, k: int) -> int:
        return sum(1 for r in self.ranks if 0 < r <= k)

    def hit_rate(self, k: int) -> float:
        return round(self.hits_at(k) / self.n, 4) if self.n else 0.0

    @property
    def hit_at_k(self) -> float:
        return self.hit_rate(self.k)

    @property
    def mrr(self) -> float:
        """Mean reciprocal rank, counting ranks up to `RANK_DEPTH`."""
        return round(sum(1 / r for r in self.ranks if r) / self.n, 4) if self.n else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "hit_at_1": self.hit_rate(1),
            "hit_at_3": self.hit_rate(3),
            "hit_at_5": self.hit_rate(5),
            "mrr": self.mrr,
            "hit_at_k": self.hit_at_k,
            "n": self.n,
            "k": self.k,
        }


def check_paths(cases: Sequence[EvalCase], paths: Sequence[str]) -> None:
    """Every `expect.path` must name a document: a typo would otherwise count as a miss."""
    for case in cases:
        want = case.expect.get("path")
        if want is not None and not any(str(want) in p for p in paths):
            raise EvalFileError(f"line {case.line}: expect.path {want!r} matches no document")


async def evaluate(retriever: Retriever, cases: Sequence[EvalCase], *, k: int) -> EvalResult:
    """Rank documents for every case; a search returns one passage per document."""
    ranks: list[int] = []
    misses: list[tuple[EvalCase, tuple[str, ...]]] = []
    for case in cases:
        passages = await retriever.search(
            case.question,
            leadership_type=case.leadership_type,
            followership_types=case.followership_types,
            k=max(k, RANK_DEPTH),
        )
        rank = next((n for n, p in enumerate(passages, 1) if passage_matches(p, case.expect)), 0)
        ranks.append(rank)
        if not 0 < rank <= k:
            misses.append((case, tuple(p.path for p in passages[:k])))
    return EvalResult(tuple(ranks), k, tuple(misses))


async def _ingest(settings: Settings) -> int:
    retriever = await open_retriever(settings, auto_ingest=False)
    try:
        report = await retriever.ingest(settings.knowledge_base_dir)
        cache = vector_cache_path(settings, retriever.embedder)
        if retriever.embedder.name != "gemini":
            # Ship-able vectors: the next first start reads them instead of embedding.
            await retriever.export_vectors(cache)
    finally:
        await retriever.close()
    _out(
        f"ingested {report.documents} documents into {retriever.collection_name}: "
        f"{report.added} chunks added, {report.removed} removed, "
        f"{report.unchanged} unchanged ({report.chunks} total, kb_version "
        f"{report.kb_version}, {report.seconds:.1f} s)"
    )
    return 0


def ingest_main(settings: Settings) -> int:
    try:
        return asyncio.run(_ingest(settings))
    except DocumentError as exc:
        _err(f"knowledge base error: {exc}")
        return 1


async def _eval(settings: Settings, cases: Sequence[EvalCase], k: int) -> EvalResult:
    retriever = await open_retriever(settings)
    try:
        check_paths(cases, retriever.document_paths)
        return await evaluate(retriever, cases, k=k)
    finally:
        await retriever.close()


def eval_main(settings: Settings, *, file: str, k: int = 3) -> int:
    try:
        cases = load_eval_file(file)
    except (OSError, EvalFileError) as exc:
        _err(f"cannot read eval file: {exc}")
        return 2
    if k < 1:
        _err("k must be at least 1")
        return 2
    try:
        result = asyncio.run(_eval(settings, cases, k))
    except DocumentError as exc:
        _err(f"knowledge base error: {exc}")
        return 1
    except EvalFileError as exc:
        _err(f"bad eval file {file}: {exc}")
        return 2
    for case, got in result.misses:
        expect = json.dumps(dict(case.expect), ensure_ascii=False)
        _out(f"MISS line {case.line}: {case.question} | expect {expect} | got {list(got)}")
    _out(json.dumps(result.summary(), ensure_ascii=False))
    return 0
