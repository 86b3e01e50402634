"""How the emulator sends an answer, decided up front: pieces, delays, fault and usage.

``make_plan`` applies a request's markers to the config, cuts the answer into chunks,
draws the time to first token and every gap, decides whether this request gets the fault,
and fills ``usageMetadata`` (thinking and cached prefixes included). ``pacing`` only plays
the result.

Deliberate decisions (do not "fix"):

- Chunks are cut by character count and routinely split Korean words, as real streams do.
- Thinking: a request's ``generationConfig.thinkingConfig.thinkingBudget`` (or
  ``thinking_budget``, as google-genai writes it) N > 0 makes the
  model "think" N tokens before its first chunk, which waits ``thinking_ms_per_token``
  each, is reported as ``thoughtsTokenCount`` and counts against ``maxOutputTokens``
  (an answer without room left is cut, ``finishReason: MAX_TOKENS``), as on
  gemini-2.5-flash. -1 or no thinkingConfig (dynamic, the model's default) thinks
  ``dynamic_thinking_tokens``, 0 by default so requests that never ask keep their timing.
"""

from __future__ import annotations

from dataclasses import dataclass

from .answers import answer_text
from .config import EmulatorConfig, Fault
from .protocol import GeminiError, GenerateRequest, estimate_tokens, thought_tokens
from .state import Runtime

__all__ = ["Plan", "make_plan"]


def _fit_output(text: str, room_tokens: int) -> str:
    """The start of `text` that fits `room_tokens` (by the same ~4 bytes a token)."""
    room = room_tokens * 4
    used = 0
    for i, ch in enumerate(text):
        used += len(ch.encode())
        if used > room:
            return text[:i]
    return text


def _split(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


@dataclass(frozen=True, slots=True)
class Plan:
    """One generation, fully prepared before the first wait."""

    config: EmulatorConfig
    pieces: list[str]
    fault: Fault | None
    usage: dict[str, object]
    finish_reason: str
    model_version: str
    response_id: str
    delays: list[float]  # seconds before each piece; [0] is the time to first token


def make_plan(rt: Runtime, model: str, req: GenerateRequest) -> Plan:
    config = rt.config
    if req.markers:
        changes: dict[str, object] = dict(req.markers)
        if "fault" in changes:
            changes.setdefault("fault_rate", "1")
        try:
            config = config.updated(changes)
        except ValueError as exc:
            raise GeminiError(400, f"emulator marker: {exc}") from None
    text, size = answer_text(req, config)
    thoughts = thought_tokens(req.generation_config, config)
    finish = "STOP"
    limit = req.generation_config.get("maxOutputTokens")
    if isinstance(limit, int) and thoughts + estimate_tokens(len(text.encode())) > limit:
        # Thinking spends the output budget first, as on gemini-2.5-flash.
        text, finish = _fit_output(text, max(0, limit - thoughts)), "MAX_TOKENS"
    pieces = _split(text, size) or [""]
    fault = config.fault
    if fault is not None and config.fault_rate < 1.0 and rt.rng.random() >= config.fault_rate:
        fault = None
    prompt_tokens = estimate_tokens(req.prompt_bytes)
    answer_tokens = estimate_tokens(len(text.encode()))
    cached = estimate_tokens(rt.cached_bytes(req))
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
    return Plan(
        config=config,
        pieces=pieces,
        fault=fault,
        usage=usage,
        finish_reason=finish,
        model_version=config.model_version or model.removeprefix("models/"),
        response_id=f"emu-{next(rt.response_ids):x}",
        delays=delays,
    )
