"""The emulator's settings: ``EmulatorConfig`` and the coercion of CLI, marker and JSON values.

One dataclass holds every knob (pacing, chunking, faults, embeddings, thinking, caching);
``EmulatorConfig.updated`` is the one place strings from the command line, per-request
``[[emulator:...]]`` markers and ``POST /_emulator/config`` bodies become typed values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, cast, get_args

__all__ = ["MAX_EMBEDDING_DIM", "EmulatorConfig", "Fault", "MidStreamAction"]

Fault = Literal["before_first", "mid_stream", "stall"]
MidStreamAction = Literal["error", "abort"]

MAX_EMBEDDING_DIM = 3072


def _parse_range(value: object, name: str) -> tuple[float, float]:
    """``300``, ``"300"``, ``"200-400"`` or ``[200, 400]`` -> (min, max) in ms."""
    if isinstance(value, str) and "-" in value.strip().lstrip("-"):
        low, _, high = value.strip().partition("-")
        return _as_float(low, name), _as_float(high, name)
    if isinstance(value, list | tuple) and len(value) == 2:
        return _as_float(value[0], name), _as_float(value[1], name)
    single = _as_float(value, name)
    return single, single


def _as_float(value: object, name: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError(f"{name} must be a number, got {value!r}")


def _as_int(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ValueError(f"{name} must be an integer, got {value!r}")


def _as_optional_int(value: object, name: str) -> int | None:
    return None if value is None or value == "none" else _as_int(value, name)


def _as_optional_str(value: object, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    return value


def _as_fault(value: object, name: str) -> Fault | None:
    if value is None or value in ("", "none", "null"):
        return None
    if value not in get_args(Fault):
        raise ValueError(f"{name} must be one of none, {', '.join(get_args(Fault))}")
    return cast(Fault, value)


def _as_action(value: object, name: str) -> MidStreamAction:
    if value not in get_args(MidStreamAction):
        raise ValueError(f"{name} must be one of {', '.join(get_args(MidStreamAction))}")
    return cast(MidStreamAction, value)


_COERCERS: dict[str, Callable[[object, str], object]] = {
    "ttft_ms_min": _as_float,
    "ttft_ms_max": _as_float,
    "chunk_interval_ms_min": _as_float,
    "chunk_interval_ms_max": _as_float,
    "chunks": _as_int,
    "chunk_chars": _as_int,
    "fault": _as_fault,
    "fault_status": _as_int,
    "fault_after_chunks": _as_int,
    "fault_rate": _as_float,
    "mid_stream_action": _as_action,
    "embedding_dim": _as_int,
    "model_version": _as_optional_str,
    "api_key": _as_optional_str,
    "seed": _as_optional_int,
    "thinking_ms_per_token": _as_float,
    "dynamic_thinking_tokens": _as_int,
    "cache_min_tokens": _as_int,
}
_RANGE_SHORTHANDS = {"ttft_ms": "ttft_ms", "chunk_interval_ms": "chunk_interval_ms"}


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """How the emulator answers. Defaults look roughly like gemini-2.5-flash, no thinking.

    Delays are drawn uniformly from [min, max] per request (TTFT) and per chunk (gaps).
    ``fault`` applies to a share ``fault_rate`` of generation requests; a request can force
    its own with a ``[[emulator:fault=...]]`` marker. ``fault_after_chunks`` is clamped so
    a mid-stream fault or stall always lands before the final chunk.
    """

    ttft_ms_min: float = 300.0
    ttft_ms_max: float = 800.0
    chunk_interval_ms_min: float = 20.0
    chunk_interval_ms_max: float = 80.0
    chunks: int = 12
    chunk_chars: int = 20
    fault: Fault | None = None
    fault_status: int = 503
    fault_after_chunks: int = 2
    fault_rate: float = 1.0
    mid_stream_action: MidStreamAction = "error"
    embedding_dim: int = 768
    model_version: str | None = None
    api_key: str | None = None
    seed: int | None = None
    thinking_ms_per_token: float = 2.0
    dynamic_thinking_tokens: int = 0
    cache_min_tokens: int = 1024

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "chunk_interval_ms"):
            low, high = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
            if low < 0 or high < low:
                raise ValueError(f"{name} needs 0 <= min <= max, got {low}..{high}")
        if self.chunks < 1 or self.chunk_chars < 1:
            raise ValueError("chunks and chunk_chars must be >= 1")
        if not 400 <= self.fault_status <= 599:
            raise ValueError("fault_status must be an HTTP error status (400-599)")
        if self.fault_after_chunks < 0:
            raise ValueError("fault_after_chunks must be >= 0")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError("fault_rate must be within 0..1")
        if not 1 <= self.embedding_dim <= MAX_EMBEDDING_DIM:
            raise ValueError(f"embedding_dim must be within 1..{MAX_EMBEDDING_DIM}")
        if self.thinking_ms_per_token < 0 or self.dynamic_thinking_tokens < 0:
            raise ValueError("thinking_ms_per_token and dynamic_thinking_tokens must be >= 0")
        if self.cache_min_tokens < 0:
            raise ValueError("cache_min_tokens must be >= 0")

    def updated(self, changes: Mapping[str, object]) -> EmulatorConfig:
        """A copy with ``changes`` applied; values may be strings (CLI, markers) or JSON.

        ``ttft_ms`` / ``chunk_interval_ms`` are shorthands setting both ends of a range.
        Raises ValueError on an unknown key or a bad value.
        """
        values: dict[str, object] = {}
        for key, raw in changes.items():
            if key in _RANGE_SHORTHANDS:
                low, high = _parse_range(raw, key)
                values[f"{key}_min"], values[f"{key}_max"] = low, high
            elif key in _COERCERS:
                values[key] = _COERCERS[key](raw, key)
            else:
                raise ValueError(f"unknown emulator setting {key!r}")
        return dataclasses.replace(self, **values)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)
