"""What a turn was billed, and the per-user daily token budget.

Deliberate decisions (do not "fix"):

- A turn that ends with the provider's final usage records exactly that. One that ends
  early (cancelled, interrupted, failed, timed out) records an estimate, marked
  `estimated`: the provider's prompt count when it sent one, else the prompt's estimated
  size, and the larger of the provider's partial answer count and the estimated size of
  the text received. A turn that received nothing at all records zero tokens: a request
  that failed before its first chunk is not billed.
- Usage lives in Postgres (`usage_daily`, one row per user and day), written in the same
  transaction as the turn's final state, so every instance reads the same totals and
  nothing is counted twice when the write is retried.
- The budget (`USER_DAILY_TOKEN_BUDGET`, 0 = off) counts prompt + answer + thought
  tokens (what is billed; cached tokens are part of the prompt count). It is checked when
  a turn starts, one primary-key read; turns already running finish, so a user can go
  over by what the streams open at that moment spend. The day, and so the reset, follows
  midnight in `USAGE_TIMEZONE` (Asia/Seoul by default).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg

from ..config import Settings
from ..db.repositories import usage as repo
from ..errors import BudgetExceeded
from ..llm.base import ChatPrompt, Usage
from ..llm.prompts import estimate_tokens, user_message
from ..metrics import Metrics


def prompt_estimate(prompt: ChatPrompt) -> int:
    return (
        estimate_tokens(prompt.system)
        + sum(estimate_tokens(t.content) for t in prompt.history)
        + estimate_tokens(user_message(prompt.question, prompt.passages))
    )


def billed_usage(reported: Usage, *, prompt: ChatPrompt, content: str, finished: bool) -> Usage:
    """The usage to record for a turn (see the module docstring)."""
    if finished and reported.completion_tokens is not None:
        return reported
    received = bool(content) or reported.prompt_tokens is not None
    if not received:
        return Usage(0, 0, 0, estimated=True)
    prompt_tokens = reported.prompt_tokens or prompt_estimate(prompt)
    completion = max(reported.completion_tokens or 0, estimate_tokens(content) if content else 0)
    thoughts = reported.thought_tokens
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion,
        total_tokens=prompt_tokens + completion + (thoughts or 0),
        cached_tokens=reported.cached_tokens,
        thought_tokens=thoughts,
        estimated=True,
    )


def next_reset(timezone: str, now: datetime | None = None) -> datetime:
    zone = ZoneInfo(timezone)
    local = (now or datetime.now(zone)).astimezone(zone)
    midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), zone)
    return midnight


async def check_budget(
    pool: asyncpg.Pool, settings: Settings, metrics: Metrics, *, user_id: str
) -> None:
    """Refuse with 429 `budget_exceeded` once today's tokens reach the budget."""
    budget = settings.user_daily_token_budget
    if budget <= 0:
        return
    async with pool.acquire() as conn:
        spent = await repo.spent_today(conn, user_id=user_id, timezone=settings.usage_timezone)
    if spent < budget:
        return
    metrics.rate_limited.labels("budget").inc()
    resets = next_reset(settings.usage_timezone)
    wait = (resets - datetime.now(resets.tzinfo)).total_seconds()
    raise BudgetExceeded(
        f"today's token budget ({budget}) is spent; it resets at {resets.isoformat()}",
        retry_after=max(1.0, wait),
        resets_at=resets.isoformat(),
        budget=budget,
        spent=spent,
    )
