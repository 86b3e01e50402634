"""The offline provider: no key, no network. It composes a grounded Korean answer from
the retrieved passages and the leader's type profile and streams it in small chunks, so
the whole product works (and is testable) without Gemini. Every answer says it is offline.

Decisions worth keeping (text handling itself is in `offline_text`):

- The answer is picked, not written: one line restating the leader's situation (the
  question's noun phrases, found by the project's analyzer), two or three steps, an
  optional line to say, a note for the leader's type and the sources once. Every step
  and script is copied verbatim from a retrieved passage, so nothing offline says is
  ungrounded; the composer only chooses and orders.
- Steps are ranked by relevance, not by where they sit in a passage: the analyzer's
  content morphemes shared with the question, each weighted by its rarity among this
  answer's candidate sentences (an IDF), tripled for a sentence that tells the leader
  what to do ("…하세요"), halved for case-study narrative and quartered for a sentence
  that opens by pointing back ("그래서", "이런 …"), which means little without the one
  before it; a step from the passage ranked n-th (from 0) counts 1 / (1 + n/2), since
  passages further down are less likely to be about the question at all. The passage's rank only
  breaks ties. A sentence sharing nothing with the question is used only when fewer
  than two relevant ones exist, and then only from the best-ranked passage.
- A step is one sentence of one line: bullet items are never joined, the sentence that
  introduces a list is dropped (it means nothing alone), and headings (the chunk's title
  and section lines, `#` lines) are never candidates, so no heading is repeated. Plain
  "…한다." sentences and "…인가?" checklist questions are not steps: in the documents
  they list symptoms and mistakes, not advice.
- A script is a quotation the passage offers as something to say (a cue such as
  "예시", "물어보세요" and no "피하세요"/"함정" around it); many quotations in the
  documents are the mistakes to avoid, and saying those back would be the worst answer.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..domain.taxonomy import BY_CODE, DIMENSIONS
from ..rag import analyzer
from .base import ChatPrompt, LLMError, PassageLike, StreamResult, Usage
from .offline_text import (
    STOP_WORDS,
    clean_markup,
    has_final_consonant,
    situation_phrases,
    split_chunks,
    split_sentences,
)
from .prompts import estimate_tokens

__all__ = [
    "OFFLINE_LABEL",
    "OfflineProvider",
    "clean_markup",
    "compose_answer",
    "pick_script",
    "pick_steps",
    "split_chunks",
    "split_sentences",
]

OFFLINE_LABEL = "[오프라인 코치] "
MAX_STEPS = 3
MAX_SOURCES = 4

_QUOTE = re.compile(r"\"([^\"\n]{8,160})\"|“([^”\n]{8,160})”")
_ACTION = re.compile(r"(?:세요|십시오|봅시다|합시다)[.!]?$")
# Steps are advice in the documents' polite register; plain "…한다." lines are lists of
# symptoms or mistakes, and "…인가?" lines are checklist questions.
_ENDING = re.compile(r"(?:니다|요|시오)[.!]?[\"”'’)]?$")
_LIST_ITEM = re.compile(r"^\s*(?:[-*]|\d+\.)\s")
_SPEECH_END = re.compile(r"(?:[요다까죠네게]|[.!?])$")
# Sentences about the document itself, not about the leader's situation.
# A sentence that opens by pointing back ("그래서 …", "이런 팀은 …") needs the one before it.
_DEPENDENT = re.compile(
    r"^(?:그래서|그러나|하지만|그런데|그러면|그러니|따라서|또한|또|즉|반면|이때|그때|"
    r"이렇게|그렇게|이런|그런|이러한|그러한|이것|그것|이 |그 )"
)
_META = re.compile(r"이 (?:가이드|문서|글)|가이드|참고하세요|함께 보기|다룹니다")
# A quotation in a sentence with these is a mistake to avoid, not a line to say.
_AVOID = re.compile(
    r"피하|마세요|말고|함정|금물|다그치|반박|탓하|실수|죽습니다|무너|불안을|않도록|기습|"
    r"되지 않|방어적으로 만|질책|놓친|오히려|나빠|망치"
)
_OFFERED = re.compile(
    r"예시|예를 들|말해 보세요|물어보세요|물어 보세요|말하세요|말해 주세요|전하세요|이렇게|"
    r"라고 말|로 말하기|처럼 말|권합니다|물으세요|시작하세요|말합니다|묻습니다"
)

_LOW_TIPS = {
    "공유": (
        "공유 차원이 낮은 편이니, 결정 배경과 팀 목표를 먼저 말로 꺼내 "
        "공유하는 습관부터 잡아 보세요."
    ),
    "상호작용": (
        "상호작용 차원이 낮은 편이니, 짧더라도 정기적인 1:1 대화로 "
        "팀원의 이야기를 먼저 들어 보세요."
    ),
    "성장": (
        "성장 차원이 낮은 편이니, 팀원 한 명씩 다음 분기에 키우고 싶은 역량을 함께 정해 보세요."
    ),
}
_ALL_HIGH_TIP = (
    "세 차원이 모두 높은 편이니, 지금의 방식을 팀의 루틴으로 만들어 리더 "
    "한 사람에게 기대지 않게 하는 것이 다음 단계입니다."
)
_NO_PASSAGES = (
    "이 질문과 직접 맞닿는 자료를 찾지 못했습니다. 상황(팀 규모, 관련된 팀원, 이미 "
    "시도한 것)을 조금 더 알려 주시면 더 구체적으로 도와드리겠습니다."
)


@dataclass(frozen=True, slots=True)
class _Candidate:
    text: str
    tokens: frozenset[str]
    source: int  # 1-based number in the sources line
    rank: int  # the passage's position in the retrieval order
    position: int
    story: bool  # from a case study: narrative unless it gives advice


def _content_tokens(text: str) -> frozenset[str]:
    return frozenset(t for t in analyzer.tokens(text) if t not in STOP_WORDS)


def _passage_lines(passage: PassageLike) -> list[tuple[str, bool]]:
    """The body lines of a chunk, cleaned, each with whether it introduces the list that
    follows it: its last sentence then means nothing alone, unless it is advice itself.
    The title and section lines a chunk starts with, headings and rules are left out."""
    headings = {passage.title.strip(), passage.section.strip()}
    raws = [r for r in passage.text.splitlines() if r.strip()]
    out: list[tuple[str, bool]] = []
    for i, raw in enumerate(raws):
        if raw.lstrip().startswith("#") or raw.strip().startswith("---"):
            continue
        line = clean_markup(raw)
        leads = not _LIST_ITEM.match(raw) and bool(raws[i + 1 :] and _LIST_ITEM.match(raws[i + 1]))
        if line and line not in headings:
            out.append((line, leads))
    return out


def _is_script_only(sentence: str) -> bool:
    """Mostly a quotation (a dialogue example), or one carrying a whole line to say: a
    script, not a step (scripts get their own line)."""
    rest = _QUOTE.sub("", sentence)
    long_quote = any(len(m.group(0)) > 60 for m in _QUOTE.finditer(sentence))
    return long_quote or len(rest.strip(" :,.")) < 12 or rest.rstrip().endswith(":")


def _source_numbers(passages: Sequence[PassageLike]) -> dict[str, int]:
    numbers: dict[str, int] = {}
    for p in passages:
        if p.path not in numbers and len(numbers) < MAX_SOURCES:
            numbers[p.path] = len(numbers) + 1
    return numbers


def _candidates(passages: Sequence[PassageLike], numbers: dict[str, int]) -> list[_Candidate]:
    out: list[_Candidate] = []
    seen: set[str] = set()
    for rank, p in enumerate(passages):
        if p.path not in numbers:
            continue
        for line, leads in _passage_lines(p):
            sentences = split_sentences(line)
            if leads and not _ACTION.search(sentences[-1]):
                sentences = sentences[:-1]  # "다음과 같은 실수가 나타납니다.", before a list
            for sentence in sentences:
                if (
                    sentence in seen
                    or not 12 <= len(sentence) <= 220
                    or not _ENDING.search(sentence)
                    or _is_script_only(sentence)
                    or _META.search(sentence)
                ):
                    continue
                seen.add(sentence)
                out.append(
                    _Candidate(
                        sentence,
                        _content_tokens(sentence),
                        numbers[p.path],
                        rank,
                        len(out),
                        p.category == "case_studies",
                    )
                )
    return out


def _idf(candidates: Sequence[_Candidate]) -> dict[str, float]:
    df: dict[str, int] = {}
    for c in candidates:
        for t in c.tokens:
            df[t] = df.get(t, 0) + 1
    n = len(candidates)
    return {t: math.log(1 + n / d) for t, d in df.items()}


def _relevance(question: frozenset[str], tokens: frozenset[str], idf: dict[str, float]) -> float:
    return sum(idf.get(t, 0.0) for t in question & tokens)


def _near_top(passages: Sequence[PassageLike], share: float = 0.6) -> set[int]:
    """Ranks of the passages scored within `share` of the best one. Retrieval scores fall
    off a cliff after the documents that are really about the question (18.9, then 8.7
    for "신입사원 30-60-90 계획"); steps come from before the cliff while two can."""
    scores = [getattr(p, "score", None) for p in passages]
    if not scores or not all(isinstance(s, int | float) for s in scores):
        return set(range(len(passages)))
    top = max(float(s) for s in scores if s is not None)
    if top <= 0:
        return set(range(len(passages)))
    return {i for i, s in enumerate(scores) if s is not None and float(s) >= share * top}


def pick_steps(
    question: str, passages: Sequence[PassageLike], *, limit: int = MAX_STEPS
) -> list[tuple[str, int]]:
    """The `limit` sentences of `passages` most relevant to `question`, as (sentence,
    source number), best first; at most two from one document while others qualify."""
    numbers = _source_numbers(passages)
    candidates = _candidates(passages, numbers)
    q = _content_tokens(question)
    idf = _idf(candidates)

    def score(c: _Candidate) -> float:
        relevance = _relevance(q, c.tokens, idf)
        if _DEPENDENT.match(c.text):
            relevance *= 0.25
        # A passage further down the ranking is less likely to be about this question.
        relevance /= 1.0 + 0.5 * c.rank
        if _ACTION.search(c.text):
            return relevance * 3.0
        return relevance * (0.5 if c.story else 1.0)

    ranked = sorted(candidates, key=lambda c: (-score(c), c.rank, c.position))
    relevant = [c for c in ranked if score(c) > 0]
    # Too little overlap: the best-ranked passage's own advice, actionable first.
    fallback = sorted(
        (c for c in candidates if c.rank == 0 and c not in relevant),
        key=lambda c: (not _ACTION.search(c.text), c.position),
    )
    chosen: list[_Candidate] = []

    def take(pool: Sequence[_Candidate], *, per_source: int, until: int) -> None:
        for c in pool:
            if len(chosen) >= until:
                return
            if c in chosen or sum(x.source == c.source for x in chosen) >= per_source:
                continue
            if any(len(c.tokens & x.tokens) > 0.7 * max(len(c.tokens), 1) for x in chosen):
                continue  # says what a chosen step already says
            chosen.append(c)

    near = _near_top(passages)
    close = [c for c in relevant if c.rank in near]
    take(close, per_source=2, until=limit)  # spread over documents first
    take(close, per_source=limit, until=limit)
    take(relevant, per_source=limit, until=2)
    take(fallback, per_source=limit, until=2)
    return [(c.text, c.source) for c in chosen]


def pick_script(question: str, passages: Sequence[PassageLike], used: Sequence[str]) -> str | None:
    """A quoted line from the passages to say as is: one its sentence (or the sentence
    before it) offers as something to say, not a mistake to avoid; sharing words with
    the question there or in the passage's section; not already inside a step. Most
    shared words first, then the passage's rank."""
    q = _content_tokens(question)
    best: tuple[int, int, str] | None = None
    for rank, p in enumerate(passages[:MAX_SOURCES]):
        section = _content_tokens(p.section)
        for line, _ in _passage_lines(p):
            sentences = split_sentences(line)
            for i, sentence in enumerate(sentences):
                said = _QUOTE.sub("", sentence)
                if _is_script_only(sentence) and i:
                    said = sentences[i - 1] + " " + said  # the cue is the sentence before
                if _AVOID.search(said) or not _OFFERED.search(said):
                    continue
                overlap = len(q & (_content_tokens(sentence) | section))
                for m in _QUOTE.finditer(sentence):
                    quote = (m.group(1) or m.group(2)).strip()
                    if not _SPEECH_END.search(quote) or len(quote.split()) < 3:
                        continue
                    if any(quote in step for step in used):
                        continue
                    if overlap and (best is None or (overlap, -rank) > (best[0], -best[1])):
                        best = (overlap, rank, quote)
    return best[2] if best else None


