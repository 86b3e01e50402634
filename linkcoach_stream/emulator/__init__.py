"""Local stand-ins for external services, for offline tests and load tests.

The Gemini emulator: ``gemini`` (app, handlers, CLI) over ``config``, ``protocol``,
``answers``, ``schema``, ``embeddings``, ``plan``, ``pacing``, ``faults`` and ``state``.

Exports are resolved lazily: importing ``gemini`` here eagerly would make
``python -m linkcoach_stream.emulator.gemini`` load that module twice (runpy warns).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import EmulatorConfig
    from .gemini import (
        add_emulator_arguments,
        config_from_args,
        create_emulator_app,
        run_emulator,
    )

_HOMES: dict[str, str] = {
    "EmulatorConfig": "config",
    "add_emulator_arguments": "gemini",
    "config_from_args": "gemini",
    "create_emulator_app": "gemini",
    "run_emulator": "gemini",
}

__all__ = [
    "EmulatorConfig",
    "add_emulator_arguments",
    "config_from_args",
    "create_emulator_app",
    "run_emulator",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is not None:
        return getattr(import_module(f"{__name__}.{home}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
