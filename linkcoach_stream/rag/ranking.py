"""Lexical indexes and the fusion step that turns per-signal scores into a document ranking.

Everything here is pure (arrays in, arrays out) so the ranking can be unit-tested without
Chroma, and `benchmarks/relevance.py` can switch each signal off to measure it alone.

Decisions worth keeping (figures: `python benchmarks/relevance.py`, both eval sets):

- The unit of ranking is the document, not the chunk. Questions are about a situation a
  document covers; chunks of one long guide used to split its score and crowd out other
  documents. A document scores the best of its chunks plus its whole-text and
  front-matter (title, tags, `example_questions`) scores; a search returns the best
  chunk of each of the top documents, so `sources` name each document once.
- Signals are BM25 scores (bm25s) over kiwi morphemes at three granularities: the chunk,
  the whole document, and its front-matter field. Each is z-scored over its own domain
  before weighting, so weights do not depend on a signal's range or on corpus size.
- Each `example_questions` entry is indexed as its own short text and a document takes
  its best-matching one (`example_weight`): a leader's question is closer in wording to
  another leader's question than to the guidance that answers it. Chosen on the
  development set (`tests/data/retrieval_eval_dev.jsonl`, hit@1 0.65 -> 0.85) and then
  measured once on the blind set (0.70 -> 0.77); the same questions folded into the
  front-matter field (`field_weight`) are kept as well, both together scored best.
- Lexicon expansions are scored apart and added to the raw BM25 score at a lower weight
  (`expansion_weight`), never as if the leader had typed them.
- The leadership type is a boost on documents tagged with it, never a filter: nine
  documents carry no type (followership profiles, dimension overviews) and must stay
  reachable for every leader. Followership types get a smaller boost scaled by the share
  of requested types a document covers.
- The dense e5 signal is off by default: it costs ~35 ms CPU per query (seven times the
  whole lexical path) and, with morphemes, the lexicon and the example questions in
  place, it did not pay on the blind set (see the table in README "Retrieval").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Scores = NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class RankConfig:
    """Weights of each signal; 0 switches a signal off."""

    chunk_weight: float = 1.0
    whole_weight: float = 0.5
    field_weight: float = 0.3
    expansion_weight: float = 0.5
    dense_weight: float = 0.0
    type_boost: float = 0.3
    followership_boost: float = 0.15
    example_weight: float = 1.0
    strip_type_names: bool = True
    use_lexicon: bool = True


class BM25Index:
    """BM25 (Lucene variant, k1 1.2, b 0.75) over pre-tokenised texts.

    bm25s computes the per-(token, text) BM25 weights at index time; a query is then a
    weighted sum of token rows, gathered from the CSR arrays and summed with one
    `np.bincount`, so the question's words and the lexicon's expansions are scored in
    one pass, each with its own weight (bm25s' scorer takes unweighted ids; a scipy row
    slice costs ~0.5 ms of set-up per call, more than the sum itself). The rows are
    gathered with one index array, not a slice and a concatenation per token."""

    def __init__(self, corpus_tokens: Sequence[Sequence[str]]) -> None:
        import bm25s

        self.size = len(corpus_tokens)
        self._vocab: dict[str, int] = {}
        self._data = np.zeros(0, dtype=np.float32)
        self._indices = np.zeros(0, dtype=np.int64)
        self._indptr = np.zeros(1, dtype=np.int64)
        if self.size and any(corpus_tokens):
            vocab: dict[str, int] = {}
            ids = [[vocab.setdefault(tok, len(vocab)) for tok in doc] for doc in corpus_tokens]
            bm25 = bm25s.BM25(k1=1.2, b=0.75)
            bm25.index(bm25s.tokenization.Tokenized(ids=ids, vocab=vocab), show_progress=False)
            weights = bm25.scores
            self._data = np.asarray(weights["data"], dtype=np.float32)
            self._indices = np.asarray(weights["indices"], dtype=np.int64)
            self._indptr = np.asarray(weights["indptr"], dtype=np.int64)
            # bm25s appends "" to the vocabulary it is given, without a row of its own.
            rows = len(self._indptr) - 1
            self._vocab = {token: row for token, row in vocab.items() if row < rows}

    @classmethod
    def stacked(cls, indexes: Sequence[BM25Index]) -> BM25Index:
        """One index whose texts are those of `indexes`, one after the other, each
        scored exactly as in its own index (its own IDF and average length): a search
        looks each token up once and sums every signal in one `bincount`."""
        out = cls([])
        offsets = np.cumsum([0, *(index.size for index in indexes)])
        vocab: dict[str, int] = {}
        rows, cols, data = [], [], []
        for index, offset in zip(indexes, offsets[:-1], strict=True):
            if not index._vocab:
                continue
            # An index's rows are its token ids, in the order its vocabulary was built.
            union = np.array([vocab.setdefault(t, len(vocab)) for t in index._vocab], np.int64)
            rows.append(np.repeat(union, np.diff(index._indptr)))
            cols.append(index._indices + offset)
            data.append(index._data)
        out.size = int(offsets[-1])
        if vocab:
            row = np.concatenate(rows)
            # Stable: within a token's row, the indexes' entries keep their order, so
            # every text's score is summed in the same order as in its own index.
            order = np.argsort(row, kind="stable")
            out._indices = np.concatenate(cols)[order]
            out._data = np.concatenate(data)[order]
            out._indptr = np.zeros(len(vocab) + 1, dtype=np.int64)
            np.cumsum(np.bincount(row, minlength=len(vocab)), out=out._indptr[1:])
            out._vocab = vocab
        return out

    def scores(self, *weighted: tuple[float, Sequence[str]]) -> Scores:
        """Sum over (weight, tokens) of weight x BM25(tokens), for every text; a token
        that repeats counts once per occurrence, as in bm25s. Zeros when nothing matches."""
        counts: dict[int, float] = {}
        for weight, tokens in weighted:
            for token in tokens:
                row = self._vocab.get(token)
                if row is not None:
                    counts[row] = counts.get(row, 0.0) + weight
        if not counts:
            return np.zeros(self.size, dtype=np.float32)
        rows = np.fromiter(counts, dtype=np.int64, count=len(counts))
        weights = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
        starts = self._indptr[rows]
        lengths = self._indptr[rows + 1] - starts
        # Every token's row of the CSR arrays at once: each row's entries are
        # starts[i] .. starts[i] + lengths[i], laid end to end.
        ends = np.cumsum(lengths)
        at = np.repeat(starts - ends + lengths, lengths) + np.arange(int(ends[-1]))
        vals = self._data[at] * np.repeat(weights, lengths)
        return np.bincount(self._indices[at], weights=vals, minlength=self.size).astype(
            np.float32
        )


def zscore(values: NDArray[np.floating]) -> Scores:
    """(values - mean) / std, in float32; zeros for a flat signal. One sum and one dot
    product: numpy's `std` and `mean` cost ~20 us of Python set-up per call, four calls
    a search, more than the arithmetic."""
    n = len(values)
    if not n:
        return np.zeros(0, dtype=np.float32)
    v = np.asarray(values, dtype=np.float32)
    centred = v - np.float32(np.add.reduce(v, dtype=np.float64) / n)
    std = math.sqrt(float(np.dot(centred, centred)) / n)
    if std < 1e-9:
        return np.zeros(n, dtype=np.float32)
    centred /= np.float32(std)
    return centred


@dataclass(frozen=True, slots=True)
class ChunkGroups:
    """Chunks grouped by document, computed once per index: `order` lists chunk rows
    document by document, `starts[g]` is where group g begins in it, `docs[g]` its
    document. Lets a search take each document's best chunk with one `reduceat` instead
    of sorting every chunk."""

    order: NDArray[np.int64]
    starts: NDArray[np.int64]
    docs: NDArray[np.int64]
    n_documents: int
    ends: NDArray[np.int64]
    group_of: NDArray[np.int64]  # document -> its group (-1: no chunk)

    @classmethod
    def of(cls, chunk_doc: NDArray[np.int64], n_documents: int) -> ChunkGroups:
        order = np.argsort(chunk_doc, kind="stable").astype(np.int64)
        grouped = chunk_doc[order]
        group_of = np.full(n_documents, -1, dtype=np.int64)
        if not len(order):
            empty = np.zeros(0, dtype=np.int64)
            return cls(order, empty, empty, n_documents, empty, group_of)
        starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]]).astype(np.int64)
        docs = grouped[starts]
        group_of[docs] = np.arange(len(docs))
        ends = np.r_[starts[1:], len(order)].astype(np.int64)
        return cls(order, starts, docs, n_documents, ends, group_of)


def best_of_groups(groups: ChunkGroups, values: NDArray[np.floating]) -> Scores:
    """Each document's best value over its rows (0 for a document with none)."""
    out = np.zeros(groups.n_documents, dtype=np.float32)
    if len(groups.order):
        out[groups.docs] = np.maximum.reduceat(
            np.asarray(values, dtype=np.float32)[groups.order], groups.starts
        )
    return out


