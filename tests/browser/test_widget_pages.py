"""The widget and demo pages over plain HTTP: security headers, the rendered parent
origins, static files, and the demo's development-only token route. No browser needed."""

from __future__ import annotations

import html
import json
import re
import secrets
from importlib import resources

import httpx

from linkcoach_stream.api.widget import content_security_policy
from linkcoach_stream.config import Settings
from tests.conftest import ALLOWED_ORIGIN, API_KEY, start_server, stop_server


def csp_directives(header: str) -> dict[str, str]:
    parts = [p.strip() for p in header.split(";") if p.strip()]
    return {p.split(" ", 1)[0]: p.split(" ", 1)[1] if " " in p else "" for p in parts}


async def test_widget_page_carries_strict_csp_and_nosniff(client: httpx.AsyncClient) -> None:
    r = await client.get("/widget/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-store"
    csp = csp_directives(r.headers["content-security-policy"])
    assert csp["script-src"] == "'self'"
    assert csp["style-src"] == "'self'"
    assert csp["frame-ancestors"] == f"'self' {ALLOWED_ORIGIN}"
    assert csp["default-src"] == "'none'"
    assert "unsafe" not in r.headers["content-security-policy"]


async def test_widget_page_lists_the_allowed_parent_origins(client: httpx.AsyncClient) -> None:
    r = await client.get("/widget/")
    match = re.search(r'<meta name="linkcoach-parent-origins" content="([^"]*)">', r.text)
    assert match is not None
    assert json.loads(html.unescape(match[1])) == [ALLOWED_ORIGIN]
    assert 'content="2000"' in r.text


async def test_widget_without_trailing_slash_redirects(client: httpx.AsyncClient) -> None:
    r = await client.get("/widget")
    assert r.status_code in (307, 308)
    assert r.headers["location"].endswith("/widget/")


async def test_widget_script_and_styles_are_served_with_types_and_etags(
    client: httpx.AsyncClient,
) -> None:
    js = await client.get("/widget/linkcoach.js")
    assert js.status_code == 200
    assert js.headers["content-type"].startswith("text/javascript")
    assert js.headers["x-content-type-options"] == "nosniff"
    assert "textContent" in js.text
    again = await client.get("/widget/linkcoach.js", headers={"If-None-Match": js.headers["etag"]})
    assert again.status_code == 304
    css = await client.get("/widget/linkcoach.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")


async def test_unknown_widget_file_is_404(client: httpx.AsyncClient) -> None:
    for path in ("/widget/nope.js", "/widget/widget.html", "/widget/..%2Fapp.py", "/demo/x.js"):
        r = await client.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == "not_found"


def test_pages_have_no_inline_script_style_or_handlers() -> None:
    static = resources.files("linkcoach_stream") / "static"
    for name in ("widget.html", "demo.html"):
        text = (static / name).read_text(encoding="utf-8")
        for tag in re.findall(r"<script\b[^>]*>", text):
            assert "src=" in tag, tag
        assert re.search(r"<script\b[^>]*>\s*[^<\s]", text) is None
        assert "<style" not in text
        assert re.search(r"\sstyle=", text) is None
        assert re.search(r"\son[a-z]+=", text) is None


def test_js_never_writes_markup() -> None:
    static = resources.files("linkcoach_stream") / "static"
    for name in ("linkcoach.js", "demo.js"):
        code = (static / name).read_text(encoding="utf-8")
        text = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith("//"))
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, (name, sink)


def test_a_malformed_cors_origin_never_reaches_the_csp_header() -> None:
    settings = Settings(cors_origins=("https://ok.example", "https://x.example; script-src *"))
    csp = content_security_policy(settings)
    assert "frame-ancestors 'self' https://ok.example;" in csp
    assert "x.example" not in csp


async def test_demo_page_and_token_work_in_development(client: httpx.AsyncClient) -> None:
    page = await client.get("/demo")
    assert page.status_code == 200
    csp = csp_directives(page.headers["content-security-policy"])
    assert csp["frame-src"] == "'self'"
    assert csp["script-src"] == "'self'"
    assert (await client.get("/demo/demo.js")).status_code == 200

    r = await client.post("/demo/token", json={"leadership_type": "참여비전형"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["user_id"].startswith("demo-")
    assert body["leadership_type"] == "HLH"
    assert "refresh_token" not in body
    me = await client.get(
        "/api/v1/conversations", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert me.status_code == 200


async def test_demo_token_refuses_other_sites_and_form_posts(client: httpx.AsyncClient) -> None:
    r = await client.post("/demo/token", json={}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    r = await client.post("/demo/token", data={"leadership_type": "HHH"})
    assert r.status_code == 422
    r = await client.post("/demo/token", json={"leadership_type": "없는유형"})
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "leadership_type"


async def test_demo_does_not_exist_in_production(settings: Settings) -> None:
    prod = settings.with_overrides(
        app_env="production", jwt_secret_key=secrets.token_urlsafe(48), api_keys=(API_KEY,)
    )
    running = await start_server(prod)
    try:
        async with httpx.AsyncClient(base_url=running.url) as c:
            for method, path in [
                ("GET", "/demo"),
                ("GET", "/demo/demo.js"),
                ("POST", "/demo/token"),
            ]:
                r = await c.request(method, path, json={} if method == "POST" else None)
                assert r.status_code == 404, path
                assert r.json()["error"]["code"] == "not_found"
            assert (await c.get("/widget/")).status_code == 200
    finally:
        await stop_server(running)


async def test_embed_script_is_served_at_the_root_with_its_api(client: httpx.AsyncClient) -> None:
    r = await client.get("/embed.js")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/javascript")
    assert r.headers["x-content-type-options"] == "nosniff"
    for name in ("init(", "sendInitData(", "updateUser(", "setToken(", "data-auto-init"):
        assert name in r.text, name
    again = await client.get("/embed.js", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304
