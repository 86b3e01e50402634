"""Helpers every route shares: JSON in and out, body limits, the caller's identity."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, TypeVar

import orjson
from pydantic import AfterValidator, BaseModel, ValidationError
from pydantic_core import PydanticCustomError
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from ..domain.taxonomy import leadership_code
from ..errors import BadRequest, NotFound, PayloadTooLarge, Unauthorized, ValidationFailed
from ..services.auth import Principal, confirm_user
from ..state import state_of
from ..tracing import part

M = TypeVar("M", bound=BaseModel)
_BEARER = re.compile(r"^Bearer\s+(\S+)\s*$", re.IGNORECASE)


def refuse_nul(value: str) -> str:
    # Postgres `text` cannot hold U+0000: refused here, named, instead of failing the insert.
    if "\x00" in value:
        raise PydanticCustomError("nul_character", "must not contain NUL characters")
    return value


# A string bound for a Postgres text column.
DbText = Annotated[str, AfterValidator(refuse_nul)]


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


class JSON(Response):
    """JSON response with raw UTF-8 Korean text (no \\u escapes) and datetime support."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


async def read_body(request: Request, *, limit: int | None = None) -> bytes:
    """The body, refused with 413 past `limit` (default `MAX_BODY_BYTES`)."""
    if limit is None:
        limit = int(state_of(request).settings.max_body_bytes)
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        except ValueError as exc:
            raise BadRequest("Content-Length header is not a number") from exc
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_bytes(raw: bytes) -> Any:
    if not raw.strip():
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc.msg}", code="invalid_json") from exc


def validate(model: type[M], data: Any) -> M:
    """`data` (a request body, or a WebSocket frame's fields) as `model`, or
    `ValidationFailed` naming the first bad field."""
    if not isinstance(data, dict):
        raise ValidationFailed("request body must be a JSON object", field="body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(exc) from exc


def validation_failed(exc: ValidationError) -> ValidationFailed:
    """The one error a failed validation is, over HTTP (a 422 body) and on a WebSocket
    (an `error` frame): its first problem, named by the field's path."""
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "body"
    return ValidationFailed(f"{field}: {first['msg']}", field=field)


async def read_model(request: Request, model: type[M], *, limit: int | None = None) -> M:
    return validate(model, parse_json_bytes(await read_body(request, limit=limit)))


def bearer_token(conn: HTTPConnection) -> str:
    header = conn.headers.get("authorization")
    if not header:
        raise Unauthorized("an Authorization: Bearer token is required", code="missing_token")
    match = _BEARER.match(header)
    if not match:
        raise Unauthorized("Authorization header must be 'Bearer <token>'", code="invalid_token")
    return match[1]


def client_ip(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client else "unknown"


async def authenticate_token(
    conn: HTTPConnection, token: str, *, look_up: bool = True
) -> Principal:
    with part("auth"):
        return await _authenticate(conn, token, look_up=look_up)


async def _authenticate(conn: HTTPConnection, token: str, *, look_up: bool) -> Principal:
    state = state_of(conn)
    try:
        principal: Principal = state.tokens.verify_access(token)
    except Unauthorized:
        # Failed attempts are limited per client address, so guessing tokens is slow.
        await state.limiter.hit("auth_failures", client_ip(conn))
        raise
    await state.limiter.hit("user", principal.user_id)
    if look_up:
        async with state.db.acquire() as db:
            await confirm_user(db, principal)
    conn.state.user_id = principal.user_id
    return principal


async def require_user(conn: HTTPConnection, *, look_up: bool = True) -> Principal:
    """The token's user. With `look_up=False` the token is verified and the user's
    request limit paid, but the user is not looked up: the caller's first statement must
    do it (a chat turn: `ChatService.start_turn(..., confirmed=False)`, whose INSERT or
    conversation read does, saving a pooled connection and a round trip per turn)."""
    return await authenticate_token(conn, bearer_token(conn), look_up=look_up)


def leadership_type_field(value: str | None) -> str | None:
    """A request's `leadership_type` as a code, or a 422 naming the field."""
    try:
        return leadership_code(value)
    except ValueError:
        raise ValidationFailed(
            "leadership_type: unknown leadership type", field="leadership_type"
        ) from None


def path_uuid(request: Request, name: str) -> uuid.UUID:
    raw = request.path_params[name]
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        raise NotFound(f"no such {name.removesuffix('_id')}") from None
