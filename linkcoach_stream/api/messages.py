"""Acting on one answer: feedback and regeneration (`services/answers.py`).

`POST /messages/{id}/regenerate` streams the new answer exactly like
`POST /coaching/query/stream` (same events, resume, cancel); the WebSocket's
`regenerate` frame does the same on a socket.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.routing import Route

from ..services import answers
from ..services.chat import ChatService
from ..state import state_of
from . import sse
from .common import JSON, DbText, parse_json_bytes, path_uuid, read_body, require_user, validate
from .turns import RegenerateRequest

MAX_COMMENT_CHARS = 1000
M = TypeVar("M", bound=BaseModel)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rating: Literal["up", "down"]
    comment: Annotated[DbText, Field(max_length=MAX_COMMENT_CHARS)] | None = None


async def feedback(request: Request) -> JSON:
    user = await require_user(request)
    message_id = path_uuid(request, "message_id")
    body = await read_model_or_empty(request, FeedbackRequest)
    comment = body.comment.strip() if body.comment else None
    stored = await answers.give_feedback(
        state_of(request).db,
        state_of(request).metrics,
        user,
        message_id,
        rating=body.rating,
        comment=comment or None,
    )
    return JSON(stored)


async def regenerate(request: Request) -> sse.EventStream:
    user = await require_user(request)
    message_id = path_uuid(request, "message_id")
    body = await read_model_or_empty(request, RegenerateRequest)
    chat: ChatService = state_of(request).chat
    started = await answers.regenerate(
        chat, user, message_id, client_message_id=body.client_message_id
    )
    events = await chat.turn_events(user, started)
    return sse.response(request, events, message_id=started.message_id)


async def read_model_or_empty(request: Request, model: type[M]) -> M:
    """Like `read_model`, but an empty body reads as `{}`: a regeneration needs none."""
    raw = await read_body(request)
    return validate(model, parse_json_bytes(raw) if raw.strip() else {})


OPENAPI_OPERATIONS = [
    {
        "method": "post",
        "path": "/api/v1/messages/{message_id}/feedback",
        "auth": "bearer",
        "body": FeedbackRequest,
        "errors": ("409",),
    },
    {
        "method": "post",
        "path": "/api/v1/messages/{message_id}/regenerate",
        "auth": "bearer",
        "body": RegenerateRequest,
        "body_optional": True,
        "stream": True,
        "errors": ("409",),
    },
]

routes = [
    Route("/messages/{message_id}/feedback", feedback, methods=["POST"], name="messages:feedback"),
    Route(
        "/messages/{message_id}/regenerate",
        regenerate,
        methods=["POST"],
        name="messages:regenerate",
    ),
]
