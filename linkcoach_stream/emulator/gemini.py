"""A local Gemini emulator: Gemini's REST protocol, as google-genai uses it, served offline.

Tests and load tests point the real google-genai client at it
(``HttpOptions(base_url=..., httpx_async_client=...)``) so the project's real Gemini code
path runs at any concurrency without network or cost. Protocol details were taken from the
google-genai 3.6 source (``models.py``, ``_api_client.py``, ``errors.py``), not guessed:

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

- Runtime state (config, counters, random source) lives on ``app.state``, not in a
  lifespan: httpx's ``ASGITransport`` never runs the lifespan, and tests use it. The
  lifespan only installs the log filter that hides injected aborts.
- Response headers go out with the first chunk, after the time-to-first-token wait: a
  status is only known once the model has produced something, so a failure before the
  first chunk is an HTTP error status. (google-genai 3.6 sends the request lazily, on the
  first ``__anext__``, so a client sees the wait there either way.)
- Every frame of a stream is encoded before the first wait; the pacing loop only sleeps
  and sends bytes. One extra task per stream watches for the client's disconnect so a
  stall or a long TTFT ends as soon as the client goes away, silently.
- The ``abort`` mid-stream action raises an exception so the server cuts the connection
  (ASGI has no other way to break a chunked body); the lifespan's log filter keeps that
  intended exception out of the error log.
- Per-request ``[[emulator:key=value,...]]`` markers are read from the last user message
  only, so a marker left in the history does not fault every later turn. They are stripped
  before the answer quotes the message.
- The answer is a function of the last user message and the chunk settings only, so a
  streamed and a non-streamed call for the same request produce the same text. Chunks are
  cut by character count and routinely split Korean words, as real streams do.
- A JSON-schema ``pattern`` is not honoured; everything else the schema walker knows
  (types, enum/const, bounds, lengths, item counts, $ref, anyOf) is.
- Thinking: a request's ``generationConfig.thinkingConfig.thinkingBudget`` (or
  ``thinking_budget``, as google-genai writes it) N > 0 makes the
  model "think" N tokens before its first chunk, which waits ``thinking_ms_per_token``
  each, is reported as ``thoughtsTokenCount`` and counts against ``maxOutputTokens``
  (an answer without room left is cut, ``finishReason: MAX_TOKENS``), as on
  gemini-2.5-flash. -1 or no thinkingConfig (dynamic, the model's default) thinks
  ``dynamic_thinking_tokens``, 0 by default so requests that never ask keep their timing.
- Implicit prefix caching: every prefix of a request (model, system instruction, then
  each content in turn) is remembered; a later request sharing one of at least
  ``cache_min_tokens`` tokens (1024, gemini-2.5-flash's minimum) reports it as
  ``cachedContentTokenCount``. Prefixes are compared per content, not per token.
- ``GET /_emulator/requests`` returns the last requests' texts and generation config, so
  tests can check what the model was sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import logging
import math
import random
import re
import zlib
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, cast, get_args

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Receive, Scope, Send

__all__ = [
    "EmulatorConfig",
    "Fault",
    "MidStreamAction",
    "InjectedAbort",
    "add_emulator_arguments",
    "compose_answer",
    "config_from_args",
    "create_emulator_app",
    "embed_text",
    "main",
    "run_emulator",
    "value_for_schema",
]

Fault = Literal["before_first", "mid_stream", "stall"]
MidStreamAction = Literal["error", "abort"]

API_VERSIONS = ("v1", "v1beta", "v1alpha")
MAX_EMBEDDING_DIM = 3072

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
_FAULT_MESSAGES = {
    429: "You exceeded your current quota, please check your plan and billing details.",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-content-type-options", b"nosniff"),
]
_JSON_STREAM_HEADERS = [(b"content-type", b"application/json; charset=UTF-8")]
_JSON_HEADERS = {"content-type": "application/json; charset=UTF-8"}


# --------------------------------------------------------------------------- config


def _parse_range(value: object, name: str) -> tuple[float, float]:
    """``300``, ``"300"``, ``"200-400"`` or ``[200, 400]`` -> (min, max) in ms."""
    if isinstance(value, str) and "-" in value.strip().lstrip("-"):
        low, _, high = value.strip().partition("-")
        return _as_float(low, name), _as_float(high, name)
    if isinstance(value, list | tuple) and len(value) == 2:
        return _as_float(value[0], name), _as_float(value[1], name)
    single = _as_float(value, name)
    return single, single


def _as_float(value: object, name: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError(f"{name} must be a number, got {value!r}")


def _as_int(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ValueError(f"{name} must be an integer, got {value!r}")


def _as_optional_int(value: object, name: str) -> int | None:
    return None if value is None or value == "none" else _as_int(value, name)


def _as_optional_str(value: object, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    return value


def _as_fault(value: object, name: str) -> Fault | None:
    if value is None or value in ("", "none", "null"):
        return None
    if value not in get_args(Fault):
        raise ValueError(f"{name} must be one of none, {', '.join(get_args(Fault))}")
    return cast(Fault, value)


def _as_action(value: object, name: str) -> MidStreamAction:
    if value not in get_args(MidStreamAction):
        raise ValueError(f"{name} must be one of {', '.join(get_args(MidStreamAction))}")
    return cast(MidStreamAction, value)


_COERCERS: dict[str, Callable[[object, str], object]] = {
    "ttft_ms_min": _as_float,
    "ttft_ms_max": _as_float,
    "chunk_interval_ms_min": _as_float,
    "chunk_interval_ms_max": _as_float,
    "chunks": _as_int,
    "chunk_chars": _as_int,
    "fault": _as_fault,
    "fault_status": _as_int,
    "fault_after_chunks": _as_int,
    "fault_rate": _as_float,
    "mid_stream_action": _as_action,
    "embedding_dim": _as_int,
    "model_version": _as_optional_str,
    "api_key": _as_optional_str,
    "seed": _as_optional_int,
    "thinking_ms_per_token": _as_float,
    "dynamic_thinking_tokens": _as_int,
    "cache_min_tokens": _as_int,
}
_RANGE_SHORTHANDS = {"ttft_ms": "ttft_ms", "chunk_interval_ms": "chunk_interval_ms"}


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """How the emulator answers. Defaults look roughly like gemini-2.5-flash, no thinking.

    Delays are drawn uniformly from [min, max] per request (TTFT) and per chunk (gaps).
    ``fault`` applies to a share ``fault_rate`` of generation requests; a request can force
    its own with a ``[[emulator:fault=...]]`` marker. ``fault_after_chunks`` is clamped so
    a mid-stream fault or stall always lands before the final chunk.
    """

    ttft_ms_min: float = 300.0
    ttft_ms_max: float = 800.0
    chunk_interval_ms_min: float = 20.0
    chunk_interval_ms_max: float = 80.0
    chunks: int = 12
    chunk_chars: int = 20
    fault: Fault | None = None
    fault_status: int = 503
    fault_after_chunks: int = 2
    fault_rate: float = 1.0
    mid_stream_action: MidStreamAction = "error"
    embedding_dim: int = 768
    model_version: str | None = None
    api_key: str | None = None
    seed: int | None = None
    thinking_ms_per_token: float = 2.0
    dynamic_thinking_tokens: int = 0
    cache_min_tokens: int = 1024

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "chunk_interval_ms"):
            low, high = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
            if low < 0 or high < low:
                raise ValueError(f"{name} needs 0 <= min <= max, got {low}..{high}")
        if self.chunks < 1 or self.chunk_chars < 1:
            raise ValueError("chunks and chunk_chars must be >= 1")
        if not 400 <= self.fault_status <= 599:
            raise ValueError("fault_status must be an HTTP error status (400-599)")
        if self.fault_after_chunks < 0:
            raise ValueError("fault_after_chunks must be >= 0")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError("fault_rate must be within 0..1")
        if not 1 <= self.embedding_dim <= MAX_EMBEDDING_DIM:
            raise ValueError(f"embedding_dim must be within 1..{MAX_EMBEDDING_DIM}")
        if self.thinking_ms_per_token < 0 or self.dynamic_thinking_tokens < 0:
            raise ValueError("thinking_ms_per_token and dynamic_thinking_tokens must be >= 0")
        if self.cache_min_tokens < 0:
            raise ValueError("cache_min_tokens must be >= 0")

    def updated(self, changes: Mapping[str, object]) -> EmulatorConfig:
        """A copy with ``changes`` applied; values may be strings (CLI, markers) or JSON.

        ``ttft_ms`` / ``chunk_interval_ms`` are shorthands setting both ends of a range.
        Raises ValueError on an unknown key or a bad value.
        """
        values: dict[str, object] = {}
        for key, raw in changes.items():
            if key in _RANGE_SHORTHANDS:
                low, high = _parse_range(raw, key)
                values[f"{key}_min"], values[f"{key}_max"] = low, high
            elif key in _COERCERS:
                values[key] = _COERCERS[key](raw, key)
            else:
                raise ValueError(f"unknown emulator setting {key!r}")
        return dataclasses.replace(self, **values)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- errors


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


class InjectedAbort(Exception):
    """Raised on purpose to make the server cut a stream's connection."""


