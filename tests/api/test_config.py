"""Settings fail closed: an unknown environment, the development secret or API key
outside development, and weak production secrets all refuse to start."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest

from linkcoach_stream.config import DEV_API_KEY, DEV_JWT_SECRET, ConfigError, Settings
from linkcoach_stream.errors import Unauthorized
from linkcoach_stream.services.auth import TokenService

from ..conftest import ROOT

STRONG = secrets.token_urlsafe(48)
KEY = "k-" + secrets.token_hex(12)


def prod_env(**extra: str) -> dict[str, str]:
    return {"APP_ENV": "production", "JWT_SECRET_KEY": STRONG, "LINKCOACH_API_KEYS": KEY, **extra}


@pytest.mark.parametrize("value", ["Production", "PRODUCTION", " production "])
def test_app_env_is_read_case_insensitively_and_keeps_the_production_checks(value: str) -> None:
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
        Settings.from_env({"APP_ENV": value})
    settings = Settings.from_env(prod_env(APP_ENV=value))
    assert settings.app_env == "production" and settings.is_production
    assert not settings.dev_defaults_allowed


@pytest.mark.parametrize("value", ["prod", "live", "dev", "productionn"])
def test_unknown_app_env_refuses_to_start(value: str) -> None:
    with pytest.raises(ConfigError, match="APP_ENV must be one of"):
        Settings.from_env(prod_env(APP_ENV=value))


def test_unknown_app_env_set_in_code_counts_as_production_even_unvalidated() -> None:
    settings = Settings(app_env="Prod")
    assert settings.is_production and not settings.dev_defaults_allowed
    with pytest.raises(Unauthorized):
        TokenService(settings).check_api_key(DEV_API_KEY)


def test_unset_app_env_on_a_loopback_bind_runs_with_the_development_defaults() -> None:
    for host in ("127.0.0.1", "localhost", "::1"):
        settings = Settings.from_env({"HOST": host})
        assert settings.dev_defaults_allowed and settings.jwt_secret_key == DEV_JWT_SECRET
        TokenService(settings).check_api_key(DEV_API_KEY)


def test_unset_app_env_on_a_public_bind_refuses_and_names_the_settings() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"HOST": "0.0.0.0"})
    message = str(caught.value)
    assert "APP_ENV" in message and "JWT_SECRET_KEY" in message and "0.0.0.0" in message
    with pytest.raises(ConfigError, match="LINKCOACH_API_KEYS"):
        Settings.from_env({"HOST": "0.0.0.0", "JWT_SECRET_KEY": STRONG})
    configured = Settings.from_env(
        {"HOST": "0.0.0.0", "JWT_SECRET_KEY": STRONG, "LINKCOACH_API_KEYS": KEY}
    )
    with pytest.raises(Unauthorized):
        TokenService(configured).check_api_key(DEV_API_KEY)


def test_explicit_development_allows_the_defaults_on_any_bind() -> None:
    settings = Settings.from_env({"APP_ENV": "development", "HOST": "0.0.0.0"})
    assert settings.dev_defaults_allowed
    TokenService(settings).check_api_key(DEV_API_KEY)


@pytest.mark.parametrize("env", ["test", "staging", "production"])
def test_every_other_environment_needs_its_own_secret_and_keys(env: str) -> None:
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
        Settings.from_env({"APP_ENV": env, "LINKCOACH_API_KEYS": KEY})
    with pytest.raises(ConfigError, match="LINKCOACH_API_KEYS"):
        Settings.from_env({"APP_ENV": env, "JWT_SECRET_KEY": STRONG})


@pytest.mark.parametrize(
    "secret",
    ["s" * 40, "ab" * 24, "abcd" * 12, "changeme-changeme-changeme-changeme", "0123456789" * 4],
)
def test_production_refuses_a_secret_with_little_entropy(secret: str) -> None:
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
        Settings.from_env(prod_env(JWT_SECRET_KEY=secret))


@pytest.mark.parametrize("secret", [secrets.token_hex(16), secrets.token_urlsafe(32)])
def test_production_accepts_generated_secrets(secret: str) -> None:
    assert Settings.from_env(prod_env(JWT_SECRET_KEY=secret)).jwt_secret_key == secret


def test_production_refuses_the_development_api_key_as_a_configured_key() -> None:
    with pytest.raises(ConfigError, match="development key"):
        Settings.from_env(prod_env(LINKCOACH_API_KEYS=f"{KEY},{DEV_API_KEY}"))


def test_staging_is_held_to_the_production_checks() -> None:
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
        Settings.from_env(prod_env(APP_ENV="staging", JWT_SECRET_KEY="s" * 40))
    assert Settings.from_env(prod_env(APP_ENV="staging")).is_production


def _serve(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    return subprocess.run(
        [sys.executable, "-m", "linkcoach_stream.cli", "serve", *args],
        env={**base, **env},
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_on_a_public_host_without_app_env_exits_with_a_clear_message() -> None:
    done = _serve(["--host", "0.0.0.0", "--port", "9"], {})
    assert done.returncode == 2
    assert "configuration error" in done.stderr and "APP_ENV" in done.stderr
    assert "JWT_SECRET_KEY" in done.stderr


def test_serve_with_a_misspelt_app_env_exits_with_a_clear_message() -> None:
    done = _serve(["--port", "9"], {"APP_ENV": "prod"})
    assert done.returncode == 2 and "APP_ENV must be one of" in done.stderr
