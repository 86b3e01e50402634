"""A local Gemini emulator: Gemini's REST protocol, as google-genai uses it, served offline.

Tests and load tests point the real google-genai client at it
(``HttpOptions(base_url=..., httpx_async_client=...)``) so the project's real Gemini code
path runs at any concurrency without network or cost. This module holds the app (routes,
handlers, error mapping), ``run_emulator`` and the CLI
(``python -m linkcoach_stream.emulator.gemini``, ``linkcoach emulate-gemini``); the rest of
the package holds what the emulator says and how it sends it:

- ``config``: ``EmulatorConfig`` and the coercion of CLI / marker / JSON values
- ``protocol``: request parsing and Gemini's error format
- ``answers``, ``schema``, ``embeddings``: the text, the structured output, the vectors
- ``plan``, ``pacing``, ``faults``: one generation decided up front, played with its
  delays, and the injected faults
- ``state``: counters, random source, recent requests, remembered prefixes

Deliberate decisions (do not "fix"):

- Runtime state (config, counters, random source) lives on ``app.state``, not in a
  lifespan: httpx's ``ASGITransport`` never runs the lifespan, and tests use it. The
  lifespan only installs the log filter that hides injected aborts.
- ``GET /_emulator/requests`` returns the last requests' texts and generation config, so
  tests can check what the model was sent.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal, get_args

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from .config import EmulatorConfig, Fault, MidStreamAction
from .embeddings import embed_text, embedding_dim
from .faults import HideInjectedAborts, InjectedAbort, fault_error
from .pacing import GenerationResponse
from .plan import make_plan
from .protocol import GeminiError, content_texts, estimate_tokens, load_json, parse_generate
from .state import Runtime, Stats, runtime_of

__all__ = [
    "add_emulator_arguments",
    "config_from_args",
    "create_emulator_app",
    "main",
    "run_emulator",
]

API_VERSIONS = ("v1", "v1beta", "v1alpha")
_JSON_HEADERS = {"content-type": "application/json; charset=UTF-8"}


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


async def _begin(request: Request, method: str) -> tuple[Runtime, Any]:
    rt = runtime_of(request)
    rt.stats.requests[method] += 1
    _check_api_key(request, rt.config)
    return rt, load_json(await request.body())


async def _generate(request: Request, *, method: str) -> Response:
    rt, body = await _begin(request, method)
    plan = make_plan(rt, request.path_params["model"], parse_generate(body))
    if plan.fault == "before_first":
        rt.stats.faults["before_first"] += 1
        raise fault_error(plan.config.fault_status)
    if method == "generateContent":
        return GenerationResponse(plan, rt.stats, mode="unary")
    mode: Literal["sse", "array"] = "sse" if request.query_params.get("alt") == "sse" else "array"
    return GenerationResponse(plan, rt.stats, mode=mode)


async def stream_generate_content(request: Request) -> Response:
    return await _generate(request, method="streamGenerateContent")


async def generate_content(request: Request) -> Response:
    return await _generate(request, method="generateContent")


def _json(value: object, status: int = 200) -> Response:
    return Response(orjson.dumps(value), status_code=status, headers=_JSON_HEADERS)


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
        text = " ".join(content_texts(item["content"], f"{where}.content"))
        dim = embedding_dim(item.get("outputDimensionality"), rt.config, where)
        embeddings.append({"values": embed_text(text, dim)})
    return _json({"embeddings": embeddings})


async def embed_content(request: Request) -> Response:
    rt, body = await _begin(request, "embedContent")
    if not isinstance(body, dict) or "content" not in body:
        raise GeminiError(400, "* EmbedContentRequest.content: content is not specified")
    text = " ".join(content_texts(body["content"], "content"))
    dim = embedding_dim(body.get("outputDimensionality"), rt.config, "EmbedContentRequest")
    return _json({"embedding": {"values": embed_text(text, dim)}})


async def count_tokens(request: Request) -> Response:
    _, body = await _begin(request, "countTokens")
    if isinstance(body, dict) and isinstance(body.get("generateContentRequest"), dict):
        body = body["generateContentRequest"]
    req = parse_generate(body, request_name="CountTokensRequest")
    total = estimate_tokens(req.prompt_bytes)
    return _json(
        {"totalTokens": total, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": total}]}
    )


async def emulator_stats(request: Request) -> Response:
    return _json(runtime_of(request).stats.snapshot())


async def emulator_requests(request: Request) -> Response:
    return _json(list(runtime_of(request).recent))


async def emulator_reset(request: Request) -> Response:
    rt = runtime_of(request)
    stats = rt.stats
    stats.reset()
    rt.recent.clear()
    rt.prefixes.clear()
    return _json(stats.snapshot())


async def emulator_config(request: Request) -> Response:
    rt = runtime_of(request)
    if request.method == "POST":
        changes = load_json(await request.body())
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
        runtime_of(request).stats.errors[str(error.code)] += 1
    return Response(error.body(), status_code=error.code, headers=_JSON_HEADERS)


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    log_filter = HideInjectedAborts()
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
    app.state.emulator = Runtime(
        config=config,
        stats=Stats(),
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