def situation_line(question: str, leader_name: str | None) -> str:
    """One line saying back what the leader is dealing with, in their own nouns."""
    who = f"{leader_name} 리더님, " if leader_name else ""
    phrases = situation_phrases(question)
    if not phrases:
        return f"{who}지금 겪고 계신 상황을 지식베이스 자료로 함께 살펴볼게요."
    topic = "·".join(phrases)
    particle = "과" if has_final_consonant(topic) else "와"
    return f"{who}{topic}{particle} 관련해 고민하고 계신 상황이군요."


def _type_note(code: str | None) -> str | None:
    leader = BY_CODE.get(code or "")
    if leader is None:
        return None
    lows = [d for d, flag in zip(DIMENSIONS, leader.code, strict=True) if flag == "L"]
    return _LOW_TIPS[lows[0]] if lows else _ALL_HIGH_TIP


def sources_line(passages: Sequence[PassageLike], numbers: dict[int, int] | None = None) -> str:
    """Each document once, in rank order, with the section that matched. With `numbers`
    (source number -> number shown), only those sources, renumbered."""
    items: list[str] = []
    for p in passages:
        n = _source_numbers(passages).get(p.path)
        if n is None or (numbers is not None and n not in numbers):
            continue
        shown = numbers[n] if numbers is not None else n
        if shown <= len(items):
            continue
        same = p.section.strip() in {"", p.title.strip()}
        items.append(f"[{shown}] {p.title}" + ("" if same else f" — {p.section}"))
    return "참고: " + ", ".join(items)


