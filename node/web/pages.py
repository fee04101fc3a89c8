"""The pages a logged-in user reads: the worklist, a study's result page and its pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from starlette.responses import RedirectResponse, Response

from node.review.service import DRAFT_SR, VERIFIED_SR, refusal
from node.store.audit import AuditAction, AuditEntry
from node.store.results import ResultRecord
from node.store.reviews import WorklistStatus, status_of
from node.web.auth import Viewer, client_address, context_of, viewer
from node.web.errors import NotFound
from node.web.forms import WorklistQuery
from node.web.images import volume_curve_svg
from node.web.media import SECONDARY_CAPTURES
from node.web.present import FILTERS, delivery_summary

PAGE_SIZE: Final = 100
NO_STORE: Final = {"Cache-Control": "no-store"}

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.filters.update(FILTERS)
templates.env.globals["delivery_summary"] = delivery_summary

router = APIRouter()
ViewerDep = Annotated[Viewer, Depends(viewer)]


@router.get("/", include_in_schema=False)
def home() -> RedirectResponse:
    """The worklist is the home page."""
    return RedirectResponse("/worklist", status_code=303)


def _link(query: WorklistQuery, **changes: Any) -> str:
    """The worklist URL of ``query`` with some parameters changed (defaults left out)."""
    values = {**query.model_dump(), **changes}
    for key in ("date_from", "date_to"):
        text = values[key]
        if text:
            values[key] = f"{text[:4]}-{text[4:6]}-{text[6:]}"
    defaults = WorklistQuery().model_dump()
    kept = {key: value for key, value in values.items() if value is not None and value != defaults[key]}
    return "/worklist?" + urlencode({key: str(value) for key, value in kept.items()})


@router.get("/worklist")
def worklist(request: Request, user: ViewerDep, query: Annotated[WorklistQuery, Query()]) -> Response:
    """Every current result, filtered and sorted as the query asks."""
    context = context_of(request)
    rows = context.parts.store.worklist(query.selection(PAGE_SIZE))
    more = len(rows) > PAGE_SIZE
    return templates.TemplateResponse(
        request,
        "worklist.html",
        {
            "viewer": user,
            "rows": rows[:PAGE_SIZE],
            "query": query,
            "statuses": list(WorklistStatus),
            "counts": context.parts.store.counts(),
            "dead_letters": context.parts.outbox.dead_letters(),
            "link": lambda **changes: _link(query, **changes),
            "previous_page": _link(query, page=query.page - 1) if query.page > 1 else None,
            "next_page": _link(query, page=query.page + 1) if more else None,
            "lowest_confidence": _link(
                WorklistQuery(status=WorklistStatus.PENDING, sort="confidence", order="asc")
            ),
        },
        headers=NO_STORE,
    )


def _result(request: Request, result_id: str) -> ResultRecord:
    found = context_of(request).parts.store.result(result_id)
    if found is None:
        raise NotFound("no such result")
    return found


@router.get("/results/{result_id}")
def study(request: Request, result_id: str, user: ViewerDep) -> Response:
    """One result: pictures, values, QC in plain words, history, and the review actions."""
    context = context_of(request)
    store = context.parts.store
    result = _result(request, result_id)
    record = result.details
    review = store.for_result(result_id)
    status = status_of(result, review)
    versions = store.study_results(result.study_instance_uid)
    version_reviews = store.for_results([row.id for row in versions])
    deliveries = context.parts.outbox.rows(result_id=result_id)
    measured = result.measured
    draft_ready = store.outbox_path(result_id, DRAFT_SR) is not None
    context.parts.audit.record(
        AuditEntry(
            at=context.clock.now(),
            actor=user.user.name,
            address=client_address(request),
            action=AuditAction.VIEW_STUDY,
            target=result_id,
            details={"version": result.version},
        )
    )
    curve = None
    if measured and record.get("volume_curve_ml"):
        # Safe markup: the SVG is built from numbers and fixed text only.
        curve = Markup(
            volume_curve_svg(record["volume_curve_ml"], int(record["ed_phase"]), int(record["es_phase"]))
        )
    return templates.TemplateResponse(
        request,
        "study.html",
        {
            "viewer": user,
            "result": result,
            "record": record,
            "study": store.study(result.study_instance_uid),
            "status": status,
            "review": review,
            "versions": [(row, status_of(row, version_reviews.get(row.id))) for row in versions],
            "deliveries": deliveries,
            "verified_deliveries": [row for row in deliveries if row.kind == VERIFIED_SR],
            "measured": measured,
            "draft_ready": draft_ready,
            "can_review": refusal(user.user, result, review) is None,
            "has_sc": any(store.outbox_path(result_id, kind) is not None for kind in SECONDARY_CAPTURES),
            "curve": curve,
        },
        headers=NO_STORE,
    )


@router.get("/results/{result_id}/sc.png")
def secondary_capture(request: Request, result_id: str, user: ViewerDep) -> Response:
    """The secondary capture the node sends to PACS, as PNG."""
    png = context_of(request).media.secondary_capture_png(_result(request, result_id).id)
    if png is None:
        raise NotFound("no secondary capture for this result yet")
    return Response(png, media_type="image/png", headers=NO_STORE)


@router.get("/results/{result_id}/cine.gif")
def cine(request: Request, result_id: str, user: ViewerDep) -> Response:
    """The mid-ventricular slice over the cardiac cycle with the predicted contours, as a GIF."""
    gif = context_of(request).media.cine_gif(_result(request, result_id))
    if gif is None:
        raise NotFound("no cine for this result")
    return Response(gif, media_type="image/gif", headers=NO_STORE)
