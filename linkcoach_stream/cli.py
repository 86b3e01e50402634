"""`linkcoach` command line: serve, migrate, token and the operator tools."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import socket
import sys
from collections.abc import Sequence
from typing import Any

from .config import DEV_API_KEY, ConfigError, Settings
from .logging_setup import configure_logging

APP_FACTORY = "linkcoach_stream.app:create_app"


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def serve_options(settings: Settings, *, workers: int | None = None) -> dict[str, Any]:
    """Keyword arguments of `uvicorn.run` / `uvicorn.Config` for `linkcoach serve`, every
    limit taken from `settings` (tested directly); `workers` overrides `WEB_CONCURRENCY`."""
    from .server import connection_options

    trusted = ",".join(settings.forwarded_allow_ips)
    return {
        "factory": True,
        "host": settings.host,
        "port": settings.port,
        "workers": workers or settings.workers,
        "loop": "uvloop",
        # httptools with header/body read timeouts, the connection cap, keep-alive.
        **connection_options(settings),
        # Coaching sockets get the shutdown grace and farewell SSE streams get.
        "ws": "linkcoach_stream.server:GracefulWebSocketProtocol",
        "ws_max_size": settings.ws_max_size,
        "ws_max_queue": settings.ws_max_queue,
        "ws_per_message_deflate": settings.ws_per_message_deflate,
        "log_config": None,
        "timeout_graceful_shutdown": math.ceil(settings.graceful_shutdown_timeout_s),
        # Per-address limits key on the client address, so X-Forwarded-For is believed
        # only from the proxies named in FORWARDED_ALLOW_IPS. uvicorn's own default
        # trusts 127.0.0.1, which is every client when a local proxy passes the header
        # through, or a client on the same host.
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted or None,
        # Connections waiting to be accepted (uvicorn's default is 2048; the kernel caps
        # it at net.core.somaxconn): a burst of thousands of new streams on a busy CPU
        # overflowed 2048 and clients saw connection resets.
        "backlog": settings.listen_backlog,
    }


def uvicorn_args(settings: Settings, *, workers: int | None = None) -> list[str]:
    """uvicorn's own command-line flags for the limits `serve_options` sets, so that
    `uvicorn linkcoach_stream.app:create_app $(linkcoach uvicorn-args)` serves
    with the same limits as `linkcoach serve` (uvicorn takes them from flags only, read
    before the factory runs). Its CLI takes whole seconds: fractions are rounded up."""
    options = serve_options(settings, workers=workers)
    args = [
        "--factory",
        "--host", str(options["host"]),
        "--port", str(options["port"]),
        "--workers", str(options["workers"]),
        "--loop", str(options["loop"]),
        # The protocol class reads HEADER_TIMEOUT / BODY_TIMEOUT from the environment.
        "--http", "linkcoach_stream.server:GuardedHttpToolsProtocol",
        "--ws", str(options["ws"]),
        "--ws-max-size", str(options["ws_max_size"]),
        "--ws-max-queue", str(options["ws_max_queue"]),
        "--ws-per-message-deflate", str(options["ws_per_message_deflate"]).lower(),
        "--timeout-keep-alive", str(math.ceil(options["timeout_keep_alive"])),
        "--timeout-graceful-shutdown", str(options["timeout_graceful_shutdown"]),
        "--backlog", str(options["backlog"]),
    ]  # fmt: skip
    if options["limit_concurrency"] is not None:
        args += ["--limit-concurrency", str(options["limit_concurrency"])]
    if options["proxy_headers"]:
        args += ["--proxy-headers", "--forwarded-allow-ips", str(options["forwarded_allow_ips"])]
    else:
        args.append("--no-proxy-headers")
    return args


def ready_banner(settings: Settings, *, port: int) -> str:
    """What `linkcoach serve` prints once it answers: where to click first and how to get
    a token. The API key is shown only when it is the published development key."""
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    base = f"http://{host}:{port}"
    dev_key = settings.dev_defaults_allowed and not settings.api_keys
    key = DEV_API_KEY if dev_key else "<a key from LINKCOACH_API_KEYS>"
    lines = [f"Link-Coach Stream is ready on {base}"]
    if not settings.is_production:
        lines += [
            f"  Demo page (gets a demo token and embeds the widget): {base}/demo",
            f"  A demo user's token: curl -s -X POST {base}/demo/token \\",
            "      -H 'Content-Type: application/json' -d '{}'",
        ]
    lines += [
        "  A token for a user of your own (as the parent site's backend does):",
        f"    curl -s -X POST {base}/api/v1/auth/token -H 'X-API-Key: {key}' \\",
        "      -H 'Content-Type: application/json' -d '{\"user_id\": \"u1\"}'",
        f'  Embed it: <script src="{base}/embed.js"></script>, API: {base}/openapi.json',
    ]
    return "\n".join(lines)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = Settings.from_env()
    # The bind host decides whether the development defaults are allowed: validate again.
    settings = settings.with_overrides(
        host=args.host or settings.host, port=args.port or settings.port
    ).validate()
    workers = args.workers or settings.workers
    if workers > 1 and settings.retrieval_enabled and not settings.chroma_host:
        # Embedded Chroma is one process's SQLite store: several workers would each
        # ingest into it at start and then read a collection the others rewrite.
        sys.stderr.write(
            f"{workers} workers need Chroma in server mode: start `chroma run --path DIR "
            "--port 8001` and set CHROMA_HOST (and CHROMA_PORT), or RETRIEVAL_ENABLED=false\n"
        )
        return 2
    configure_logging(settings.log_level)
    options = serve_options(settings, workers=workers)
    if workers > 1:
        uvicorn.run(APP_FACTORY, **options)
        return 0

    class ReadyServer(uvicorn.Server):
        """Prints the ready banner once the lifespan (migrations, ingestion) is done and
        the socket listens."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and not self.should_exit:
                port = self.servers[0].sockets[0].getsockname()[1] if self.servers else 0
                _out(ready_banner(settings, port=port or settings.port))

    server = ReadyServer(uvicorn.Config(APP_FACTORY, **options))
    server.run()
    # uvicorn.run's exit status when the server never started (a bind or lifespan error).
    return 0 if server.started else 3


