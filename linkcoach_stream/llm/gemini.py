"""Gemini through google-genai, streamed chunk by chunk.

Deliberate decisions:
- The SDK is given its own `httpx.AsyncClient`: with aiohttp installed (chromadb pulls it)
  the SDK would otherwise switch to aiohttp and retry failed connections on its own.
- SDK retries are off (`attempts=1`); this provider retries with backoff only before the
  first chunk, because after it the client has already seen part of an answer.
- google-genai has no cancel handle for a stream. Cancelling the task that iterates it
  and closing the async generator (`aclosing`) closes the HTTP response.
- First-chunk and idle-gap timeouts are enforced around each `__anext__`.
- Requests are spread over several SDK clients, each with its own connection pool:
  httpcore scans every pooled connection for each request, which made one pool of
  hundreds of open streams the hottest spot of the whole server under load.
- Chat streams read Gemini's `:streamGenerateContent?alt=sse` protocol directly by
  default (`GEMINI_STREAM_TRANSPORT=direct`): under load the SDK's per-chunk work (a
  pydantic `GenerateContentResponse` per chunk, its line decoder, the retry wrapper) was
  over half of the server's CPU. The direct reader sends the same request through
  aiohttp and parses each event with orjson; `GEMINI_STREAM_TRANSPORT=sdk` goes through
  google-genai instead. Reports (unary JSON) always use the SDK. aiohttp, not the SDK's
  httpx: at 400 concurrent 40-chunk answers httpx/httpcore/h11 (pure-Python HTTP/1.1
  parsing, per chunk) were 30 % of the server's CPU; aiohttp parses with llhttp (C) and
  its pool is not scanned per request, so one session serves every stream.
- Every request states its thinking budget (`GEMINI_THINKING_BUDGET` for chat, 0 by
  default; `REPORT_THINKING_BUDGET` for reports, -1 = dynamic): left out, gemini-2.5-flash
  thinks before its first visible token, which delays it by seconds and spends the
  output budget. A positive budget is added to `maxOutputTokens`, so
  `LLM_MAX_OUTPUT_TOKENS` stays the room for the visible answer.
- The prompt is ordered stable part first (system instruction: persona, then the
  leader's type; then the history) and per-turn parts last (the question and its
  retrieved passages), so Gemini's implicit prefix cache can serve the shared start;
  `cachedContentTokenCount` and `thoughtsTokenCount` are kept in the usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp
import certifi
import httpx
import orjson
from aiohttp.helpers import get_env_proxy_for_url
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from yarl import URL

from ..config import Settings
from .base import ChatPrompt, LLMError, StreamResult, Usage
from .prompts import user_message

_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
_POOL_SHARDS = 16
_DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
_API_VERSION = "v1beta"


def _classify(exc: BaseException) -> LLMError:
    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, genai_errors.APIError):
        code = int(getattr(exc, "code", 0) or 0)
        return _status_error(code, getattr(exc, "message", "") or str(exc))
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return LLMError("Gemini did not answer in time", kind="timeout", retryable=True)
    if isinstance(exc, httpx.HTTPError | aiohttp.ClientError | OSError):
        return LLMError(
            f"Gemini connection failed: {type(exc).__name__}", kind="connection", retryable=True
        )
    return LLMError(f"Gemini failed: {type(exc).__name__}", kind="unknown")


def _status_error(code: int, message: str) -> LLMError:
    kind = "rate_limited" if code == 429 else f"http_{code}" if code else "api_error"
    return LLMError(
        f"Gemini API error {code}: {message or 'no message'}"[:300],
        kind=kind,
        retryable=code in _RETRYABLE_STATUS,
    )


def _api_error(code: int, error: Any) -> LLMError:
    """From Gemini's error object `{"code", "message", "status"}`; `code` is the HTTP
    status to fall back on (0 mid-stream)."""
    message = ""
    if isinstance(error, dict):
        with contextlib.suppress(ValueError, TypeError):
            code = int(error.get("code") or code)
        message = str(error.get("message") or error.get("status") or "")
    return _status_error(code, message)


class _EventReader:
    """Splits an `alt=sse` body into JSON events.

    Events are `data: {...}` lines ended by a blank line (CRLF or LF). Any other
    non-empty line belongs to a bare JSON object: that is how Gemini reports an error
    after the stream has started (HTTP 200 already sent), pretty-printed over several
    lines.
    """

    __slots__ = ("_buffer", "_data", "_other")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self._other: list[bytes] = []

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        lines = (self._buffer + chunk).split(b"\n")
        self._buffer = lines.pop()
        for line in lines:
            self._line(line.rstrip(b"\r"), events)
        return events

    def close(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if self._buffer:
            self._line(self._buffer.rstrip(b"\r"), events)
            self._buffer = b""
        self._line(b"", events)
        if self._other:
            raise LLMError("Gemini sent an unreadable stream", kind="protocol")
        return events

    def _line(self, line: bytes, events: list[dict[str, Any]]) -> None:
        if line.startswith(b"data:"):
            self._data.append(line[5:])
        elif line:
            if not line.startswith(b":"):  # an SSE comment otherwise
                self._other.append(line)
                self._bare(events)
        elif self._data:
            events.append(self._load(b"\n".join(self._data)))
            self._data.clear()

    def _bare(self, events: list[dict[str, Any]]) -> None:
        try:
            value = orjson.loads(b"\n".join(self._other))
        except orjson.JSONDecodeError:
            return  # not balanced yet
        self._other.clear()
        if isinstance(value, dict):
            events.append(value)

    @staticmethod
    def _load(data: bytes) -> dict[str, Any]:
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise LLMError("Gemini sent an unreadable event", kind="protocol") from None
        if not isinstance(value, dict):
            raise LLMError("Gemini sent an unreadable event", kind="protocol")
        return value


# (text, finish reason, usage) of one streamed chunk; None where the chunk has none.
_Part = tuple[str | None, str | None, Usage | None]


def _event_part(event: dict[str, Any]) -> _Part:
    if "error" in event:
        raise _api_error(0, event["error"])
    text = finish = None
    candidates = event.get("candidates")
    if candidates:
        candidate = candidates[0]
        parts = (candidate.get("content") or {}).get("parts") or ()
        texts = [
            p["text"] for p in parts if isinstance(p.get("text"), str) and not p.get("thought")
        ]
        text = "".join(texts) if texts else None
        finish = candidate.get("finishReason")
    meta = event.get("usageMetadata")
    usage = None
    if meta:
        usage = Usage(
            prompt_tokens=meta.get("promptTokenCount"),
            completion_tokens=meta.get("candidatesTokenCount"),
            total_tokens=meta.get("totalTokenCount"),
            cached_tokens=meta.get("cachedContentTokenCount"),
            thought_tokens=meta.get("thoughtsTokenCount"),
        )
    return text, finish, usage


def _usage(meta: Any) -> Usage:
    return Usage(
        prompt_tokens=getattr(meta, "prompt_token_count", None),
        completion_tokens=getattr(meta, "candidates_token_count", None),
        total_tokens=getattr(meta, "total_token_count", None),
        cached_tokens=getattr(meta, "cached_content_token_count", None),
        thought_tokens=getattr(meta, "thoughts_token_count", None),
    )


def thinks(model: str) -> bool:
    """Whether `model` takes a `thinkingConfig`: the 2.5 models and later do; 1.x and 2.0
    models have no thinking and are sent none."""
    name = model.removeprefix("models/")
    return not name.startswith(("gemini-1.", "gemini-2.0", "gemini-pro"))


def max_output_tokens(answer_tokens: int, thinking_budget: int) -> int:
    """Thought tokens count against `maxOutputTokens`; room for both."""
    return answer_tokens + max(0, thinking_budget)


class _ChunkDeadline:
    """The first-chunk and idle-gap timeouts of one upstream request, on one timer.

    Each read only records when it began; the timer, when it fires, arms itself again
    for the time still left and cancels the task only once a read has really waited
    past the limit (the time the reader spends on a part between reads does not count).
    An `asyncio.timeout` around each read rescheduled a timer per chunk, 4 % of the
    server's CPU at 400 concurrent answers. Cancellation follows `asyncio.timeout`: the
    task is cancelled, and `expired_here` uncancels it and tells the reader to raise its
    own error only when nothing else cancelled the task meanwhile.
    """

    __slots__ = (
        "_loop",
        "_task",
        "_cancelling",
        "_first",
        "_idle",
        "_last",
        "_text",
        "_reading",
        "_handle",
        "_expired",
    )

    def __init__(self, *, first_s: float, idle_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._cancelling = task.cancelling()
        self._first, self._idle = first_s, idle_s
        self._last = self._loop.time()
        self._text = False
        self._reading = False
        self._expired = False
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(
            self._last + first_s, self._fire
        )

    def reading(self) -> None:
        """A read of the next part begins."""
        self._last = self._loop.time()
        self._reading = True

    def part(self, *, text: bool) -> None:
        """A part arrived; from the first text on, the idle limit applies."""
        self._reading = False
        if text and not self._text and self._handle is not None:
            # Once per request: the timer was set for the first-chunk limit.
            self._handle.cancel()
            self._handle = self._loop.call_at(self._loop.time() + self._idle, self._fire)
        self._text = text

    def _fire(self) -> None:
        limit = self._idle if self._text else self._first
        due = (self._last if self._reading else self._loop.time()) + limit
        if self._loop.time() < due:
            self._handle = self._loop.call_at(due, self._fire)
            return
        self._handle = None
        self._expired = True
        self._task.cancel()

    def expired_here(self) -> bool:
        """True when this deadline (and nothing else) cancelled the task."""
        if not self._expired:
            return False
        self._expired = False
        return self._task.uncancel() <= self._cancelling

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def env_proxy(url: str) -> tuple[URL | None, aiohttp.BasicAuth | None]:
    """The proxy the environment names for `url` (HTTP(S)_PROXY, NO_PROXY, a proxy's
    credentials in ~/.netrc): what aiohttp's `trust_env` looks up per request."""
    try:
        return get_env_proxy_for_url(URL(url))
    except LookupError:
        return None, None


