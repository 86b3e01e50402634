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
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None

    def as_dict(self) -> dict[str, int | None]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(slots=True)
class StreamResult:
    """Filled in by the provider while it streams, so a caller that stops early (cancel,
    failure) still knows the usage reported so far."""

    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)


class LLMError(Exception):
    """A provider failure; `kind` labels metrics, `before_first_chunk` decides retries."""

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
