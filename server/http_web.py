"""The web page at ``/`` (try the server, watch it) and the JSON it reads, ``GET /v1/status``.

The page is plain HTML, CSS and JavaScript shipped in the package (``server/web/``: no build step, no
CDN, it works offline): drop, choose or paste images, pick a model and a version or label, see the
top-k with bars and the latency; a status panel with the served models (versions, labels, runtime,
precision, readiness) and their live throughput, p50/p99 and queue depth, refreshed every two
seconds from ``/v1/status`` (``server.status``: derived from the server's own metrics). It calls the
same origin, so it works over HTTPS as served; the bearer token, when the server wants one, is a field
of the page (kept in the tab's sessionStorage). ``--no-web-ui`` leaves ``/`` and ``/ui`` out.

The page's responses carry a Content-Security-Policy allowing only the page's own files (images may be
``blob:`` URLs of the dropped files), so nothing else runs in it.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from server.core import DataPlane
from server.status import StatusTracker

WEB_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
             "style.css": "text/css; charset=utf-8"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def status_json(core: DataPlane, tracker: StatusTracker) -> dict[str, Any]:
    """The answer of ``GET /v1/status`` (see the module docstring)."""
    figures, gauges = tracker.figures(), tracker.gauges()
    models = []
    for status in core.models():
        entry = {
            "name": status.name, "version": status.version, "versions": status.versions,
            "version_labels": status.version_labels, "traffic_split": status.traffic_split,
            "ready": status.ready, "runtime": status.runtime, "device": status.device,
            "precision": status.precision,
        }
        entry.update(figures.get(status.name) or {"requests_per_s": 0.0, "images_per_s": 0.0,
                                                  "errors_per_s": 0.0, "p50_ms": None, "p99_ms": None,
                                                  "window_s": 0.0})
        entry.update({"queue_depth": 0.0, "inflight": 0.0, **gauges.get(status.name, {})})
        models.append(entry)
    return {
        "server": {"name": core.server_metadata()["name"], "version": core.version, "live": core.live(),
                   "ready": core.ready(), "draining": core.draining, "uptime_s": tracker.uptime_s(),
                   "auth_required": core.settings.auth_token is not None},
        "models": models,
    }


def add_web_routes(app: FastAPI, core: DataPlane) -> None:
    """``GET /v1/status`` always; the page (``/``, ``/ui/{file}``) unless ``web_ui`` is off."""
    tracker = StatusTracker(core.metrics)

    @app.get("/v1/status", tags=["classify"], summary="Live status of the server and its models (the page's)")
    async def status() -> JSONResponse:
        return JSONResponse(status_json(core, tracker), headers={"Cache-Control": "no-store"})

    if not core.settings.web_ui:
        return
    files = {name: resources.files("server").joinpath("web", name).read_bytes() for name in WEB_FILES}

    def page_file(name: str) -> Response:
        return Response(files[name], media_type=WEB_FILES[name],
                        headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                                 "Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return page_file("index.html")

    @app.get("/ui/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in files or name == "index.html":
            return JSONResponse({"error": f"no page file {name!r}"}, status_code=404)
        return page_file(name)
