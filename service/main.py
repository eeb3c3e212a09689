"""The FastAPI application: ``create_app()`` builds it; the bundle is loaded once, in the lifespan.

Run it with ``whaleid serve BUNDLE`` or ``uvicorn --factory service.main:create_app`` (settings from
``WHALEID_*`` environment variables, see :class:`service.config.Settings`).
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

import core
from service.config import Settings
from service.docs import install_docs
from service.engine import WhaleService
from service.errors import install_error_handlers
from service.limits import MULTIPART_OVERHEAD_BYTES, BodyLimitMiddleware
from service.metrics import method_label
from service.openapi import install_openapi
from service.routes import catalogue, gallery, health, identify
from service.server import http_protocol

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Settings are read (and validated) now; the bundle is loaded at start-up.

    Raises:
        pydantic.ValidationError: invalid ``WHALEID_*`` settings (e.g. no bundle).
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        t0 = time.perf_counter()
        service = WhaleService(settings)
        await service.start()
        app.state.service = service
        log.info(
            "bundle %s loaded in %.1f s: %d identities, providers %s",
            settings.bundle,
            time.perf_counter() - t0,
            len(service.gallery),
            service.model.providers,
        )
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="whaleid",
        version=core.__version__,
        summary="Photo-identification of humpback whales from tail flukes.",
        description=(
            "Upload a fluke photo to `POST /identify` to get the top-5 known whales with scores (`new_whale` "
            "where the threshold puts it); enrol whales with `POST /gallery`. The review page is at `/`."
        ),
        lifespan=lifespan,
        docs_url=None,  # served from installed assets by install_docs (no CDN)
        redoc_url=None,
    )
    app.state.settings = settings
    install_error_handlers(app)
    install_docs(app)
    install_openapi(app)
    app.include_router(health.router)
    app.include_router(identify.router)
    app.include_router(gallery.router)
    app.include_router(catalogue.router)

    def limit_for(path: str, method: str) -> int | None:
        if method != "POST":
            return None
        if path == "/identify":
            return settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
        if path == "/gallery":
            return settings.max_request_bytes + MULTIPART_OVERHEAD_BYTES
        return 1024 * 1024

    app.add_middleware(BodyLimitMiddleware, limit_for=limit_for, on_reject=lambda path: _count_rejection(app, path))

    @app.middleware("http")
    async def _metrics(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        if request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-cache")  # revalidate the page's script after a redeploy
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        service = getattr(request.app.state, "service", None)
        if service is not None:
            method = method_label(request.method)  # bounded: PROPFIND, MKCOL... count as "other"
            service.metrics.requests.labels(name, method, str(response.status_code)).inc()
            service.metrics.latency.labels(name, method).observe(time.perf_counter() - t0)
        return response

    if (STATIC / "index.html").exists():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.get("/", include_in_schema=False)
        def index():
            return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
    else:

        @app.get("/", include_in_schema=False)
        def index():
            return RedirectResponse("/docs")

    return app


def _count_rejection(app: FastAPI, path: str) -> None:
    service = getattr(app.state, "service", None)
    if service is not None:
        service.metrics.rejected_uploads.labels(path).inc()


def run(host: str = "127.0.0.1", port: int = 8000, settings: Settings | None = None) -> None:
    """Serve with uvicorn (one process: the model, the gallery and the micro-batcher are shared).

    Args:
        host, port: where to listen.
        settings: the service's settings (default: read from the ``WHALEID_*`` environment).
    """
    import uvicorn

    settings = settings or Settings()
    app = create_app(settings)
    # http_protocol(): uvicorn's own, with a JSON 400 for requests its parser refuses (service/server.py)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
        http=http_protocol(),
    )
