from __future__ import annotations

import argparse

import pytest

from linkcoach_stream.loadtest import SSEParser, add_arguments, percentile, run
from tests.conftest import API_KEY, RunningServer


def test_sse_parser_handles_frames_split_anywhere() -> None:
    raw = (
        'id: 1\nevent: meta\ndata: {"message_id": "m"}\n\n: ping\n\n'
        'id: 2\nevent: delta\ndata: {"text": "안녕"}\n\n'
    )
    parser = SSEParser()
    events = []
    data = raw.encode()
    for i in range(0, len(data), 7):
        events += parser.feed(data[i : i + 7])
    assert events == [("meta", {"message_id": "m"}), ("delta", {"text": "안녕"})]


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(101)], 99) == 99.0


@pytest.mark.parametrize("mode", ["sse", "ws"])
async def test_loadtest_drives_real_streams(gemini_server: RunningServer, mode: str) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--url",
            gemini_server.url,
            "--mode",
            mode,
            "-c",
            "4",
            "--turns",
            "2",
            "--ramp-up",
            "0.1",
            "--api-key",
            API_KEY,
            "--quiet",
        ]
    )
    result = await run(args)
    assert result["turns_ok"] == 8 and result["turns_failed"] == 0
    assert result["ttft_ms"]["p50"] > 0
    # Every stream's `meta` comes before its first delta, with the server's timings.
    assert 0 < result["meta_ms"]["p50"] <= result["ttft_ms"]["p50"]
    timings = result["server_timings_ms"]
    assert timings and all(p["p50"] is not None and p["p50"] >= 0 for p in timings.values())
    assert result["gap_ms"]["p50"] is not None
    assert result["chunks"] >= 8 * 3
