"""Token minting (trusted callers with an API key) and refresh-token rotation."""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.routing import Route

from ..errors import Unauthorized
from ..state import state_of
from .common import JSON, DbText, client_ip, leadership_type_field, read_model

USER_ID_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(pattern=USER_ID_PATTERN)
    email: DbText | None = Field(default=None, max_length=254)
    leadership_type: str | None = Field(default=None, max_length=64)


class RefreshRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    refresh_token: str = Field(min_length=10, max_length=200)


async def mint_token(request: Request) -> JSON:
    state = state_of(request)
    limiter = state.limiter
    api_key = request.headers.get("x-api-key")
    if api_key is None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("apikey "):
            api_key = auth[7:].strip()
    try:
        state.tokens.check_api_key(api_key)
    except Unauthorized:
        await limiter.hit("auth_failures", client_ip(request))
        raise
    # The parent site mints for all its users from one address: limit per key.
    await limiter.hit("mint", hashlib.sha256((api_key or "").encode()).hexdigest()[:16])
    body = await read_model(request, TokenRequest)
    leadership_type = leadership_type_field(body.leadership_type)
    async with state.db.acquire() as conn:
        pair = await state.tokens.mint_for_user(
            conn, user_id=body.user_id, email=body.email, leadership_type=leadership_type
        )
    request.state.user_id = body.user_id
    return JSON({**pair.body(), "user_id": body.user_id}, status_code=201)


async def refresh(request: Request) -> JSON:
    state = state_of(request)
    await state.limiter.hit("refresh", client_ip(request))
    body = await read_model(request, RefreshRequest)
    async with state.db.acquire() as conn:
        pair = await state.tokens.rotate(conn, refresh_token=body.refresh_token)
    return JSON(pair.body())


routes = [
    Route("/auth/token", mint_token, methods=["POST"], name="auth:token"),
    Route("/auth/refresh", refresh, methods=["POST"], name="auth:refresh"),
]
