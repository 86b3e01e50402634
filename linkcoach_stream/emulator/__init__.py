"""Local stand-ins for external services, for offline tests and load tests.

Exports are resolved lazily: importing ``gemini`` here eagerly would make
``python -m linkcoach_stream.emulator.gemini`` load that module twice (runpy warns).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .gemini import (
        EmulatorConfig,
        add_emulator_arguments,
        config_from_args,
        create_emulator_app,
        run_emulator,
    )

__all__ = [
    "EmulatorConfig",
    "add_emulator_arguments",
    "config_from_args",
    "create_emulator_app",
    "run_emulator",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import gemini

        return getattr(gemini, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