def _fault_error(status: int) -> GeminiError:
    details: list[Mapping[str, object]] = []
    if status == 429:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"})
    message = _FAULT_MESSAGES.get(status, "Injected fault from the Gemini emulator.")
    return GeminiError(status, message, details=details)


# --------------------------------------------------------------------------- stats


@dataclass(slots=True)
class _Stats:
    requests: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    streaming: int = 0
    max_streaming: int = 0
    streams_completed: int = 0
    disconnects: int = 0
    chunks_sent: int = 0

    def reset(self) -> None:
        self.requests.clear()
        self.errors.clear()
        self.faults.clear()
        # Live streams are still live: keep the gauge, restart its high-water mark from it.
        self.max_streaming = self.streaming
        self.streams_completed = self.disconnects = self.chunks_sent = 0

    def stream_started(self) -> None:
        self.streaming += 1
        self.max_streaming = max(self.max_streaming, self.streaming)

    def snapshot(self) -> dict[str, object]:
        return {
            "requests": dict(self.requests),
            "total_requests": sum(self.requests.values()),
            "errors": dict(self.errors),
            "faults": dict(self.faults),
            "streaming": self.streaming,
            "max_streaming": self.max_streaming,
            "streams_completed": self.streams_completed,
            "disconnects": self.disconnects,
            "chunks_sent": self.chunks_sent,
        }


