"""Settings read once from the environment and validated.

Every part of the service has an embedded default so `linkcoach serve` runs with no
configuration at all; setting the URL of a real service switches that part over.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
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
class Settings:
    """Validated settings. `validate()` fails closed:

    - `APP_ENV` must be one of `APP_ENVS` (any case); anything else is refused.
    - The development JWT secret and API key are used only when `APP_ENV=development` is
      set explicitly, or `APP_ENV` is unset and the server binds a loopback address
      (`make run`). Everywhere else `JWT_SECRET_KEY` and `LINKCOACH_API_KEYS` must be set.
    - `staging` and `production` also refuse a short or low-entropy secret and short or
      development API keys, and hide the demo pages.
    """

    app_env: str = "development"
    # False when APP_ENV was not set at all: dev defaults then need a loopback bind.
    app_env_explicit: bool = True
    host: str = "127.0.0.1"
    port: int = 8000
    listen_backlog: int = 4096
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (uvicorn's
    # forwarded_allow_ips). Empty: nobody's, so a client cannot pick its own address.
    forwarded_allow_ips: tuple[str, ...] = ()
    log_level: str = "info"

    data_dir: Path = Path(".linkcoach")
    database_url: str | None = None
    db_pool_min: int = 2
    db_pool_max: int = 20
    redis_url: str | None = None
    redis_prefix: str = "lc:"
    chroma_host: str | None = None
    chroma_port: int = 8001
    chroma_collection: str = "linkcoach_kb"
    knowledge_base_dir: Path = Path("knowledge_base")
    models_dir: Path = Path("models")

    gemini_api_key: str | None = None
    gemini_base_url: str | None = None
    gemini_model: str = "gemini-2.5-flash"
    gemini_embedding_model: str = "text-embedding-004"
    gemini_stream_transport: str = "direct"
    llm_provider: str | None = None
    llm_temperature: float = 0.7
    llm_max_output_tokens: int = 1024
    report_max_output_tokens: int = 8192
    llm_first_chunk_timeout_s: float = 20.0
    llm_idle_timeout_s: float = 30.0
    llm_total_timeout_s: float = 180.0
    llm_retries: int = 2
    history_token_budget: int = 3000
    # gemini-2.5-flash thinks before its first visible token unless told not to: that
    # adds seconds to the first token and is billed as output. 0 = no thinking, -1 = the
    # model decides, N = at most N thought tokens (added to maxOutputTokens).
    gemini_thinking_budget: int = 0
    report_thinking_budget: int = -1
    pii_masking: bool = True
    # Tokens (prompt + completion + thoughts) a user may spend per day; 0 = no budget.
    user_daily_token_budget: int = 0
    # Usage days (and the budget's reset) follow this zone's midnight.
    usage_timezone: str = "Asia/Seoul"

    jwt_secret_key: str = DEV_JWT_SECRET
    jwt_algorithm: str = "HS256"
    jwt_issuer: str = "linkcoach-stream"
    jwt_audience: str = "linkcoach-widget"
    access_token_ttl_s: int = 3600
    refresh_token_ttl_s: int = 30 * 24 * 3600
    api_keys: tuple[str, ...] = ()

    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 64 * 1024
    # `/chat` carries the whole visible conversation every turn: 200 long turns fit.
    chat_max_body_bytes: int = 4 * 1024 * 1024
    chat_history_item_chars: int = 8000
    max_question_chars: int = 2000
    report_ttl_days: int = 30
    report_cache_ttl_s: int = 24 * 3600
    stream_buffer_ttl_s: int = 3600
    stream_buffer_max_events: int = 5000
    stream_ping_interval_s: float = 15.0
    stream_send_timeout_s: float = 10.0
    # A producer's lease in Redis; a reader or the sweep presumes it dead once it expires.
    stream_lease_ttl_s: float = 10.0
    stream_sweep_interval_s: float = 5.0
    persist_interval_s: float = 0.25
    coalesce_ms: float = 15.0
    shutdown_grace_s: float = 20.0
    rate_user_per_min: float = 600.0
    rate_turns_per_min: float = 30.0
    rate_mint_per_min: float = 6000.0
    rate_refresh_per_min: float = 60.0
    rate_auth_failures_per_min: float = 30.0
    # Uncached report generations (LLM calls) per user; cached reports are not counted.
    rate_reports_per_hour: float = 20.0
    max_streams_per_user: int = 3
    # Admission and connection limits per process (`services/admission.py`, `server.py`).
    max_active_streams: int = 150
    ready_high_water: float = 0.9
    busy_retry_after_s: float = 2.0
    max_connections: int = 2048
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keep_alive_timeout_s: float = 5.0
    # A gap between provider chunks longer than twice this is counted as a stall.
    expected_chunk_gap_ms: float = 250.0
    otel_enabled: bool = False
    retrieval_enabled: bool = True
    rag_embed_cpu_share: float = 0.5
    rag_embed_max_loop_lag_ms: float = 25.0
    rag_dense_weight: float = 0.0

    api_log_queue_size: int = 10_000
    api_log_batch_size: int = 500
    api_log_flush_interval_s: float = 1.0

    extra: Mapping[str, str] = field(default_factory=dict)

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

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

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
        ):
            if value <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds")
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
        e = dict(os.environ if env is None else env)

        def get(name: str, default: str | None = None) -> str | None:
            value = e.get(name)
            return value if value not in (None, "") else default

        def num(name: str, default: float) -> float:
            raw = get(name)
            if raw is None:
                return default
            try:
                return float(raw)
            except ValueError as exc:
                raise ConfigError(f"{name} must be a number, got {raw!r}") from exc

        d = cls()
        data_dir = Path(get("LINKCOACH_DATA_DIR", str(d.data_dir)) or d.data_dir)
        return cls(
            app_env=(get("APP_ENV", d.app_env) or d.app_env).strip().lower(),
            app_env_explicit=get("APP_ENV") is not None,
            host=get("HOST", d.host) or d.host,
            port=int(num("PORT", d.port)),
            listen_backlog=int(num("LISTEN_BACKLOG", d.listen_backlog)),
            forwarded_allow_ips=_csv(get("FORWARDED_ALLOW_IPS", "") or ""),
            log_level=(get("LOG_LEVEL", d.log_level) or d.log_level).lower(),
            data_dir=data_dir,
            database_url=get("DATABASE_URL"),
            db_pool_min=int(num("DB_POOL_MIN", d.db_pool_min)),
            db_pool_max=int(num("DB_POOL_MAX", d.db_pool_max)),
            redis_url=get("REDIS_URL"),
            redis_prefix=get("REDIS_PREFIX", d.redis_prefix) or d.redis_prefix,
            chroma_host=get("CHROMA_HOST"),
            chroma_port=int(num("CHROMA_PORT", d.chroma_port)),
            chroma_collection=get("CHROMA_COLLECTION", d.chroma_collection) or d.chroma_collection,
            knowledge_base_dir=Path(get("KNOWLEDGE_BASE_DIR", str(d.knowledge_base_dir)) or "."),
            models_dir=Path(get("MODELS_DIR", str(d.models_dir)) or "."),
            gemini_api_key=get("GEMINI_API_KEY"),
            gemini_base_url=get("GEMINI_BASE_URL"),
            gemini_model=get("GEMINI_MODEL", d.gemini_model) or d.gemini_model,
            gemini_embedding_model=get("GEMINI_EMBEDDING_MODEL", d.gemini_embedding_model)
            or d.gemini_embedding_model,
            gemini_stream_transport=get("GEMINI_STREAM_TRANSPORT", d.gemini_stream_transport)
            or d.gemini_stream_transport,
            llm_provider=get("LLM_PROVIDER"),
            llm_temperature=num("LLM_TEMPERATURE", d.llm_temperature),
            llm_max_output_tokens=int(num("LLM_MAX_OUTPUT_TOKENS", d.llm_max_output_tokens)),
            report_max_output_tokens=int(
                num("REPORT_MAX_OUTPUT_TOKENS", d.report_max_output_tokens)
            ),
            llm_first_chunk_timeout_s=num("LLM_FIRST_CHUNK_TIMEOUT", d.llm_first_chunk_timeout_s),
            llm_idle_timeout_s=num("LLM_IDLE_TIMEOUT", d.llm_idle_timeout_s),
            llm_total_timeout_s=num("LLM_TOTAL_TIMEOUT", d.llm_total_timeout_s),
            llm_retries=int(num("LLM_RETRIES", d.llm_retries)),
            history_token_budget=int(num("HISTORY_TOKEN_BUDGET", d.history_token_budget)),
            gemini_thinking_budget=int(num("GEMINI_THINKING_BUDGET", d.gemini_thinking_budget)),
            report_thinking_budget=int(num("REPORT_THINKING_BUDGET", d.report_thinking_budget)),
            pii_masking=_bool(get("PII_MASKING", "on") or "on"),
            user_daily_token_budget=int(num("USER_DAILY_TOKEN_BUDGET", d.user_daily_token_budget)),
            usage_timezone=get("USAGE_TIMEZONE", d.usage_timezone) or d.usage_timezone,
            jwt_secret_key=get("JWT_SECRET_KEY", d.jwt_secret_key) or "",
            jwt_algorithm=get("JWT_ALGORITHM", d.jwt_algorithm) or d.jwt_algorithm,
            jwt_issuer=get("JWT_ISSUER", d.jwt_issuer) or d.jwt_issuer,
            jwt_audience=get("JWT_AUDIENCE", d.jwt_audience) or d.jwt_audience,
            access_token_ttl_s=int(num("ACCESS_TOKEN_TTL", d.access_token_ttl_s)),
            refresh_token_ttl_s=int(num("REFRESH_TOKEN_TTL", d.refresh_token_ttl_s)),
            api_keys=_csv(get("LINKCOACH_API_KEYS", "") or ""),
            cors_origins=_csv(get("CORS_ORIGINS", "") or ""),
            max_body_bytes=int(num("MAX_BODY_BYTES", d.max_body_bytes)),
            chat_max_body_bytes=int(num("CHAT_MAX_BODY_BYTES", d.chat_max_body_bytes)),
            chat_history_item_chars=int(num("CHAT_HISTORY_ITEM_CHARS", d.chat_history_item_chars)),
            max_question_chars=int(num("MAX_QUESTION_CHARS", d.max_question_chars)),
            report_ttl_days=int(num("REPORT_TTL_DAYS", d.report_ttl_days)),
            report_cache_ttl_s=int(num("REPORT_CACHE_TTL", d.report_cache_ttl_s)),
            stream_buffer_ttl_s=int(num("STREAM_BUFFER_TTL", d.stream_buffer_ttl_s)),
            stream_ping_interval_s=num("STREAM_PING_INTERVAL", d.stream_ping_interval_s),
            stream_send_timeout_s=num("STREAM_SEND_TIMEOUT", d.stream_send_timeout_s),
            stream_lease_ttl_s=num("STREAM_LEASE_TTL", d.stream_lease_ttl_s),
            stream_sweep_interval_s=num("STREAM_SWEEP_INTERVAL", d.stream_sweep_interval_s),
            api_log_queue_size=int(num("API_LOG_QUEUE_SIZE", d.api_log_queue_size)),
            coalesce_ms=num("STREAM_COALESCE_MS", d.coalesce_ms),
            persist_interval_s=num("PERSIST_INTERVAL", d.persist_interval_s),
            shutdown_grace_s=num("SHUTDOWN_GRACE", d.shutdown_grace_s),
            rate_user_per_min=num("RATE_LIMIT_USER_PER_MIN", d.rate_user_per_min),
            rate_turns_per_min=num("RATE_LIMIT_TURNS_PER_MIN", d.rate_turns_per_min),
            rate_mint_per_min=num("RATE_LIMIT_MINT_PER_MIN", d.rate_mint_per_min),
            rate_refresh_per_min=num("RATE_LIMIT_REFRESH_PER_MIN", d.rate_refresh_per_min),
            rate_auth_failures_per_min=num(
                "RATE_LIMIT_AUTH_FAILURES_PER_MIN", d.rate_auth_failures_per_min
            ),
            rate_reports_per_hour=num("RATE_LIMIT_REPORTS_PER_HOUR", d.rate_reports_per_hour),
            max_streams_per_user=int(num("MAX_STREAMS_PER_USER", d.max_streams_per_user)),
            max_active_streams=int(num("MAX_ACTIVE_STREAMS", d.max_active_streams)),
            ready_high_water=num("READY_HIGH_WATER", d.ready_high_water),
            busy_retry_after_s=num("BUSY_RETRY_AFTER", d.busy_retry_after_s),
            max_connections=int(num("MAX_CONNECTIONS", d.max_connections)),
            header_timeout_s=num("HEADER_TIMEOUT", d.header_timeout_s),
            body_timeout_s=num("BODY_TIMEOUT", d.body_timeout_s),
            keep_alive_timeout_s=num("KEEP_ALIVE_TIMEOUT", d.keep_alive_timeout_s),
            expected_chunk_gap_ms=num("EXPECTED_CHUNK_GAP_MS", d.expected_chunk_gap_ms),
            otel_enabled=_bool(get("OTEL_ENABLED", "false") or "false"),
            retrieval_enabled=_bool(get("RETRIEVAL_ENABLED", "true") or "true"),
            rag_embed_cpu_share=num("RAG_EMBED_CPU_SHARE", d.rag_embed_cpu_share),
            rag_embed_max_loop_lag_ms=num("RAG_EMBED_MAX_LOOP_LAG_MS", d.rag_embed_max_loop_lag_ms),
            rag_dense_weight=num("RAG_DENSE_WEIGHT", d.rag_dense_weight),
            extra={k: v for k in ("RAG_EMBEDDER",) if (v := get(k))},
        ).validate()
