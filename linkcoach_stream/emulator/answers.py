"""What the emulator says: the Korean coaching reply, or a schema-shaped JSON document.

Deliberate decisions (do not "fix"):

- The answer is a function of the last user message and the chunk settings only, so a
  streamed and a non-streamed call for the same request produce the same text.
"""

from __future__ import annotations

import itertools
import math
import zlib
from functools import lru_cache

import orjson

from .config import EmulatorConfig
from .protocol import GenerateRequest
from .schema import value_for_schema

__all__ = ["answer_text", "compose_answer"]

_OPENING = "“{quote}”에 대해 이야기해 주셔서 고맙습니다. "
_COACHING_SENTENCES = (
    "리더십 진단 결과를 보면 팀원과 목표를 공유하는 방식이 좋은 출발점이 됩니다.",
    "이번 주에는 팀원 한 명과 15분 정도 일대일 대화를 나눠 보시길 권합니다.",
    "대화에서는 먼저 상대의 의견을 충분히 듣고, 그다음에 기대하는 바를 구체적으로 전해 보세요.",
    "작은 성공 경험을 팀과 함께 돌아보면 참여 의지가 자연스럽게 높아집니다.",
    "피드백은 결과보다 과정에 초점을 맞출 때 더 오래 기억됩니다.",
    "회의 마지막 5분을 팀원들의 질문과 제안에 할애해 보는 것도 좋은 방법입니다.",
    "변화는 한 번에 크게 만들기보다 매주 한 가지씩 꾸준히 시도하는 것이 효과적입니다.",
    "팀원 각자의 성장 목표를 함께 정하고 분기마다 점검해 보세요.",
    "어려운 상황일수록 리더의 일관된 태도가 팀에 안정감을 줍니다.",
    "실천해 보신 뒤 어떤 변화가 있었는지 다시 이야기 나눠 주세요.",
)


def _quote(question: str, *, words: int = 3, max_chars: int = 24) -> str:
    quote = " ".join(question.split()[:words])[:max_chars]
    return quote or "질문"


@lru_cache(maxsize=1024)
def compose_answer(question: str, *, length: int) -> str:
    """A Korean coaching reply of exactly ``length`` characters quoting ``question``.

    Deterministic: the same question and length always give the same text.
    """
    start = zlib.crc32(question.encode())
    pieces = [_OPENING.format(quote=_quote(question))]
    total = len(pieces[0])
    for i in itertools.count():
        if total >= length:
            break
        sentence = _COACHING_SENTENCES[(start + i) % len(_COACHING_SENTENCES)] + " "
        pieces.append(sentence)
        total += len(sentence)
    text = "".join(pieces)[:length]
    return text[:-1] + "." if text.endswith(" ") else text


def answer_text(req: GenerateRequest, config: EmulatorConfig) -> tuple[str, int]:
    """The full answer and the number of characters per chunk."""
    mime = req.generation_config.get("responseMimeType") or ""
    schema = req.generation_config.get("responseJsonSchema") or req.generation_config.get(
        "responseSchema"
    )
    if mime == "application/json" or (mime == "text/x.enum" and schema):
        if isinstance(schema, dict):
            value = value_for_schema(schema, salt=req.question)
        else:
            value = {"answer": compose_answer(req.question, length=config.chunk_chars * 4)}
        if mime == "text/x.enum":
            text = str(value)
        else:
            text = orjson.dumps(value).decode()
        return text, max(1, math.ceil(len(text) / config.chunks))
    return compose_answer(req.question, length=config.chunks * config.chunk_chars), (
        config.chunk_chars
    )