@dataclass(frozen=True, slots=True)
class Ranking:
    """Documents best first (indices into the caller's document list), each with the row
    of its best chunk and its score; only the first `limit` documents are kept."""

    documents: NDArray[np.int64]
    best_chunk: NDArray[np.int64]
    scores: Scores


def fuse(
    *,
    groups: ChunkGroups,
    chunk_signals: Sequence[tuple[float, NDArray[np.floating]]],
    document_signals: Sequence[tuple[float, NDArray[np.floating]]] = (),
    document_boosts: Sequence[tuple[float, NDArray[np.floating]]] = (),
    allowed: NDArray[np.bool_] | None = None,
    limit: int = 10,
) -> Ranking:
    """Rank documents from weighted, z-scored chunk and document signals.

    A document's score is the best fused score of its chunks, plus its z-scored document
    signals, plus its boosts (added as is). Documents with no chunk, or outside
    `allowed`, are left out of the ranking."""
    fused = np.zeros(len(groups.order), dtype=np.float32)
    for weight, values in chunk_signals:
        if weight:
            fused += np.float32(weight) * zscore(np.asarray(values))
    doc_scores = np.full(groups.n_documents, -np.inf, dtype=np.float32)
    if len(groups.order):
        doc_scores[groups.docs] = np.maximum.reduceat(fused[groups.order], groups.starts)
    for weight, values in document_signals:
        if weight:
            doc_scores += np.float32(weight) * zscore(np.asarray(values))
    for weight, values in document_boosts:
        if weight:
            doc_scores += np.float32(weight) * np.asarray(values, dtype=np.float32)
    if allowed is not None:
        doc_scores[~allowed] = -np.inf
    n = min(limit, int(np.isfinite(doc_scores).sum()))
    if n <= 0:
        empty = np.zeros(0, dtype=np.int64)
        return Ranking(empty, empty, np.zeros(0, dtype=np.float32))
    top = np.argpartition(-doc_scores, n - 1)[:n]
    top = top[np.argsort(-doc_scores[top], kind="stable")].astype(np.int64)
    best = np.empty(n, dtype=np.int64)
    for i, doc in enumerate(top):
        g = groups.group_of[doc]
        rows = groups.order[groups.starts[g] : groups.ends[g]]
        best[i] = rows[int(fused[rows].argmax())]
    return Ranking(top, best, doc_scores[top])