def _cited(
    passages: Sequence[PassageLike], steps: Sequence[tuple[str, int]], script: str | None
) -> dict[int, int]:
    """The sources the answer uses (its steps' and its script's), numbered 1.. in rank
    order: a source nothing was taken from is not listed."""
    numbers = _source_numbers(passages)
    used = {n for _, n in steps}
    if script:
        used |= {numbers[p.path] for p in passages if p.path in numbers and script in p.text}
    return {n: i for i, n in enumerate(sorted(used), 1)}


def compose_answer(question: str, passages: Sequence[PassageLike], code: str | None) -> str:
    """The whole offline answer (see the module docstring for its parts)."""
    leader = BY_CODE.get(code or "")
    blocks = [OFFLINE_LABEL + situation_line(question, leader.name if leader else None)]
    if not passages:
        blocks.append(_NO_PASSAGES)
    steps = pick_steps(question, passages)
    script = pick_script(question, passages, [text for text, _ in steps]) if passages else None
    shown = _cited(passages, steps, script)
    if steps:
        blocks.append(
            "\n".join(f"{i}. {text} [{shown[n]}]" for i, (text, n) in enumerate(steps, 1))
        )
    if script:
        blocks.append(f"이렇게 말해 보세요: “{script}”")
    note = _type_note(code)
    if note:
        blocks.append(note)
    if passages and shown:
        blocks.append(sources_line(passages, shown))
    return "\n\n".join(blocks)


