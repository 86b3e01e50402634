"""Per-address limits key on the peer address: X-Forwarded-For is believed only from the
proxies in FORWARDED_ALLOW_IPS, and the README's proxy config overwrites the header."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn

from linkcoach_stream.app import create_app
from linkcoach_stream.cli import serve_options
from linkcoach_stream.config import Settings

from ..conftest import ROOT, free_port, running

CONVERSATIONS = "/api/v1/conversations"


@asynccontextmanager
async def serve_like_the_cli(settings: Settings) -> AsyncIterator[str]:
    """The app under uvicorn with the options `linkcoach serve` passes (less the ones
    that need a process of their own: workers, event loop, factory)."""
    options: dict[str, Any] = serve_options(settings.with_overrides(port=free_port()))
    for name in ("factory", "workers", "loop", "http"):
        options.pop(name)
    async with running(uvicorn.Config(create_app(settings), lifespan="on", **options)):
        yield f"http://127.0.0.1:{options['port']}"


async def failed_auth_statuses(url: str, tries: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return [
            (
                await client.get(
                    CONVERSATIONS,
                    headers={
                        "Authorization": "Bearer x.y.z",
                        "X-Forwarded-For": f"198.51.100.{i + 1}",
                    },
                )
            ).status_code
            for i in range(tries)
        ]


def limited(settings: Settings, **changes: object) -> Settings:
    return settings.with_overrides(
        rate_auth_failures_per_min=60.0,
        redis_prefix=f"lct:{uuid.uuid4().hex[:8]}:",
        **changes,
    )


def test_serve_trusts_no_forwarded_headers_by_default() -> None:
    options = serve_options(Settings())
    assert options["proxy_headers"] is False
    trusted = serve_options(Settings(forwarded_allow_ips=("10.0.0.5", "10.0.0.6")))
    assert trusted["proxy_headers"] is True
    assert trusted["forwarded_allow_ips"] == "10.0.0.5,10.0.0.6"


def test_forwarded_allow_ips_is_read_from_the_environment() -> None:
    env = {"FORWARDED_ALLOW_IPS": "10.0.0.5, 10.0.0.6"}
    assert Settings.from_env(env).forwarded_allow_ips == ("10.0.0.5", "10.0.0.6")
    assert Settings.from_env({}).forwarded_allow_ips == ()


async def test_made_up_forwarded_addresses_do_not_escape_the_failed_auth_limit(
    settings: Settings,
) -> None:
    async with serve_like_the_cli(limited(settings)) as url:
        statuses = await failed_auth_statuses(url, 40)
    assert statuses[0] == 401
    assert statuses.count(429) >= 20, statuses


async def test_forwarded_addresses_from_a_trusted_proxy_are_limited_one_by_one(
    settings: Settings,
) -> None:
    async with serve_like_the_cli(limited(settings, forwarded_allow_ips=("127.0.0.1",))) as url:
        statuses = await failed_auth_statuses(url, 40)
    assert statuses == [401] * 40


def test_readme_proxy_config_overwrites_the_forwarded_header_with_the_peer_address() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```nginx\n(.*?)```", readme, re.S)
    assert blocks, "the README has an nginx block"
    nginx = "\n".join(blocks)
    assert "$proxy_add_x_forwarded_for" not in nginx and "$http_x_forwarded_for" not in nginx
    locations = re.findall(r"location\s+\S+\s*\{(.*?)\}", nginx, re.S)
    proxied = [body for body in locations if "proxy_pass" in body]
    assert proxied
    for body in proxied:
        assert re.search(r"proxy_set_header\s+X-Forwarded-For\s+\$remote_addr\s*;", body), body
    assert "FORWARDED_ALLOW_IPS" in readme
