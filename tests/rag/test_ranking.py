"""The pure parts of retrieval: morphemes, the colloquial lexicon and the fusion step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from linkcoach_stream.rag import analyzer
from linkcoach_stream.rag.analyzer import (
    Lexicon,
    LexiconError,
    WordMemo,
    decode_word_analyses,
    encode_word_analyses,
    question_tokens,
    split_question,
    without_type_names,
)
from linkcoach_stream.rag.documents import Chunk
from linkcoach_stream.rag.mirror import Mirror, token_metadata
from linkcoach_stream.rag.ranking import BM25Index, ChunkGroups, best_of_groups, fuse, zscore

ROOT = Path(__file__).resolve().parents[2]


def test_morphemes_drop_particles_and_keep_stems_and_product_terms() -> None:
    got = analyzer.tokens("팀원들이 지쳐서 1:1 면담을 피해요. 70% 이상이 30-60-90 계획을 몰라요")
    assert "팀원" in got and "면담" in got and "계획" in got
    assert "1:1" in got and "70%" in got and "30-60-90" in got
    assert "이" not in got and "을" not in got, "particles are dropped"
    assert any(t.startswith("지치") for t in got), "verbs are reduced to their stem"


def test_empty_text_has_no_tokens() -> None:
    assert analyzer.tokens("   ") == []


def test_a_question_splits_into_special_forms_and_words_without_edge_punctuation() -> None:
    specials, words = split_question("(팀원) 1 : 1 면담이... 70%나 \"지쳐요\"?! ~~ ㅠㅠ")
    assert specials == ["1:1", "70%"]
    assert words == ["팀원", "면담이", "나", "지쳐요", "ㅠㅠ"]
    assert split_question("  ?! ") == ([], [])


def test_words_are_stored_with_their_morphemes_in_context_and_read_back() -> None:
    pairs = analyzer.word_analyses("팀원들이 지쳐서 면담을 피해요. 팀원들이 웃어요")
    assert ("팀원들이", ("팀원",)) in pairs
    assert any(word == "지쳐서" and forms[0].startswith("지치") for word, forms in pairs)
    assert sorted(decode_word_analyses(encode_word_analyses(pairs))) == sorted(pairs)
    assert analyzer.word_analyses("   ") == set()


def test_the_word_memo_takes_the_analysis_most_chunks_gave_a_word() -> None:
    memo = WordMemo.of(
        [
            [("보고", ("보고",)), ("팀원", ("팀원",))],
            [("보고", ("보",))],
            [("보고", ("보고",))],
            [("하나", ("하",))],
            [("하나", ("하나",))],
        ]
    )
    assert memo.get("보고") == ("보고",)
    assert memo.get("하나") == ("하",), "a tie goes to the smallest, in any chunk order"
    assert WordMemo.of([[("하나", ("하나",))], [("하나", ("하",))]]).get("하나") == ("하",)
    assert memo.get("없는말") is None and len(memo) == 3


def test_a_question_takes_the_memos_morphemes_and_kiwis_for_other_words() -> None:
    memo = WordMemo.of([[("면담을", ("면담",)), ("지쳐요", ("기운",))]])
    got = question_tokens("1:1 면담을 피해요 지쳐요", memo)
    assert got[:2] == ["1:1", "면담"]
    assert "기운" in got, "a known word takes the memo's morphemes"
    assert any(t.startswith("피하") for t in got), "an unknown word goes to kiwi"
    assert got == ["1:1", "면담", *analyzer.word_tokens("피해요"), "기운"]


def test_a_mirror_builds_its_word_memo_from_stored_words_or_from_the_text() -> None:
    chunk = Chunk(
        id="a.md#1",
        path="a.md",
        title="회의 가이드",
        category="coaching_guides",
        section="회의",
        text="주간회의가 길어지면 팀원들이 지쳐요.",
        leadership_types=(),
        followership_types=(),
        tags=("회의",),
        ordinal=0,
        example_questions=("회의가 너무 길어요",),
    )
    meta = {**chunk.metadata(), **token_metadata(chunk)}
    stored = Mirror.build([chunk.id], [chunk.text], [meta], np.zeros((1, 2), dtype=np.float32))
    assert stored.words.get("주간회의가") is not None
    assert stored.words.get("가이드") == ("가이드",), "the front matter's words too"
    older = {k: v for k, v in meta.items() if k != "words"}
    rebuilt = Mirror.build([chunk.id], [chunk.text], [older], np.zeros((1, 2), dtype=np.float32))
    assert rebuilt.words.forms == stored.words.forms, "analysed now when ingest wrote none"


def test_lexicon_matches_colloquial_words_regardless_of_spacing() -> None:
    lexicon = Lexicon.load(ROOT / "knowledge_base" / "lexicon.yaml")
    assert "회식" in lexicon.expand("어제 술 자리에서 팀원이 울었어요")
    assert "번아웃" in lexicon.expand("완전 방전됐어요")
    assert "상사" in lexicon.expand("윗분들이 자꾸 숫자만 봐요")
    assert lexicon.expand("오늘 날씨가 좋네요") == []
    tokens = lexicon.expansion_tokens("진급에서 빠졌대요")
    assert "승진" in tokens and "추천" in tokens, "expansions are analysed like passages"


def test_a_malformed_lexicon_is_an_error_naming_the_group(tmp_path: Path) -> None:
    bad = tmp_path / "lexicon.yaml"
    bad.write_text("groups:\n  - terms: [a]\n    expand: [b]\n  - expand: [c]\n", encoding="utf-8")
    with pytest.raises(LexiconError, match="group 2"):
        Lexicon.load(bad)
    assert Lexicon.load(tmp_path / "absent.yaml").expand("아무 말") == []


def test_type_names_are_removed_from_a_question() -> None:
    assert "참여실무형" not in without_type_names("참여실무형인데 회의가 길어요")
    assert "HLL" not in without_type_names("저 HLL 나왔어요")
    assert "회의" in without_type_names("참여실무형인데 회의가 길어요")


def test_bm25_scores_texts_that_share_query_words_higher() -> None:
    index = BM25Index([["회의", "안건"], ["피드백", "칭찬"], ["회의", "회의", "시간"]])
    scores = index.scores((1.0, ["회의"]))
    assert scores[1] == 0 and scores[0] > 0 and scores[2] > 0
    assert not index.scores((1.0, ["없는말"])).any()
    assert BM25Index([]).scores((1.0, ["회의"])).shape == (0,)


def test_bm25_matches_bm25s_and_weights_each_token_list() -> None:
    import bm25s

    corpus = [["회의", "안건", "시간"], ["피드백", "칭찬", "회의"], ["칭찬", "칭찬", "동기"]]
    index = BM25Index(corpus)
    reference = bm25s.BM25(k1=1.2, b=0.75)
    reference.index(corpus, show_progress=False)
    expected = reference.get_scores(["회의", "칭찬"])
    assert np.allclose(index.scores((1.0, ["회의", "칭찬"])), expected, atol=1e-5)
    half = index.scores((1.0, ["회의"]), (0.5, ["칭찬"]))
    want = reference.get_scores(["회의"]) + 0.5 * reference.get_scores(["칭찬"])
    assert np.allclose(half, want, atol=1e-5)


def test_stacked_indexes_score_every_text_exactly_as_its_own_index() -> None:
    corpora = [
        [["회의", "안건", "시간"], ["피드백", "칭찬", "회의"], ["칭찬", "칭찬", "동기"]],
        [],  # an index with no text
        [["회의", "회의"], []],  # one text without tokens
        [["동기", "부여", "회의"], ["안건"], ["위임", "피드백"], ["칭찬"]],
    ]
    indexes = [BM25Index(corpus) for corpus in corpora]
    stacked = BM25Index.stacked(indexes)
    assert stacked.size == sum(len(c) for c in corpora)
    queries = [
        ((1.0, ["회의", "칭찬", "회의"]), (0.5, ["동기", "없는말"])),
        ((1.0, ["위임"]),),
        ((1.0, ["없는말"]), (0.5, [""])),
    ]
    for weighted in queries:
        scores = stacked.scores(*weighted)
        at = 0
        for index in indexes:
            own = index.scores(*weighted)
            # Bit for bit: the same products summed in the same order.
            assert np.array_equal(scores[at : at + index.size], own)
            at += index.size
    assert BM25Index.stacked([]).scores((1.0, ["회의"])).shape == (0,)


def test_zscore_of_a_flat_signal_is_zero() -> None:
    assert not zscore(np.ones(5)).any()
    z = zscore(np.array([1.0, 2.0, 3.0]))
    assert abs(float(z.mean())) < 1e-6 and z[2] > z[0]
    values = np.random.default_rng(3).gamma(0.5, 2.0, size=820).astype(np.float32)
    textbook = (values.astype(np.float64) - values.mean()) / values.std()
    assert zscore(values).dtype == np.float32
    assert np.allclose(zscore(values), textbook, atol=1e-5)
    assert len(zscore(np.zeros(0))) == 0


def _groups() -> ChunkGroups:
    # Five chunks of three documents, deliberately not grouped by document.
    return ChunkGroups.of(np.array([0, 1, 0, 2, 1]), 3)


def test_fusion_ranks_documents_by_their_best_chunk() -> None:
    chunk = np.array([0.1, 0.2, 0.9, 0.0, 0.3])
    ranking = fuse(groups=_groups(), chunk_signals=[(1.0, chunk)])
    assert ranking.documents.tolist() == [0, 1, 2]
    assert ranking.best_chunk.tolist() == [2, 4, 3]
    assert list(ranking.scores) == sorted(ranking.scores, reverse=True)


def test_document_signals_and_boosts_can_reorder_documents() -> None:
    chunk = np.array([0.1, 0.2, 0.9, 0.0, 0.3])
    field = np.array([0.0, 5.0, 0.0])
    ranking = fuse(groups=_groups(), chunk_signals=[(1.0, chunk)], document_signals=[(2.0, field)])
    assert ranking.documents[0] == 1
    boosted = fuse(
        groups=_groups(),
        chunk_signals=[(1.0, chunk)],
        document_boosts=[(10.0, np.array([0.0, 0.0, 1.0]))],
    )
    assert boosted.documents[0] == 2
    assert boosted.best_chunk[0] == 3


def test_fusion_respects_the_allowed_documents_and_the_limit() -> None:
    chunk = np.array([0.1, 0.2, 0.9, 0.0, 0.3])
    allowed = np.array([False, True, True])
    ranking = fuse(groups=_groups(), chunk_signals=[(1.0, chunk)], allowed=allowed, limit=1)
    assert ranking.documents.tolist() == [1]
    nothing = fuse(groups=_groups(), chunk_signals=[(1.0, chunk)], allowed=np.zeros(3, dtype=bool))
    assert len(nothing.documents) == 0


def test_a_weight_of_zero_switches_a_signal_off() -> None:
    chunk = np.array([0.1, 0.2, 0.9, 0.0, 0.3])
    loud = np.array([0.0, 0.0, 0.0, 100.0, 0.0])
    ranking = fuse(groups=_groups(), chunk_signals=[(1.0, chunk), (0.0, loud)])
    assert ranking.documents[0] == 0


def test_each_document_takes_its_best_example_question() -> None:
    # rows 0-2 belong to documents 2, 0, 2; document 1 has no example question.
    groups = ChunkGroups.of(np.array([2, 0, 2], dtype=np.int64), 3)
    best = best_of_groups(groups, np.array([0.5, 3.0, 2.0], dtype=np.float32))
    assert best.tolist() == [3.0, 0.0, 2.0]
    assert best_of_groups(ChunkGroups.of(np.zeros(0, dtype=np.int64), 2), np.zeros(0)).tolist() == [
        0.0,
        0.0,
    ]
