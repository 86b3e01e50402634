"""`GET /openapi.json`: the HTTP API as an OpenAPI 3.1 document, built from the same
pydantic models the routes validate with, so clients and the schema-driven fuzz tests
read one source of truth. (The streaming endpoints are described as text/event-stream;
the WebSocket protocol is documented in the README.)"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.routing import Route

from .common import JSON

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}


def _operations() -> list[dict[str, Any]]:
    from . import auth, coaching, conversations, messages, turns

    ops: list[dict[str, Any]] = [
        {"method": "get", "path": "/health", "auth": None},
        {"method": "get", "path": "/ready", "auth": None},
        {
            "method": "post",
            "path": "/api/v1/auth/token",
            "auth": "apiKey",
            "body": auth.TokenRequest,
        },
        {
            "method": "post",
            "path": "/api/v1/auth/refresh",
            "auth": None,
            "body": auth.RefreshRequest,
        },
        {
            "method": "post",
            "path": "/api/v1/conversations",
            "auth": "bearer",
            "body": conversations.CreateConversation,
        },
        {"method": "get", "path": "/api/v1/conversations", "auth": "bearer", "query": True},
        {
            "method": "get",
            "path": "/api/v1/conversations/{conversation_id}",
            "auth": "bearer",
            "query": True,
        },
        {"method": "delete", "path": "/api/v1/conversations/{conversation_id}", "auth": "bearer"},
        {
            "method": "post",
            "path": "/api/v1/coaching/query/stream",
            "auth": "bearer",
            "body": turns.QueryRequest,
            "stream": True,
        },
        {
            "method": "post",
            "path": "/api/v1/coaching/query",
            "auth": "bearer",
            "body": turns.QueryRequest,
        },
        {
            "method": "get",
            "path": "/api/v1/coaching/streams/{message_id}",
            "auth": "bearer",
            "stream": True,
        },
        {
            "method": "post",
            "path": "/api/v1/coaching/streams/{message_id}/cancel",
            "auth": "bearer",
        },
        *messages.OPENAPI_OPERATIONS,
        {"method": "post", "path": "/chat", "auth": "bearer", "body": coaching.LegacyChatRequest},
    ]
    try:
        from . import reports
    except ImportError:  # pragma: no cover - reports are part of every build
        return ops
    ops += getattr(reports, "OPENAPI_OPERATIONS", [])
    from . import usage

    ops += usage.OPENAPI_OPERATIONS
    return ops


def build_document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {"Error": ERROR}
    for op in _operations():
        operation: dict[str, Any] = {"responses": {}}
        params = []
        for name in [p[1:-1] for p in op["path"].split("/") if p.startswith("{")]:
            params.append(
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "format": "uuid"},
                }
            )
        if op.get("query"):
            params += [
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                },
                {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}},
            ]
        params += op.get("parameters", [])
        if params:
            operation["parameters"] = params
        for key in ("summary", "description"):
            if key in op:
                operation[key] = op[key]
        model: type[BaseModel] | None = op.get("body")
        if model is not None:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
            operation["requestBody"] = {
                "required": not op.get("body_optional"),
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}
                    }
                },
            }
        if op["auth"] == "bearer":
            operation["security"] = [{"bearer": []}]
        elif op["auth"] == "apiKey":
            operation["security"] = [{"apiKey": []}]
        ok = "text/event-stream" if op.get("stream") else "application/json"
        operation["responses"]["200"] = {"description": "success", "content": {ok: {"schema": {}}}}
        for status in ("400", "401", "404", "413", "422", "429", *op.get("errors", ())):
            operation["responses"][status] = {
                "description": "error",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        paths.setdefault(op["path"], {})[op["method"]] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Link-Coach Stream", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


async def openapi(request: Request) -> JSON:
    return JSON(build_document())


routes = [Route("/openapi.json", openapi, methods=["GET"], name="openapi")]
