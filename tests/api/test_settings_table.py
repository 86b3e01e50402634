"""Settings come from one table: every field is an environment variable declared once
(name, type, default, meaning), `Settings.from_env` reads exactly that table, and the
README's configuration table is the same table."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from linkcoach_stream.config import SETTINGS, ConfigError, Settings, markdown_table

from ..conftest import ROOT

# Derived from APP_ENV being set at all; not a variable of its own.
NOT_FROM_ENV = {"app_env_explicit"}


def readme_rows() -> dict[str, tuple[str, str]]:
    """`{variable: (default, meaning)}` of the README's configuration table."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    in_table = False
    for line in section.splitlines():
        if line.startswith("| variable | default | meaning |"):
            in_table = True
            continue
        if not in_table or line.startswith("|---"):
            continue
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        assert len(cells) == 3, f"README configuration row is not 3 cells: {line}"
        names = re.findall(r"^`([A-Z0-9_]+)`$", cells[0])
        assert names, f"README configuration row names no single variable: {cells[0]}"
        assert names[0] not in rows, f"{names[0]} appears twice in README's table"
        rows[names[0]] = (cells[1], cells[2])
    return rows


def test_every_setting_is_in_the_readme_table_with_its_default_and_meaning() -> None:
    rows = readme_rows()
    for setting in SETTINGS:
        assert setting.env in rows, f"{setting.env} is missing from README's configuration table"
        default, meaning = rows[setting.env]
        assert default == setting.shown_default, f"README default of {setting.env}"
        assert meaning == setting.description, f"README meaning of {setting.env}"


def test_the_readme_table_names_no_variable_the_settings_do_not_read() -> None:
    unknown = set(readme_rows()) - {setting.env for setting in SETTINGS}
    assert not unknown, f"README documents variables that no setting reads: {sorted(unknown)}"
    # Same rows in the same order: the README table is the rendered one, byte for byte.
    assert markdown_table() in (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_field_of_settings_is_a_variable_of_the_table_once() -> None:
    names = [setting.env for setting in SETTINGS]
    assert len(names) == len(set(names)), "a variable is declared for two fields"
    from_env = {setting.field for setting in SETTINGS}
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert fields - from_env == NOT_FROM_ENV
    for setting in SETTINGS:
        field = next(f for f in dataclasses.fields(Settings) if f.name == setting.field)
        assert setting.default == field.default, setting.env


def test_table_defaults_are_what_an_empty_environment_gives() -> None:
    loaded = Settings.from_env({"APP_ENV": "development"})
    for setting in SETTINGS:
        if setting.env != "APP_ENV":
            assert getattr(loaded, setting.field) == setting.default, setting.env


def sample(setting_env: str, default: object) -> str:
    """A value other than the default, valid for the variable."""
    special = {
        "APP_ENV": "staging",
        "LOG_LEVEL": "debug",
        "JWT_ALGORITHM": "HS512",
        "GEMINI_STREAM_TRANSPORT": "sdk",
        "LLM_PROVIDER": "offline",
        "USAGE_TIMEZONE": "Europe/Berlin",
        "RAG_EMBEDDER": "hash",
        "READY_HIGH_WATER": "0.5",
        "RAG_EMBED_CPU_SHARE": "0.25",
        "SENTRY_TRACES_SAMPLE_RATE": "0.1",
        "LINKCOACH_API_KEYS": "key-0123456789abcdef,key-fedcba9876543210",
        "JWT_SECRET_KEY": "Zq8-w3Rt_y6Ui9oPa2Sd5Fg7Hj0Kl4Xc1Vb3Nm",
        "CORS_ORIGINS": "https://a.example,https://b.example",
        "FORWARDED_ALLOW_IPS": "10.0.0.1",
        "GEMINI_API_KEY": "g-key",
        "GC_THRESHOLDS": "5000,5,5",
    }
    if setting_env in special:
        return special[setting_env]
    if isinstance(default, bool):
        return "false" if default else "true"
    if isinstance(default, int | float) or setting_env in ("SHUTDOWN_TIMEOUT",):
        return "7"
    if isinstance(default, Path):
        return "/tmp/elsewhere"
    return f"set-{setting_env.lower()}"


def test_every_variable_is_read_from_the_environment() -> None:
    env = {s.env: sample(s.env, s.default) for s in SETTINGS}
    loaded = Settings.from_env(env)
    for setting in SETTINGS:
        value = getattr(loaded, setting.field)
        assert value != setting.default, f"{setting.env} was not read from the environment"
        assert setting.parse(setting.env, setting.render(value)) == value
    # A subprocess given `to_env()` reads back the same settings.
    assert Settings.from_env(loaded.to_env()) == loaded


def test_the_formerly_code_only_settings_are_read_from_the_environment() -> None:
    loaded = Settings.from_env(
        {
            "STREAM_BUFFER_MAX_EVENTS": "123",
            "API_LOG_BATCH_SIZE": "45",
            "API_LOG_FLUSH_INTERVAL": "0.5",
            "WEB_CONCURRENCY": "3",
            "E5_THREADS": "2",
            "SENTRY_DSN": "https://key@sentry.example/1",
        }
    )
    assert (loaded.stream_buffer_max_events, loaded.api_log_batch_size) == (123, 45)
    assert (loaded.api_log_flush_interval_s, loaded.workers, loaded.e5_threads) == (0.5, 3, 2)
    assert loaded.sentry_dsn == "https://key@sentry.example/1"


def test_a_number_that_is_not_one_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="WS_MAX_SIZE must be a number"):
        Settings.from_env({"WS_MAX_SIZE": "big"})
    with pytest.raises(ConfigError, match="WS_MAX_SIZE must be a positive number"):
        Settings.from_env({"WS_MAX_SIZE": "0"})
    with pytest.raises(ConfigError, match="SHUTDOWN_TIMEOUT must not be negative"):
        Settings.from_env({"SHUTDOWN_TIMEOUT": "-1"})


def test_sentry_is_configured_from_settings_not_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys
    import types

    from linkcoach_stream.app import init_sentry

    calls: list[dict[str, object]] = []
    fake = types.ModuleType("sentry_sdk")
    fake.init = lambda **kwargs: calls.append(kwargs)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sentry_sdk", fake)
    monkeypatch.setenv("SENTRY_DSN", "https://from-the-environment@sentry.example/9")
    init_sentry(Settings())
    assert calls == [], "a DSN only in os.environ, not in Settings, must not start Sentry"
    init_sentry(Settings(sentry_dsn="https://k@sentry.example/1", sentry_traces_sample_rate=0.2))
    assert calls == [
        {"dsn": "https://k@sentry.example/1", "traces_sample_rate": 0.2, "send_default_pii": False}
    ]