_PREFIXES_KEPT = 50_000
_REQUESTS_KEPT = 64


@dataclass(slots=True)
class _Runtime:
    config: EmulatorConfig
    stats: _Stats
    rng: random.Random
    response_ids: itertools.count[int]
    # Prefix digests seen, oldest first (an LRU), for implicit caching.
    prefixes: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    recent: deque[dict[str, object]] = field(default_factory=lambda: deque(maxlen=_REQUESTS_KEPT))

    def cached_bytes(self, req: _GenerateRequest) -> int:
        """Bytes of the longest remembered prefix of `req`; remembers all of its own."""
        best = 0
        for digest, size in req.prefixes:
            if digest in self.prefixes:
                self.prefixes.move_to_end(digest)
                best = size
            else:
                self.prefixes[digest] = None
        while len(self.prefixes) > _PREFIXES_KEPT:
            self.prefixes.popitem(last=False)
        return best


def _runtime(request: Request) -> _Runtime:
    return cast(_Runtime, request.app.state.emulator)


# --------------------------------------------------------------------------- request parsing


_MARKER_RE = re.compile(r"\[\[emulator:([^\]]*)\]\]")


@dataclass(frozen=True, slots=True)
class _GenerateRequest:
    question: str
    markers: dict[str, str]
    prompt_bytes: int
    generation_config: Mapping[str, Any]
    # (digest, bytes so far) after the system instruction and after each content.
    prefixes: tuple[tuple[bytes, int], ...] = ()
    texts: tuple[str, ...] = ()


def _load_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise GeminiError(400, f"Invalid JSON payload received. {exc}") from None


def _content_texts(content: object, where: str) -> list[str]:
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


def _parse_generate(
    body: object, *, request_name: str = "GenerateContentRequest"
) -> _GenerateRequest:
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
        system_texts = _content_texts(system, "systemInstruction")
        all_texts.extend(system_texts)
        prompt_bytes += sum(len(t.encode()) for t in system_texts)
        digest.update(orjson.dumps(["system", system_texts]))
        prefixes.append((digest.copy().digest(), prompt_bytes))
    for i, content in enumerate(contents):
        texts = _content_texts(content, f"contents[{i}]")
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
    return _GenerateRequest(
        question=_MARKER_RE.sub("", question).strip(),
        markers=markers,
        prompt_bytes=prompt_bytes,
        generation_config=generation_config,
        prefixes=tuple(prefixes),
        texts=tuple(all_texts),
    )


def _thought_tokens(generation_config: Mapping[str, Any], config: EmulatorConfig) -> int:
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


def _fit_output(text: str, room_tokens: int) -> str:
    """The start of `text` that fits `room_tokens` (by the same ~4 bytes a token)."""
    room = room_tokens * 4
    used = 0
    for i, ch in enumerate(text):
        used += len(ch.encode())
        if used > room:
            return text[:i]
    return text


def _estimate_tokens(utf8_bytes: int) -> int:
    # ~4 bytes a token: about right for English, and for Korean (3 bytes a syllable).
    return (utf8_bytes + 3) // 4


