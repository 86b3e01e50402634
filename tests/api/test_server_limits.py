"""Every server limit is a setting: set in the environment, it reaches uvicorn's config,
through `linkcoach serve` and through a bare `uvicorn` run given `linkcoach uvicorn-args`."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import shlex
import shutil
import sys
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from linkcoach_stream import cli
from linkcoach_stream.config import Settings
from linkcoach_stream.server import GuardedHttpToolsProtocol, limits_from_env

from ..conftest import ROOT, User, free_port, make_user, settings_env

LIMITS_ENV = {
    "WS_MAX_SIZE": "12345",
    "WS_MAX_QUEUE": "7",
    "WS_PER_MESSAGE_DEFLATE": "true",
    "SHUTDOWN_TIMEOUT": "9",
    "MAX_CONNECTIONS": "50",
    "KEEP_ALIVE_TIMEOUT": "3",
    "LISTEN_BACKLOG": "777",
    "HEADER_TIMEOUT": "4",
    "BODY_TIMEOUT": "6",
    "FORWARDED_ALLOW_IPS": "10.1.2.3",
    "WEB_CONCURRENCY": "1",
}
# uvicorn.Config attributes each limit lands in, and the value the environment above gives.
EXPECTED = {
    "ws_max_size": 12345,
    "ws_max_queue": 7,
    "ws_per_message_deflate": True,
    "timeout_graceful_shutdown": 9,
    "limit_concurrency": 51,  # uvicorn counts the connection being served too
    "timeout_keep_alive": 3,
    "backlog": 777,
    "proxy_headers": True,
    "forwarded_allow_ips": "10.1.2.3",
    "workers": 1,
}


def limits_of(config: uvicorn.Config) -> dict[str, Any]:
    return {name: getattr(config, name) for name in EXPECTED}


def use_env(monkeypatch: pytest.MonkeyPatch, settings: Settings, extra: dict[str, str]) -> None:
    for key, value in (settings_env(settings) | extra).items():
        monkeypatch.setenv(key, value)


def test_linkcoach_serve_hands_uvicorn_the_limits_set_in_the_environment(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_env(monkeypatch, settings, LIMITS_ENV)
    configs: list[uvicorn.Config] = []
    monkeypatch.setattr(
        uvicorn.Server, "run", lambda self, sockets=None: configs.append(self.config)
    )  # noqa: E501
    monkeypatch.setattr(cli, "configure_logging", lambda level: None)
    assert cli.main(["serve"]) == 3  # the (stubbed) server never started
    (config,) = configs
    assert limits_of(config) == EXPECTED
    assert config.http.func is GuardedHttpToolsProtocol
    limits = config.http.keywords["limits"]
    assert (limits.header_timeout_s, limits.body_timeout_s) == (4.0, 6.0)


def test_defaults_without_the_environment_match_what_serve_always_used() -> None:
    config = uvicorn.Config(cli.APP_FACTORY, **cli.serve_options(Settings()))
    assert (config.ws_max_size, config.ws_max_queue, config.ws_per_message_deflate) == (
        64 * 1024,
        16,
        False,
    )
    assert config.timeout_graceful_shutdown == int(Settings().shutdown_grace_s) + 5
    assert (
        uvicorn.Config(
            cli.APP_FACTORY, **cli.serve_options(Settings(shutdown_grace_s=2.0))
        ).timeout_graceful_shutdown
        == 7
    )


def test_uvicorn_args_give_a_bare_uvicorn_run_the_same_limits_as_serve(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    uvicorn_main = importlib.import_module("uvicorn.main")  # the module, not the command
    use_env(monkeypatch, settings, LIMITS_ENV)
    loaded = Settings.from_env()
    served = uvicorn.Config(cli.APP_FACTORY, **cli.serve_options(loaded))
    captured: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn_main, "run", lambda app, **kwargs: captured.append(kwargs))
    uvicorn_main.main.main([cli.APP_FACTORY, *cli.uvicorn_args(loaded)], standalone_mode=False)
    (kwargs,) = captured
    # `uvicorn.run` takes a few options of its own (app_dir) before building the Config.
    accepted = inspect.signature(uvicorn.Config).parameters
    bare = uvicorn.Config(cli.APP_FACTORY, **{k: v for k, v in kwargs.items() if k in accepted})
    assert limits_of(bare) == limits_of(served) == EXPECTED
    assert bare.factory and (bare.host, bare.port) == (served.host, served.port)
    # uvicorn imports `--http` itself; the class then reads its timeouts from the environment.
    assert bare.http == "linkcoach_stream.server:GuardedHttpToolsProtocol"
    limits_from_env.cache_clear()
    try:
        assert limits_from_env() == served.http.keywords["limits"]
    finally:
        limits_from_env.cache_clear()


def test_uvicorn_args_command_prints_flags_a_shell_can_pass_on(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_env(monkeypatch, settings, LIMITS_ENV)
    assert cli.main(["uvicorn-args"]) == 0
    printed = shlex.split(capsys.readouterr().out)
    assert printed == cli.uvicorn_args(Settings.from_env())
    assert printed[printed.index("--ws-max-size") + 1] == "12345"


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
async def test_a_bare_uvicorn_run_with_uvicorn_args_enforces_the_limits(
    settings: Settings,
) -> None:
    """Real server: `python -m uvicorn APP $(linkcoach uvicorn-args)` listens with the
    configured backlog and closes a WebSocket whose message is over `WS_MAX_SIZE`."""
    from .test_serve_command import listen_backlog

    port = free_port()
    env = settings_env(settings.with_overrides(retrieval_enabled=False))
    env.update(
        HOST="127.0.0.1", PORT=str(port), LISTEN_BACKLOG="321", WS_MAX_SIZE="2048",
        MAX_CONNECTIONS="0",
    )  # fmt: skip
    loaded = Settings.from_env(env)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uvicorn", cli.APP_FACTORY, *cli.uvicorn_args(loaded),
        "--log-level", "warning", env=env, cwd=str(ROOT),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            for _ in range(300):
                try:
                    await client.get("/health")
                    break
                except httpx.HTTPError:
                    assert proc.returncode is None, "uvicorn exited"
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("uvicorn did not start")
            assert listen_backlog(port) == 321
            user: User = await make_user(client)
        ws_url = f"ws://127.0.0.1:{port}/api/v1/coaching/ws"
        async with connect(ws_url, subprotocols=["bearer", user.token]) as socket:  # type: ignore[list-item]
            await socket.send('{"type": "ping", "pad": "' + "x" * 4096 + '"}')
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(socket.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
