"""ASGI middleware in front of every endpoint: the optional API key and the
request body limit. Health probes (``/healthz``, ``/livez``, ``/readyz``) stay
open so an orchestrator can check the service without the key, and so do the
API page (``serving.api_page``) and the web page's files (``serving.web_page``)."""

from __future__ import annotations

import hmac
import json
import time

from serving import api_page, web_page
from serving.arrivals import task_created

OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz"})
ARRIVED = "recsys_arrived"  # scope["state"] key: monotonic time the request arrived


def _open(path: str) -> bool:
    """Health probes, the API page and the web page's files need no key."""
    return (path in OPEN_PATHS or path in api_page.OPEN_PATHS or path in web_page.OPEN_PATHS
            or path.startswith(api_page.OPEN_PREFIXES))


def arrival(ctx) -> float:
    """When the request behind a BentoML context arrived (now, when unknown): the
    start of its deadline, which counts the time it waited for the event loop or
    for a handler thread."""
    request = getattr(ctx, "request", None)
    state = getattr(request, "scope", {}).get("state") or {}
    return state.get(ARRIVED, time.monotonic())


async def _reply(send, status: int, message: str, headers: list | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """``api_key``: when set, every request but the health probes must carry it as
    ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (else 401).
    ``max_body_bytes``: larger bodies get 413, whether announced by
    ``Content-Length`` or streamed in chunks."""

    def __init__(self, app, api_key: str | None = None, max_body_bytes: int = 1 << 20):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        given = headers.get(b"x-api-key")
        bearer = headers.get(b"authorization", b"")
        if given is None and bearer[:7].lower() == b"bearer ":
            given = bearer[7:].strip()
        return given is not None and hmac.compare_digest(given, self.api_key)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope.setdefault("state", {})[ARRIVED] = task_created()
        headers = dict(scope.get("headers") or [])
        if self.api_key and not _open(scope["path"]) and not self._authorised(headers):
            return await _reply(send, 401, "missing or wrong API key: send 'Authorization: "
                                "Bearer <key>' or 'X-API-Key: <key>'",
                                [(b"www-authenticate", b"Bearer")])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await _reply(send, 413, f"request body over {self.max_body_bytes} bytes")
        seen, too_large, replied = 0, False, False

        async def limited_receive():
            nonlocal seen, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    # Stop reading: to the app the client went away; it gets a 413.
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal replied
            if too_large:
                return  # whatever the app says about the cut body, the answer is 413
            replied = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not replied:
            await _reply(send, 413, f"request body over {self.max_body_bytes} bytes")
