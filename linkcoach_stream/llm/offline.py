"""The offline provider: no key, no network. It composes a grounded Korean answer from
the retrieved passages and the leader's type profile and streams it in small chunks, so
the whole product works (and is testable) without Gemini. Every answer says it is offline.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ..domain.taxonomy import BY_CODE, DIMENSIONS
from .base import ChatPrompt, LLMError, PassageLike, StreamResult, Usage
from .prompts import estimate_tokens

OFFLINE_LABEL = "[오프라인 코치] "
_SENTENCE = re.compile(r"(?<=[.!?다요])\s+")
_ACTION = re.compile(r"(하세요|해 보세요|해보세요|시작하세요|정하세요|물어보세요|말하세요)")
_MARKUP = re.compile(r"^[#>*\-\d.\s]+|\*\*")

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


def _clean(line: str) -> str:
    return _MARKUP.sub("", line).strip()


def _sentences(text: str) -> list[str]:
    lines = [_clean(line) for line in text.splitlines()]
    body = " ".join(line for line in lines if line and not line.startswith("---"))
    return [s.strip() for s in _SENTENCE.split(body) if len(s.strip()) > 8]


def compose_answer(question: str, passages: Sequence[PassageLike], code: str | None) -> str:
    parts: list[str] = [OFFLINE_LABEL]
    leader = BY_CODE.get(code or "")
    if leader:
        parts.append(f"{leader.name} 리더님의 질문에 지식베이스 자료로 답해 드립니다.\n\n")
    else:
        parts.append("지식베이스 자료로 답해 드립니다.\n\n")
    q = question.strip().replace("\n", " ")
    parts.append(f'질문: "{q[:60]}{"…" if len(q) > 60 else ""}"\n\n')
    if not passages:
        parts.append(
            "이 질문과 직접 맞닿는 자료를 찾지 못했습니다. 상황(팀 규모, 관련된 팀원, 이미 "
            "시도한 것)을 조금 더 알려 주시면 더 구체적으로 도와드리겠습니다.\n"
        )
    actions: list[str] = []
    for i, p in enumerate(passages[:3], 1):
        sentences = _sentences(p.text)
        summary = " ".join(sentences[:2]) if sentences else p.text.strip()[:160]
        parts.append(f"{i}. {p.title} — {p.section}\n{summary} [{i}]\n\n")
        actions += [s for s in sentences[2:] if _ACTION.search(s)][:1]
    if actions:
        parts.append("바로 해볼 수 있는 것:\n")
        parts.extend(f"- {a}\n" for a in actions[:3])
        parts.append("\n")
    if leader:
        lows = [d for d, flag in zip(DIMENSIONS, leader.code, strict=True) if flag == "L"]
        if lows:
            parts.append(_LOW_TIPS[lows[0]] + "\n")
        else:
            parts.append(
                "세 차원이 모두 높은 편이니, 지금의 방식을 팀의 루틴으로 만들어 리더 "
                "한 사람에게 기대지 않게 하는 것이 다음 단계입니다.\n"
            )
    if passages:
        parts.append(
            "\n참고: " + ", ".join(f"[{i}] {p.title}" for i, p in enumerate(passages[:3], 1))
        )
    return "".join(parts)


def split_chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


class OfflineProvider:
    name = "offline"
    model = "offline-composer-1"

    def __init__(self, *, chunk_chars: int = 12, chunk_delay_s: float = 0.02) -> None:
        self.chunk_chars = chunk_chars
        self.chunk_delay_s = chunk_delay_s

    async def stream(self, prompt: ChatPrompt, result: StreamResult) -> AsyncIterator[str]:
        if "[[offline:fail]]" in prompt.question:
            raise LLMError("offline provider asked to fail", kind="injected")
        answer = compose_answer(prompt.question, prompt.passages, prompt.leadership_code)
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
