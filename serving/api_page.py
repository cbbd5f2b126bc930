"""The service's API page: ``/docs`` (as FastAPI users expect) serves Swagger UI
from the assets BentoML ships (no CDN, no tracker), and ``/docs.json`` carries
the platform's title, description and version instead of BentoML's defaults."""

from __future__ import annotations

import json
from importlib.metadata import version

TITLE = "recsys-platform Recommender"
DESCRIPTION = (
    "Real-time personalised recommendations from the champion behaviour encoder over "
    "online features (Feast on Redis), and event intake that the next recommendation "
    "already reflects. Answers say which model version answered and whether a fallback "
    "did (`degraded`, `reason`). With RECSYS_API_KEY set, send `X-API-Key: <key>` or "
    "`Authorization: Bearer <key>`.")
PAGE = """<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>{title}</title>
    <link rel="stylesheet" type="text/css" href="/static_content/swagger-ui.css" />
    <link rel="icon" type="image/png" href="/static_content/favicon-light-32x32.png" />
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="/static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script>
      window.onload = () => {{
        window.ui = SwaggerUIBundle({{url: "/docs.json", dom_id: "#swagger-ui",
                                      deepLinking: true}});
      }};
    </script>
  </body>
</html>
"""
# Paths the page needs, open without the API key (they hold nothing private).
OPEN_PATHS = frozenset({"/docs", "/docs.json"})
OPEN_PREFIXES = ("/static_content/",)


def platform_version() -> str:
    return version("recsys-platform")


def _info() -> dict:
    return {"title": TITLE, "description": DESCRIPTION, "version": platform_version()}


async def send_body(send, status: int, body: bytes, content_type: bytes,
                headers: list | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", content_type), (b"content-length", str(len(body)).encode()),
        *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class ApiPage:
    """ASGI middleware: answers ``/docs``, and rewrites the ``info`` of BentoML's
    ``/docs.json``."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path in ("/docs", "/docs/"):
            return await send_body(send, 200, PAGE.format(title=TITLE).encode(),
                               b"text/html; charset=utf-8")
        if path != "/docs.json":
            return await self.app(scope, receive, send)
        start, chunks = {}, []

        async def buffered(message):
            if message["type"] == "http.response.start":
                start.update(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks)
            if start.get("status") == 200:
                spec = json.loads(body)
                spec["info"] = _info()
                body = json.dumps(spec).encode()
            headers = [(k, v) for k, v in start.get("headers", [])
                       if k.lower() != b"content-length"]
            await send({**start, "headers": headers + [
                (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, buffered)
