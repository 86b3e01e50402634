"""Where a turn's time goes: Server-Timing, `meta.timings`, OpenTelemetry spans (in-memory
exporter) and the TTFT / chunk-gap / stall metrics."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from linkcoach_stream.app import create_app
from linkcoach_stream.config import Settings
from linkcoach_stream.tracing import open_tracer_provider
from tests.conftest import (
    ALLOWED_ORIGIN,
    client_of,
    free_port,
    gemini_settings,
    make_user,
    read_sse,
    running,
    serving,
)

STREAM = "/api/v1/coaching/query/stream"
QUERY = "/api/v1/coaching/query"
EXPECTED_GAP_MS = 20.0


class Traced:
    def __init__(self, url: str, exporter: InMemorySpanExporter) -> None:
        self.url = url
        self.exporter = exporter


@pytest.fixture(scope="module")
async def traced(
    settings: Settings, emulator: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Traced]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    data_dir: Path = tmp_path_factory.mktemp("timing-data")
    app_settings = gemini_settings(settings, emulator).with_overrides(
        retrieval_enabled=True,
        data_dir=data_dir,
        rag_embedder="hash",
        expected_chunk_gap_ms=EXPECTED_GAP_MS,
        max_streams_per_user=0,
    )
    app = create_app(app_settings, tracer_provider=provider)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    # The start-up ingests the knowledge base.
    async with running(config, start_timeout=180):
        yield Traced(f"http://127.0.0.1:{port}", exporter)
        provider.shutdown()


def server_timing(header: str) -> dict[str, float]:
    parts = {}
    for item in header.split(","):
        match = re.fullmatch(r"\s*([a-z_]+);dur=([0-9.]+)\s*", item)
        assert match, f"not a Server-Timing entry: {item!r}"
        parts[match[1]] = float(match[2])
    return parts


def counter(metrics: str, name: str) -> float:
    lines = [line for line in metrics.splitlines() if line.startswith(name)]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


async def test_every_response_has_server_timing(traced: Traced) -> None:
    async with httpx.AsyncClient(base_url=traced.url, timeout=30) as client:
        for path in ("/health", "/ready", "/no-such-page", "/api/v1/conversations"):
            r = await client.get(path)
            timing = server_timing(r.headers["server-timing"])
            assert "app" in timing, path
        user = await make_user(client)
        r = await client.get("/api/v1/conversations", headers=user.headers)
    timing = server_timing(r.headers["server-timing"])
    assert {"auth", "ratelimit", "db", "app"} <= set(timing)
    assert timing["auth"] <= timing["app"]


def varies_by_origin(r: httpx.Response) -> bool:
    return "origin" in {v.strip().lower() for v in r.headers.get("vary", "").split(",")}


async def test_the_one_allowed_origin_may_read_the_timings_of_every_response(
    traced: Traced,
) -> None:
    async with httpx.AsyncClient(base_url=traced.url, timeout=30) as client:
        user = await make_user(client)
        preflight = await client.options(
            STREAM,
            headers={"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST"},
        )
        responses = [
            preflight,
            await client.get("/health"),
            await client.get("/health", headers={"Origin": ALLOWED_ORIGIN}),
            await client.get("/api/v1/conversations", headers=user.headers),
        ]
        async with client.stream(
            "POST",
            STREAM,
            json={"question": "팀원과 목표를 어떻게 공유하나요?"},
            headers={**user.headers, "Origin": ALLOWED_ORIGIN},
        ) as stream:
            responses.append(stream)
            await stream.aread()
    for r in responses:
        assert r.status_code in (200, 201), (r.request.url, r.status_code)
        assert "app" in server_timing(r.headers["server-timing"])
        assert r.headers.get_list("timing-allow-origin") == [ALLOWED_ORIGIN]
    # A script on that origin may also read the header itself from a fetch response.
    exposed = responses[2].headers["access-control-expose-headers"].lower()
    assert "server-timing" in exposed and "retry-after" in exposed


async def test_with_several_origins_the_callers_own_is_echoed_if_allowed(
    settings: Settings,
) -> None:
    other = "https://other-parent.example"
    origins = (ALLOWED_ORIGIN, other)
    async with (
        serving(settings.with_overrides(cors_origins=origins)) as running,
        client_of(running) as client,
    ):
        user = await make_user(client)
        for origin in origins:
            for path, headers in (("/health", {}), ("/api/v1/conversations", user.headers)):
                r = await client.get(path, headers={**headers, "Origin": origin})
                assert r.status_code == 200, r.text
                assert "app" in server_timing(r.headers["server-timing"])
                assert r.headers.get_list("timing-allow-origin") == [origin]
                assert r.headers["access-control-allow-origin"] == origin
                assert varies_by_origin(r)
        for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {}):
            r = await client.get("/health", headers=headers)
            assert "server-timing" in r.headers
            assert "timing-allow-origin" not in r.headers, headers
            assert varies_by_origin(r)


@pytest.mark.parametrize(("origins", "expected"), [(("*",), ["*"]), ((), [])])
async def test_any_origin_reads_the_timings_under_a_wildcard_and_none_without_cors(
    settings: Settings, origins: tuple[str, ...], expected: list[str]
) -> None:
    async with (
        serving(settings.with_overrides(cors_origins=origins)) as running,
        client_of(running) as client,
    ):
        for headers in ({"Origin": "https://anyone.example"}, {}):
            r = await client.get("/health", headers=headers)
            assert "app" in server_timing(r.headers["server-timing"])
            assert r.headers.get_list("timing-allow-origin") == expected


async def test_a_stream_head_times_the_parts_before_streaming_and_meta_repeats_them(
    traced: Traced,
) -> None:
    async with httpx.AsyncClient(base_url=traced.url, timeout=30) as client:
        user = await make_user(client, leadership_type="HLH")
        question = {"question": "팀원과 대화하는 법을 알려주세요"}
        async with client.stream("POST", STREAM, json=question, headers=user.headers) as r:
            head = server_timing(r.headers["server-timing"])
            events = await read_sse(r)
    assert {"auth", "ratelimit", "db", "retrieval", "app"} <= set(head)
    assert "llm_ttfb" not in head, "the head is sent before the provider answers"
    assert events[-1].event == "done"
    meta = events[0].data
    assert set(meta["timings"]) >= {"auth", "ratelimit", "db", "retrieval"}
    assert all(isinstance(v, float) and v >= 0 for v in meta["timings"].values())
    assert meta["timings"]["retrieval"] == pytest.approx(head["retrieval"], abs=0.05)


async def test_a_non_streaming_turn_times_the_provider_and_the_persistence(traced: Traced) -> None:
    async with httpx.AsyncClient(base_url=traced.url, timeout=30) as client:
        user = await make_user(client)
        r = await client.post(
            QUERY,
            json={"question": "느린 첫 응답 [[emulator:ttft_ms=250]]"},
            headers=user.headers,
        )
    assert r.status_code == 200
    timing = server_timing(r.headers["server-timing"])
    assert timing["llm_ttfb"] >= 240
    assert {"auth", "retrieval", "db", "persistence"} <= set(timing)
    assert timing["app"] >= timing["llm_ttfb"]


async def test_a_turn_is_traced_with_gen_ai_attributes(traced: Traced) -> None:
    traced.exporter.clear()
    async with httpx.AsyncClient(base_url=traced.url, timeout=30) as client:
        user = await make_user(client)
        traced.exporter.clear()
        r = await client.post(
            QUERY,
            json={"question": "추적 [[emulator:ttft_ms=120,chunks=5]]"},
            headers=user.headers,
        )
        assert r.status_code == 200
    spans = traced.exporter.get_finished_spans()
    by_name = {s.name: s for s in spans}
    root = by_name["POST /api/v1/coaching/query"]
    assert root.kind == SpanKind.SERVER
    assert root.attributes is not None
    assert root.attributes["http.response.status_code"] == 200
    chat = next(s for s in spans if s.name.startswith("chat "))
    assert chat.kind == SpanKind.CLIENT
    attrs = dict(chat.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "gemini"
    assert attrs["gen_ai.request.model"] == "gemini-2.5-flash"
    assert attrs["gen_ai.response.time_to_first_chunk"] >= 0.11
    assert attrs["gen_ai.usage.output_tokens"] > 0
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["linkcoach.chunks"] == 5
    assert [e.name for e in chat.events] == ["gen_ai.first_chunk"]
    for name in ("auth", "retrieval", "persistence"):
        assert name in by_name, f"no {name} span"
    turn = [by_name["auth"], by_name["retrieval"], chat, by_name["persistence"]]
    assert {s.context.trace_id for s in turn} == {root.context.trace_id}
    assert chat.parent is not None and chat.parent.span_id == root.context.span_id
    assert by_name["auth"].end_time <= by_name["retrieval"].start_time  # type: ignore[operator]
    assert by_name["retrieval"].end_time <= chat.start_time  # type: ignore[operator]
    assert chat.end_time <= by_name["persistence"].end_time  # type: ignore[operator]


async def test_a_failed_answer_marks_its_span_as_an_error(traced: Traced) -> None:
    async with httpx.AsyncClient(base_url=traced.url, timeout=30) as client:
        user = await make_user(client)
        traced.exporter.clear()
        r = await client.post(
            QUERY, json={"question": "실패 [[emulator:fault=before_first]]"}, headers=user.headers
        )
    assert r.status_code == 502
    chat = next(s for s in traced.exporter.get_finished_spans() if s.name.startswith("chat "))
    assert chat.attributes is not None and chat.attributes["error.type"] == "llm_error"
    assert not chat.status.is_ok


async def test_metrics_count_stalls_beyond_twice_the_expected_gap(traced: Traced) -> None:
    async with httpx.AsyncClient(base_url=traced.url, timeout=30) as client:
        user = await make_user(client)

        async def stalls_after(question: str) -> float:
            before = counter((await client.get("/metrics")).text, "linkcoach_chunk_stalls_total")
            async with client.stream(
                "POST", STREAM, json={"question": question}, headers=user.headers
            ) as r:
                assert (await read_sse(r))[-1].event == "done"
            after = (await client.get("/metrics")).text
            return counter(after, "linkcoach_chunk_stalls_total") - before

        slow = await stalls_after("느리게 [[emulator:chunks=8,chunk_interval_ms=120]]")
        fast = await stalls_after("빠르게 [[emulator:chunks=8,chunk_interval_ms=2]]")
        metrics = (await client.get("/metrics")).text
    # 7 gaps of ~120 ms against a 40 ms threshold; gaps of ~2 ms stay under it.
    assert slow >= 6
    assert fast < slow / 2
    assert counter(metrics, "linkcoach_time_to_first_chunk_seconds_count") >= 2
    assert counter(metrics, "linkcoach_inter_chunk_seconds_count") >= 14


def test_tracing_is_off_unless_enabled() -> None:
    assert open_tracer_provider(Settings()) is None
    provider = open_tracer_provider(Settings(otel_enabled=True))
    assert isinstance(provider, TracerProvider)
    provider.shutdown()
    assert Settings.from_env({"OTEL_ENABLED": "true"}).otel_enabled


async def test_a_websocket_turn_has_its_own_timings_and_trace(traced: Traced) -> None:
    import json

    from websockets.asyncio.client import connect

    async with httpx.AsyncClient(base_url=traced.url, timeout=30) as client:
        user = await make_user(client)
    url = traced.url.replace("http", "ws") + "/api/v1/coaching/ws"
    metas = []
    traces = set()
    async with connect(url, subprotocols=["bearer", user.token]) as ws:  # type: ignore[list-item]
        for question in ("첫 질문 [[emulator:chunks=3]]", "둘째 질문 [[emulator:chunks=3]]"):
            traced.exporter.clear()
            await ws.send(json.dumps({"type": "question", "question": question}))
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if frame["type"] == "meta":
                    metas.append(frame)
                if frame["type"] in ("done", "error"):
                    break
            assert frame["type"] == "done"
            await asyncio.sleep(0.1)  # the persistence span ends after `done` is sent
            spans = traced.exporter.get_finished_spans()
            turn = next(s for s in spans if s.name == "turn")
            chat = next(s for s in spans if s.name.startswith("chat "))
            retrieval = next(s for s in spans if s.name == "retrieval")
            assert chat.parent is not None and chat.parent.span_id == turn.context.span_id
            assert retrieval.context.trace_id == turn.context.trace_id
            traces.add(turn.context.trace_id)
    assert len(metas) == 2
    assert len(traces) == 2, "each turn on the socket is its own trace"
    for meta in metas:
        assert {"ratelimit", "retrieval", "db"} <= set(meta["timings"])