class GeminiProvider:
    name = "gemini"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model = settings.gemini_model
        self._https: list[httpx.AsyncClient] = []
        self._clients: list[genai.Client] = []
        for _ in range(_POOL_SHARDS):
            http = httpx.AsyncClient(
                timeout=httpx.Timeout(settings.llm_total_timeout_s, connect=5.0),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
            )
            options = types.HttpOptions(
                httpx_async_client=http,
                retry_options=types.HttpRetryOptions(attempts=1),
            )
            if settings.gemini_base_url:
                options.base_url = settings.gemini_base_url
            self._https.append(http)
            self._clients.append(
                genai.Client(api_key=settings.gemini_api_key, http_options=options)
            )
        self._next = 0
        # Created on first use: an aiohttp session belongs to the running event loop.
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        base = (settings.gemini_base_url or _DEFAULT_BASE_URL).rstrip("/")
        self._stream_url = (
            f"{base}/{_API_VERSION}/models/{self.model}:streamGenerateContent?alt=sse"
        )
        self._headers = {
            "content-type": "application/json",
            "x-goog-api-key": settings.gemini_api_key or "",
        }
        self._proxy, self._proxy_auth = env_proxy(self._stream_url)

    def _shard(self) -> int:
        """The next connection pool shard, round robin (each call moves on by one)."""
        self._next = (self._next + 1) % _POOL_SHARDS
        return self._next

    def _client(self) -> genai.Client:
        return self._clients[self._shard()]

    def _stream_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise LLMError("the Gemini provider is closed", kind="connection")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=0,
                    keepalive_timeout=30,
                    # The CA bundle httpx (the SDK, reports) verifies against: both paths
                    # trust the same servers.
                    ssl=ssl.create_default_context(cafile=certifi.where()),
                ),
                timeout=aiohttp.ClientTimeout(total=self.settings.llm_total_timeout_s, connect=5.0),
                # HTTPS_PROXY / NO_PROXY apply as they do to httpx, but are read once
                # (`env_proxy`): with trust_env every request reads them and ~/.netrc in
                # two thread-pool hops before it is sent.
                trust_env=False,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    def _contents(self, prompt: ChatPrompt) -> list[types.Content]:
        contents = [
            types.Content(
                role="user" if t.role == "user" else "model", parts=[types.Part(text=t.content)]
            )
            for t in prompt.history
        ]
        contents.append(
            types.Content(
                role="user", parts=[types.Part(text=user_message(prompt.question, prompt.passages))]
            )
        )
        return contents

    def _config(
        self,
        system: str,
        *,
        max_tokens: int | None = None,
        thinking_budget: int | None = None,
        **extra: Any,
    ) -> types.GenerateContentConfig:
        budget = thinking_budget
        if budget is None:
            budget = self.settings.gemini_thinking_budget
        if not thinks(self.settings.gemini_model):
            budget = 0
        return types.GenerateContentConfig(
            system_instruction=system,
            temperature=self.settings.llm_temperature,
            max_output_tokens=max_output_tokens(
                max_tokens or self.settings.llm_max_output_tokens, budget
            ),
            thinking_config=types.ThinkingConfig(thinking_budget=budget)
            if thinks(self.settings.gemini_model)
            else None,
            **extra,
        )

    async def _backoff(self, attempt: int) -> None:
        await asyncio.sleep(min(4.0, 0.25 * 2**attempt) * (0.5 + random.random()))

    def _direct_body(self, prompt: ChatPrompt) -> bytes:
        contents = [
            {"role": "user" if t.role == "user" else "model", "parts": [{"text": t.content}]}
            for t in prompt.history
        ]
        contents.append(
            {"role": "user", "parts": [{"text": user_message(prompt.question, prompt.passages)}]}
        )
        budget = self.settings.gemini_thinking_budget if thinks(self.settings.gemini_model) else 0
        generation: dict[str, Any] = {
            "temperature": self.settings.llm_temperature,
            "maxOutputTokens": max_output_tokens(self.settings.llm_max_output_tokens, budget),
        }
        if thinks(self.settings.gemini_model):
            generation["thinkingConfig"] = {"thinkingBudget": budget}
        # Kept for retries while the answer streams: an exact-size copy, not orjson's
        # larger output buffer.
        body = orjson.dumps(
            {
                "contents": contents,
                "systemInstruction": {"parts": [{"text": prompt.system}]},
                "generationConfig": generation,
            }
        )
        return bytes(memoryview(body))

    async def _direct_parts(self, body: bytes) -> AsyncGenerator[_Part, None]:
        """One request over `:streamGenerateContent?alt=sse`, parsed without the SDK."""
        async with self._stream_session().post(
            self._stream_url,
            data=body,
            headers=self._headers,
            proxy=self._proxy,
            proxy_auth=self._proxy_auth,
        ) as response:
            if response.status != 200:
                try:
                    error = orjson.loads(await response.read()).get("error")
                except (orjson.JSONDecodeError, AttributeError):
                    error = None
                raise _api_error(response.status, error)
            reader = _EventReader()
            async for data in response.content.iter_any():
                for event in reader.feed(data):
                    yield _event_part(event)
            for event in reader.close():
                yield _event_part(event)

    async def _sdk_parts(self, prompt: ChatPrompt) -> AsyncGenerator[_Part, None]:
        chunks = await self._client().aio.models.generate_content_stream(
            model=self.model, contents=self._contents(prompt), config=self._config(prompt.system)
        )
        async with contextlib.aclosing(chunks) as iterator:  # type: ignore[type-var]
            async for chunk in iterator:
                usage = None if chunk.usage_metadata is None else _usage(chunk.usage_metadata)
                finish = None
                if chunk.candidates and chunk.candidates[0].finish_reason:
                    reason = chunk.candidates[0].finish_reason
                    finish = str(getattr(reason, "value", reason))
                yield (chunk.text if chunk.candidates else None), finish, usage

    async def stream(self, prompt: ChatPrompt, result: StreamResult) -> AsyncIterator[str]:
        direct = self.settings.gemini_stream_transport == "direct"
        body = self._direct_body(prompt) if direct else b""
        attempt = 0
        while True:
            started = False
            deadline = _ChunkDeadline(
                first_s=self.settings.llm_first_chunk_timeout_s,
                idle_s=self.settings.llm_idle_timeout_s,
            )
            try:
                source = self._direct_parts(body) if direct else self._sdk_parts(prompt)
                async with contextlib.aclosing(source) as parts:
                    while True:
                        deadline.reading()
                        try:
                            text, finish, usage = await anext(parts)
                        except StopAsyncIteration:
                            break
                        except asyncio.CancelledError:
                            if not deadline.expired_here():
                                raise
                            raise LLMError(
                                "Gemini stalled mid-answer"
                                if started
                                else "Gemini sent no first chunk in time",
                                kind="stall" if started else "first_chunk_timeout",
                                retryable=not started,
                            ) from None
                        if usage is not None:
                            result.usage = usage
                        if finish:
                            result.finish_reason = finish.lower()
                        if text:
                            started = True
                        deadline.part(text=started)
                        if text:
                            yield text
                result.finish_reason = result.finish_reason or "stop"
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below
                # Before any await: the timer must not fire during the backoff.
                deadline.close()
                error = _classify(exc)
                if started or not error.retryable or attempt >= self.settings.llm_retries:
                    raise error from exc
                attempt += 1
                await self._backoff(attempt)
            finally:
                deadline.close()

    async def generate_json(
        self, *, system: str, prompt: str, schema: dict[str, Any]
    ) -> tuple[str, Usage]:
        config = self._config(
            system,
            # A whole Korean report (and any thinking tokens) needs far more room than a
            # chat answer.
            max_tokens=self.settings.report_max_output_tokens,
            thinking_budget=self.settings.report_thinking_budget,
            response_mime_type="application/json",
            response_json_schema=schema,
        )
        attempt = 0
        while True:
            try:
                response = await asyncio.wait_for(
                    self._client().aio.models.generate_content(
                        model=self.model, contents=prompt, config=config
                    ),
                    self.settings.llm_total_timeout_s,
                )
                return response.text or "", _usage(response.usage_metadata)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below
                error = _classify(exc)
                if not error.retryable or attempt >= self.settings.llm_retries:
                    raise error from exc
                attempt += 1
                await self._backoff(attempt)

    async def aclose(self) -> None:
        self._closed = True
        for http in self._https:
            await http.aclose()
        if self._session is not None:
            await self._session.close()
            self._session = None