# --------------------------------------------------------------------------- answers

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
_FILLER_PHRASES = (
    "팀원과 목표를 함께 정리하기",
    "주간 회의에서 의견을 먼저 듣기",
    "작은 성공을 함께 축하하기",
    "일대일 대화로 신뢰 쌓기",
    "성장 목표를 구체적으로 합의하기",
    "과정 중심의 피드백 전하기",
    "역할과 책임을 분명히 나누기",
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


def _split(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


# --------------------------------------------------------------------------- structured output


def _key(schema: Mapping[str, Any], camel: str, snake: str) -> Any:
    value = schema.get(camel)
    return schema.get(snake) if value is None else value


class _SchemaWalker:
    """Builds a value that satisfies a Gemini ``Schema`` or a JSON Schema, deterministically."""

    _MAX_DEPTH = 12

    def __init__(self, root: Mapping[str, Any], salt: str) -> None:
        self._root = root
        self._salt = salt

    def _hash(self, path: str) -> int:
        return zlib.crc32(f"{self._salt}|{path}".encode())

    def _resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        for _ in range(32):
            ref = schema.get("$ref")
            if not isinstance(ref, str) or not ref.startswith("#"):
                return schema
            node: Any = self._root
            for token in ref.lstrip("#").strip("/").split("/"):
                if token:
                    node = node[token.replace("~1", "/").replace("~0", "~")]
            schema = node
        raise GeminiError(400, "responseSchema: $ref chain too long")

    def value(self, schema: Mapping[str, Any], path: str = "$", depth: int = 0) -> Any:
        schema = self._resolve(schema)
        if depth > self._MAX_DEPTH:
            return None
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[self._hash(path) % len(enum)]
        options = _key(schema, "anyOf", "any_of") or schema.get("oneOf")
        if isinstance(options, list) and options:
            non_null = [o for o in options if self._type_of(self._resolve(o)) != "null"]
            return self.value((non_null or options)[0], path, depth + 1)
        all_of = _key(schema, "allOf", "all_of")
        if isinstance(all_of, list) and all_of:
            merged: dict[str, Any] = {}
            for part in all_of:
                for k, v in self._resolve(part).items():
                    if k in ("properties", "required") and k in merged:
                        merged[k] = merged[k] | v if k == "properties" else merged[k] + v
                    else:
                        merged[k] = v
            return self.value(merged, path, depth + 1)
        kind = self._type_of(schema)
        if kind == "object":
            return self._object(schema, path, depth)
        if kind == "array":
            return self._array(schema, path, depth)
        if kind == "integer":
            return self._integer(schema, path)
        if kind == "number":
            return self._number(schema, path)
        if kind == "boolean":
            return self._hash(path) % 2 == 0
        if kind == "null":
            return None
        return self._string(schema, path)

    @staticmethod
    def _type_of(schema: Mapping[str, Any]) -> str:
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if str(k).lower() != "null"), "null")
        if kind:
            return str(kind).lower()
        if "properties" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
        return "string"

    def _object(self, schema: Mapping[str, Any], path: str, depth: int) -> dict[str, Any]:
        properties: Mapping[str, Any] = schema.get("properties") or {}
        required: list[str] = list(schema.get("required") or [])
        order = list(_key(schema, "propertyOrdering", "property_ordering") or [])
        names = order + [n for n in properties if n not in order]
        names += [n for n in required if n not in names]
        if depth >= self._MAX_DEPTH // 2:
            names = [n for n in names if n in required]
        result: dict[str, Any] = {}
        for name in names:
            result[name] = self.value(properties.get(name) or {}, f"{path}.{name}", depth + 1)
        return result

    def _array(self, schema: Mapping[str, Any], path: str, depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        items = schema.get("items")
        low = int(_key(schema, "minItems", "min_items") or 0)
        high_raw = _key(schema, "maxItems", "max_items")
        count = low if depth >= self._MAX_DEPTH // 2 else max(low, 2)
        if high_raw is not None:
            count = min(count, int(high_raw))
        values: list[Any] = []
        for i in range(count):
            if isinstance(prefix, list) and i < len(prefix):
                item_schema = prefix[i]
            elif isinstance(items, list):
                item_schema = items[min(i, len(items) - 1)] if items else {}
            else:
                item_schema = items if isinstance(items, dict) else {}
            values.append(self.value(item_schema, f"{path}[{i}]", depth + 1))
        return values

    @staticmethod
    def _bounds(schema: Mapping[str, Any]) -> tuple[float | None, bool, float | None, bool]:
        low, high = schema.get("minimum"), schema.get("maximum")
        ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        low_open = high_open = False
        if isinstance(ex_low, bool):
            low_open = ex_low
        elif ex_low is not None:
            low, low_open = ex_low, True
        if isinstance(ex_high, bool):
            high_open = ex_high
        elif ex_high is not None:
            high, high_open = ex_high, True
        return (
            None if low is None else float(low),
            low_open,
            None if high is None else float(high),
            high_open,
        )

    def _integer(self, schema: Mapping[str, Any], path: str) -> int:
        low, low_open, high, high_open = self._bounds(schema)
        lo = None if low is None else (math.floor(low) + 1 if low_open else math.ceil(low))
        hi = None if high is None else (math.ceil(high) - 1 if high_open else math.floor(high))
        h = self._hash(path)
        if lo is not None and hi is not None:
            return lo + h % (hi - lo + 1) if hi >= lo else lo
        if lo is not None:
            return lo + h % 5
        if hi is not None:
            return hi - h % 5
        return 1 + h % 5

    def _number(self, schema: Mapping[str, Any], path: str) -> float:
        low, _, high, _ = self._bounds(schema)
        fraction = 0.25 + (self._hash(path) % 50) / 100  # strictly inside the range
        if low is not None and high is not None:
            value = round(low + (high - low) * fraction, 2)
            return value if low < value < high else low + (high - low) / 2
        if low is not None:
            return low + 1 + round(fraction, 2)
        if high is not None:
            return high - 1 - round(fraction, 2)
        return round(1 + fraction * 4, 2)

    def _string(self, schema: Mapping[str, Any], path: str) -> str:
        h = self._hash(path)
        fmt = schema.get("format")
        if fmt == "date-time":
            return "2025-01-15T09:00:00Z"
        if fmt == "date":
            return "2025-01-15"
        if fmt == "email":
            return "coach@example.com"
        if fmt == "uuid":
            return f"{h:08x}-0000-4000-8000-{h:012x}"[:36]
        if fmt in ("uri", "url"):
            return f"https://example.com/{h:x}"
        text = _FILLER_PHRASES[h % len(_FILLER_PHRASES)]
        low = int(_key(schema, "minLength", "min_length") or 0)
        high_raw = _key(schema, "maxLength", "max_length")
        while len(text) < low:
            text += " " + _FILLER_PHRASES[(h + len(text)) % len(_FILLER_PHRASES)]
        return text[: int(high_raw)] if high_raw is not None else text


def value_for_schema(schema: Mapping[str, Any], *, salt: str = "") -> Any:
    """A deterministic value valid against ``schema`` (Gemini Schema or JSON Schema)."""
    return _SchemaWalker(schema, salt).value(schema)


def _answer_text(req: _GenerateRequest, config: EmulatorConfig) -> tuple[str, int]:
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


# --------------------------------------------------------------------------- generation


@dataclass(frozen=True, slots=True)
class _Plan:
    """One generation, fully prepared before the first wait."""

    config: EmulatorConfig
    pieces: list[str]
    fault: Fault | None
    usage: dict[str, object]
    finish_reason: str
    model_version: str
    response_id: str
    delays: list[float]  # seconds before each piece; [0] is the time to first token


def _plan(rt: _Runtime, model: str, req: _GenerateRequest) -> _Plan:
    config = rt.config
    if req.markers:
        changes: dict[str, object] = dict(req.markers)
        if "fault" in changes:
            changes.setdefault("fault_rate", "1")
        try:
            config = config.updated(changes)
        except ValueError as exc:
            raise GeminiError(400, f"emulator marker: {exc}") from None
    text, size = _answer_text(req, config)
    thoughts = _thought_tokens(req.generation_config, config)
    finish = "STOP"
    limit = req.generation_config.get("maxOutputTokens")
    if isinstance(limit, int) and thoughts + _estimate_tokens(len(text.encode())) > limit:
        # Thinking spends the output budget first, as on gemini-2.5-flash.
        text, finish = _fit_output(text, max(0, limit - thoughts)), "MAX_TOKENS"
    pieces = _split(text, size) or [""]
    fault = config.fault
    if fault is not None and config.fault_rate < 1.0 and rt.rng.random() >= config.fault_rate:
        fault = None
    prompt_tokens = _estimate_tokens(req.prompt_bytes)
    answer_tokens = _estimate_tokens(len(text.encode()))
    cached = _estimate_tokens(rt.cached_bytes(req))
    if cached < max(1, config.cache_min_tokens):
        cached = 0
    rt.recent.append({"texts": list(req.texts), "generation_config": dict(req.generation_config)})
    usage: dict[str, object] = {
        "promptTokenCount": prompt_tokens,
        "candidatesTokenCount": answer_tokens,
        "totalTokenCount": prompt_tokens + answer_tokens + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}],
    }
    if cached:
        usage["cachedContentTokenCount"] = cached
        usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    rng = rt.rng
    delays = [
        rng.uniform(config.ttft_ms_min, config.ttft_ms_max) / 1000
        + thoughts * config.thinking_ms_per_token / 1000
    ]
    delays += [
        rng.uniform(config.chunk_interval_ms_min, config.chunk_interval_ms_max) / 1000
        for _ in range(len(pieces))
    ]
    return _Plan(
        config=config,
        pieces=pieces,
        fault=fault,
        usage=usage,
        finish_reason=finish,
        model_version=config.model_version or model.removeprefix("models/"),
        response_id=f"emu-{next(rt.response_ids):x}",
        delays=delays,
    )


