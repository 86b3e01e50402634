"""`linkcoach` command line: serve, migrate, token and the operator tools."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from .config import Settings
from .logging_setup import configure_logging


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = Settings.from_env()
    host = args.host or settings.host
    port = args.port or settings.port
    workers = args.workers or int(os.environ.get("WEB_CONCURRENCY", "1"))
    configure_logging(settings.log_level)
    uvicorn.run(
        "linkcoach_stream.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        ws="websockets",
        log_config=None,
        timeout_graceful_shutdown=30,
        proxy_headers=True,
    )
    return 0


async def _migrate(settings: Settings) -> list[int]:
    from .app import open_resources

    async with open_resources(settings) as state:
        async with state["db"].acquire() as conn:
            from .db.migrate import apply_migrations

            return await apply_migrations(conn)


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    asyncio.run(_migrate(settings))
    _out("migrations applied")
    return 0


async def _token(settings: Settings, user: str, leadership_type: str | None) -> str:
    from .app import open_resources
    from .db.repositories import users

    async with open_resources(settings) as state:
        async with state["db"].acquire() as conn:
            await users.upsert_user(
                conn, user_id=user, email=None, leadership_type=leadership_type
            )
        token, _ = state["tokens"].mint_access(user_id=user, leadership_type=leadership_type)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="linkcoach", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP/WebSocket server")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.set_defaults(func=cmd_migrate)

    token = sub.add_parser("token", help="print a development access token")
    token.add_argument("--user", required=True)
    token.add_argument("--leadership-type")
    token.set_defaults(func=cmd_token)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
