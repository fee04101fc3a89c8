"""Operations endpoints, no login: liveness, readiness (index reachable, model loaded), metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from node.logging import get_logger
from node.metrics import CONTENT_TYPE
from node.web.auth import context_of

log = get_logger(__name__)
router = APIRouter()


@router.get("/healthz")
def healthz() -> JSONResponse:
    """The web thread answers."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """Every readiness check passes (503 with the failing ones otherwise)."""
    checks: dict[str, bool] = {}
    for name, check in context_of(request).readiness.items():
        try:
            checks[name] = bool(check())
        except Exception:  # a failing check means "not ready", and is logged once here
            log.exception("readiness check failed", check=name)
            checks[name] = False
    ready = all(checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    """Prometheus text format."""
    return Response(context_of(request).metrics.render(), headers={"Content-Type": CONTENT_TYPE})
