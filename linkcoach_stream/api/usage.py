"""The caller's usage per day: `GET /api/v1/usage?from=YYYY-MM-DD&to=YYYY-MM-DD`.

Days are dates in `USAGE_TIMEZONE` (the budget resets at its midnight); every day of the
range is listed, zeros included, so a client can chart it as is. Without `to` the range
ends today; without `from` it covers the 30 days up to `to`; at most 366 days.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from ..db.repositories import usage as repo
from ..errors import ValidationFailed
from ..services.usage import next_reset
from ..state import state_of
from .common import JSON, require_user

DEFAULT_DAYS = 30
MAX_DAYS = 366
_COUNTS = (
    "turns",
    "estimated_turns",
    "reports",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "thought_tokens",
)


def _date(request: Request, name: str) -> date | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise ValidationFailed(f"{name}: must be a date as YYYY-MM-DD", field=name) from None


def _day(day: date, counts: dict[str, int]) -> dict[str, Any]:
    billed = counts["prompt_tokens"] + counts["completion_tokens"] + counts["thought_tokens"]
    return {"date": day.isoformat(), **counts, "total_tokens": billed}


async def get_usage(request: Request) -> JSON:
    user = await require_user(request)
    settings = state_of(request).settings
    start, end = _date(request, "from"), _date(request, "to")
    async with state_of(request).db.acquire() as conn:
        today = await repo.today(conn, timezone=settings.usage_timezone)
        end = end or today
        try:
            start = start or end - timedelta(days=DEFAULT_DAYS - 1)
        except OverflowError:
            raise ValidationFailed("to: too early for a default range", field="to") from None
        if start > end:
            raise ValidationFailed("from: must not be after to", field="from")
        if (end - start).days >= MAX_DAYS:
            raise ValidationFailed(f"from: a range covers at most {MAX_DAYS} days", field="from")
        rows = await repo.daily(conn, user_id=user.user_id, start=start, end=end)
        spent = await repo.spent_today(conn, user_id=user.user_id, timezone=settings.usage_timezone)
    found = {row["day"]: {k: int(row[k]) for k in _COUNTS} for row in rows}
    zero = dict.fromkeys(_COUNTS, 0)
    days = [
        _day(start + timedelta(days=i), found.get(start + timedelta(days=i), zero))
        for i in range((end - start).days + 1)
    ]
    totals = {k: sum(d[k] for d in days) for k in (*_COUNTS, "total_tokens")}
    budget = settings.user_daily_token_budget or None
    return JSON(
        {
            "timezone": settings.usage_timezone,
            "from": start.isoformat(),
            "to": end.isoformat(),
            "days": days,
            "totals": totals,
            "budget": {
                "daily_tokens": budget,
                "spent_today": spent,
                "remaining_today": None if budget is None else max(0, budget - spent),
                "resets_at": next_reset(settings.usage_timezone).isoformat(),
            },
        }
    )


def _date_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", "format": "date"},
    }


OPENAPI_OPERATIONS: list[dict[str, Any]] = [
    {
        "method": "get",
        "path": "/api/v1/usage",
        "auth": "bearer",
        "summary": "The caller's usage per day (turns, reports, tokens) and daily budget",
        "description": (
            "Every day of [from, to] in USAGE_TIMEZONE, zeros included: turns, "
            "estimated_turns (turns whose usage is an estimate because the stream ended "
            "early), reports (reports generated; cache hits are free), prompt_tokens, "
            "completion_tokens, cached_tokens, thought_tokens, total_tokens (prompt + "
            "completion + thought). `budget` holds USER_DAILY_TOKEN_BUDGET (null when off), "
            "what is spent today and when it resets. A turn refused by the budget is a 429 "
            "`budget_exceeded` with `resets_at`."
        ),
        "parameters": [
            _date_param("from", "first day, YYYY-MM-DD (default: 29 days before `to`)"),
            _date_param("to", "last day, YYYY-MM-DD (default: today); at most 366 days"),
        ],
    }
]

routes = [Route("/usage", get_usage, methods=["GET"], name="usage:get")]
