"""The embeddable widget (static files) and the demo parent page.

Routes (no prefix): `GET /widget/` (the page a parent site puts in an iframe),
`GET /widget/linkcoach.js` (the widget's entry module), its ES modules at
`GET /widget/linkcoach/{name}.js`, `GET /widget/linkcoach.css`, `GET /embed.js` (the script a
parent site loads: the product's `LinkCoach` API in front of `/widget/`); outside
production also `GET /demo` (a parent page that embeds the widget), its script and
stylesheet, and `POST /demo/token` (a development token for a random demo user).

Deliberate decisions (do not "fix"):

- The files live directly in `linkcoach_stream/static/` (the widget's modules in
  `static/linkcoach/`) and are read through `importlib.resources`, so they ship in the
  wheel (`static/*` package data). No build step: the browser loads the ES modules as
  they are. Only the names found in those folders are served, never a path.
- The taxonomy the widget shows (dimensions in code order, their descriptions, the score
  range and the High threshold) is rendered into the page from `domain.taxonomy` as a
  `<meta>`, like the parent origins, so it is defined once, in Python.
- The parent origins the widget accepts `INIT_WIDGET` from are rendered into the page as
  a `<meta>` (HTML-escaped JSON of `CORS_ORIGINS`), not fetched: the widget knows them
  before it posts `WIDGET_READY`, and there is no inline script to inject them into. The
  widget also accepts its own origin (the `/demo` page is same-origin).
- Every page carries a strict Content-Security-Policy: scripts and styles from this
  origin only (no inline code; the widget writes model text with `textContent` only),
  `frame-ancestors 'self'` plus `CORS_ORIGINS`, so only allow-listed sites can embed it.
  An origin that is not a plain `scheme://host[:port]` is left out of the header rather
  than let a bad setting inject directives.
- `/demo*` answers 404 in production, exactly like an unknown route. `/demo/token`
  refuses cross-site callers: it needs a JSON body (a cross-site form cannot send one
  without a CORS preflight) and, when the browser sends `Origin`, this server's origin.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import re
import secrets
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..config import Settings
from ..domain.taxonomy import (
    DIMENSION_DESCRIPTIONS,
    DIMENSIONS,
    HIGH_THRESHOLD,
    SCORE_MAX,
    SCORE_MIN,
)
from ..errors import Forbidden, ValidationFailed
from ..state import state_of
from .common import JSON, leadership_type_field, read_model

log = logging.getLogger(__name__)

_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?$")
_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
WIDGET_ASSETS = frozenset({"linkcoach.js", "linkcoach.css"})
WIDGET_MODULE_DIR = "linkcoach"
DEMO_ASSETS = frozenset({"demo.js", "demo.css"})
# English keys a parent page may use for the dimensions in `assessmentData`.
_DIMENSION_ALIASES = {
    "sharing": "공유",
    "share": "공유",
    "interaction": "상호작용",
    "growth": "성장",
}


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    etag: str
    media_type: str


@lru_cache(maxsize=32)
def static_file(name: str) -> StaticFile:
    """A file from the package's `static/` folder (`a/b.js` for a subfolder), read once
    per process."""
    path = resources.files("linkcoach_stream") / "static"
    for part in name.split("/"):
        path = path / part
    body = path.read_bytes()
    suffix = name[name.rfind(".") :]
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    return StaticFile(body, etag, _MEDIA_TYPES[suffix])


@lru_cache(maxsize=1)
def widget_modules() -> frozenset[str]:
    """The names of the widget's ES modules (`static/linkcoach/*.js`)."""
    folder = resources.files("linkcoach_stream") / "static" / WIDGET_MODULE_DIR
    return frozenset(
        item.name for item in folder.iterdir() if item.is_file() and item.name.endswith(".js")
    )


def widget_taxonomy() -> dict[str, object]:
    """What the widget needs of the taxonomy to read an assessment and draw the report."""
    return {
        "dimensions": [[d, DIMENSION_DESCRIPTIONS[d]] for d in DIMENSIONS],
        "aliases": _DIMENSION_ALIASES,
        "high_threshold": HIGH_THRESHOLD,
        "score_min": SCORE_MIN,
        "score_max": SCORE_MAX,
    }


def parent_origins(settings: Settings) -> list[str]:
    """The allow-listed parent origins that are safe to put in a CSP header."""
    origins: list[str] = []
    for origin in settings.cors_origins:
        if origin == "*" or _ORIGIN.match(origin):
            origins.append(origin)
        else:
            log.warning("CORS origin left out of frame-ancestors", extra={"origin": origin[:80]})
    return origins


