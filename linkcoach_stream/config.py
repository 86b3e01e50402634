"""Settings read once from the environment and validated.

Every part of the service has an embedded default so `linkcoach serve` runs with no
configuration at all; setting the URL of a real service switches that part over.

Each setting is declared once, as a `Settings` field made by `env(...)`: its variable,
type (the default's, or `kind`), default and meaning. `SETTINGS` is that table;
`Settings.from_env` reads it, `Settings.to_env` writes it back (a subprocess's
environment), and the README's configuration table is rendered from it
(`python -m linkcoach_stream.config`). A new setting therefore needs one declaration and
the README row that the test of the table asks for; nothing maps names by hand.
"""

from __future__ import annotations

import ipaddress
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

PLACEHOLDER_SECRETS = frozenset(
    {
        "",
        "changeme",
        "change-me",
        "secret",
        "dev-secret",
        "CHANGE_ME",
        "linkcoach-dev-secret-not-for-production",
    }
)
DEV_JWT_SECRET = "linkcoach-dev-secret-not-for-production"
DEV_API_KEY = "linkcoach-dev-api-key"

# Every environment the service knows. Anything else refuses to start, so a typo such as
# `Production` or `prod` can never quietly run with the development defaults.
APP_ENVS = ("development", "test", "staging", "production")
# The only environments spared the production checks (strong secret, real API keys, no
# demo pages); any other value, validated or not, is treated as production.
NON_PRODUCTION_ENVS = frozenset({"development", "test"})
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
# A JWT secret must look random: a repeated or patterned string has few distinct
# characters and little entropy, whatever its length. 96 bits is under what 16 random
# bytes in hex measure (~110) and far above `"s" * 40` (0) or a word repeated (< 80).
MIN_SECRET_BITS = 96.0
MIN_SECRET_DISTINCT = 10


class ConfigError(ValueError):
    """A setting is missing or unsafe for the chosen environment."""


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def estimated_entropy_bits(value: str) -> float:
    """Shannon entropy of the string's own character frequencies, times its length."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(c * math.log2(c / n) for c in Counter(value).values())


def is_repetition(value: str) -> bool:
    """`abcabc`-style: the string is a shorter string repeated (its own rotation)."""
    return len(value) > 1 and (value + value).find(value, 1) < len(value)


def is_loopback(host: str) -> bool:
    if host.strip().lower() in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True, slots=True)
class EnvSetting:
    """One row of the settings table: the variable, its type, default and meaning."""

    env: str
    kind: type
    description: str
    # How the README shows the default when not as the value itself (`embedded`, `auto`).
    shown: str | None = None
    unit: str = ""
    # Applied to the raw value before it is parsed (`APP_ENV`, `LOG_LEVEL`: lower case).
    normalise: Callable[[str], str] | None = None
    field: str = ""
    default: Any = None

    def parse(self, name: str, raw: str) -> Any:
        if self.normalise is not None:
            raw = self.normalise(raw)
        if self.kind is bool:
            return _bool(raw)
        if self.kind in (int, float):
            try:
                number = float(raw)
            except ValueError as exc:
                raise ConfigError(f"{name} must be a number, got {raw!r}") from exc
            return int(number) if self.kind is int else number
        if self.kind is tuple:
            return _csv(raw)
        if issubclass(self.kind, Path):
            return Path(raw)
        return raw

    def render(self, value: Any) -> str:
        """`value` as this variable's text (`parse` reads it back)."""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float):
            return f"{value:g}" if float(f"{value:g}") == value else repr(value)
        if isinstance(value, tuple):
            return ",".join(value)
        return str(value)

    @property
    def shown_default(self) -> str:
        if self.shown is not None:
            return self.shown
        text = f"`{self.render(self.default)}`"
        return f"{text} {self.unit}" if self.unit else text


def _lower(raw: str) -> str:
    return raw.strip().lower()


