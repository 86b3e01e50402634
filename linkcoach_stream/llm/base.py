"""What a chat turn asks of an LLM provider, and what it streams back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class PassageLike(Protocol):
    """Read-only, so a frozen `rag.retriever.Passage` is one."""

    @property
    def path(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def category(self) -> str: ...
    @property
    def section(self) -> str: ...
    @property
    def text(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Turn:
    role: str  # "user" or "assistant"
    content: str


@dataclass(frozen=True, slots=True)
class ChatPrompt:
    system: str
    history: Sequence[Turn]
    question: str
    passages: Sequence[PassageLike] = ()
    leadership_code: str | None = None


@dataclass(slots=True)
class Usage:
    """Tokens as the provider bills them. `completion_tokens` is the visible answer;
    `thought_tokens` (billed as output too) and `cached_tokens` (the part of the prompt
    served from Gemini's implicit cache, billed at a discount) are reported apart.
    `estimated` marks counts the server estimated because the stream ended before the
    provider's final usage arrived."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    thought_tokens: int | None = None
    estimated: bool = False

    def as_dict(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cached_tokens": self.cached_tokens,
            "thought_tokens": self.thought_tokens,
        }
        if self.estimated:
            out["estimated"] = True
        return out

    @property
    def billed(self) -> int:
        """What the daily budget counts: prompt, answer and thoughts."""
        return (
            (self.prompt_tokens or 0) + (self.completion_tokens or 0) + (self.thought_tokens or 0)
        )


@dataclass(slots=True)
class StreamResult:
    """Filled in by the provider while it streams, so a caller that stops early (cancel,
    failure) still knows the usage reported so far."""

    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)


class LLMError(Exception):
    """A provider failure; `kind` labels metrics, `retryable` says whether asking again
    may succeed (the provider retries only before the first chunk reached a client)."""

    def __init__(self, message: str, *, kind: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable


class LLMProvider(Protocol):
    name: str
    model: str

    def stream(self, prompt: ChatPrompt, result: StreamResult) -> AsyncIterator[str]:
        """Yield answer text chunks; set `result` fields as they become known."""
        ...

    async def generate_json(
        self, *, system: str, prompt: str, schema: dict[str, Any]
    ) -> tuple[str, Usage]:
        """Return JSON text conforming to `schema` (validated by the caller)."""
        ...

    async def aclose(self) -> None: ...
