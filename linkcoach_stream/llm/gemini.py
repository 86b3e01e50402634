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
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from ..config import Settings
from .base import ChatPrompt, LLMError, StreamResult, Usage
from .prompts import user_message

_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
_POOL_SHARDS = 16


def _classify(exc: BaseException) -> LLMError:
    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, genai_errors.APIError):
        code = int(getattr(exc, "code", 0) or 0)
        kind = "rate_limited" if code == 429 else f"http_{code}" if code else "api_error"
        return LLMError(
            f"Gemini API error {code}: {getattr(exc, 'message', '') or exc}"[:300],
            kind=kind,
            retryable=code in _RETRYABLE_STATUS,
        )
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return LLMError("Gemini did not answer in time", kind="timeout", retryable=True)
    if isinstance(exc, httpx.HTTPError | OSError):
        return LLMError(
            f"Gemini connection failed: {type(exc).__name__}", kind="connection", retryable=True
        )
    return LLMError(f"Gemini failed: {type(exc).__name__}", kind="unknown")


def _usage(meta: Any) -> Usage:
    return Usage(
        prompt_tokens=getattr(meta, "prompt_token_count", None),
        completion_tokens=getattr(meta, "candidates_token_count", None),
        total_tokens=getattr(meta, "total_token_count", None),
    )


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

    @property
    def client(self) -> genai.Client:
        self._next = (self._next + 1) % len(self._clients)
        return self._clients[self._next]

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
        self, system: str, *, max_tokens: int | None = None, **extra: Any
    ) -> types.GenerateContentConfig:
        return types.GenerateContentConfig(
            system_instruction=system,
            temperature=self.settings.llm_temperature,
            max_output_tokens=max_tokens or self.settings.llm_max_output_tokens,
            **extra,
        )

    async def _backoff(self, attempt: int) -> None:
        await asyncio.sleep(min(4.0, 0.25 * 2**attempt) * (0.5 + random.random()))

    async def stream(self, prompt: ChatPrompt, result: StreamResult) -> AsyncIterator[str]:
        contents = self._contents(prompt)
        config = self._config(prompt.system)
        attempt = 0
        while True:
            started = False
            try:
                iterator = await asyncio.wait_for(
                    self.client.aio.models.generate_content_stream(
                        model=self.model, contents=contents, config=config
                    ),
                    self.settings.llm_first_chunk_timeout_s,
                )
                async with contextlib.aclosing(iterator) as chunks:  # type: ignore[type-var]
                    while True:
                        timeout = (
                            self.settings.llm_idle_timeout_s
                            if started
                            else self.settings.llm_first_chunk_timeout_s
                        )
                        try:
                            chunk = await asyncio.wait_for(anext(chunks), timeout)
                        except StopAsyncIteration:
                            break
                        except TimeoutError:
                            raise LLMError(
                                "Gemini stalled mid-answer"
                                if started
                                else "Gemini sent no first chunk in time",
                                kind="stall" if started else "first_chunk_timeout",
                                retryable=not started,
                            ) from None
                        if chunk.usage_metadata is not None:
                            result.usage = _usage(chunk.usage_metadata)
                        if chunk.candidates and chunk.candidates[0].finish_reason:
                            reason = chunk.candidates[0].finish_reason
                            result.finish_reason = str(getattr(reason, "value", reason)).lower()
                        text = chunk.text if chunk.candidates else None
                        if text:
                            started = True
                            yield text
                result.finish_reason = result.finish_reason or "stop"
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below
                error = _classify(exc)
                if started or not error.retryable or attempt >= self.settings.llm_retries:
                    raise error from exc
                attempt += 1
                await self._backoff(attempt)

    async def generate_json(
        self, *, system: str, prompt: str, schema: dict[str, Any]
    ) -> tuple[str, Usage]:
        config = self._config(
            system,
            # A whole Korean report (and any thinking tokens) needs far more room than a
            # chat answer.
            max_tokens=self.settings.report_max_output_tokens,
            response_mime_type="application/json",
            response_json_schema=schema,
        )
        attempt = 0
        while True:
            try:
                response = await asyncio.wait_for(
                    self.client.aio.models.generate_content(
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
        for http in self._https:
            await http.aclose()
