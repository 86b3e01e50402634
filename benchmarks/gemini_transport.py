"""CPU per streamed answer: the direct `alt=sse` reader against google-genai.

    python benchmarks/gemini_transport.py
    python benchmarks/gemini_transport.py --answers 800 --concurrency 100 --rounds 3

Starts the Gemini emulator in its own process with no pacing (no time to first chunk,
no gap between chunks; 12 chunks of 20 characters), then streams the same prompt through
`GeminiProvider.stream` with `GEMINI_STREAM_TRANSPORT=direct` and `=sdk`, alternating the
two for `--rounds` rounds, and measures this process's CPU time per answer
(`time.process_time`). The texts of both transports are compared. Prints the figures and
writes benchmarks/results/gemini_transport.json with the medians and the sdk/direct ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from stream_harness import free_port

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from linkcoach_stream.config import Settings  # noqa: E402
from linkcoach_stream.llm.base import ChatPrompt, StreamResult, Turn  # noqa: E402
from linkcoach_stream.llm.gemini import GeminiProvider  # noqa: E402
from linkcoach_stream.llm.prompts import system_instruction  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "gemini_transport.json"


async def wait_ready(url: str) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            try:
                if (await client.get(f"{url}/_emulator/stats")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("the emulator did not start")


async def run(
    url: str, transport: str, answers: int, concurrency: int
) -> tuple[float, str, int | None]:
    settings = Settings().with_overrides(
        llm_provider="gemini",
        gemini_api_key="bench",
        gemini_base_url=url,
        gemini_stream_transport=transport,
    )
    provider = GeminiProvider(settings)
    prompt = ChatPrompt(
        system=system_instruction("HLH"),
        history=[Turn("user", "안녕하세요"), Turn("assistant", "반갑습니다. 무엇을 도와드릴까요?")],
        question="팀원과 갈등이 있을 때 리더로서 어떻게 대화를 시작해야 할까요?",
    )
    gate = asyncio.Semaphore(concurrency)
    last: tuple[str, int | None] = ("", None)

    async def one() -> None:
        nonlocal last
        async with gate:
            result = StreamResult()
            text = "".join([chunk async for chunk in provider.stream(prompt, result)])
            last = (text, result.usage.total_tokens)

    try:
        await asyncio.gather(*(one() for _ in range(20)))  # connections, imports
        started = time.process_time()
        await asyncio.gather(*(one() for _ in range(answers)))
        cpu_ms = (time.process_time() - started) * 1000 / answers
    finally:
        await provider.aclose()
    return cpu_ms, *last


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--answers", type=int, default=400, help="answers per transport/round")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    emulator = subprocess.Popen(
        [sys.executable, "-m", "linkcoach_stream.cli", "emulate-gemini", "--port", str(port),
         "--ttft-ms", "0", "--chunk-interval-ms", "0", "--chunks", "12", "--chunk-chars", "20"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )  # fmt: skip
    figures: dict[str, list[float]] = {"direct": [], "sdk": []}
    texts: dict[str, str] = {}
    try:
        await wait_ready(url)
        for i in range(args.rounds):
            order = ("direct", "sdk") if i % 2 == 0 else ("sdk", "direct")
            for transport in order:
                cpu_ms, text, tokens = await run(url, transport, args.answers, args.concurrency)
                figures[transport].append(round(cpu_ms, 3))
                texts[transport] = text
                print(f"round {i + 1} {transport:6s} {cpu_ms:6.2f} ms CPU per answer")  # noqa: T201
    finally:
        emulator.terminate()
        emulator.wait(10)
    same = texts["direct"] == texts["sdk"] and bool(texts["direct"])
    direct = statistics.median(figures["direct"])
    sdk = statistics.median(figures["sdk"])
    result = {
        "command": "python benchmarks/gemini_transport.py " + " ".join(argv or sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "processor": platform.processor()},
        "answers_per_round": args.answers,
        "concurrency": args.concurrency,
        "chunks_per_answer": 12,
        "cpu_ms_per_answer": figures,
        "median_ms": {"direct": round(direct, 3), "sdk": round(sdk, 3)},
        "sdk_over_direct": round(sdk / direct, 2),
        "same_text": same,
    }
    RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(  # noqa: T201
        f"median CPU per 12-chunk answer: direct {direct:.2f} ms, sdk {sdk:.2f} ms "
        f"({sdk / direct:.1f}x); same text: {same}; wrote {RESULTS.relative_to(ROOT)}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
