"""Leadership reports over HTTP: the one-shot interpretation, reading a stored report,
and the `/generate` shim for the widget in production today.

`POST /api/v1/coaching/interpretation` body (every field optional):

    {"leadership_type": "HHH" | "PARTICIPATIVE_COACHING" | "참여코칭형",
     "assessment": {"공유": 4.8, "상호작용": 3.9, "성장": 5.1}}        # dimension scores, 1-6
     "assessment": {"answers": {"S1": 5, ..., "G6": 2}}                # the 18 items, ints 1-6

Type precedence: answers (classifier) > scores (>= 4.5 rule) > `leadership_type` > the
token's leadership type; none of them is a 422 naming `leadership_type`. Invalid
assessment values are a 422 whose `error.field` names the value, e.g.
`assessment.answers.S3` or `assessment.공유`.

`/generate` decisions: the user always comes from the token. A body `user_id` that differs
from the token's is refused with 403 `user_mismatch` rather than ignored, so a widget
wired to the wrong user fails loudly instead of showing someone a report they did not ask
for. `interpretation` is the report's summary text: the old widget renders a string.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import Forbidden, NotFound
from ..services.reports import ReportService
from ..state import state_of
from .common import JSON, read_model, require_user


class InterpretationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    leadership_type: str | None = Field(default=None, min_length=1, max_length=64)
    # Validated by the service, which names the offending key in its errors.
    assessment: Any = None


class LegacyGenerateRequest(BaseModel):
    # The old widget may send more than this; unknown keys are ignored, as they were.
    model_config = ConfigDict(extra="ignore")
    user_id: str | int | None = None
    leadership_type: str | None = Field(default=None, max_length=64)


def _service(request: Request) -> ReportService:
    service: ReportService = state_of(request).reports
    return service


def _json_bytes(body: bytes) -> Response:
    return Response(body, media_type="application/json")


async def interpretation(request: Request) -> Response:
    user = await require_user(request)
    body = await read_model(request, InterpretationRequest)
    result = await _service(request).interpret(
        user, leadership_type=body.leadership_type, assessment=body.assessment
    )
    return _json_bytes(result.body())


async def get_report(request: Request) -> JSON:
    user = await require_user(request)
    try:
        report_id = uuid.UUID(str(request.path_params["report_id"]))
    except ValueError:
        # Same body as an unknown id or someone else's: nothing to learn from the 404.
        raise NotFound("report not found") from None
    return JSON(await _service(request).get(user, report_id))


async def legacy_generate(request: Request) -> JSON:
    user = await require_user(request)
    body = await read_model(request, LegacyGenerateRequest)
    if body.user_id is not None and str(body.user_id) != user.user_id:
        raise Forbidden("user_id does not match the token's user", code="user_mismatch")
    leadership_type = body.leadership_type or None
    result = (
        await _service(request).interpret(user, leadership_type=leadership_type, assessment=None)
    ).as_dict()
    return JSON(
        {
            "report_id": result["report_id"],
            "interpretation": result["report"]["summary"],
            "leadership_type": result["leadership_type"],
            "created_at": result["created_at"],
        }
    )


routes = [
    Route(
        "/coaching/interpretation",
        interpretation,
        methods=["POST"],
        name="reports:interpretation",
    ),
    Route("/reports/{report_id}", get_report, methods=["GET"], name="reports:get"),
]
legacy_routes = [Route("/generate", legacy_generate, methods=["POST"], name="legacy:generate")]