def cmd_uvicorn_args(args: argparse.Namespace) -> int:
    import shlex

    _out(shlex.join(uvicorn_args(Settings.from_env(), workers=args.workers)))
    return 0


async def _migrate(settings: Settings) -> list[int]:
    """Postgres alone: no Redis, Chroma, embedder or classifier is opened to migrate."""
    from .db.migrate import apply_migrations
    from .resources import open_postgres

    # One statement at a time: one connection, not the server's pool.
    async with open_postgres(settings.with_overrides(db_pool_min=1, db_pool_max=1)) as database:
        async with database.pool.acquire() as conn:
            return await apply_migrations(conn)


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    asyncio.run(_migrate(settings))
    _out("migrations applied")
    return 0


async def _token(settings: Settings, user: str, leadership_type: str | None) -> str:
    from .db.migrate import apply_migrations
    from .db.repositories import users
    from .resources import open_postgres
    from .services.auth import TokenService

    async with open_postgres(settings.with_overrides(db_pool_min=1, db_pool_max=1)) as database:
        async with database.pool.acquire() as conn:
            await apply_migrations(conn)
            await users.upsert_user(conn, user_id=user, email=None, leadership_type=leadership_type)
    token, _ = TokenService(settings).mint_access(user_id=user, leadership_type=leadership_type)
    return str(token)


def cmd_token(args: argparse.Namespace) -> int:
    from .domain.taxonomy import resolve_type

    settings = Settings.from_env()
    configure_logging("warning")
    lt = None
    if args.leadership_type:
        resolved = resolve_type(args.leadership_type)
        if resolved is None:
            sys.stderr.write(f"unknown leadership type: {args.leadership_type}\n")
            return 2
        lt = resolved.code
    _out(asyncio.run(_token(settings, args.user, lt)))
    return 0