class OfflineProvider:
    name = "offline"
    model = "offline-composer-2"

    def __init__(self, *, chunk_chars: int = 12, chunk_delay_s: float = 0.02) -> None:
        self.chunk_chars = chunk_chars
        self.chunk_delay_s = chunk_delay_s

    async def stream(self, prompt: ChatPrompt, result: StreamResult) -> AsyncIterator[str]:
        if "[[offline:fail]]" in prompt.question:
            raise LLMError("offline provider asked to fail", kind="injected")
        # kiwi's first load takes ~1.5 s; off the event loop, like the retriever's.
        answer = await asyncio.to_thread(
            compose_answer, prompt.question, prompt.passages, prompt.leadership_code
        )
        prompt_tokens = estimate_tokens(prompt.system + prompt.question) + sum(
            estimate_tokens(p.text) for p in prompt.passages
        )
        completion = 0
        for chunk in split_chunks(answer, self.chunk_chars):
            completion += estimate_tokens(chunk)
            result.usage = Usage(prompt_tokens, completion, prompt_tokens + completion)
            yield chunk
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
        result.finish_reason = "stop"

    async def generate_json(
        self, *, system: str, prompt: str, schema: dict[str, Any]
    ) -> tuple[str, Usage]:
        raise LLMError("the offline provider composes reports itself", kind="unsupported")

    async def aclose(self) -> None:
        return None
