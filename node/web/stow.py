"""STOW-RS in (PS3.18 10.5): ``POST /dicomweb/studies`` and ``/dicomweb/studies/{study}``.

A sending system authenticates with its API token (``Authorization: Bearer``; ``dicomnode tokens``).
The body, ``multipart/related; type="application/dicom"``, is parsed as it streams in: each part goes
through the same ingest as a C-STORE (structural checks, limits, fsync and index) as soon as it is
whole, so at most one part (up to ``dicom.max_instance_mb``) is ever held, and every instance the
answer calls stored is on disk and indexed. The answer lists each instance in the Referenced SOP
Sequence or, with its Failure Reason (the C-STORE status the same refusal gets), in the Failed SOP
Sequence; JSON, or the PS3.19 XML model when the client asks for ``application/dicom+xml``.

HTTP statuses (PS3.18 Table 10.5.3-1): 200 all stored; 202 some stored, some failed; 409 none stored;
503 none stored because the node is out of resources for now (disk, backlog), with Retry-After; 400
a request that is not a multipart body; 401 no or an unknown token (audited, nothing read); 413 a
body longer than ``web.stow_max_request_mb``: refused from its Content-Length before anything is read;
a body without one (chunked) is read up to the limit, the parts whole before it are stored and named,
the part it cuts fails (413 when none was stored); 415 another media type. A body that ends inside a
part (truncated) fails that part; the parts before it are stored.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, Final

from fastapi import APIRouter, Request
from python_multipart.multipart import parse_options_header
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.responses import PlainTextResponse, Response

from node.dicom.status import Status
from node.dicomweb.stow import (
    DICOM,
    DICOM_JSON,
    DICOM_XML,
    MultipartStream,
    Part,
    PartOutcome,
    StowIngest,
    answer_dataset,
    failed,
    http_status,
    native_xml,
    store_part,
)
from node.logging import get_logger
from node.store.audit import AuditAction, AuditEntry
from node.web.auth import client_address, context_of

log = get_logger(__name__)

router = APIRouter(prefix="/dicomweb")

RETRY_AFTER_S: Final = 60


def _wants_xml(request: Request) -> bool:
    accept = request.headers.get("accept", "").lower()
    return DICOM_XML in accept and DICOM_JSON not in accept


def _answer(request: Request, outcomes: list[PartOutcome]) -> Response:
    status = http_status(outcomes)
    dataset = answer_dataset(outcomes)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == HTTPStatus.SERVICE_UNAVAILABLE else None
    if _wants_xml(request):
        return Response(native_xml(dataset), status_code=status, media_type=DICOM_XML, headers=headers)
    body = json.dumps(dataset.to_json_dict()).encode()
    return Response(body, status_code=status, media_type=DICOM_JSON, headers=headers)


def _refuse(status: HTTPStatus, message: str, headers: dict[str, str] | None = None) -> Response:
    return PlainTextResponse(f"{status.phrase}: {message}\n", status_code=status, headers=headers)


async def _sender(request: Request, stow: StowIngest, now: Any) -> str | None:
    """The authenticated sender's token name; an unknown one is audited.

    Raises
    ------
    OperationalError
        The index cannot be asked (answered 503 by the caller).
    """
    authorization = request.headers.get("authorization")
    name = await run_in_threadpool(stow.tokens.sender, authorization, now)
    if name is None:
        why = "no token" if not authorization else "unknown or revoked token"
        entry = AuditEntry(
            at=now,
            actor="-",
            address=client_address(request),
            action=AuditAction.STOW_REFUSED,
            details={"why": why},
        )
        await run_in_threadpool(stow.audit.record, entry)
        log.warning("STOW-RS request refused", why=why, address=client_address(request))
    return name


def _boundary(content_type: str) -> bytes | Response:
    """The multipart boundary, or the refusal of a body the node does not take."""
    media, options = parse_options_header(content_type)
    if media != b"multipart/related":
        return _refuse(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE, 'expected multipart/related; type="application/dicom"'
        )
    kind = options.get(b"type", DICOM.encode()).decode("latin-1").strip('"').lower()
    if kind != DICOM:
        return _refuse(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"parts of type {kind} are not taken; send application/dicom"
        )
    boundary = options.get(b"boundary", b"").strip(b'"')
    if not boundary:
        return _refuse(HTTPStatus.BAD_REQUEST, "multipart body without a boundary")
    return boundary


async def _receive(
    request: Request, stow: StowIngest, stream: MultipartStream, keep: Callable[[Part], Awaitable[None]]
) -> bool:
    """Read the body into ``stream``, handing each whole part to ``keep``; False when the body was
    longer than ``web.stow_max_request_mb`` and reading stopped there."""
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > stow.max_request_bytes:
                log.warning("STOW-RS body cut off at the request size limit")
                return False
            try:
                stream.write(chunk)
            except Exception as error:  # noqa: BLE001 - python_multipart raises its own parse errors
                log.warning("STOW-RS body malformed", error=type(error).__name__)
                break
            for part in stream.take():
                await keep(part)
    except ClientDisconnect:
        log.warning("STOW-RS sender disconnected before the end of its body")
    return True


async def store_instances(request: Request, study: str | None = None) -> Response:
    """Store the request's instances; the answer says, per instance, stored or why not."""
    context = context_of(request)
    stow = context.stow
    if stow is None:
        return _refuse(HTTPStatus.NOT_FOUND, "STOW-RS is not served by this node")
    now = context.clock.now()
    try:
        sender = await _sender(request, stow, now)
    except OperationalError:
        log.warning("STOW-RS request refused: the index is unavailable")
        retry = {"Retry-After": str(RETRY_AFTER_S)}
        return _refuse(HTTPStatus.SERVICE_UNAVAILABLE, "the node's index is unavailable", retry)
    if sender is None:
        return _refuse(
            HTTPStatus.UNAUTHORIZED,
            "a valid API token is needed",
            {"WWW-Authenticate": 'Bearer realm="dicomnode"'},
        )
    boundary = _boundary(request.headers.get("content-type", ""))
    if isinstance(boundary, Response):
        return boundary
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > stow.max_request_bytes:
        return _refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body longer than the node takes")

    outcomes: list[PartOutcome] = []

    async def keep(part: Part) -> None:
        outcome = await run_in_threadpool(store_part, stow, part, study)
        outcomes.append(outcome)
        received = (
            "refused" if outcome.failure is not None else "duplicate" if outcome.duplicate else "stored"
        )
        stow.metrics.instances_received.labels(outcome=received).inc()

    # At most ``stow_max_requests`` bodies are read at once, each holding at most one part: memory
    # stays within that many instances of dicom.max_instance_mb, however many senders upload.
    async with stow.requests:
        stream = MultipartStream(boundary, stow.max_instance_bytes)
        whole = await _receive(request, stow, stream, keep)
        cut = stream.cut_short
        if cut is not None and (cut.data or cut.oversized):
            # The body ended inside this part (truncated), or the size limit stopped it there.
            reason = Status.CANNOT_UNDERSTAND if whole else Status.OUT_OF_RESOURCES
            outcomes.append(await run_in_threadpool(failed, cut, reason))
    stored = sum(1 for outcome in outcomes if outcome.failure is None)
    entry = AuditEntry(
        at=now,
        actor=sender,
        address=client_address(request),
        action=AuditAction.STOW,
        details={"stored": stored, "failed": len(outcomes) - stored, "complete": stream.ended},
    )
    await run_in_threadpool(stow.audit.record, entry)
    log.info("STOW-RS request", sender=sender, stored=stored, failed=len(outcomes) - stored)
    if not whole and stored == 0:
        return _refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body longer than the node takes")
    if not outcomes:
        return _refuse(HTTPStatus.BAD_REQUEST, "no application/dicom part in the body")
    return _answer(request, outcomes)


@router.post("/studies", include_in_schema=False)
async def store_any(request: Request) -> Response:
    """Store Instances (PS3.18 10.5), of any studies."""
    return await store_instances(request)


@router.post("/studies/{study}", include_in_schema=False)
async def store_in_study(request: Request, study: str) -> Response:
    """Store Instances of one study: an instance of another study fails."""
    return await store_instances(request, study)
