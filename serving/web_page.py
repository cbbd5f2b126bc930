"""The service's web page at ``/``: pick a user, see the top-10 with reasons, click,
and see the list change; an operator panel beside it. Plain HTML, CSS and
JavaScript shipped in ``serving/page/`` (no CDN, no build step), calling the
service's own JSON API with the key the person enters (kept in the tab's
``sessionStorage``). The page and its assets need no key; every API call does.

Also serves this host's ``$RECSYS_HOME/data_docs`` and ``reports`` read-only at
``/data_docs/`` and ``/reports/`` (behind the API key like any endpoint: Data Docs
show sample values), when they exist on the service's host.
"""

from __future__ import annotations

import json
from pathlib import Path

from starlette.staticfiles import StaticFiles

from serving.api_page import send_body

PAGE_DIR = Path(__file__).parent / "page"
ASSETS = {"/": ("index.html", b"text/html; charset=utf-8"),
          "/page/app.js": ("app.js", b"text/javascript; charset=utf-8"),
          "/page/style.css": ("style.css", b"text/css; charset=utf-8")}
CONFIG = "/page/config.json"
OPEN_PATHS = frozenset({*ASSETS, CONFIG})
DAGSTER_PORT, MLFLOW_PORT = 3001, 5000  # make ui, make mlflow-ui


async def _send(send, status: int, body: bytes, content_type: bytes) -> None:
    await send_body(send, status, body, content_type, [(b"cache-control", b"no-cache")])


class WebPage:
    """ASGI middleware: the page's files, its config, and the read-only mounts."""

    def __init__(self, app, api_key: str | None = None, data_docs_dir: str | None = None,
                 reports_dir: str | None = None):
        self.app = app
        self.config = json.dumps({"api_key_required": bool(api_key),
                                  "dagster_port": DAGSTER_PORT,
                                  "mlflow_port": MLFLOW_PORT}).encode()
        # Read once: the files are small and do not change while the service runs.
        self.assets = {path: ((PAGE_DIR / name).read_bytes(), kind)
                       for path, (name, kind) in ASSETS.items()}
        self.mounts = {prefix: StaticFiles(directory=directory, html=True, check_dir=False)
                       for prefix, directory in (("/data_docs", data_docs_dir),
                                                 ("/reports", reports_dir)) if directory}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path in self.assets:
            body, kind = self.assets[path]
            return await _send(send, 200, body, kind)
        if path == CONFIG:
            return await _send(send, 200, self.config, b"application/json")
        for prefix, files in self.mounts.items():
            if path.startswith(prefix + "/"):
                if not Path(files.directory).is_dir():
                    return await _send(send, 404, f"no {prefix[1:]} on this host: they are "
                                       "written where the pipeline runs".encode(),
                                       b"text/plain; charset=utf-8")
                # ASGI paths include root_path: StaticFiles serves what follows it.
                return await files({**scope, "root_path": scope.get("root_path", "") + prefix},
                                   receive, send)
        return await self.app(scope, receive, send)
