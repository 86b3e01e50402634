"""Domain errors and their one mapping to HTTP statuses and WebSocket close codes.

Services raise these; only the transport edge turns them into responses, so the
same failure reads the same over HTTP, SSE and WebSocket.
"""

from __future__ import annotations

from typing import Any, ClassVar


class AppError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    ws_close: ClassVar[int] = 1011

    def __init__(self, message: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code  # type: ignore[misc]
        self.extra = extra
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        error.update(self.extra)
        return {"error": error}


class BadRequest(AppError):
    status = 400
    code = "bad_request"
    ws_close = 1007


class ValidationFailed(AppError):
    status = 422
    code = "validation_error"
    ws_close = 1007

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message, **({"field": field} if field else {}))
        self.field = field


class Unauthorized(AppError):
    status = 401
    code = "unauthorized"
    ws_close = 4401

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.headers = {"WWW-Authenticate": 'Bearer realm="linkcoach"'}


class Forbidden(AppError):
    status = 403
    code = "forbidden"
    ws_close = 4403


class NotFound(AppError):
    status = 404
    code = "not_found"
    ws_close = 4404


class Conflict(AppError):
    status = 409
    code = "conflict"
    ws_close = 4409


class PayloadTooLarge(AppError):
    status = 413
    code = "payload_too_large"
    ws_close = 1009


class RateLimited(AppError):
    status = 429
    code = "rate_limited"
    ws_close = 4429

    def __init__(self, message: str, *, retry_after: float, code: str | None = None) -> None:
        super().__init__(message, code=code, retry_after=round(retry_after, 3))
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(max(1, int(retry_after + 0.999)))}


class ServiceUnavailable(AppError):
    status = 503
    code = "service_unavailable"
    ws_close = 1013


class ServerBusy(ServiceUnavailable):
    """This process is generating as many answers as it can: try again, here or on
    another instance. The caller picks `retry_after` with jitter so refused clients do
    not all come back in the same second."""

    code = "server_busy"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, retry_after=round(retry_after, 3))
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(max(1, int(retry_after + 0.999)))}


class ServerShutdown(ServiceUnavailable):
    """This server is stopping: reconnect, and resume, on another instance. A stream
    open at the end of the grace gets it as its farewell event (`events.server_shutdown`);
    a WebSocket the server closes on shutdown is closed with its close code."""

    code = "server_shutdown"
    ws_close = 1012


class UpstreamError(AppError):
    status = 502
    code = "llm_error"
    ws_close = 1011


class BudgetExceeded(RateLimited):
    """The user's daily token budget is spent; `resets_at` is the next local midnight."""

    code = "budget_exceeded"

    def __init__(
        self, message: str, *, retry_after: float, resets_at: str, budget: int, spent: int
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.extra.update(resets_at=resets_at, budget=budget, spent=spent)
