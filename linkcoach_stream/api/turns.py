"""The bodies a turn is started with, read the same by every transport: the SSE and JSON
routes (`api/coaching.py`, `api/messages.py`) validate a request body with them, the
WebSocket (`api/ws.py`) a frame, both through `common.validate`."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field

from ..services.chat import TurnRequest
from .common import DbText


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str
    conversation_id: uuid.UUID | None = None
    report_id: uuid.UUID | None = None
    client_message_id: DbText | None = Field(default=None, min_length=1, max_length=128)

    def turn(self) -> TurnRequest:
        return TurnRequest(
            question=self.question,
            conversation_id=self.conversation_id,
            report_id=self.report_id,
            client_message_id=self.client_message_id,
        )


class RegenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    client_message_id: DbText | None = Field(default=None, min_length=1, max_length=128)
