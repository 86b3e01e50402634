"""The Gemini emulator, driven by the real google-genai SDK.

Most tests serve the app with uvicorn on a free port: httpx's ASGITransport buffers the
whole response before returning it, so pacing, stalls and disconnects only show over a
real socket. One test checks that the buffered ASGITransport path still parses.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx
import jsonschema
import pytest
import uvicorn
from google import genai
from google.genai import errors, types
from pydantic import BaseModel, Field

from linkcoach_stream.emulator.config import EmulatorConfig
from linkcoach_stream.emulator.gemini import (
    add_emulator_arguments,
    config_from_args,
    create_emulator_app,
)

MODEL = "gemini-2.5-flash"
QUESTION = "팀원들과 소통이 잘 안 됩니다. 어떻게 시작하면 좋을까요?"
FAST = EmulatorConfig(
    ttft_ms_min=0, ttft_ms_max=0, chunk_interval_ms_min=0, chunk_interval_ms_max=0, seed=7
)
ROOT = Path(__file__).resolve().parents[2]


def has_hangul(text: str) -> bool:
    return any("\uac00" <= ch <= "\ud7a3" for ch in text)


@dataclass
class Emulator:
    url: str

    def client(
        self,
        http: httpx.AsyncClient,
        *,
        api_version: str | None = None,
        api_key: str = "test",
    ) -> genai.Client:
        return genai.Client(
            api_key=api_key,
            http_options=types.HttpOptions(
                base_url=self.url, api_version=api_version, httpx_async_client=http
            ),
        )


@asynccontextmanager
async def serve(config: EmulatorConfig) -> AsyncIterator[Emulator]:
    app = create_emulator_app(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app, log_config=None, lifespan="on", access_log=False, timeout_graceful_shutdown=1
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):
            if server.started:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield Emulator(f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await task
        sock.close()


EmulatorFactory = Callable[[EmulatorConfig], Awaitable[Emulator]]


@pytest.fixture
async def start_emulator() -> AsyncIterator[EmulatorFactory]:
    async with AsyncExitStack() as stack:

        async def start(config: EmulatorConfig) -> Emulator:
            return await stack.enter_async_context(serve(config))

        yield start


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def collect(
    client: genai.Client, contents: str, config: types.GenerateContentConfig | None = None
) -> list[str]:
    stream = await client.aio.models.generate_content_stream(
        model=MODEL, contents=contents, config=config
    )
    return [chunk.text or "" async for chunk in stream]


# ----------------------------------------------------------------------- streaming text


@pytest.mark.asyncio
@pytest.mark.parametrize("api_version", ["v1", "v1beta"])
async def test_streamed_chunks_join_to_the_non_streamed_korean_answer(
    start_emulator: EmulatorFactory, http: httpx.AsyncClient, api_version: str
) -> None:
    emulator = await start_emulator(dataclasses.replace(FAST, chunks=6, chunk_chars=15))
    client = emulator.client(http, api_version=api_version)

    chunks = []
    stream = await client.aio.models.generate_content_stream(model=MODEL, contents=QUESTION)
    async for chunk in stream:
        chunks.append(chunk)
    unary = await client.aio.models.generate_content(model=MODEL, contents=QUESTION)

    texts = [c.text or "" for c in chunks]
    assert len(texts) == 6
    assert "".join(texts) == unary.text
    assert has_hangul("".join(texts))
    assert "팀원들과 소통이 잘" in texts[0] + texts[1]  # quotes the question's first words
    last = chunks[-1]
    assert last.usage_metadata is not None
    usage = last.usage_metadata
    assert usage.prompt_token_count and usage.candidates_token_count
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count
    assert last.candidates and last.candidates[0].finish_reason == types.FinishReason.STOP
    assert all(c.usage_metadata is None for c in chunks[:-1])
    assert chunks[0].model_version == MODEL
    assert unary.usage_metadata == last.usage_metadata


@pytest.mark.asyncio
async def test_chunks_have_fixed_size_and_cut_korean_words_mid_word(
    start_emulator: EmulatorFactory, http: httpx.AsyncClient
) -> None:
    emulator = await start_emulator(dataclasses.replace(FAST, chunks=10, chunk_chars=7))
    texts = await collect(emulator.client(http), QUESTION)

    assert [len(t) for t in texts] == [7] * 10
    # Hangul on both sides of a boundary, no space between: a word cut in two.
    pairs = zip(texts, texts[1:], strict=False)
    assert any(has_hangul(a[-1]) and has_hangul(b[0]) for a, b in pairs)


@pytest.mark.asyncio
async def test_chunk_marker_changes_one_request_only_and_is_not_quoted(
    start_emulator: EmulatorFactory, http: httpx.AsyncClient
) -> None:
    emulator = await start_emulator(FAST)
    client = emulator.client(http)

    marked = await collect(client, f"[[emulator:chunks=3]] {QUESTION}")
    plain = await collect(client, QUESTION)

    assert len(marked) == 3
    assert "emulator" not in "".join(marked)
    assert "팀원들과" in "".join(marked)
    assert len(plain) == FAST.chunks


@pytest.mark.asyncio
async def test_time_to_first_chunk_and_chunk_gaps_follow_the_config(
    start_emulator: EmulatorFactory, http: httpx.AsyncClient
) -> None:
    config = dataclasses.replace(
        FAST,
        ttft_ms_min=200,
        ttft_ms_max=250,
        chunk_interval_ms_min=40,
        chunk_interval_ms_max=50,
        chunks=4,
    )
    emulator = await start_emulator(config)
    client = emulator.client(http)

    start = time.perf_counter()
    arrivals = []
    stream = await client.aio.models.generate_content_stream(model=MODEL, contents=QUESTION)
    async for _ in stream:
        arrivals.append(time.perf_counter() - start)

    assert 0.19 <= arrivals[0] < 1.0
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert all(0.03 <= g < 0.5 for g in gaps), gaps


# ----------------------------------------------------------------------- other methods


@pytest.mark.asyncio
async def test_embeddings_have_the_configured_dim_unit_norm_and_rank_similar_texts(
    start_emulator: EmulatorFactory, http: httpx.AsyncClient
) -> None:
    emulator = await start_emulator(FAST)
    client = emulator.client(http)
    texts = ["팀원과 목표를 공유하는 방법", "팀원과 목표를 함께 공유하기", "점심 메뉴 추천"]

    result = await client.aio.models.embed_content(model="text-embedding-004", contents=texts)
    again = await client.aio.models.embed_content(model="text-embedding-004", contents=texts[:1])
    small = await client.aio.models.embed_content(
        model="gemini-embedding-001",
        contents=texts[:1],
        config=types.EmbedContentConfig(output_dimensionality=64),
    )

    assert result.embeddings is not None and again.embeddings and small.embeddings
    vectors = [e.values or [] for e in result.embeddings]
    assert [len(v) for v in vectors] == [768, 768, 768]
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-9) for v in vectors)
    cos = [sum(a * b for a, b in zip(vectors[0], v, strict=True)) for v in vectors[1:]]
    assert cos[0] > cos[1]
    assert again.embeddings[0].values == vectors[0]
    assert len(small.embeddings[0].values or []) == 64


@pytest.mark.asyncio
async def test_embed_content_and_count_tokens_answer_in_gemini_shape(
    start_emulator: EmulatorFactory, http: httpx.AsyncClient
) -> None:
    emulator = await start_emulator(dataclasses.replace(FAST, embedding_dim=32))
    headers = {"x-goog-api-key": "test"}

    single = await http.post(
        f"{emulator.url}/v1beta/models/text-embedding-004:embedContent",
        json={"content": {"parts": [{"text": "안녕하세요"}]}},
        headers=headers,
    )
    tokens = await emulator.client(http).aio.models.count_tokens(model=MODEL, contents=QUESTION)

    assert single.status_code == 200
    assert len(single.json()["embedding"]["values"]) == 32
    assert tokens.total_tokens == (len(QUESTION.encode()) + 3) // 4


@pytest.mark.asyncio
async def test_sse_frames_are_data_lines_ended_by_crlf_crlf(
    start_emulator: EmulatorFactory, http: httpx.AsyncClient
) -> None:
    emulator = await start_emulator(dataclasses.replace(FAST, chunks=3))
    response = await http.post(
        f"{emulator.url}/v1/models/{MODEL}:streamGenerateContent?alt=sse",
        json={"contents": [{"role": "user", "parts": [{"text": QUESTION}]}]},
        headers={"x-goog-api-key": "test"},
    )

    assert response.headers["content-type"].startswith("text/event-stream")
    frames = response.content.split(b"\r\n\r\n")
    assert frames[-1] == b"" and len(frames) == 4
    assert all(f.startswith(b'data: {"candidates":') for f in frames[:-1])
    assert b"\\u" not in response.content and "팀원들과" in response.text  # raw UTF-8


@pytest.mark.asyncio
async def test_asgi_transport_gives_the_same_chunks_without_pacing() -> None:
    app = create_emulator_app(dataclasses.replace(FAST, chunks=4))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport) as http:
        client = genai.Client(
            api_key="test",
            http_options=types.HttpOptions(base_url="http://emulator", httpx_async_client=http),
        )
        texts = await collect(client, QUESTION)
        stats = (await http.get("http://emulator/_emulator/stats")).json()

    assert len(texts) == 4 and has_hangul("".join(texts))
    assert stats["requests"] == {"streamGenerateContent": 1}


# ----------------------------------------------------------------------- structured output


class Strength(BaseModel):
    title: str
    description: str


class Report(BaseModel):
    summary: str
    leadership_type: Literal["참여코칭형", "과도기형"]
    score: float = Field(ge=1, le=6)
    members: int = Field(ge=2, le=9)
    high: bool
    strengths: list[Strength] = Field(min_length=3, max_length=3)
    note: str | None = None


@pytest.mark.asyncio
@pytest.mark.parametrize("streaming", [False, True])
async def test_structured_output_parses_into_the_response_schema(
    start_emulator: EmulatorFactory, http: httpx.AsyncClient, streaming: bool
) -> None:
    emulator = await start_emulator(FAST)
    client = emulator.client(http)
    config = types.GenerateContentConfig(
        response_mime_type="application/json", response_schema=Report
    )

    if streaming:
        stream = await client.aio.models.generate_content_stream(
            model=MODEL, contents=QUESTION, config=config
        )
        chunks = [c.text or "" async for c in stream]
        assert len(chunks) > 1
        report = Report.model_validate_json("".join(chunks))
    else:
        response = await client.aio.models.generate_content(
            model=MODEL, contents=QUESTION, config=config
        )
        assert isinstance(response.parsed, Report)
        report = response.parsed

    assert len(report.strengths) == 3
    assert 1 <= report.score <= 6 and 2 <= report.members <= 9
    assert has_hangul(report.summary)


JSON_SCHEMA = {
    "type": "object",
    "properties": {
        "actions": {
            "type": "array",
            "minItems": 2,
            "maxItems": 4,
            "items": {"$ref": "#/$defs/Action"},
        },
        "priority": {"enum": ["high", "low"]},
        "confidence": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "tags": {"type": ["array", "null"], "items": {"type": "string", "maxLength": 5}},
        "owner": {"anyOf": [{"type": "null"}, {"type": "string", "minLength": 30}]},
    },
    "required": ["actions", "priority", "confidence"],
    "additionalProperties": False,
    "$defs": {
        "Action": {
            "type": "object",
            "properties": {
                "step": {"type": "integer", "minimum": 1, "maximum": 3},
                "text": {"type": "string"},
                "done": {"type": "boolean"},
            },
            "required": ["step", "text", "done"],
        }
    },
}


@pytest.mark.asyncio
async def test_structured_output_validates_against_a_response_json_schema(
    start_emulator: EmulatorFactory, http: httpx.AsyncClient
) -> None:
    emulator = await start_emulator(FAST)
    config = types.GenerateContentConfig(
        response_mime_type="application/json", response_json_schema=JSON_SCHEMA
    )
    client = emulator.client(http, api_version="v1beta")

    chunks = await collect(client, QUESTION, config)
    unary = await client.aio.models.generate_content(model=MODEL, contents=QUESTION, config=config)

    assert "".join(chunks) == unary.text
    jsonschema.validate(unary.parsed, JSON_SCHEMA)


# ----------------------------------------------------------------------- faults


@pytest.mark.asyncio
async def test_before_first_fault_raises_server_error_with_the_configured_status(
    start_emulator: EmulatorFactory, http: httpx.AsyncClient
) -> None:
    emulator = await start_emulator(dataclasses.replace(FAST, fault="before_first"))
    client = emulator.client(http)

    with pytest.raises(errors.ServerError) as server_error:
        await collect(client, QUESTION)
    with pytest.raises(errors.ClientError) as quota:
        await collect(client, f"{QUESTION} [[emulator:fault_status=429]]")

    assert server_error.value.code == 503 and server_error.value.status == "UNAVAILABLE"
    assert quota.value.code == 429 and quota.value.status == "RESOURCE_EXHAUSTED"


@pytest.mark.asyncio
async def test_mid_stream_fault_raises_during_iteration_after_some_chunks(
    start_emulator: EmulatorFactory, http: httpx.AsyncClient
) -> None:
    emulator = await start_emulator(FAST)
    client = emulator.client(http)
    received: list[str] = []

    stream = await client.aio.models.generate_content_stream(
        model=MODEL, contents=f"[[emulator:fault=mid_stream,fault_after_chunks=3]] {QUESTION}"
    )
    with pytest.raises(errors.ServerError) as caught:
        async for chunk in stream:
            received.append(chunk.text or "")

    assert len(received) == 3
    assert caught.value.code == 503


@pytest.mark.asyncio
async def test_aborted_stream_and_client_disconnect_leave_no_error_logs(
    start_emulator: EmulatorFactory, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    emulator = await start_emulator(dataclasses.replace(FAST, chunk_interval_ms_max=50))
    client = emulator.client(http)
    caplog.set_level(logging.WARNING)

    with pytest.raises(httpx.RemoteProtocolError):
        await collect(client, f"[[emulator:fault=mid_stream,mid_stream_action=abort]] {QUESTION}")
    async with http.stream(
        "POST",
        f"{emulator.url}/v1/models/{MODEL}:streamGenerateContent?alt=sse",
        json={"contents": [{"parts": [{"text": QUESTION}]}]},
        headers={"x-goog-api-key": "test"},
    ) as response:
        async for _ in response.aiter_lines():
            break  # leaving the block mid-body closes the connection
    await asyncio.sleep(0.2)
    after = await collect(client, QUESTION)

    assert len(after) == FAST.chunks
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    stats = (await http.get(f"{emulator.url}/_emulator/stats")).json()
    assert stats["disconnects"] == 1 and stats["streaming"] == 0
    assert stats["faults"] == {"mid_stream": 1} and stats["errors"] == {}


@pytest.mark.asyncio
async def test_stall_is_detected_with_a_timeout_and_released_on_disconnect(
    start_emulator: EmulatorFactory, http: httpx.AsyncClient
) -> None:
    emulator = await start_emulator(dataclasses.replace(FAST, fault="stall", fault_after_chunks=2))
    client = emulator.client(http)
    received: list[str] = []

    async def consume() -> None:
        stream = await client.aio.models.generate_content_stream(model=MODEL, contents=QUESTION)
        async for chunk in stream:
            received.append(chunk.text or "")

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(consume(), timeout=0.5)
    during = (await http.get(f"{emulator.url}/_emulator/stats")).json()
    # The cancelled iteration closed its response; give the server a moment to notice.
    for _ in range(50):
        after = (await http.get(f"{emulator.url}/_emulator/stats")).json()
        if after["streaming"] == 0:
            break
        await asyncio.sleep(0.02)

    assert len(received) == 2
    assert during["faults"] == {"stall": 1}
    assert after["streaming"] == 0 and after["disconnects"] == 1


# ----------------------------------------------------------------------- auth and errors


@pytest.mark.asyncio
async def test_request_without_api_key_is_refused_in_gemini_error_format(
    start_emulator: EmulatorFactory,
) -> None:
    emulator = await start_emulator(FAST)

    async def drop_key(request: httpx.Request) -> None:
        request.headers.pop("x-goog-api-key", None)

    async with httpx.AsyncClient(event_hooks={"request": [drop_key]}) as keyless:
        with pytest.raises(errors.ClientError) as caught:
            await collect(emulator.client(keyless), QUESTION)
        raw = await keyless.post(
            f"{emulator.url}/v1/models/{MODEL}:generateContent",
            json={"contents": [{"parts": [{"text": "hi"}]}]},
        )

    assert caught.value.code == 403 and caught.value.status == "PERMISSION_DENIED"
    assert raw.status_code == 403
    assert set(raw.json()["error"]) == {"code", "message", "status"}


@pytest.mark.asyncio
async def test_wrong_api_key_is_refused_when_the_emulator_pins_one(
    start_emulator: EmulatorFactory, http: httpx.AsyncClient
) -> None:
    emulator = await start_emulator(dataclasses.replace(FAST, api_key="right-key"))

    with pytest.raises(errors.ClientError) as caught:
        await emulator.client(http, api_key="wrong-key").aio.models.generate_content(
            model=MODEL, contents=QUESTION
        )
    ok = await emulator.client(http, api_key="right-key").aio.models.generate_content(
        model=MODEL, contents=QUESTION
    )

    assert caught.value.code == 400 and "API key not valid" in (caught.value.message or "")
    assert ok.text


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b'{"contents": []}', b'{"contents": [{"parts": "x"}]}'],
)
async def test_malformed_body_is_a_400_in_gemini_error_format(
    start_emulator: EmulatorFactory, http: httpx.AsyncClient, body: bytes
) -> None:
    emulator = await start_emulator(FAST)

    response = await http.post(
        f"{emulator.url}/v1beta/models/{MODEL}:streamGenerateContent?alt=sse",
        content=body,
        headers={"x-goog-api-key": "test", "content-type": "application/json"},
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == 400 and error["status"] == "INVALID_ARGUMENT" and error["message"]


@pytest.mark.asyncio
async def test_unknown_method_is_a_404_in_gemini_error_format(
    start_emulator: EmulatorFactory, http: httpx.AsyncClient
) -> None:
    emulator = await start_emulator(FAST)

    response = await http.post(f"{emulator.url}/v1/models/{MODEL}:predict", json={})

    assert response.status_code == 404
    assert response.json()["error"]["status"] == "NOT_FOUND"


# ----------------------------------------------------------------------- control endpoints


@pytest.mark.asyncio
async def test_stats_count_requests_by_method_and_reset(
    start_emulator: EmulatorFactory, http: httpx.AsyncClient
) -> None:
    emulator = await start_emulator(FAST)
    client = emulator.client(http)

    await collect(client, QUESTION)
    await collect(client, QUESTION)
    await client.aio.models.generate_content(model=MODEL, contents=QUESTION)
    await client.aio.models.embed_content(model="text-embedding-004", contents=["a"])
    stats = (await http.get(f"{emulator.url}/_emulator/stats")).json()
    reset = (await http.post(f"{emulator.url}/_emulator/reset")).json()

    assert stats["requests"] == {
        "streamGenerateContent": 2,
        "generateContent": 1,
        "batchEmbedContents": 1,
    }
    assert stats["streams_completed"] == 2 and stats["streaming"] == 0
    assert stats["chunks_sent"] == 2 * FAST.chunks
    assert reset["requests"] == {} and reset["total_requests"] == 0


@pytest.mark.asyncio
async def test_config_endpoint_changes_the_running_emulator(
    start_emulator: EmulatorFactory, http: httpx.AsyncClient
) -> None:
    emulator = await start_emulator(FAST)
    client = emulator.client(http)

    updated = await http.post(
        f"{emulator.url}/_emulator/config",
        json={"chunks": 2, "fault": "before_first", "fault_status": 429},
    )
    with pytest.raises(errors.ClientError):
        await collect(client, QUESTION)
    await http.post(f"{emulator.url}/_emulator/config", json={"fault": None})
    texts = await collect(client, QUESTION)
    rejected = await http.post(f"{emulator.url}/_emulator/config", json={"chunkz": 2})

    assert updated.status_code == 200 and updated.json()["chunks"] == 2
    assert len(texts) == 2
    assert rejected.status_code == 400 and "chunkz" in rejected.json()["error"]["message"]


@pytest.mark.asyncio
async def test_hundreds_of_concurrent_streams_complete(
    start_emulator: EmulatorFactory,
) -> None:
    config = dataclasses.replace(
        FAST, ttft_ms_min=50, ttft_ms_max=100, chunk_interval_ms_min=5, chunk_interval_ms_max=10
    )
    emulator = await start_emulator(config)
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:
        client = emulator.client(http)
        results = await asyncio.gather(*(collect(client, f"{QUESTION} {i}") for i in range(300)))
    # A fresh connection: a pooled one may just have been closed by the server's keep-alive.
    async with httpx.AsyncClient(timeout=30) as http:
        stats = (await http.get(f"{emulator.url}/_emulator/stats")).json()

    assert all(len(r) == config.chunks for r in results)
    assert stats["streams_completed"] == 300
    assert stats["max_streaming"] > 50


# ----------------------------------------------------------------------- CLI and process


def test_cli_arguments_build_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_emulator_arguments(parser)

    ns = parser.parse_args(
        ["--port", "9000", "--ttft-ms", "100-200", "--chunk-interval-ms", "5", "--fault", "stall"]
    )
    config = config_from_args(ns)
    defaults = config_from_args(parser.parse_args([]))

    assert ns.port == 9000
    assert (config.ttft_ms_min, config.ttft_ms_max) == (100, 200)
    assert (config.chunk_interval_ms_min, config.chunk_interval_ms_max) == (5, 5)
    assert config.fault == "stall"
    assert defaults == EmulatorConfig()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.asyncio
async def test_module_runs_as_a_server_process_that_streams(http: httpx.AsyncClient) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "linkcoach_stream.emulator.gemini",
            "--port",
            str(port),
            "--ttft-ms",
            "10",
            "--chunk-interval-ms",
            "1-3",
            "--chunks",
            "5",
        ],
        env=env,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if (await http.get(f"{url}/_emulator/stats")).status_code == 200:
                    break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
        client = Emulator(url).client(http, api_version="v1beta")
        texts = await collect(client, QUESTION)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)

    assert len(texts) == 5 and has_hangul("".join(texts))
    assert b"Traceback" not in stderr and b"RuntimeWarning" not in stderr
