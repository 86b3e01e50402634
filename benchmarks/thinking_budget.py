"""Time to first token and answer length by thinking budget.

    python benchmarks/thinking_budget.py
    python benchmarks/thinking_budget.py --answers 60 --dynamic-thinking-tokens 1500

Starts the Gemini emulator in its own process (TTFT 300-800 ms, 2 ms per thought token,
`--dynamic-thinking-tokens` thought tokens when a request leaves the budget to the model)
and streams the same chat prompt through `GeminiProvider.stream` with
`GEMINI_THINKING_BUDGET` = -1 (dynamic: what a request without a budget gets from
gemini-2.5-flash), 1024 and 0 (the default), `LLM_MAX_OUTPUT_TOKENS=1024`. Prints TTFT
p50/p95, thought tokens, finish reasons and answer length per budget, and writes
benchmarks/results/thinking_budget.json.
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
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from gemini_transport import wait_ready
from stream_harness import free_port

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from linkcoach_stream.config import Settings  # noqa: E402
from linkcoach_stream.llm.base import ChatPrompt, StreamResult  # noqa: E402
from linkcoach_stream.llm.gemini import GeminiProvider  # noqa: E402
from linkcoach_stream.llm.prompts import system_instruction  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "thinking_budget.json"
BUDGETS = (-1, 1024, 0)


async def run(url: str, budget: int, answers: int) -> dict[str, object]:
    settings = Settings().with_overrides(
        llm_provider="gemini",
        gemini_api_key="bench",
        gemini_base_url=url,
        gemini_thinking_budget=budget,
        llm_max_output_tokens=1024,
    )
    provider = GeminiProvider(settings)
    prompt = ChatPrompt(
        system=system_instruction("LHH"),
        history=[],
        question="팀원이 회의에서 의견을 잘 내지 않을 때 어떻게 해야 할까요?",
    )
    ttfts: list[float] = []
    lengths: list[int] = []
    thoughts: list[int] = []
    finishes: Counter[str] = Counter()

    async def one() -> None:
        result = StreamResult()
        started = time.perf_counter()
        first: float | None = None
        text = []
        async for chunk in provider.stream(prompt, result):
            if first is None:
                first = time.perf_counter() - started
            text.append(chunk)
        ttfts.append((first if first is not None else time.perf_counter() - started) * 1000)
        lengths.append(len("".join(text)))
        thoughts.append(result.usage.thought_tokens or 0)
        finishes[result.finish_reason or "?"] += 1

    try:
        await asyncio.gather(*(one() for _ in range(answers)))
    finally:
        await provider.aclose()
    ttfts.sort()
    return {
        "thinking_budget": budget,
        "ttft_ms_p50": round(statistics.median(ttfts)),
        "ttft_ms_p95": round(ttfts[int(0.95 * (len(ttfts) - 1))]),
        "thought_tokens_median": statistics.median(thoughts),
        "answer_chars_median": statistics.median(lengths),
        "finish_reasons": dict(finishes),
    }


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--answers", type=int, default=30, help="answers per budget")
    parser.add_argument("--dynamic-thinking-tokens", type=int, default=1500)
    args = parser.parse_args(argv)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    emulator = subprocess.Popen(
        [sys.executable, "-m", "linkcoach_stream.cli", "emulate-gemini", "--port", str(port),
         "--ttft-ms", "300-800", "--chunk-interval-ms", "20-60", "--chunks", "12",
         "--chunk-chars", "20", "--thinking-ms-per-token", "2",
         "--dynamic-thinking-tokens", str(args.dynamic_thinking_tokens)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )  # fmt: skip
    rows = []
    try:
        await wait_ready(url)
        for budget in BUDGETS:
            row = await run(url, budget, args.answers)
            rows.append(row)
            print(  # noqa: T201
                f"budget {budget:5d}: TTFT p50 {row['ttft_ms_p50']} ms, "
                f"p95 {row['ttft_ms_p95']} ms, "
                f"thoughts {row['thought_tokens_median']}, answer {row['answer_chars_median']} "
                f"chars, finish {row['finish_reasons']}"
            )
    finally:
        emulator.terminate()
        emulator.wait(10)
    result = {
        "command": "python benchmarks/thinking_budget.py " + " ".join(argv or sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "processor": platform.processor()},
        "answers_per_budget": args.answers,
        "emulator": {
            "ttft_ms": "300-800",
            "thinking_ms_per_token": 2,
            "dynamic_thinking_tokens": args.dynamic_thinking_tokens,
        },
        "llm_max_output_tokens": 1024,
        "budgets": rows,
    }
    RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
