"""Gemini's REST protocol as the emulator reads it: request parsing and the error format.

The protocol details were taken from the google-genai 3.6 source (``models.py``,
``_api_client.py``, ``errors.py``), not guessed:

- ``POST {base}/{v1|v1beta}/models/{model}:streamGenerateContent?alt=sse``; the key comes in
  ``x-goog-api-key``; the body holds ``contents``, ``systemInstruction``,
  ``generationConfig`` (camelCase keys, but a ``responseSchema`` keeps the SDK's
  snake_case ``min_items``/``property_ordering`` and upper-case ``STRING``/``OBJECT``).
- The SDK splits the body into lines at CR/LF only, joins ``data: `` lines until a blank
  line, and parses each event as one ``GenerateContentResponse``. Any other line is
  buffered until its braces balance and parsed as raw JSON; a chunk that starts with
  ``{"error":`` raises ``errors.APIError`` (ServerError for 5xx, ClientError for 4xx).
  That is also how the real API fails mid-stream: a pretty-printed error object after the
  ``data:`` events, with HTTP status 200 already sent. The emulator does the same.
- An HTTP error status before the stream raises from ``raise_for_async_response`` with the
  body ``{"error": {"code", "message", "status"}}``.
- Embeddings always go to ``:batchEmbedContents`` (``{"requests": [{"model", "content",
  "taskType"?, "outputDimensionality"?}]}`` -> ``{"embeddings": [{"values"}]}``);
  ``:embedContent`` and ``:countTokens`` are served too for other clients.

Deliberate decisions (do not "fix"):

- Per-request ``[[emulator:key=value,...]]`` markers are read from the last user message
  only, so a marker left in the history does not fault every later turn. They are stripped
  before the answer quotes the message.
- Tokens are estimated at ~4 UTF-8 bytes a token (``estimate_tokens``), for prompts,
  answers and cached prefixes alike.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .config import EmulatorConfig

__all__ = [
    "GeminiError",
    "GenerateRequest",
    "content_texts",
    "estimate_tokens",
    "load_json",
    "parse_generate",
    "thought_tokens",
]

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class GeminiError(Exception):
    """An error answered in Gemini's format: ``{"error": {"code", "message", "status"}}``."""

    def __init__(
        self, code: int, message: str, *, details: Sequence[Mapping[str, object]] = ()
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = list(details)

    def body(self, *, pretty: bool = False) -> bytes:
        error: dict[str, object] = {
            "code": self.code,
            "message": self.message,
            "status": _STATUS_NAMES.get(self.code, "UNKNOWN"),
        }
        if self.details:
            error["details"] = self.details
        # "error" must be the first key: the SDK spots stream errors by that prefix.
        return orjson.dumps({"error": error}, option=orjson.OPT_INDENT_2 if pretty else 0)


_MARKER_RE = re.compile(r"\[\[emulator:([^\]]*)\]\]")


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    question: str
    markers: dict[str, str]
    prompt_bytes: int
    generation_config: Mapping[str, Any]
    # (digest, bytes so far) after the system instruction and after each content.
    prefixes: tuple[tuple[bytes, int], ...] = ()
    texts: tuple[str, ...] = ()


def load_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise GeminiError(400, f"Invalid JSON payload received. {exc}") from None


def content_texts(content: object, where: str) -> list[str]:
    if not isinstance(content, dict):
        raise GeminiError(400, f"Invalid value at '{where}', expected an object.")
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        raise GeminiError(400, f"* {where}.parts: contents.parts must not be empty.")
    texts: list[str] = []
    for i, part in enumerate(parts):
        if not isinstance(part, dict):
            raise GeminiError(400, f"Invalid value at '{where}.parts[{i}]', expected an object.")
        text = part.get("text")
        if text is None:
            continue
        if not isinstance(text, str):
            raise GeminiError(400, f"Invalid value at '{where}.parts[{i}].text', expected string.")
        texts.append(text)
    return texts


def parse_generate(
    body: object, *, request_name: str = "GenerateContentRequest"
) -> GenerateRequest:
    if not isinstance(body, dict):
        raise GeminiError(400, "Invalid JSON payload received. Expected a JSON object.")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise GeminiError(400, f"* {request_name}.contents: contents is not specified")
    prompt_bytes = 0
    question: str | None = None
    digest = hashlib.blake2b(digest_size=16)
    prefixes: list[tuple[bytes, int]] = []
    all_texts: list[str] = []
    system = body.get("systemInstruction")
    if system is not None:
        system_texts = content_texts(system, "systemInstruction")
        all_texts.extend(system_texts)
        prompt_bytes += sum(len(t.encode()) for t in system_texts)
        digest.update(orjson.dumps(["system", system_texts]))
        prefixes.append((digest.copy().digest(), prompt_bytes))
    for i, content in enumerate(contents):
        texts = content_texts(content, f"contents[{i}]")
        all_texts.extend(texts)
        prompt_bytes += sum(len(t.encode()) for t in texts)
        digest.update(orjson.dumps([content.get("role"), texts]))
        prefixes.append((digest.copy().digest(), prompt_bytes))
        if content.get("role") in (None, "user"):
            question = "\n".join(texts)
    generation_config = body.get("generationConfig") or {}
    if not isinstance(generation_config, dict):
        raise GeminiError(400, "Invalid value at 'generation_config', expected an object.")
    question = question or ""
    markers: dict[str, str] = {}
    for match in _MARKER_RE.finditer(question):
        for item in re.split(r"[,;\s]+", match.group(1).strip()):
            if item:
                key, sep, value = item.partition("=")
                if not sep:
                    raise GeminiError(400, f"emulator marker item {item!r} is not key=value")
                markers[key.strip()] = value.strip()
    return GenerateRequest(
        question=_MARKER_RE.sub("", question).strip(),
        markers=markers,
        prompt_bytes=prompt_bytes,
        generation_config=generation_config,
        prefixes=tuple(prefixes),
        texts=tuple(all_texts),
    )


def thought_tokens(generation_config: Mapping[str, Any], config: EmulatorConfig) -> int:
    thinking = generation_config.get("thinkingConfig") or {}
    budget = None
    if isinstance(thinking, dict):
        # Proto JSON takes both spellings; google-genai sends the snake_case one here.
        budget = thinking.get("thinkingBudget", thinking.get("thinking_budget"))
    if budget is None or budget == -1:
        return config.dynamic_thinking_tokens
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < -1:
        raise GeminiError(
            400, "Invalid value at 'generation_config.thinking_config.thinking_budget'"
        )
    return budget


def estimate_tokens(utf8_bytes: int) -> int:
    # ~4 bytes a token: about right for English, and for Korean (3 bytes a syllable).
    return (utf8_bytes + 3) // 4
