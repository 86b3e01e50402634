"""The bare baseline that `benchmarks/streams.py` measures the full server against.

A minimal Starlette + sse-starlette app with the same streaming surface as the service:
`POST /api/v1/coaching/query/stream` takes the same body and answers with the same
`meta` / `delta` / `done` (or `error`) SSE events, each with an increasing `id:`, forwarding
the same Gemini emulator through google-genai. `POST /api/v1/auth/token` hands out a dummy
token so `linkcoach loadtest` runs against it unchanged; the `Authorization` header is
accepted and ignored.

Deliberate decisions (the ratio full/baseline is only meaningful if these hold):

- Nothing but the forwarding: no auth, no database, no Redis, no retrieval, no history,
  no coalescing, no metrics, no API log. Whatever the full server costs on top of this is
  what the benchmark reports.
- The same transport choices as the server's `GeminiProvider`: google-genai with our own
  `httpx.AsyncClient` (aiohttp, pulled in by chromadb, would otherwise be used), SDK
  retries off, and requests spread over 16 clients, each with its own connection pool.
  One pool of hundreds of open streams makes httpcore's per-request pool scan the hottest
  spot of a forwarding server; a baseline without the shards would be slow for a reason
  the server has already fixed, and flatter the ratio. `--shards 1` shows that cost.
- Served by uvicorn with uvloop and httptools, one worker, no access log: as
  `linkcoach serve` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import uvicorn
from google import genai
from google.genai import types
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
DEFAULT_SHARDS = 16


def _json(value: object, status: int = 200) -> Response:
    return Response(orjson.dumps(value), status_code=status, media_type="application/json")


def _error(status: int, code: str, message: str) -> Response:
    return _json({"error": {"code": code, "message": message}}, status)


class Upstream:
    """google-genai clients over their own httpx pools, used round-robin."""

    def __init__(self, *, api_key: str, base_url: str, model: str, shards: int) -> None:
        self.model = model
        self._https = [
            httpx.AsyncClient(
                timeout=httpx.Timeout(180.0, connect=5.0),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
            )
            for _ in range(max(1, shards))
        ]
        self._clients = [
            genai.Client(
                api_key=api_key,
                http_options=types.HttpOptions(
                    base_url=base_url,
                    httpx_async_client=http,
                    retry_options=types.HttpRetryOptions(attempts=1),
                ),
            )
            for http in self._https
        ]
        self._next = itertools.cycle(self._clients)

    def client(self) -> genai.Client:
        return next(self._next)

    async def aclose(self) -> None:
        for http in self._https:
            await http.aclose()


async def mint_token(request: Request) -> Response:
    body = await request.body()
    user_id = "baseline"
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
        user_id = str(orjson.loads(body).get("user_id") or user_id)
    return _json(
        {
            "access_token": "baseline-token",
            "token_type": "bearer",
            "expires_in": 3600,
            "refresh_token": "baseline-refresh",
            "refresh_expires_in": 3600,
            "user_id": user_id,
        },
        201,
    )


async def health(request: Request) -> Response:
    return _json({"status": "ok"})


async def query_stream(request: Request) -> Response:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return _error(400, "invalid_json", "body is not JSON")
    question = body.get("question") if isinstance(body, dict) else None
    if not isinstance(question, str) or not question.strip():
        return _error(422, "validation_error", "question: required")
    upstream: Upstream = request.state.upstream
    conversation_id = str(body.get("conversation_id") or uuid.uuid4())
    message_id = str(uuid.uuid4())

    async def events() -> AsyncIterator[ServerSentEvent]:
        ids = itertools.count(1)

        def frame(event: str, data: dict[str, Any]) -> ServerSentEvent:
            return ServerSentEvent(data=orjson.dumps(data).decode(), event=event, id=str(next(ids)))

        yield frame(
            "meta",
            {
                "conversation_id": conversation_id,
                "message_id": message_id,
                "sources": [],
                "provider": "gemini",
                "model": upstream.model,
            },
        )
        usage: dict[str, Any] = {}
        finish_reason = "stop"
        try:
            iterator = await upstream.client().aio.models.generate_content_stream(
                model=upstream.model, contents=question
            )
            async with contextlib.aclosing(iterator) as chunks:  # type: ignore[type-var]
                async for chunk in chunks:
                    meta = chunk.usage_metadata
                    if meta is not None:
                        usage = {
                            "prompt_tokens": meta.prompt_token_count,
                            "completion_tokens": meta.candidates_token_count,
                            "total_tokens": meta.total_token_count,
                        }
                    if chunk.candidates and chunk.candidates[0].finish_reason:
                        reason = chunk.candidates[0].finish_reason
                        finish_reason = str(getattr(reason, "value", reason)).lower()
                    text = chunk.text if chunk.candidates else None
                    if text:
                        yield frame("delta", {"text": text})
        except Exception as exc:  # noqa: BLE001 - any upstream failure ends the stream
            yield frame(
                "error",
                {"code": "llm_error", "message": type(exc).__name__, "message_id": message_id},
            )
            return
        yield frame(
            "done",
            {
                "message_id": message_id,
                "finish_reason": finish_reason,
                "usage": usage,
                "provider": "gemini",
                "status": "complete",
            },
        )

    return EventSourceResponse(events(), headers=SSE_HEADERS, ping=15)


def create_app(*, api_key: str, base_url: str, model: str, shards: int) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        upstream = Upstream(api_key=api_key, base_url=base_url, model=model, shards=shards)
        try:
            yield {"upstream": upstream}
        finally:
            await upstream.aclose()

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"], name="health"),
            Route("/api/v1/auth/token", mint_token, methods=["POST"], name="auth:token"),
            Route(
                "/api/v1/coaching/query/stream",
                query_stream,
                methods=["POST"],
                name="coaching:stream",
            ),
        ],
        lifespan=lifespan,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument(
        "--gemini-base-url", required=True, help="the emulator, e.g. http://127.0.0.1:8090"
    )
    parser.add_argument("--api-key", default="x")
    parser.add_argument("--model", default="gemini-2.5-flash")
    parser.add_argument(
        "--shards",
        type=int,
        default=DEFAULT_SHARDS,
        help=f"google-genai clients with their own pools (default {DEFAULT_SHARDS})",
    )
    args = parser.parse_args()
    app = create_app(
        api_key=args.api_key, base_url=args.gemini_base_url, model=args.model, shards=args.shards
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        workers=1,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
        backlog=4096,  # as `linkcoach serve` (LISTEN_BACKLOG), so bursts compare alike
    )


if __name__ == "__main__":
    main()