def _response_obj(plan: _Plan, text: str, *, last: bool) -> dict[str, object]:
    candidate: dict[str, object] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if last:
        candidate["finishReason"] = plan.finish_reason
    candidate["index"] = 0
    obj: dict[str, object] = {"candidates": [candidate]}
    if last:
        obj["usageMetadata"] = plan.usage
    obj["modelVersion"] = plan.model_version
    obj["responseId"] = plan.response_id
    return obj


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _pause(seconds: float, disconnected: asyncio.Future[None]) -> bool:
    """Waits ``seconds``; True when the client went away meanwhile."""
    if seconds > 0:
        done, _ = await asyncio.wait((disconnected,), timeout=seconds)
        return bool(done)
    return disconnected.done()


class _GenerationResponse(Response):
    """Plays a plan: paced SSE events, a JSON-array stream, or one unary JSON answer."""

    def __init__(
        self, plan: _Plan, stats: _Stats, *, mode: Literal["sse", "array", "unary"]
    ) -> None:
        self.plan = plan
        self.stats = stats
        self.mode = mode
        self.status_code = 200
        self.background = None

    def _frames(self) -> list[bytes]:
        last = len(self.plan.pieces) - 1
        bodies = [
            orjson.dumps(_response_obj(self.plan, piece, last=i == last))
            for i, piece in enumerate(self.plan.pieces)
        ]
        if self.mode == "sse":
            return [b"data: " + body + b"\r\n\r\n" for body in bodies]
        return [(b"[" if i == 0 else b",\r\n") + body for i, body in enumerate(bodies)]

    def _cut(self) -> int:
        """How many frames go out before the fault."""
        if self.plan.fault in ("mid_stream", "stall"):
            return min(self.plan.config.fault_after_chunks, len(self.plan.pieces) - 1)
        return len(self.plan.pieces)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            if self.mode == "unary":
                await self._unary(send, watcher)
            else:
                self.stats.stream_started()
                try:
                    await self._stream(send, watcher)
                finally:
                    self.stats.streaming -= 1
        finally:
            watcher.cancel()

    async def _stream(self, send: Send, disconnected: asyncio.Future[None]) -> None:
        plan, stats = self.plan, self.stats
        frames = self._frames()
        cut = self._cut()
        headers = _SSE_HEADERS if self.mode == "sse" else _JSON_STREAM_HEADERS
        started = False
        for i in range(cut):
            if await _pause(plan.delays[i], disconnected):
                stats.disconnects += 1
                return
            if not started:
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                started = True
            await send({"type": "http.response.body", "body": frames[i], "more_body": True})
            stats.chunks_sent += 1
        if plan.fault is None:
            tail = b"]" if self.mode == "array" else b""
            await send({"type": "http.response.body", "body": tail, "more_body": False})
            stats.streams_completed += 1
            return
        stats.faults[plan.fault] += 1
        if await _pause(plan.delays[cut], disconnected):
            stats.disconnects += 1
            return
        if plan.fault == "stall":
            await disconnected
            stats.disconnects += 1
            return
        if plan.config.mid_stream_action == "abort":
            raise InjectedAbort("injected mid-stream connection abort")
        if not started:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
        error = _fault_error(plan.config.fault_status)
        # As the real API does: a bare pretty-printed error object after the events.
        tail = (b"" if self.mode == "sse" else b",\r\n") + error.body(pretty=True) + b"\n"
        if self.mode == "array":
            tail += b"]"
        await send({"type": "http.response.body", "body": tail, "more_body": False})
        stats.errors[str(error.code)] += 1

    async def _unary(self, send: Send, disconnected: asyncio.Future[None]) -> None:
        plan, stats = self.plan, self.stats
        if await _pause(sum(plan.delays[: len(plan.pieces)]), disconnected):
            stats.disconnects += 1
            return
        if plan.fault == "stall":
            stats.faults["stall"] += 1
            await disconnected
            stats.disconnects += 1
            return
        if plan.fault == "mid_stream":
            stats.faults["mid_stream"] += 1
            if plan.config.mid_stream_action == "abort":
                raise InjectedAbort("injected connection abort")
            error = _fault_error(plan.config.fault_status)
            stats.errors[str(error.code)] += 1
            await _send_bytes(send, error.code, error.body())
            return
        body = orjson.dumps(_response_obj(plan, "".join(plan.pieces), last=True))
        await _send_bytes(send, 200, body)