def content_security_policy(settings: Settings, *, frame_src: bool = False) -> str:
    ancestors = " ".join(["'self'", *parent_origins(settings)])
    directives = [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        # 'self' covers ws:/wss: to this host in CSP level 3 browsers.
        "connect-src 'self'",
        f"frame-ancestors {ancestors}",
        "base-uri 'none'",
        "form-action 'none'",
        "object-src 'none'",
    ]
    if frame_src:
        directives.append("frame-src 'self'")
    return "; ".join(directives)


def _security_headers(settings: Settings, *, frame_src: bool = False) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(settings, frame_src=frame_src),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


def _settings(request: Request) -> Settings:
    settings: Settings = state_of(request).settings
    return settings


def _asset(request: Request, name: str, *, frame_src: bool = False) -> Response:
    settings = _settings(request)
    item = static_file(name)
    headers = {
        **_security_headers(settings, frame_src=frame_src),
        "ETag": item.etag,
        "Cache-Control": "no-cache",
    }
    if item.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(item.body, media_type=item.media_type, headers=headers)


def _page(
    request: Request, name: str, replacements: dict[str, str], *, frame_src: bool
) -> Response:
    settings = _settings(request)
    text = static_file(name).body.decode()
    for key, value in replacements.items():
        text = text.replace("{{" + key + "}}", html.escape(value, quote=True))
    headers = {**_security_headers(settings, frame_src=frame_src), "Cache-Control": "no-store"}
    return Response(text, media_type=_MEDIA_TYPES[".html"], headers=headers)


async def widget_page(request: Request) -> Response:
    settings = _settings(request)
    return _page(
        request,
        "widget.html",
        {
            "PARENT_ORIGINS": json.dumps(parent_origins(settings)),
            "MAX_QUESTION_CHARS": str(settings.max_question_chars),
            "TAXONOMY": json.dumps(widget_taxonomy(), ensure_ascii=False),
        },
        frame_src=False,
    )


async def embed_script(request: Request) -> Response:
    return _asset(request, "embed.js")


async def widget_asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in WIDGET_ASSETS:
        raise HTTPException(404)
    return _asset(request, name)


async def widget_module(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in widget_modules():
        raise HTTPException(404)
    return _asset(request, f"{WIDGET_MODULE_DIR}/{name}")


# -- the demo parent page (development only) ----------------------------------------------


def _require_development(request: Request) -> None:
    if _settings(request).is_production:
        raise HTTPException(404)


async def demo_page(request: Request) -> Response:
    _require_development(request)
    return _page(request, "demo.html", {}, frame_src=True)


async def demo_asset(request: Request) -> Response:
    _require_development(request)
    name = request.path_params["name"]
    if name not in DEMO_ASSETS:
        raise HTTPException(404)
    return _asset(request, name, frame_src=True)


class DemoTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    leadership_type: str | None = Field(default=None, max_length=64)


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


async def demo_token(request: Request) -> JSON:
    _require_development(request)
    origin = request.headers.get("origin")
    if origin is not None and origin != _own_origin(request):
        raise Forbidden("demo tokens are only handed to the demo page", code="origin_refused")
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise ValidationFailed("send the body as application/json", field="body")
    body = await read_model(request, DemoTokenRequest)
    code = leadership_type_field(body.leadership_type)
    user_id = f"demo-{secrets.token_hex(6)}"
    async with state_of(request).db.acquire() as conn:
        pair = await state_of(request).tokens.mint_for_user(
            conn, user_id=user_id, email=None, leadership_type=code
        )
    request.state.user_id = user_id
    return JSON(
        {
            "access_token": pair.access_token,
            "token_type": "Bearer",
            "expires_in": pair.expires_in,
            "user_id": user_id,
            "leadership_type": code,
        },
        status_code=201,
        headers={"Cache-Control": "no-store"},
    )


routes: list[BaseRoute] = [
    Route("/widget/", widget_page, methods=["GET"], name="widget:page"),
    Route("/widget/{name}", widget_asset, methods=["GET"], name="widget:asset"),
    Route(
        f"/widget/{WIDGET_MODULE_DIR}/{{name}}",
        widget_module,
        methods=["GET"],
        name="widget:module",
    ),
    Route("/embed.js", embed_script, methods=["GET"], name="widget:embed"),
    Route("/demo", demo_page, methods=["GET"], name="demo:page"),
    Route("/demo/token", demo_token, methods=["POST"], name="demo:token"),
    Route("/demo/{name}", demo_asset, methods=["GET"], name="demo:asset"),
]
