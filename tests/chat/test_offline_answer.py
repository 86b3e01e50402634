"""The offline coach's answer, composed from passages the real retriever finds in the real
knowledge base (lexical ranking, as the server runs it by default), for real questions."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from linkcoach_stream.config import Settings
from linkcoach_stream.llm.base import ChatPrompt, PassageLike, StreamResult
from linkcoach_stream.llm.offline import (
    OFFLINE_LABEL,
    OfflineProvider,
    clean_markup,
    compose_answer,
    pick_steps,
    split_chunks,
    split_sentences,
)
from linkcoach_stream.rag import analyzer
from linkcoach_stream.rag.ranking import RankConfig
from linkcoach_stream.rag.retriever import Passage, Retriever, open_retriever

ROOT = Path(__file__).resolve().parents[2]

QUESTIONS: tuple[tuple[str, str | None], ...] = (
    ("팀원과 1:1을 처음 시작하려는데 뭘 물어봐야 할까요?", None),
    ("1:1 미팅에서 팀원이 이직 고민을 털어놓으면 어떻게 반응해야 하나요?", "HLH"),
    ("팀원이 번아웃이 온 것 같은데 어떻게 도와줘야 할까요?", None),
    ("일 잘하는 팀원이 요즘 많이 지쳐 보여요.", "HLL"),
    ("5년 차 팀원에게 피드백을 어떻게 줘야 할지 모르겠어요.", None),
    ("팀원이 피드백을 받으면 방어적으로 변해요.", "LHH"),
    ("마감이 자꾸 늦어지는 팀원에게 어떻게 말해야 할까요?", None),
    ("회의에서 아무도 말을 안 해요. 어떻게 하죠?", "HHL"),
    ("주간 회의가 너무 길고 보고만 하다 끝나요.", None),
    ("일을 맡기지 못하고 제가 다 처리하게 돼요. 위임은 어떻게 하나요?", "LLL"),
    ("신규 입사자가 다음 주에 오는데 온보딩을 어떻게 준비할까요?", None),
    ("신입사원 30-60-90 계획은 어떻게 세우나요?", "HHH"),
    ("연말 평가 면담에서 낮은 등급을 어떻게 전달하죠?", None),
    ("팀원 두 명이 서로 갈등이 심해서 분위기가 나빠요.", "LHL"),
    ("원격근무를 하니까 팀 소통이 줄었어요.", None),
    ("재택하는 팀원과 출근하는 팀원 사이에 불공정하다는 말이 나와요.", "HLH"),
    ("처음 팀장이 됐는데 무엇부터 해야 할까요?", None),
    ("팀원들이 저를 어려워하고 말을 잘 안 걸어요.", "LLH"),
    ("칭찬을 어떻게 해야 진심으로 들릴까요?", None),
    ("의욕이 떨어진 팀원을 다시 움직이게 하고 싶어요.", "HHL"),
    ("팀 목표를 팀원들과 어떻게 공유해야 할까요?", None),
    ("성과가 계속 부진한 팀원과 어려운 대화를 해야 해요.", "HLL"),
    ("심리적 안전감이 낮은 팀을 어떻게 바꿀 수 있나요?", None),
    ("상사에게 나쁜 소식을 언제 어떻게 보고해야 하나요?", "LHH"),
)

STEP = re.compile(r"^(\d+)\. (.+) \[(\d+)\]$")
SOURCE = re.compile(r"\[(\d+)\] (.+?)(?: — (.+))?")


@dataclass(frozen=True)
class Case:
    question: str
    code: str | None
    passages: list[Passage]
    answer: str

    @property
    def lines(self) -> list[str]:
        return self.answer.splitlines()

    @property
    def steps(self) -> list[tuple[int, str, int]]:
        found = [STEP.match(line) for line in self.lines]
        return [(int(m[1]), m[2], int(m[3])) for m in found if m]

    @property
    def sources(self) -> list[tuple[int, str, str | None]]:
        last = self.lines[-1]
        assert last.startswith("참고: "), last
        items = re.split(r", (?=\[\d+\] )", last.removeprefix("참고: "))
        found = [SOURCE.fullmatch(item) for item in items]
        assert all(found), last
        return [(int(m[1]), m[2], m[3]) for m in found if m]


@pytest.fixture(scope="module")
async def kb_retriever(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Retriever]:
    settings = Settings(
        app_env="test",
        data_dir=tmp_path_factory.mktemp("offline-rag"),
        knowledge_base_dir=ROOT / "knowledge_base",
        chroma_collection="offline_answer",
        rag_embedder="hash",
    )
    r = await open_retriever(settings, config=RankConfig())
    try:
        yield r
    finally:
        await r.close()


@pytest.fixture(scope="module")
async def cases(kb_retriever: Retriever) -> list[Case]:
    out = []
    for question, code in QUESTIONS:
        passages = await kb_retriever.search(question, leadership_type=code, k=4)
        out.append(Case(question, code, passages, compose_answer(question, passages, code)))
    return out


def cleaned(passage: PassageLike) -> str:
    return "\n".join(clean_markup(line) for line in passage.text.splitlines())


def test_every_question_finds_passages(cases: list[Case]) -> None:
    assert all(len(c.passages) >= 2 for c in cases)


def test_the_first_line_restates_the_situation_without_echoing_the_question(
    cases: list[Case],
) -> None:
    for c in cases:
        first = c.lines[0]
        assert first.startswith(OFFLINE_LABEL)
        assert first.endswith(("상황이군요.", "살펴볼게요.")), first
        assert c.question not in c.answer
        assert c.question.rstrip("?.") not in first
        assert c.lines[1] == "", "the restatement is one line"


def test_answers_have_two_to_three_steps_from_the_sources(cases: list[Case]) -> None:
    for c in cases:
        steps = c.steps
        assert 2 <= len(steps) <= 3, c.answer
        assert [n for n, _, _ in steps] == list(range(1, len(steps) + 1))
        by_number = {n: title for n, title, _ in c.sources}
        for _, text, n in steps:
            assert n in by_number, f"[{n}] has no source in {c.answer}"
            source = next(p for p in c.passages if p.title == by_number[n])
            assert text in cleaned(source), f"{text!r} is not in {source.path}"


def test_sources_are_listed_once_in_rank_order_and_every_marker_resolves(
    cases: list[Case],
) -> None:
    for c in cases:
        sources = c.sources
        titles = [t for _, t, _ in sources]
        assert [n for n, _, _ in sources] == list(range(1, len(sources) + 1))
        assert len(titles) == len(set(titles))
        ranked = list(dict.fromkeys(p.title for p in c.passages))
        assert titles == [t for t in ranked if t in titles], "listed in rank order"
        for _, title, section in sources:
            p = next(p for p in c.passages if p.title == title)
            assert section == (None if p.section in ("", p.title) else p.section)
        markers = {int(n) for n in re.findall(r"\[(\d+)\]", c.answer)}
        assert markers <= {n for n, _, _ in sources}, "each marker is a listed source"
        script = re.search(r"이렇게 말해 보세요: “(.+)”", c.answer)
        for n, title, _ in sources:
            p = next(p for p in c.passages if p.title == title)
            used = n in markers or (script is not None and script.group(1) in p.text)
            assert used, f"[{n}] {title} is listed but nothing was taken from it"
        assert c.answer.count("참고: ") == 1 and c.lines[-1].startswith("참고: ")


def test_no_sentence_or_heading_is_repeated(cases: list[Case]) -> None:
    for c in cases:
        body = [line for line in c.lines[:-1] if line.strip()]
        assert len(body) == len(set(body)), c.answer
        sentences = [
            s
            for line in body
            for s in split_sentences(STEP.sub(r"\2", line).removeprefix("이렇게 말해 보세요: "))
        ]
        assert len(sentences) == len(set(sentences)), c.answer
        headings = {p.title for p in c.passages} | {p.section for p in c.passages}
        assert not any(line.strip() in headings for line in body), c.answer


def test_markup_and_numbers_survive_and_nothing_is_broken(cases: list[Case]) -> None:
    kept = 0
    for c in cases:
        assert "**" not in c.answer
        assert ":1로" not in c.answer.replace("1:1로", "")
        assert " :1" not in c.answer
        assert not any(line.startswith(("#", "- ", "* ", "> ")) for line in c.lines)
        for _, text, _ in c.steps:
            assert "- " not in text[:2] and " - " not in text[:3]
            assert not re.match(r"\d+\.\s", text)
            if "1:1" in text:
                kept += 1
    assert kept, "some step carries 1:1 intact"


def test_most_answers_share_words_with_the_question(cases: list[Case]) -> None:
    relevant = 0
    for c in cases:
        question = set(analyzer.tokens(c.question)) - {"하", "있", "되", "팀원", "어떻"}
        if any(question & set(analyzer.tokens(text)) for _, text, _ in c.steps):
            relevant += 1
    assert relevant >= 0.8 * len(cases), f"{relevant}/{len(cases)}"
    steps = [
        bool(set(analyzer.tokens(c.question)) & set(analyzer.tokens(text)))
        for c in cases
        for _, text, _ in c.steps
    ]
    assert sum(steps) >= 0.8 * len(steps), f"{sum(steps)}/{len(steps)} steps"


@dataclass(frozen=True)
class Doc:
    path: str
    title: str
    section: str
    text: str
    category: str = "coaching_guides"


def test_steps_are_chosen_by_relevance_not_position() -> None:
    first = Doc(
        "a.md",
        "회의 운영",
        "준비",
        "회의 운영\n준비\n\n회의실은 미리 예약하세요. 간식을 준비해 두세요. "
        "발표 자료는 하루 전에 공유하세요.\n\n"
        "- 침묵하는 팀원에게는 회의 전에 질문을 미리 보내 생각할 시간을 주세요.\n",
    )
    second = Doc(
        "b.md",
        "침묵 깨기",
        "익명 의견",
        "침묵 깨기\n익명 의견\n\n침묵이 길어지면 익명 의견 도구로 팀원의 생각을 먼저 받으세요.",
    )
    steps = pick_steps("회의에서 팀원들이 침묵해요", [first, second])
    assert [n for _, n in steps[:2]] == [1, 2]
    assert steps[0][0].startswith("침묵하는 팀원에게는")  # the last line of its passage
    assert steps[1][0].startswith("침묵이 길어지면")
    assert all("예약" not in text and "간식" not in text for text, _ in steps)


def test_a_line_to_say_is_offered_from_a_passage_quote(cases: list[Case]) -> None:
    scripted = [c for c in cases if "이렇게 말해 보세요: “" in c.answer]
    assert len(scripted) >= len(cases) // 4, f"only {len(scripted)} answers offer a line"
    for c in scripted:
        line = next(x for x in c.lines if x.startswith("이렇게 말해 보세요: “"))
        quote = line.removeprefix("이렇게 말해 보세요: “").removesuffix("”")
        assert any(quote in cleaned(p) for p in c.passages), quote


def test_a_known_type_gets_one_note_for_its_low_dimension(cases: list[Case]) -> None:
    for c in cases:
        notes = [line for line in c.lines if "차원이" in line and "편이니" in line]
        if c.code is None:
            assert not notes
        elif "L" in c.code:
            low = ("공유", "상호작용", "성장")[c.code.index("L")]
            assert notes == [next(n for n in notes if n.startswith(low))]
        else:
            assert len(notes) == 1 and notes[0].startswith("세 차원이 모두 높은")


def test_a_question_without_passages_asks_for_more_context() -> None:
    answer = compose_answer("팀원이 요즘 좀 이상해요", [], None)
    assert answer.startswith(OFFLINE_LABEL)
    assert "조금 더 알려 주시면" in answer
    assert "참고:" not in answer and "[1]" not in answer


def test_markup_in_the_question_is_not_repeated() -> None:
    answer = compose_answer("<script>x=1</script> 어떻게 하죠?", [], None)
    assert "<" not in answer and "script" not in answer


async def test_the_stream_is_cut_at_word_boundaries(cases: list[Case]) -> None:
    provider = OfflineProvider(chunk_chars=12, chunk_delay_s=0)
    for c in cases[:6]:
        prompt = ChatPrompt(
            system="", history=(), question=c.question, passages=c.passages, leadership_code=c.code
        )
        chunks = [chunk async for chunk in provider.stream(prompt, StreamResult())]
        assert "".join(chunks) == c.answer
        assert len(chunks) > 10
        for chunk in chunks[:-1]:
            assert chunk[-1].isspace() or chunk[-1] in '.,:;!?)]”"', repr(chunk)
            assert len(chunk) <= 24, repr(chunk)
        sizes = sorted(len(chunk) for chunk in chunks[:-1])
        assert sizes[len(sizes) // 2] >= 8, sizes


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("1:1로 시작하세요.", "1:1로 시작하세요."),
        ("30-60-90 계획", "30-60-90 계획"),
        ("70%", "70%"),
        ("- **굵게** 항목", "굵게 항목"),
        ("1. 첫 단계", "첫 단계"),
        ("## 5년 차 팀원", "5년 차 팀원"),
        ("> 2~3회 반복", "2~3회 반복"),
        ("* 1:1 미팅", "1:1 미팅"),
        ("10. 열 번째", "열 번째"),
    ],
)
def test_clean_markup_removes_only_markdown(line: str, expected: str) -> None:
    assert clean_markup(line) == expected


def test_sentences_are_not_cut_inside_quotes() -> None:
    line = (
        '팀원들은 "무슨 문제 있나?" 하고 긴장합니다. 목적을 말하세요. '
        '"평가 자리가 아니에요. 편하게 말해요." 첫 회에는 질문을 권합니다.'
    )
    assert split_sentences(line) == [
        '팀원들은 "무슨 문제 있나?" 하고 긴장합니다.',
        "목적을 말하세요.",
        '"평가 자리가 아니에요. 편하게 말해요."',
        "첫 회에는 질문을 권합니다.",
    ]


@pytest.mark.parametrize("size", [6, 12, 20])
def test_split_chunks_rejoins_and_ends_at_spaces(size: int) -> None:
    text = "1:1 미팅을 처음 도입하면 팀원들은 긴장합니다.\n\n참고: [1] 제목 — 섹션 " * 3
    chunks = split_chunks(text, size)
    assert "".join(chunks) == text
    assert all(c[-1].isspace() for c in chunks[:-1])
    assert all(len(c) <= 2 * size for c in chunks)


def test_a_word_longer_than_two_chunks_is_cut_at_its_punctuation() -> None:
    word = "가나다라,마바사아,자차카타,파하가나,다라마바"
    chunks = split_chunks(word + " 끝", 6)
    assert "".join(chunks) == word + " 끝"
    assert all(len(c) <= 12 for c in chunks)
    assert chunks[0].endswith(",")


def test_the_ask_command_prints_the_offline_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from linkcoach_stream.cli import main

    monkeypatch.setenv("LINKCOACH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RAG_EMBEDDER", "hash")
    monkeypatch.chdir(ROOT)
    assert main(["ask", "--leadership-type", "HLH", "회의에서 아무도 말을 안 해요."]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(OFFLINE_LABEL + "참여비전형 리더님, ")
    assert "\n1. " in out and out.splitlines()[-1].startswith("참고: [1] ")
    assert main(["ask", "--leadership-type", "XYZ", "질문"]) == 2