async def _send_bytes(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json; charset=UTF-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


# --------------------------------------------------------------------------- handlers


def _check_api_key(request: Request, config: EmulatorConfig) -> None:
    key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
    if not key:
        raise GeminiError(
            403,
            "Method doesn't allow unregistered callers (callers without established identity)."
            " Please use API Key or other form of API consumer identity to call this API.",
        )
    # Plain compare is fine: this is a local test double, not a secret store.
    if config.api_key is not None and key != config.api_key:
        raise GeminiError(
            400,
            "API key not valid. Please pass a valid API key.",
            details=[
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                }
            ],
        )


async def _begin(request: Request, method: str) -> tuple[_Runtime, Any]:
    rt = _runtime(request)
    rt.stats.requests[method] += 1
    _check_api_key(request, rt.config)
    return rt, _load_json(await request.body())


async def _generate(request: Request, *, method: str) -> Response:
    rt, body = await _begin(request, method)
    plan = _plan(rt, request.path_params["model"], _parse_generate(body))
    if plan.fault == "before_first":
        rt.stats.faults["before_first"] += 1
        raise _fault_error(plan.config.fault_status)
    if method == "generateContent":
        return _GenerationResponse(plan, rt.stats, mode="unary")
    mode: Literal["sse", "array"] = "sse" if request.query_params.get("alt") == "sse" else "array"
    return _GenerationResponse(plan, rt.stats, mode=mode)


async def stream_generate_content(request: Request) -> Response:
    return await _generate(request, method="streamGenerateContent")


async def generate_content(request: Request) -> Response:
    return await _generate(request, method="generateContent")


def _json(value: object, status: int = 200) -> Response:
    return Response(orjson.dumps(value), status_code=status, headers=_JSON_HEADERS)


