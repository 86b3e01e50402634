"""`GC_THRESHOLDS` and `GC_FREEZE`: applied once the app has started, in a process of
its own (the test process keeps its collector as it is); bad values refused."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from linkcoach_stream.config import ConfigError, Settings

from ..conftest import ROOT

_PROBE = """
import asyncio, dataclasses, gc, json, sys
from linkcoach_stream.app import create_app
from linkcoach_stream.config import Settings

async def main() -> None:
    fields = json.loads(sys.argv[1])
    fields["api_keys"] = tuple(fields["api_keys"])
    fields["gc_thresholds"] = tuple(fields["gc_thresholds"])
    settings = Settings(**fields).validate()
    before = (gc.get_threshold(), gc.get_freeze_count())
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        during = (gc.get_threshold(), gc.get_freeze_count())
    print(json.dumps({"before": before, "during": during}))

asyncio.run(main())
"""


def started_with(settings: Settings, **gc_settings: object) -> dict[str, list]:
    fields = {
        "app_env": "test",
        "database_url": settings.database_url,
        "redis_url": settings.redis_url,
        "redis_prefix": settings.redis_prefix,
        "data_dir": str(settings.data_dir),
        "jwt_secret_key": settings.jwt_secret_key,
        "api_keys": list(settings.api_keys),
        "llm_provider": "offline",
        "retrieval_enabled": False,
        **gc_settings,
    }
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(fields)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_lifespan_sets_the_thresholds_and_freezes_what_started(settings: Settings) -> None:
    seen = started_with(settings, gc_freeze=True, gc_thresholds=["12345", "7", "9"])
    assert seen["before"] == [[700, 10, 10], 0]
    thresholds, frozen = seen["during"]
    assert thresholds == [12345, 7, 9]
    assert frozen > 10_000  # the modules, settings, pools and app objects


def test_off_and_empty_keep_pythons_own(settings: Settings) -> None:
    seen = started_with(settings, gc_freeze=False, gc_thresholds=[])
    assert seen["during"] == [[700, 10, 10], 0]


def test_defaults() -> None:
    assert Settings().gc_threshold_values() == (10000, 20, 20) and Settings().gc_freeze


@pytest.mark.parametrize("bad", [("1", "2"), ("a", "1", "1"), ("-1", "1", "1")])
def test_bad_thresholds_are_refused_naming_the_variable(bad: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError, match="GC_THRESHOLDS"):
        Settings(app_env="development", gc_thresholds=bad).validate()