def cmd_emulate(args: argparse.Namespace) -> int:
    from .emulator.gemini import config_from_args, run_emulator

    run_emulator(host=args.host, port=args.port, config=config_from_args(args))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .ml.training import train_main

    train_main(data=args.data, out_dir=args.out, n=args.n, seed=args.seed)
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from .rag.cli import ingest_main

    settings = Settings.from_env()
    configure_logging("warning")
    return int(ingest_main(settings))


def cmd_eval_retrieval(args: argparse.Namespace) -> int:
    from .rag.cli import eval_main

    settings = Settings.from_env()
    configure_logging("warning")
    return int(eval_main(settings, file=args.file, k=args.k))


def cmd_ask(args: argparse.Namespace) -> int:
    """The offline coach's answer to each question, retrieved as a chat turn is (same
    ranking settings, four documents), without a server or a database."""
    from .domain.taxonomy import resolve_type
    from .llm.offline import compose_answer
    from .rag.ranking import RankConfig
    from .rag.retriever import open_retriever

    settings = Settings.from_env()
    # The answers are the output: logs go to stderr, and only warnings (bm25s sets its
    # own logger to debug, so the root level alone does not hold it back).
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    logging.getLogger().handlers[:] = [handler]
    leader = resolve_type(args.leadership_type) if args.leadership_type else None
    if args.leadership_type and leader is None:
        sys.stderr.write(f"linkcoach: unknown leadership type {args.leadership_type!r}\n")
        return 2
    code = leader.code if leader else None

    async def answers() -> list[str]:
        config = RankConfig(dense_weight=settings.rag_dense_weight)
        retriever = await open_retriever(settings, config=config)
        try:
            out = []
            for question in args.questions:
                passages = await retriever.search(question, leadership_type=code, k=4)
                out.append(compose_answer(question, passages, code))
            return out
        finally:
            await retriever.close()

    _out("\n\n".join(asyncio.run(answers())))
    return 0


def cmd_loadtest(args: argparse.Namespace) -> int:
    from .loadtest import main as loadtest_main

    return int(loadtest_main(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="linkcoach", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP/WebSocket server")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(func=cmd_serve)

    flags = sub.add_parser(
        "uvicorn-args", help="print uvicorn's flags for the limits `serve` sets (bare uvicorn)"
    )
    flags.add_argument("--workers", type=int)
    flags.set_defaults(func=cmd_uvicorn_args)

    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.set_defaults(func=cmd_migrate)

    token = sub.add_parser("token", help="print a development access token")
    token.add_argument("--user", required=True)
    token.add_argument("--leadership-type")
    token.set_defaults(func=cmd_token)

    from .emulator.gemini import add_emulator_arguments

    emulate = sub.add_parser("emulate-gemini", help="run the local Gemini emulator")
    add_emulator_arguments(emulate)
    emulate.set_defaults(func=cmd_emulate)

    train = sub.add_parser("train", help="train the leadership classifier")
    train.add_argument("--data", help="labelled CSV (18 item columns + code); synthetic if absent")
    train.add_argument("--out", default="models")
    train.add_argument("--n", type=int, default=12000)
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(func=cmd_train)

    ingest = sub.add_parser("ingest", help="(re)index knowledge_base/ into Chroma")
    ingest.set_defaults(func=cmd_ingest)

    ev = sub.add_parser("eval-retrieval", help="hit@k of retrieval on a JSONL question set")
    ev.add_argument("--file", default="tests/data/retrieval_eval.jsonl")
    ev.add_argument("--k", type=int, default=3)
    ev.set_defaults(func=cmd_eval_retrieval)

    ask = sub.add_parser("ask", help="print the offline coach's answer to questions")
    ask.add_argument("questions", nargs="+", metavar="question")
    ask.add_argument("--leadership-type", help="a code (HLH), id or Korean type name")
    ask.set_defaults(func=cmd_ask)

    from .loadtest import add_arguments as add_loadtest_arguments

    load = sub.add_parser("loadtest", help="hold many concurrent streams against a server")
    add_loadtest_arguments(load)
    load.set_defaults(func=cmd_loadtest)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        sys.stderr.write(f"linkcoach: configuration error: {exc}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