def _embedding_dim(raw: object, config: EmulatorConfig, where: str) -> int:
    if raw is None:
        return config.embedding_dim
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_EMBEDDING_DIM:
        raise GeminiError(400, f"* {where}: outputDimensionality must be in 1..{MAX_EMBEDDING_DIM}")
    return raw


@lru_cache(maxsize=4096)
def embed_text(text: str, dim: int) -> tuple[float, ...]:
    """A unit vector from a hashed bag of character 1-3-grams; similar texts score closer.

    crc32, not ``hash()``: the vector must be the same in every process.
    """
    vector = [0.0] * dim
    padded = " " + " ".join(text.lower().split())[:8192] + " "
    for n, weight in ((1, 0.5), (2, 1.0), (3, 1.0)):
        for i in range(len(padded) - n + 1):
            h = zlib.crc32(padded[i : i + n].encode())
            vector[h % dim] += weight if h & 0x80000000 else -weight
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return tuple(v / norm for v in vector)


async def batch_embed_contents(request: Request) -> Response:
    rt, body = await _begin(request, "batchEmbedContents")
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not requests:
        raise GeminiError(400, "* BatchEmbedContentsRequest.requests: requests is not specified")
    embeddings = []
    for i, item in enumerate(requests):
        where = f"requests[{i}]"
        if not isinstance(item, dict) or "content" not in item:
            raise GeminiError(400, f"* {where}.content: content is not specified")
        text = " ".join(_content_texts(item["content"], f"{where}.content"))
        dim = _embedding_dim(item.get("outputDimensionality"), rt.config, where)
        embeddings.append({"values": embed_text(text, dim)})
    return _json({"embeddings": embeddings})


async def embed_content(request: Request) -> Response:
    rt, body = await _begin(request, "embedContent")
    if not isinstance(body, dict) or "content" not in body:
        raise GeminiError(400, "* EmbedContentRequest.content: content is not specified")
    text = " ".join(_content_texts(body["content"], "content"))
    dim = _embedding_dim(body.get("outputDimensionality"), rt.config, "EmbedContentRequest")
    return _json({"embedding": {"values": embed_text(text, dim)}})


async def count_tokens(request: Request) -> Response:
    _, body = await _begin(request, "countTokens")
    if isinstance(body, dict) and isinstance(body.get("generateContentRequest"), dict):
        body = body["generateContentRequest"]
    req = _parse_generate(body, request_name="CountTokensRequest")
    total = _estimate_tokens(req.prompt_bytes)
    return _json(
        {"totalTokens": total, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": total}]}
    )


async def emulator_stats(request: Request) -> Response:
    return _json(_runtime(request).stats.snapshot())


async def emulator_requests(request: Request) -> Response:
    return _json(list(_runtime(request).recent))


async def emulator_reset(request: Request) -> Response:
    rt = _runtime(request)
    stats = rt.stats
    stats.reset()
    rt.recent.clear()
    rt.prefixes.clear()
    return _json(stats.snapshot())


async def emulator_config(request: Request) -> Response:
    rt = _runtime(request)
    if request.method == "POST":
        changes = _load_json(await request.body())
        if not isinstance(changes, dict):
            raise GeminiError(400, "Expected a JSON object of EmulatorConfig fields.")
        try:
            rt.config = rt.config.updated(changes)
        except ValueError as exc:
            raise GeminiError(400, str(exc)) from None
        if "seed" in changes:
            rt.rng = random.Random(rt.config.seed)
    return _json(rt.config.as_dict())


# --------------------------------------------------------------------------- app


async def _gemini_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, GeminiError):
        error = exc
    elif isinstance(exc, HTTPException):
        error = GeminiError(exc.status_code, exc.detail or "Not found.")
    else:
        error = GeminiError(500, "Internal error encountered.")
    if not isinstance(exc, InjectedAbort):  # counted as a fault, not as an error answer
        _runtime(request).stats.errors[str(error.code)] += 1
    return Response(error.body(), status_code=error.code, headers=_JSON_HEADERS)


class _HideInjectedAborts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, InjectedAbort)


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    log_filter = _HideInjectedAborts()
    logger = logging.getLogger("uvicorn.error")
    logger.addFilter(log_filter)
    try:
        yield
    finally:
        logger.removeFilter(log_filter)


def _model_routes() -> list[BaseRoute]:
    methods = {
        "streamGenerateContent": stream_generate_content,
        "generateContent": generate_content,
        "batchEmbedContents": batch_embed_contents,
        "embedContent": embed_content,
        "countTokens": count_tokens,
    }
    return [
        Route(f"/models/{{model}}:{name}", handler, methods=["POST"], name=name)
        for name, handler in methods.items()
    ]


