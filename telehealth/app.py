"""The HTTP application: routers, one error handler, health."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse

from telehealth.archive.api import router as archive_router
from telehealth.auth.api import router as auth_router
from telehealth.cases.api import router as cases_router
from telehealth.consults.api import router as consults_router
from telehealth.dicomweb.api import router as dicomweb_router
from telehealth.ecg.api import router as ecg_router
from telehealth.errors import DomainError, wire_status
from telehealth.hub import Hub
from telehealth.institutions.api import router as institutions_router
from telehealth.metrics.api import router as metrics_router
from telehealth.monitoring.api import router as monitoring_router
from telehealth.ohif import OhifDist, OhifDistUnusable, dist_folder
from telehealth.ohif import router as ohif_router
from telehealth.reports.api import router as reports_router
from telehealth.webapp import DEFAULT_DIST as WEBAPP_DIST
from telehealth.webapp import router as webapp_router

log = logging.getLogger(__name__)


def create_app(hub: Hub) -> FastAPI:
    app = FastAPI(
        title="Telehealth hub",
        version="0.1.0",
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    app.state.hub = hub
    # Level 3: JSON still shrinks several times, for a fraction of level 9's CPU.
    app.add_middleware(GZipMiddleware, minimum_size=1024, compresslevel=3)
    if hub.settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=hub.settings.cors_origins,
            allow_credentials=True,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Accept"],
        )

    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> JSONResponse:
        status = wire_status(exc)[0]
        if status >= 500:
            log.warning("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(
            {"detail": str(exc), "error": type(exc).__name__}, status_code=status, headers=headers
        )

    @app.get("/api/health", tags=["health"])
    def health() -> dict[str, object]:
        """No login: for load balancers and the admin's first look. No patient data here."""
        return hub.health()

    app.include_router(auth_router)
    app.include_router(institutions_router)
    app.include_router(archive_router)
    app.include_router(dicomweb_router)
    app.include_router(cases_router)
    app.include_router(ecg_router)
    app.include_router(reports_router)
    app.include_router(consults_router)
    app.include_router(metrics_router)
    app.include_router(monitoring_router)
    _mount_ohif(app, hub)
    _mount_webapp(app, hub.settings.web_dist or WEBAPP_DIST)
    return app


def _mount_webapp(app: FastAPI, folder: Path) -> None:
    """The web app at /app/ when it has been built; the API runs without it."""
    if not (folder / "index.html").is_file():
        log.warning("web app not served: no build at %s (scripts/build_webapp.sh)", folder)
        return
    app.include_router(webapp_router(folder))


def _mount_ohif(app: FastAPI, hub: Hub) -> None:
    """The OHIF viewer at /ohif/ when its build is there; the hub runs without it."""
    folder = dist_folder(hub.settings)
    if not folder.is_dir():
        log.info("OHIF viewer not served: no build at %s (npm ci in viewer/ohif)", folder)
        return
    try:
        app.include_router(ohif_router(OhifDist(folder)))
    except OhifDistUnusable as exc:
        log.error("OHIF viewer not served: %s", exc)
