"""Injected faults: the error bodies the emulator answers with and the connection abort.

A fault is chosen per request when its plan is made (``plan.make_plan``): the configured
``fault`` for a share ``fault_rate`` of requests, or the one a request's marker forces.
``before_first`` answers an HTTP error status; ``mid_stream`` sends an error object (or
cuts the connection) after ``fault_after_chunks`` chunks; ``stall`` stops sending and waits
for the client to go away.

Deliberate decisions (do not "fix"):

- The ``abort`` mid-stream action raises ``InjectedAbort`` so the server cuts the
  connection (ASGI has no other way to break a chunked body); ``HideInjectedAborts``,
  installed by the app's lifespan, keeps that intended exception out of the error log.
- A 429 carries a ``RetryInfo`` detail, as the real API's quota errors do.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from .protocol import GeminiError

__all__ = ["HideInjectedAborts", "InjectedAbort", "fault_error"]

_FAULT_MESSAGES = {
    429: "You exceeded your current quota, please check your plan and billing details.",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}


class InjectedAbort(Exception):
    """Raised on purpose to make the server cut a stream's connection."""


def fault_error(status: int) -> GeminiError:
    details: list[Mapping[str, object]] = []
    if status == 429:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"})
    message = _FAULT_MESSAGES.get(status, "Injected fault from the Gemini emulator.")
    return GeminiError(status, message, details=details)


class HideInjectedAborts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, InjectedAbort)