def create_emulator_app(config: EmulatorConfig | None = None) -> Starlette:
    """The emulator as an ASGI app. Route names: ``{version}:{method}``, ``emulator:*``."""
    config = config or EmulatorConfig()
    model_routes = _model_routes()
    routes: list[BaseRoute] = [
        *(Mount(f"/{v}", routes=model_routes, name=v) for v in API_VERSIONS),
        Mount(
            "/_emulator",
            name="emulator",
            routes=[
                Route("/stats", emulator_stats, methods=["GET"], name="stats"),
                Route("/requests", emulator_requests, methods=["GET"], name="requests"),
                Route("/reset", emulator_reset, methods=["POST"], name="reset"),
                Route("/config", emulator_config, methods=["GET", "POST"], name="config"),
            ],
        ),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            GeminiError: _gemini_error,
            HTTPException: _gemini_error,
            Exception: _gemini_error,
        },
        lifespan=_lifespan,
    )
    app.state.emulator = _Runtime(
        config=config,
        stats=_Stats(),
        rng=random.Random(config.seed),
        response_ids=itertools.count(1),
    )
    return app


def run_emulator(*, host: str, port: int, config: EmulatorConfig) -> None:
    """Serves the emulator with uvicorn until interrupted."""
    uvicorn.run(
        create_emulator_app(config),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        backlog=4096,
        # Stalled streams never end on their own; do not let them hold shutdown forever.
        timeout_graceful_shutdown=2,
    )


# --------------------------------------------------------------------------- CLI


def add_emulator_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--host``, ``--port`` and one option per EmulatorConfig setting.

    Options default to None so the defaults live in EmulatorConfig only.
    """
    d = EmulatorConfig()
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s)")
    parser.add_argument("--port", type=int, default=8090, help="port (default %(default)s)")
    parser.add_argument(
        "--ttft-ms",
        metavar="MS|MIN-MAX",
        help=f"time to first chunk (default {d.ttft_ms_min:g}-{d.ttft_ms_max:g})",
    )
    parser.add_argument(
        "--chunk-interval-ms",
        metavar="MS|MIN-MAX",
        help=f"gap between chunks (default {d.chunk_interval_ms_min:g}-"
        f"{d.chunk_interval_ms_max:g})",
    )
    parser.add_argument("--chunks", type=int, help=f"chunks per answer (default {d.chunks})")
    parser.add_argument(
        "--chunk-chars", type=int, help=f"chars per chunk (default {d.chunk_chars})"
    )
    parser.add_argument(
        "--fault", choices=["none", *get_args(Fault)], help="fault to inject (default none)"
    )
    parser.add_argument(
        "--fault-status",
        type=int,
        help=f"HTTP status of injected errors (default {d.fault_status})",
    )
    parser.add_argument(
        "--fault-after-chunks",
        type=int,
        help=f"chunks sent before a mid-stream fault or stall (default {d.fault_after_chunks})",
    )
    parser.add_argument(
        "--fault-rate",
        type=float,
        help=f"share of requests that get the fault (default {d.fault_rate:g})",
    )
    parser.add_argument(
        "--mid-stream-action",
        choices=list(get_args(MidStreamAction)),
        help=f"mid_stream fault: error event or connection abort (default {d.mid_stream_action})",
    )
    parser.add_argument(
        "--embedding-dim", type=int, help=f"embedding size (default {d.embedding_dim})"
    )
    parser.add_argument("--model-version", help="modelVersion to report (default: the URL's model)")
    parser.add_argument("--api-key", help="the only key accepted (default: any non-empty key)")
    parser.add_argument("--seed", type=int, help="seed for delays and fault_rate draws")
    parser.add_argument(
        "--thinking-ms-per-token",
        type=float,
        help=f"wait per thought token before the first chunk (default {d.thinking_ms_per_token:g})",
    )
    parser.add_argument(
        "--dynamic-thinking-tokens",
        type=int,
        help="thought tokens when a request sets no budget or -1 "
        f"(default {d.dynamic_thinking_tokens})",
    )
    parser.add_argument(
        "--cache-min-tokens",
        type=int,
        help=f"shortest prefix reported as cached (default {d.cache_min_tokens})",
    )


def config_from_args(ns: argparse.Namespace) -> EmulatorConfig:
    changes = {
        key: value
        for key in (
            "ttft_ms",
            "chunk_interval_ms",
            "chunks",
            "chunk_chars",
            "fault",
            "fault_status",
            "fault_after_chunks",
            "fault_rate",
            "mid_stream_action",
            "embedding_dim",
            "model_version",
            "api_key",
            "seed",
            "thinking_ms_per_token",
            "dynamic_thinking_tokens",
            "cache_min_tokens",
        )
        if (value := getattr(ns, key, None)) is not None
    }
    return EmulatorConfig().updated(changes)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m linkcoach_stream.emulator.gemini",
        description="Local Gemini REST emulator for offline tests and load tests.",
    )
    add_emulator_arguments(parser)
    ns = parser.parse_args(argv)
    try:
        config = config_from_args(ns)
    except ValueError as exc:
        parser.error(str(exc))
    run_emulator(host=ns.host, port=ns.port, config=config)


if __name__ == "__main__":
    main()
