"""Korean text handling for the offline composer: markdown cleaning, sentence splitting,
the question's noun phrases, and stream chunks at word boundaries.

- Markup cleaning removes only markdown at the start of a line ("#", "> ", "- ", "* ",
  "1. ") and "**". Do not go back to stripping leading digits or dashes: that turned
  "1:1로" into ":1로" and broke "30-60-90" and "70%".
- Sentences are never cut inside a quotation, and a quotation followed by "하고",
  "라고" and the like does not end its sentence.
- Chunks end at whitespace, so a stream never shows half a word; a word longer than two
  chunks is cut at its punctuation, or at the width as a last resort.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..rag import analyzer

_MARKUP = re.compile(r"^\s*(?:#+\s+|>\s*|[-*]\s+|\d+\.\s+)+")
_BOLD = re.compile(r"\*\*")
# Words every question and passage shares; as overlap they say nothing about the topic.
STOP_WORDS = frozenset(
    "하 되 있 없 않 같 어떻 어떻게 좋 보 주 싶 이 그 저 제 나 너무 좀 잘 것 수 때 더 안 많 "
    "우리 저희 요즘 정말 그냥 방법 고민 질문 생각 리더 팀장 어렵 모르 경우 뭐 무엇 왜 "
    "지금 자꾸 계속 오 가 말 말씀 혹시 거 팀 팀원 다들 모두 다 누구 누가 사람 애 애들 분 명".split()
)
_PHRASE_TAGS = frozenset({"NNG", "NNP", "SL", "SN", "SH", "XR", "W_SERIAL"})
_PHRASE_START = frozenset({"NNG", "NNP", "NR", "SL", "SN", "SH", "XR", "W_SERIAL", "MM"})
_PHRASE_GLUE = frozenset({"JKG", "JC"})
_PHRASE_CUT = ("J", "E", "XSV", "XSA", "VCP", "VCN", "VV", "VA", "VX", "SF", "SP")
_CARRIED = re.compile(r"(?:하고|하며|하는|하면|하던|라고|라며|같은|처럼|등|식으로|정도로)\b")
_PHRASE_CHARS = re.compile(r"[0-9A-Za-z가-힣 :~%·.\-]+")
_PUNCT_CUT = re.compile(r"(?<=[,.;:!?·)\]”\"’/])")


def clean_markup(line: str) -> str:
    """`line` without markdown: list and heading marks at its start, and bold marks."""
    return _BOLD.sub("", _MARKUP.sub("", line)).strip()


def split_sentences(line: str) -> list[str]:
    """Sentences of one line, never cut inside a quotation: a quoted line of dialogue
    often holds several sentences of its own ("…않을게요. 안건은 …"). A quotation ends
    a sentence only when it is the whole sentence and no "하고"/"라고" carries it on."""
    out: list[str] = []
    start, quoted, opened_at = 0, False, -1
    for i, ch in enumerate(line):
        if ch in '"“”':
            opening = (not quoted) if ch == '"' else ch == "“"
            if opening:
                opened_at = i
            quoted = opening
            continue
        if quoted or not ch.isspace() or i < 2:
            continue
        prev = line[i - 1]
        if prev in '"”':
            standalone = not line[start:opened_at].strip()
            ends = line[i - 2] in ".!?" and standalone and not _CARRIED.match(line, i + 1)
        else:
            ends = prev in ".!?"
        if ends and line[start:i].strip():
            out.append(line[start:i].strip())
            start = i + 1
    if line[start:].strip():
        out.append(line[start:].strip())
    return out


def has_final_consonant(word: str) -> bool:
    last = word.rstrip()[-1:]
    if "가" <= last <= "힣":
        return (ord(last) - 0xAC00) % 28 != 0
    if last.isdigit():
        return last in "013678"
    return last.lower() in "lmnr"


def _nominal(word: str, tags: Sequence[Any], continuing: bool) -> tuple[int, bool, str]:
    """How much of `word` is a noun phrase, whether that holds a topical noun, and the
    binding particle (과, 와, 의) that ends the word and lets the phrase go on."""
    if not tags or not (tags[0][1] in _PHRASE_START or (continuing and tags[0][1] == "NNB")):
        return 0, False, ""
    length, topical = 0, False
    for form, tag, offset in tags:
        if tag in _PHRASE_GLUE and offset + len(form) == len(word):
            return length, topical, word[length:]
        if tag in ("XSV", "XSA"):
            return 0, False, ""  # "출근하는", "시작해야": a verb, not a topic
        if tag.startswith(_PHRASE_CUT):
            break
        topical = topical or (tag in _PHRASE_TAGS and form not in STOP_WORDS)
        length = min(len(word), offset + len(form))
    return length, topical, ""


def situation_phrases(question: str) -> list[str]:
    """The question's noun phrases as the leader wrote them ("신규 입사자 온보딩",
    "팀원과 1:1", "5년 차 팀원"), read word by word so that a word kiwi splits oddly
    ("온보딩" as 온/보/딩) is still kept whole."""
    text = analyzer.without_type_names(question)
    morphemes = analyzer.morphemes(text)
    phrases: list[str] = []
    parts: list[tuple[str, str]] = []  # (noun part, binding particle) of each word
    topical = open_ = False
    for m in [*re.finditer(r"\S+", text), None]:
        word = m.group(0) if m else ""
        tags = [
            (t.form, t.tag, t.start - m.start())
            for t in morphemes
            if m and m.start() <= t.start < m.end()
        ]
        length, has_topic, particle = _nominal(word, tags, open_)
        if not (length and open_):
            if parts and topical:
                phrases.append("".join(n + g + " " for n, g in parts[:-1]) + parts[-1][0])
            parts, topical = [], False
        if length:
            parts.append((word[:length], particle))
            topical = topical or has_topic
        open_ = bool(length) and (bool(particle) or length == len(word))
    out = [p for p in dict.fromkeys(phrases) if 2 <= len(p) <= 24 and _PHRASE_CHARS.fullmatch(p)]
    return out[:3]


def split_chunks(text: str, size: int) -> list[str]:
    """`text` in chunks of about `size` to `2 * size` characters that end at whitespace,
    as a model streams words; only a word longer than `2 * size` is cut inside it."""
    chunks: list[str] = []
    current = ""
    for piece in re.findall(r"\S+\s*|\s+", text):
        if len(piece) > 2 * size:
            parts = [x for x in _PUNCT_CUT.split(piece) if x]
            piece_parts: list[str] = []
            for part in parts:
                piece_parts += [part[i : i + 2 * size] for i in range(0, len(part), 2 * size)]
        else:
            piece_parts = [piece]
        for part in piece_parts:
            if current and len(current) + len(part) > 2 * size:
                chunks.append(current)
                current = ""
            current += part
            if len(current) >= size:
                chunks.append(current)
                current = ""
    if current:
        chunks.append(current)
    return chunks