def env(
    name: str,
    default: Any,
    description: str,
    *,
    kind: type | None = None,
    shown: str | None = None,
    unit: str = "",
    normalise: Callable[[str], str] | None = None,
) -> Any:
    """A `Settings` field read from the environment variable `name` (`SETTINGS`)."""
    if kind is None:
        kind = str if default is None else Path if isinstance(default, Path) else type(default)
    declared = EnvSetting(
        env=name,
        kind=kind,
        description=description,
        shown=shown,
        unit=unit,
        normalise=normalise,
    )
    return field(default=default, metadata={"env": declared})


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated settings. `validate()` fails closed:

    - `APP_ENV` must be one of `APP_ENVS` (any case); anything else is refused.
    - The development JWT secret and API key are used only when `APP_ENV=development` is
      set explicitly, or `APP_ENV` is unset and the server binds a loopback address
      (`make run`). Everywhere else `JWT_SECRET_KEY` and `LINKCOACH_API_KEYS` must be set.
    - `staging` and `production` also refuse a short or low-entropy secret and short or
      development API keys, and hide the demo pages.
    """

    app_env: str = env(
        "APP_ENV",
        "development",
        "`development`, `test`, `staging` or `production` (any case); any other value refuses "
        "to start. The development JWT secret and API key are used only with "
        "`APP_ENV=development`, or with `APP_ENV` unset on a loopback `HOST`; elsewhere "
        "`JWT_SECRET_KEY` and `LINKCOACH_API_KEYS` must be set. `staging`/`production` also "
        "refuse a short or repetitive secret and the development API key, and hide `/demo*`",
        shown="unset",
        normalise=_lower,
    )
    # False when APP_ENV was not set at all: dev defaults then need a loopback bind.
    app_env_explicit: bool = True
    host: str = env("HOST", "127.0.0.1", "bind address of `linkcoach serve`")
    port: int = env("PORT", 8000, "bind port of `linkcoach serve`")
    listen_backlog: int = env(
        "LISTEN_BACKLOG",
        4096,
        "connections waiting to be accepted (capped by the kernel's `net.core.somaxconn`)",
    )
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (uvicorn's
    # forwarded_allow_ips). Empty: nobody's, so a client cannot pick its own address.
    forwarded_allow_ips: tuple[str, ...] = env(
        "FORWARDED_ALLOW_IPS",
        (),
        "comma-separated proxy addresses whose `X-Forwarded-For`/`-Proto` are believed; with "
        "none, the socket peer is the client address",
        shown="none",
    )
    workers: int = env(
        "WEB_CONCURRENCY",
        1,
        "uvicorn workers (`linkcoach serve`, Procfile); more than one with retrieval on needs "
        "`CHROMA_HOST` ([Deployment](#deployment))",
    )
    log_level: str = env(
        "LOG_LEVEL",
        "info",
        "JSON logs on stdout, one object per line, with `request_id`",
        normalise=_lower,
    )

    data_dir: Path = env(
        "LINKCOACH_DATA_DIR", Path(".linkcoach"), "embedded Postgres/Redis/Chroma data"
    )
    database_url: str | None = env(
        "DATABASE_URL",
        None,
        "PostgreSQL DSN (`postgresql://user:pass@host:5432/db`)",
        shown="embedded",
    )
    db_pool_min: int = env(
        "DB_POOL_MIN",
        20,
        "connections an asyncpg pool opens at start and keeps open per server process; at"
        " `DB_POOL_MAX`, a burst of turns never waits for new connections (50 turns at once"
        " on a pool of 2 took 54 ms longer than on a warm one). Postgres must allow"
        " `WEB_CONCURRENCY` x this per instance; `linkcoach migrate` and `token` use one",
    )
    db_pool_max: int = env("DB_POOL_MAX", 20, "largest asyncpg pool per process")
    redis_url: str | None = env(
        "REDIS_URL",
        None,
        "`redis://host:6379/0` (or `unix:///path.sock`)",
        shown="embedded",
    )
    redis_prefix: str = env(
        "REDIS_PREFIX",
        "lc:",
        "prefix of every Redis key (share one Redis between deployments)",
    )
    chroma_host: str | None = env(
        "CHROMA_HOST",
        None,
        "Chroma server (client/server mode, e.g. `chroma run --port 8001`); required for "
        "several workers or instances",
        shown="embedded",
    )
    chroma_port: int = env("CHROMA_PORT", 8001, "port of the Chroma server named by `CHROMA_HOST`")
    chroma_collection: str = env("CHROMA_COLLECTION", "linkcoach_kb", "collection name")
    knowledge_base_dir: Path = env(
        "KNOWLEDGE_BASE_DIR",
        Path("knowledge_base"),
        "markdown documents to ingest",
    )
    models_dir: Path = env("MODELS_DIR", Path("models"), "classifier artifact")

    gemini_api_key: str | None = env(
        "GEMINI_API_KEY",
        None,
        "enables the `gemini` provider (else `offline`)",
        shown="—",
    )
    gemini_base_url: str | None = env(
        "GEMINI_BASE_URL",
        None,
        "point the Gemini client at another endpoint (the emulator)",
        shown="Google's",
    )
    gemini_model: str = env("GEMINI_MODEL", "gemini-2.5-flash", "chat and report model")
    gemini_embedding_model: str = env(
        "GEMINI_EMBEDDING_MODEL",
        "text-embedding-004",
        "embeddings when a key is set",
    )
    gemini_stream_transport: str = env(
        "GEMINI_STREAM_TRANSPORT",
        "direct",
        "chat streams: `direct` reads `:streamGenerateContent?alt=sse` with orjson; `sdk` goes "
        "through google-genai (reports always use google-genai)",
    )
    llm_provider: str | None = env(
        "LLM_PROVIDER",
        None,
        "force `gemini` or `offline`",
        shown="auto",
    )
    llm_temperature: float = env("LLM_TEMPERATURE", 0.7, "sampling temperature of chat answers")
    llm_max_output_tokens: int = env(
        "LLM_MAX_OUTPUT_TOKENS",
        1024,
        "output budget of a chat answer",
    )
    report_max_output_tokens: int = env(
        "REPORT_MAX_OUTPUT_TOKENS",
        8192,
        "output budget of a structured report",
    )
    llm_first_chunk_timeout_s: float = env(
        "LLM_FIRST_CHUNK_TIMEOUT",
        20.0,
        "time the provider has to send an answer's first chunk",
        unit="s",
    )
    llm_idle_timeout_s: float = env(
        "LLM_IDLE_TIMEOUT",
        30.0,
        "longest wait for the provider's next chunk",
        unit="s",
    )
    llm_total_timeout_s: float = env(
        "LLM_TOTAL_TIMEOUT",
        180.0,
        "longest an answer may take from start to end",
        unit="s",
    )
    llm_retries: int = env("LLM_RETRIES", 2, "retries with backoff, only before the first chunk")
    history_token_budget: int = env(
        "HISTORY_TOKEN_BUDGET",
        3000,
        "history kept in the prompt (the newest turns that fit; also for `/chat`'s client-sent "
        "history)",
    )
    # gemini-2.5-flash thinks before its first visible token unless told not to: that
    # adds seconds to the first token and is billed as output. 0 = no thinking, -1 = the
    # model decides, N = at most N thought tokens (added to maxOutputTokens).
    gemini_thinking_budget: int = env(
        "GEMINI_THINKING_BUDGET",
        0,
        "thought tokens a chat answer may spend before its first visible token: `0` none, `-1` "
        "the model decides (gemini-2.5-flash's own default), `N` at most N (added to "
        "`maxOutputTokens`, so `LLM_MAX_OUTPUT_TOKENS` stays the room for the answer). See "
        "[Usage, budgets and thinking](#usage-budgets-and-thinking)",
    )
    report_thinking_budget: int = env(
        "REPORT_THINKING_BUDGET",
        -1,
        "the same for reports (dynamic: a report is generated once and cached)",
    )
    pii_masking: bool = env(
        "PII_MASKING",
        True,
        "mask personal data in questions, `/chat` history and report inputs before they are "
        "stored, logged or sent to Gemini ([Personal data](#personal-data)); `off` sends them "
        "as typed",
        shown="`on`",
    )
    # Tokens (prompt + completion + thoughts) a user may spend per day; 0 = no budget.
    user_daily_token_budget: int = env(
        "USER_DAILY_TOKEN_BUDGET",
        0,
        "tokens (prompt + answer + thoughts) a user may spend per day, across instances; once "
        "spent, new turns get 429 `budget_exceeded` with `resets_at`",
        shown="`0` (off)",
    )
    # Usage days (and the budget's reset) follow this zone's midnight.
    usage_timezone: str = env(
        "USAGE_TIMEZONE",
        "Asia/Seoul",
        "the zone whose midnight starts a usage day and resets the budget",
    )

    jwt_secret_key: str = env(
        "JWT_SECRET_KEY",
        DEV_JWT_SECRET,
        "HMAC key; in `staging`/`production` ≥ 32 random characters (`python -c 'import "
        "secrets; print(secrets.token_urlsafe(48))'`)",
        shown="dev value (development only)",
    )
    jwt_algorithm: str = env(
        "JWT_ALGORITHM",
        "HS256",
        "the only algorithm accepted (`HS256`/`HS384`/`HS512`)",
    )
    jwt_issuer: str = env("JWT_ISSUER", "linkcoach-stream", "required `iss` claim")
    jwt_audience: str = env("JWT_AUDIENCE", "linkcoach-widget", "required `aud` claim")
    access_token_ttl_s: int = env("ACCESS_TOKEN_TTL", 3600, "lifetime of an access token", unit="s")
    refresh_token_ttl_s: int = env(
        "REFRESH_TOKEN_TTL",
        30 * 24 * 3600,
        "lifetime of a refresh token",
        unit="s",
    )
    api_keys: tuple[str, ...] = env(
        "LINKCOACH_API_KEYS",
        (),
        "comma-separated keys of trusted callers",
        shown="dev key `linkcoach-dev-api-key` in development only",
    )

    cors_origins: tuple[str, ...] = env(
        "CORS_ORIGINS",
        (),
        "comma-separated allowed origins: HTTP CORS and WebSocket `Origin` (the origin that "
        "*makes the calls*: for `/widget/` that is this server itself, for the product's React "
        "widget its own origin), and for `/widget/` also `frame-ancestors` and the parents "
        "whose `INIT_WIDGET` it accepts (the parent site's origin). See [Moving from the "
        "Netlify functions](#moving-from-the-netlify-functions)",
        shown="none",
    )
    max_body_bytes: int = env(
        "MAX_BODY_BYTES",
        64 * 1024,
        "larger bodies get 413 (every route but `/chat`)",
    )
    # `/chat` carries the whole visible conversation every turn: 200 long turns fit.
    chat_max_body_bytes: int = env(
        "CHAT_MAX_BODY_BYTES",
        4 * 1024 * 1024,
        "body limit of `POST /chat`, which carries the whole visible conversation every turn "
        "(200 turns with 3,000-character answers are ~1.5 MB in "
        "`tests/chat/test_legacy_chat.py`); larger bodies get 413",
    )
    chat_history_item_chars: int = env(
        "CHAT_HISTORY_ITEM_CHARS",
        8000,
        "a `/chat` history item longer than this is cut to this length (not refused)",
    )
    max_question_chars: int = env("MAX_QUESTION_CHARS", 2000, "longer questions get 422")
    report_ttl_days: int = env(
        "REPORT_TTL_DAYS",
        30,
        "days a report stays in the durable cache (Postgres)",
        unit="days",
    )
    report_cache_ttl_s: int = env(
        "REPORT_CACHE_TTL",
        24 * 3600,
        "lifetime of a report in the hot cache (Redis)",
        unit="s",
    )
    stream_buffer_ttl_s: int = env(
        "STREAM_BUFFER_TTL",
        3600,
        "how long a stream can be resumed from Redis",
        unit="s",
    )
    stream_buffer_max_events: int = env(
        "STREAM_BUFFER_MAX_EVENTS",
        5000,
        "events kept per stream in its Redis resume log (oldest dropped first)",
    )
    stream_ping_interval_s: float = env(
        "STREAM_PING_INTERVAL",
        15.0,
        "SSE keep-alive comments this often while a stream is idle",
        unit="s",
    )
    stream_send_timeout_s: float = env(
        "STREAM_SEND_TIMEOUT",
        10.0,
        "a client that takes longer than this to accept a frame is dropped",
        unit="s",
    )
    # A producer's lease in Redis; a reader or the sweep presumes it dead once it expires.
    stream_lease_ttl_s: float = env(
        "STREAM_LEASE_TTL",
        10.0,
        "a generating instance holds a lease in Redis per answer, renewed every third of this; "
        "once it expires the producer is presumed dead (readers get `stream_lost` within about "
        "this long plus a second)",
        unit="s",
    )
    stream_sweep_interval_s: float = env(
        "STREAM_SWEEP_INTERVAL",
        5.0,
        "every instance marks `streaming` answers whose lease expired as `interrupted` this "
        "often (`0` = off)",
        unit="s",
    )
    gc_freeze: bool = env(
        "GC_FREEZE",
        True,
        "once started, the objects that live as long as the process (the knowledge-base "
        "index, models, pools) are moved out of Python's cyclic collector's view "
        "(`gc.freeze()`), so its full passes no longer walk them",
    )
    gc_thresholds: tuple[str, ...] = env(
        "GC_THRESHOLDS",
        ("10000", "20", "20"),
        "Python's collector thresholds (`gc.set_threshold`), three whole numbers; empty "
        "keeps Python's own (700,10,10). Fewer young-generation passes per turn",
    )
    persist_interval_s: float = env(
        "PERSIST_INTERVAL",
        0.25,
        "partial answers are written to Postgres in one batch per interval",
        unit="s",
    )
    coalesce_ms: float = env(
        "STREAM_COALESCE_MS",
        15.0,
        "chunks arriving closer together than this go out as one `delta`",
    )
    shutdown_grace_s: float = env(
        "SHUTDOWN_GRACE",
        20.0,
        "on SIGTERM, running streams get this long before `server_shutdown`",
        unit="s",
    )
    # uvicorn's own limit: past it the connections still open are closed.
    shutdown_timeout_s: float | None = env(
        "SHUTDOWN_TIMEOUT",
        None,
        "on SIGTERM, the server closes the connections still open after this long (uvicorn "
        "`timeout_graceful_shutdown`); it should exceed `SHUTDOWN_GRACE`",
        kind=float,
        shown="`SHUTDOWN_GRACE` + 5 s",
    )
    rate_user_per_min: float = env(
        "RATE_LIMIT_USER_PER_MIN",
        600.0,
        "authenticated requests per user",
    )
    rate_turns_per_min: float = env(
        "RATE_LIMIT_TURNS_PER_MIN",
        30.0,
        "chat turns per user (SSE, WS, `/query`, `/chat`)",
    )
    rate_mint_per_min: float = env("RATE_LIMIT_MINT_PER_MIN", 6000.0, "token mints per API key")
    rate_refresh_per_min: float = env(
        "RATE_LIMIT_REFRESH_PER_MIN",
        60.0,
        "refreshes per client address",
    )
    rate_auth_failures_per_min: float = env(
        "RATE_LIMIT_AUTH_FAILURES_PER_MIN",
        30.0,
        "failed token/API-key checks per client address",
    )
    # Uncached report generations (LLM calls) per user; cached reports are not counted.
    rate_reports_per_hour: float = env(
        "RATE_LIMIT_REPORTS_PER_HOUR",
        20.0,
        "report generations per user (each an LLM call), all usable at once, refilled evenly "
        "over the hour; reports found in either cache tier are not counted. Over it: 429 "
        "`rate_limited` with `Retry-After`",
    )
    max_streams_per_user: int = env(
        "MAX_STREAMS_PER_USER",
        3,
        "answers generating at once per user, across instances",
    )
    # Admission and connection limits per process (`services/admission.py`, `server.py`).
    max_active_streams: int = env(
        "MAX_ACTIVE_STREAMS",
        150,
        "answers generating at once in one process (`0` = no limit); past it a new turn (SSE, "
        "WS, `/query`, `/chat`) gets `503 server_busy` at once, before authentication or any "
        "other work. The default is one worker's measured capacity on two shared cores with "
        "12-chunk answers of ~1.8 s: offered twice that, the admitted kept TTFT p99 within "
        "1.2x of the unloaded value and refusals took 13 ms p50 (`python benchmarks/streams.py "
        "--overload 150 --turns 2 --ramp-ms 10`; figures and the 200 comparison in "
        "`services/admission.py`). Longer answers cost less CPU per second each: raise it for "
        "them",
    )
    ready_high_water: float = env(
        "READY_HIGH_WATER",
        0.9,
        "share of `MAX_ACTIVE_STREAMS` at or above which `/ready` answers `503 overloaded`, so "
        "a load balancer sends new traffic elsewhere before turns are refused",
    )
    busy_retry_after_s: float = env(
        "BUSY_RETRY_AFTER",
        2.0,
        "base of the `Retry-After` of `server_busy`; each refusal gets a random value between "
        "one and two times it (jitter, so refused clients do not return together)",
        unit="s",
    )
    max_connections: int = env(
        "MAX_CONNECTIONS",
        2048,
        "open connections per process (uvicorn `limit_concurrency`; `0` = no limit); past it a "
        "request gets a plain `503` and its connection is closed. Idle WebSockets and resumed "
        "streams count, generations are capped by `MAX_ACTIVE_STREAMS`",
    )
    header_timeout_s: float = env(
        "HEADER_TIMEOUT",
        10.0,
        "time a client has to send a request's headers (from the connection's opening, or the "
        "request's first byte on a kept-alive connection); past it a partial request gets `408 "
        "request_timeout` and a silent connection is closed (slowloris)",
        unit="s",
    )
    body_timeout_s: float = env(
        "BODY_TIMEOUT",
        60.0,
        "time a client has to send a request's body after its headers; past it the connection "
        "is closed",
        unit="s",
    )
    keep_alive_timeout_s: float = env(
        "KEEP_ALIVE_TIMEOUT",
        5.0,
        "an idle kept-alive connection is closed after this (uvicorn `timeout_keep_alive`)",
        unit="s",
    )
    # Small frames and no compression keep a held-open socket at a few KiB.
    ws_max_size: int = env(
        "WS_MAX_SIZE",
        64 * 1024,
        "largest WebSocket message a client may send, in bytes (uvicorn `ws_max_size`); a "
        "larger one closes the socket with `1009`",
    )
    ws_max_queue: int = env(
        "WS_MAX_QUEUE",
        16,
        "incoming WebSocket messages buffered per socket before reading pauses (uvicorn "
        "`ws_max_queue`)",
    )
    ws_per_message_deflate: bool = env(
        "WS_PER_MESSAGE_DEFLATE",
        False,
        "WebSocket per-message compression (costs ~50 KiB per socket; off keeps a held-open "
        "socket at a few KiB)",
    )
    # A gap between provider chunks longer than twice this is counted as a stall.
    expected_chunk_gap_ms: float = env(
        "EXPECTED_CHUNK_GAP_MS",
        250.0,
        "the provider's usual pacing between chunks; a gap longer than twice this counts in "
        "`linkcoach_chunk_stalls_total`",
    )
    otel_enabled: bool = env(
        "OTEL_ENABLED",
        False,
        "export OpenTelemetry traces of every request and turn over OTLP (`pip install "
        "'linkcoach-stream[otel]'`; the standard `OTEL_EXPORTER_OTLP_*` and "
        "`OTEL_SERVICE_NAME` variables apply)",
    )
    retrieval_enabled: bool = env("RETRIEVAL_ENABLED", True, "`false` answers without retrieval")
    rag_embedder: str = env(
        "RAG_EMBEDDER",
        "e5",
        "`e5` (offline, bundled), `gemini` (needs `GEMINI_API_KEY`) or `hash` (tests)",
    )
    rag_query_process: bool = env(
        "RAG_QUERY_PROCESS",
        True,
        "analyse the words of a question the knowledge base does not use (kiwi) in a child "
        "process, so a search does not hold the event loop; `false` analyses them in the "
        "server process (~340 MB less)",
    )
    rag_word_cache: int = env(
        "RAG_WORD_CACHE",
        50_000,
        "unknown words (of up to 32 characters) whose morphemes are kept after kiwi analysed "
        "them (~0.2 kB each); 0 analyses every unknown word again",
    )
    e5_threads: int = env("E5_THREADS", 1, "threads of the offline embedder")
    rag_embed_cpu_share: float = env(
        "RAG_EMBED_CPU_SHARE",
        0.5,
        "share of one core the e5 query embedding may use (`0` = lexical ranking only, `1` = "
        "no cap); beyond it a search ranks lexically",
    )
    rag_embed_max_loop_lag_ms: float = env(
        "RAG_EMBED_MAX_LOOP_LAG_MS",
        25.0,
        "while the event loop runs later than this (the process is short of CPU) searches rank "
        "lexically; `0` switches the rule off",
    )
    rag_dense_weight: float = env(
        "RAG_DENSE_WEIGHT",
        0.0,
        "weight of the e5 (or Gemini) query vector in the ranking; `0` = lexical ranking only "
        "(morphemes + BM25, ~1.3 ms CPU)",
    )

    api_log_queue_size: int = env(
        "API_LOG_QUEUE_SIZE",
        10_000,
        "API log entries buffered before dropping (counted)",
    )
    api_log_batch_size: int = env(
        "API_LOG_BATCH_SIZE",
        500,
        "API log entries written to Postgres in one statement",
    )
    api_log_flush_interval_s: float = env(
        "API_LOG_FLUSH_INTERVAL",
        1.0,
        "API log entries are written at least this often",
        unit="s",
    )
    sentry_dsn: str | None = env(
        "SENTRY_DSN",
        None,
        "report unhandled errors to Sentry (with `sentry-sdk` installed)",
        shown="—",
    )
    sentry_traces_sample_rate: float = env(
        "SENTRY_TRACES_SAMPLE_RATE",
        0.0,
        "share of requests Sentry traces (`0` = errors only)",
    )

    @property
    def is_production(self) -> bool:
        return self.app_env.strip().lower() not in NON_PRODUCTION_ENVS

    @property
    def dev_defaults_allowed(self) -> bool:
        """Whether the published development secret and API key may be used."""
        if self.app_env.strip().lower() != "development":
            return False
        return self.app_env_explicit or is_loopback(self.host)

    @property
    def provider_name(self) -> str:
        if self.llm_provider:
            return self.llm_provider
        return "gemini" if self.gemini_api_key else "offline"

    @property
    def graceful_shutdown_timeout_s(self) -> float:
        if self.shutdown_timeout_s is not None:
            return self.shutdown_timeout_s
        return int(self.shutdown_grace_s) + 5

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    def gc_threshold_values(self) -> tuple[int, int, int] | None:
        """`GC_THRESHOLDS` as numbers; None keeps Python's own."""
        if not self.gc_thresholds:
            return None
        try:
            values = tuple(int(v) for v in self.gc_thresholds)
        except ValueError:
            values = ()
        if len(values) != 3 or min(values) < 0:
            raise ConfigError(
                "GC_THRESHOLDS must be three whole numbers >= 0 such as 10000,20,20 "
                f"(got {','.join(self.gc_thresholds)!r})"
            )
        return values[0], values[1], values[2]

    def validate(self) -> Settings:
        env = self.app_env.strip().lower()
        if env not in APP_ENVS:
            raise ConfigError(
                f"APP_ENV must be one of {', '.join(APP_ENVS)} (got {self.app_env!r})"
            )
        if env != self.app_env:
            return replace(self, app_env=env).validate()
        if self.jwt_algorithm not in {"HS256", "HS384", "HS512"}:
            raise ConfigError("JWT_ALGORITHM must be one of HS256, HS384, HS512")
        self._validate_secrets()
        if self.provider_name not in {"gemini", "offline"}:
            raise ConfigError("LLM_PROVIDER must be 'gemini' or 'offline'")
        if not 0.0 <= self.rag_embed_cpu_share <= 1.0:
            raise ConfigError("RAG_EMBED_CPU_SHARE must be between 0 and 1")
        if self.rag_word_cache < 0:
            raise ConfigError("RAG_WORD_CACHE must be >= 0 (0 = no cache)")
        if self.stream_lease_ttl_s < 1.0:
            raise ConfigError("STREAM_LEASE_TTL must be at least 1 second")
        if self.stream_sweep_interval_s < 0:
            raise ConfigError("STREAM_SWEEP_INTERVAL must not be negative (0 switches it off)")
        if not 0.0 < self.ready_high_water <= 1.0:
            raise ConfigError("READY_HIGH_WATER must be above 0 and at most 1")
        for name, value in (
            ("HEADER_TIMEOUT", self.header_timeout_s),
            ("BODY_TIMEOUT", self.body_timeout_s),
            ("KEEP_ALIVE_TIMEOUT", self.keep_alive_timeout_s),
            ("STREAM_SEND_TIMEOUT", self.stream_send_timeout_s),
        ):
            if value <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds")
        if self.shutdown_timeout_s is not None and self.shutdown_timeout_s < 0:
            raise ConfigError("SHUTDOWN_TIMEOUT must not be negative")
        for name, count in (("WS_MAX_SIZE", self.ws_max_size), ("WS_MAX_QUEUE", self.ws_max_queue)):
            if count <= 0:
                raise ConfigError(f"{name} must be a positive number")
        if self.workers < 1:
            raise ConfigError("WEB_CONCURRENCY must be at least 1")
        if not 0.0 <= self.sentry_traces_sample_rate <= 1.0:
            raise ConfigError("SENTRY_TRACES_SAMPLE_RATE must be between 0 and 1")
        if self.gemini_stream_transport not in {"direct", "sdk"}:
            raise ConfigError("GEMINI_STREAM_TRANSPORT must be 'direct' or 'sdk'")
        for name in ("gemini_thinking_budget", "report_thinking_budget"):
            if getattr(self, name) < -1:
                raise ConfigError(f"{name.upper()} must be -1 (dynamic), 0 (off) or a budget")
        if self.user_daily_token_budget < 0:
            raise ConfigError("USER_DAILY_TOKEN_BUDGET must be >= 0 (0 = no budget)")
        try:
            ZoneInfo(self.usage_timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"USAGE_TIMEZONE is not a known time zone: {exc}") from exc
        if self.provider_name == "gemini" and not self.gemini_api_key:
            raise ConfigError("LLM_PROVIDER=gemini needs GEMINI_API_KEY")
        self.gc_threshold_values()
        return self

    def _validate_secrets(self) -> None:
        if not self.dev_defaults_allowed:
            if self.app_env_explicit:
                why = f"APP_ENV={self.app_env}"
            else:
                why = (
                    f"APP_ENV is not set and HOST={self.host} is not a loopback address "
                    "(set APP_ENV=production with the settings below, or APP_ENV=development "
                    "to run with the development defaults)"
                )
            if self.jwt_secret_key in PLACEHOLDER_SECRETS:
                raise ConfigError(f"JWT_SECRET_KEY must be set to a random value: {why}")
            if not self.api_keys:
                raise ConfigError(f"LINKCOACH_API_KEYS must be set: {why}")
        if not self.is_production:
            return
        secret = self.jwt_secret_key
        if (
            len(secret) < 32
            or len(set(secret)) < MIN_SECRET_DISTINCT
            or estimated_entropy_bits(secret) < MIN_SECRET_BITS
            or is_repetition(secret)
        ):
            raise ConfigError(
                "JWT_SECRET_KEY must be a random value of at least 32 characters (e.g. "
                "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`) when "
                f"APP_ENV={self.app_env}; this one is too short or too repetitive"
            )
        if any(len(key) < 16 for key in self.api_keys):
            raise ConfigError("each LINKCOACH_API_KEYS entry must be at least 16 characters")
        if DEV_API_KEY in self.api_keys:
            raise ConfigError(
                f"LINKCOACH_API_KEYS must not contain the development key when "
                f"APP_ENV={self.app_env}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Every setting of `SETTINGS` read from `env` (default: the process environment);
        an unset or empty variable keeps the default."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            raw = source.get(setting.env)
            if raw:
                values[setting.field] = setting.parse(setting.env, raw)
        values["app_env_explicit"] = "app_env" in values
        return cls(**values).validate()

    def to_env(self) -> dict[str, str]:
        """The environment that `from_env` reads back as these settings (a subprocess's)."""
        out: dict[str, str] = {}
        for setting in SETTINGS:
            value = getattr(self, setting.field)
            if value is None:
                continue
            out[setting.env] = setting.render(value)
        if not self.app_env_explicit:
            out.pop("APP_ENV", None)
        return out


def _settings_table() -> tuple[EnvSetting, ...]:
    table = []
    for f in fields(Settings):
        declared = f.metadata.get("env")
        if declared is not None:
            table.append(replace(declared, field=f.name, default=f.default))
    return tuple(table)


# The one table of settings: env name, type, default and meaning, in `Settings`' order.
# `Settings.from_env` reads it; the README's configuration table is rendered from it
# (`python -m linkcoach_stream.config`), and a test holds the two equal.
SETTINGS: tuple[EnvSetting, ...] = _settings_table()


def markdown_table() -> str:
    """The README's configuration table."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{s.env}` | {s.shown_default} | {s.description} |" for s in SETTINGS]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown_table() + "\n")
