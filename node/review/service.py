"""Sign off, amend or reject a result: the rules, the verified SR, the review record and its audit line.

Flow of one action (web and CLI alike):

1. refuse unless the user is an enabled radiologist (403), the result exists (404), is current and
   measured (409), has no review yet (409) and its draft SR is in the outbox (409);
2. build the verified SR from the draft (:func:`node.reports.sr.build_verified_sr`) with a SOP
   Instance UID derived from the result and the review id, so a retry never mints a second one;
3. record the review with its audit line in one transaction: the unique ``reviews.result_id`` lets
   only one of two concurrent clicks win (the other gets 409);
4. put the SR in the outbox for every delivery destination and mark the review published.

A crash between 3 and 4 leaves an unpublished review; :meth:`ReviewService.publish_pending` (run at
start and from a background loop) rebuilds the same SR from the stored review and finishes step 4.
Every refusal is audited too.
"""

from __future__ import annotations

import io
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Protocol

import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from node.accounts.users import User
from node.config import AnyDestination
from node.domain import OutboxKind, ejection_fraction
from node.logging import get_logger
from node.metrics import NodeMetrics
from node.reports.codes import SCHEME, ReviewStatus
from node.reports.sr import VerifyingObserver, derived_uid
from node.review.errors import (
    AlreadyReviewed,
    DraftNotAvailable,
    InvalidReview,
    NotPermitted,
    NotReviewable,
    ResultNotFound,
    ReviewError,
)
from node.store.audit import AuditAction, AuditEntry, AuditLog
from node.store.outbox import Outbox, OutgoingObject
from node.store.results import ResultRecord
from node.store.reviews import ReviewRecord, ReviewStore

log = get_logger(__name__)

DRAFT_SR: Final = OutboxKind.DRAFT_SR
VERIFIED_SR: Final = OutboxKind.VERIFIED_SR
VERIFIED_SC: Final = OutboxKind.VERIFIED_SC
#: Builds the "VERIFIED BY" secondary capture of a review (None when its stack cannot be read).
VerifiedPicture = Callable[[ReviewRecord], Dataset | None]
#: Largest volume a radiologist can enter (mL); far above any human LV.
MAX_VOLUME_ML: Final = 2000.0
#: A reason is stored in the SR as a TEXT item; keep it readable.
MAX_REASON_CHARS: Final = 1000

_ACTIONS: Final = {
    ReviewStatus.SIGNED_OFF: AuditAction.SIGN_OFF,
    ReviewStatus.AMENDED: AuditAction.AMEND,
    ReviewStatus.REJECTED: AuditAction.REJECT,
}


class VerifiedSrBuilder(Protocol):
    """The signature of :func:`node.reports.sr.build_verified_sr` (injected for tests)."""

    def __call__(
        self,
        draft: Dataset,
        *,
        observer: VerifyingObserver,
        review: ReviewStatus,
        verified_at: datetime,
        amended: tuple[float, float] | None,
        reason: str | None,
        sop_instance_uid: str,
        series_instance_uid: str,
        instance_number: int,
    ) -> Dataset: ...


def person_name(full_name: str) -> str:
    """A DICOM PN value (PS3.5 6.2.1.2) for a user's full name.

    ``Family^Given`` stays as it is; ``Given [Middle] Family`` becomes ``Family^Given [Middle]``; a
    single word becomes ``Word^`` (family name only).
    """
    text = " ".join(full_name.split())
    if "^" in text:
        return text
    given, _, family = text.rpartition(" ")
    return f"{family}^{given}" if given else f"{family}^"


def encode(dataset: Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _ef(edv: float | None, esv: float | None) -> float | None:
    if edv is None or esv is None or edv <= 0:
        return None
    return round(ejection_fraction(edv, esv), 1)


def refusal(user: User, result: ResultRecord, review: ReviewRecord | None) -> ReviewError | None:
    """Why ``user`` may not review ``result`` now, or None when they may (the page and the action
    both ask this)."""
    if not user.can_review:
        return NotPermitted("only a radiologist can sign off, amend or reject a result")
    if result.superseded:
        return NotReviewable("a newer version of this study has been measured; review that one")
    if not result.measured:
        return NotReviewable(f"nothing to review: {result.outcome}")
    if review is not None:
        return AlreadyReviewed("this result has already been reviewed")
    return None


class ReviewService:
    """The review actions; see the module docstring for the flow."""

    def __init__(
        self,
        store: ReviewStore,
        outbox: Outbox,
        outbox_root: Path,
        audit: AuditLog,
        destinations: Sequence[AnyDestination] | None,
        build_verified_sr: VerifiedSrBuilder | None = None,
        metrics: NodeMetrics | None = None,
        verified_picture: VerifiedPicture | None = None,
    ) -> None:
        if build_verified_sr is None:
            from node.reports.sr import build_verified_sr as real_builder

            build_verified_sr = real_builder
        self._store = store
        self._outbox = outbox
        self._outbox_root = outbox_root
        self._audit = audit
        #: The serving node's destinations; None outside the node (the CLI), where a review is only
        #: recorded and the running node's :meth:`publish_pending` queues its verified SR.
        self._destinations = None if destinations is None else tuple(destinations)
        self._build = build_verified_sr
        self._metrics = metrics
        self._picture = verified_picture
        self._without_picture: set[str] = set()

    # -- the three actions ---------------------------------------------------------------------------

    def sign(
        self, result_id: str, user: User, address: str, now: datetime, comment: str | None = None
    ) -> ReviewRecord:
        """Accept the AI result as it is (VERIFIED, review status "signed off")."""
        return self._review(result_id, ReviewStatus.SIGNED_OFF, user, address, now, None, comment)

    def amend(
        self,
        result_id: str,
        edv_ml: float,
        esv_ml: float,
        reason: str,
        user: User,
        address: str,
        now: datetime,
    ) -> ReviewRecord:
        """Replace EDV and ESV (EF and SV follow); the AI values stay recorded next to them."""
        return self._review(result_id, ReviewStatus.AMENDED, user, address, now, (edv_ml, esv_ml), reason)

    def reject(self, result_id: str, reason: str, user: User, address: str, now: datetime) -> ReviewRecord:
        """Reject the AI result; the verified SR withdraws its measurements and states the reason."""
        return self._review(result_id, ReviewStatus.REJECTED, user, address, now, None, reason)

    # -- flow ----------------------------------------------------------------------------------------

    def _review(
        self,
        result_id: str,
        status: ReviewStatus,
        user: User,
        address: str,
        now: datetime,
        amended: tuple[float, float] | None,
        reason: str | None,
    ) -> ReviewRecord:
        try:
            result, draft, text = self._checked(result_id, status, user, amended, reason)
            review_id = str(uuid.uuid4())
            review = ReviewRecord(
                id=review_id,
                result_id=result_id,
                status=str(status),
                user_name=user.name,
                full_name=user.full_name,
                organization=user.organization,
                identification_code=user.identification_code,
                address=address[:64],
                reviewed_at=now,
                ai_edv_ml=result.edv_ml,
                ai_esv_ml=result.esv_ml,
                ai_ef_pct=result.ef_pct,
                edv_ml=amended[0] if amended else None,
                esv_ml=amended[1] if amended else None,
                reason=text,
                sr_sop_instance_uid=derived_uid(result_id, "verified-sr", review_id),
            )
            dataset = self._verified_sr(review, draft)
            if not self._store.record(review, self._entry(review, result)):
                raise AlreadyReviewed("this result was reviewed a moment ago by someone else")
        except ReviewError as error:
            self._audit.record(
                AuditEntry(
                    at=now,
                    actor=user.name,
                    address=address,
                    action=AuditAction.REVIEW_REFUSED,
                    target=result_id,
                    details={
                        "requested": str(status),
                        "refusal": type(error).__name__,
                        "reason": str(error),
                    },
                )
            )
            raise
        if self._metrics is not None:
            self._metrics.reviews.labels(status=str(status)).inc()
        if self._destinations is None:
            return review  # the running node publishes it, to the destinations it serves
        try:
            self._publish(review, result.study_instance_uid, dataset, now, self._destinations)
        except Exception:  # recorded: publish_pending finishes it; the review itself stands
            log.exception("verified SR not yet in the outbox; will retry", review_id=review.id)
            return review
        return replace(review, published=True)

    def _checked(
        self,
        result_id: str,
        status: ReviewStatus,
        user: User,
        amended: tuple[float, float] | None,
        reason: str | None,
    ) -> tuple[ResultRecord, Dataset, str | None]:
        if not user.can_review:
            raise NotPermitted("only a radiologist can sign off, amend or reject a result")
        text = " ".join((reason or "").split()) or None
        if status in (ReviewStatus.AMENDED, ReviewStatus.REJECTED) and text is None:
            raise InvalidReview(
                f"a reason is required to {'amend' if status == ReviewStatus.AMENDED else 'reject'}"
            )
        if text is not None and len(text) > MAX_REASON_CHARS:
            raise InvalidReview(f"the reason is longer than {MAX_REASON_CHARS} characters")
        if amended is not None:
            edv, esv = amended
            if (
                not (math.isfinite(edv) and math.isfinite(esv))
                or not 0 < edv <= MAX_VOLUME_ML
                or not 0 <= esv <= edv
            ):
                raise InvalidReview(
                    f"amended volumes need 0 <= ESV <= EDV <= {MAX_VOLUME_ML:.0f} mL and EDV > 0"
                )
        result = self._store.result(result_id)
        if result is None:
            raise ResultNotFound("no such result")
        refused = refusal(user, result, self._store.for_result(result_id))
        if refused is not None:
            raise refused
        return result, self._draft(result_id), text

    def _draft(self, result_id: str) -> Dataset:
        path = self._store.outbox_path(result_id, DRAFT_SR)
        if path is None:
            raise DraftNotAvailable("the draft report of this result is not ready yet")
        return pydicom.dcmread(self._outbox_root / path)

    def _verified_sr(self, review: ReviewRecord, draft: Dataset) -> Dataset:
        code = review.identification_code
        observer = VerifyingObserver(
            name=person_name(review.full_name),
            organization=review.organization,
            identification_code=Code(code, SCHEME, review.full_name[:64]) if code else None,
        )
        amended = (
            (review.edv_ml, review.esv_ml)
            if review.edv_ml is not None and review.esv_ml is not None
            else None
        )
        return self._build(
            draft,
            observer=observer,
            review=ReviewStatus(review.status),
            verified_at=review.reviewed_at,
            amended=amended,
            reason=review.reason,
            sop_instance_uid=review.sr_sop_instance_uid,
            series_instance_uid=derived_uid(review.result_id, "verified-sr-series", review.id),
            instance_number=1,
        )

    def _entry(self, review: ReviewRecord, result: ResultRecord) -> AuditEntry:
        details: dict[str, Any] = {
            "ai": {"edv_ml": review.ai_edv_ml, "esv_ml": review.ai_esv_ml, "ef_pct": review.ai_ef_pct},
            "review_id": review.id,
            "version": result.version,
            "sr_sop_instance_uid": review.sr_sop_instance_uid,
        }
        if review.edv_ml is not None:
            details["amended"] = {
                "edv_ml": review.edv_ml,
                "esv_ml": review.esv_ml,
                "ef_pct": _ef(review.edv_ml, review.esv_ml),
            }
        if review.reason:
            details["reason"] = review.reason
        return AuditEntry(
            at=review.reviewed_at,
            actor=review.user_name,
            address=review.address,
            action=_ACTIONS[ReviewStatus(review.status)],
            target=review.result_id,
            details=details,
        )

    def _publish(
        self,
        review: ReviewRecord,
        study_instance_uid: str,
        dataset: Dataset,
        now: datetime,
        destinations: Sequence[AnyDestination],
    ) -> None:
        item = OutgoingObject(
            sop_instance_uid=review.sr_sop_instance_uid,
            sop_class_uid=str(dataset.SOPClassUID),
            study_instance_uid=study_instance_uid,
            kind=VERIFIED_SR,
            result_id=review.result_id,
        )
        self._outbox.add(item, encode(dataset), destinations, now)
        self._store.mark_published(review.id)

    def publish_pictures(self, now: datetime) -> int:
        """Add the "VERIFIED BY" secondary capture of every review that lacks one; returns how many.

        Runs in the node (which can read stacks and masks), so a sign-off from the CLI gets its
        picture too. The SOP Instance UID derives from the review, so a retry never duplicates it.
        """
        if self._picture is None or self._destinations is None:
            return 0
        done = 0
        for review in self._store.without_outbox_object(VERIFIED_SC):
            result = self._store.result(review.result_id)
            if result is None or review.id in self._without_picture:
                continue
            dataset = self._picture(review)
            if dataset is None:
                # Its images are gone: the same every time, so not tried again until a restart.
                self._without_picture.add(review.id)
                log.warning("verified picture not built: the result's images can no longer be read")
                continue
            item = OutgoingObject(
                sop_instance_uid=str(dataset.SOPInstanceUID),
                sop_class_uid=str(dataset.SOPClassUID),
                study_instance_uid=result.study_instance_uid,
                kind=VERIFIED_SC,
                result_id=review.result_id,
            )
            self._outbox.add(item, encode(dataset), self._destinations, now)
            done += 1
        return done

    def publish_pending(self, now: datetime) -> int:
        """Queue the verified SR of every review not yet in the outbox (recorded from the CLI, or cut
        short by a crash), for the node's destinations; returns how many."""
        if self._destinations is None:
            return 0
        done = 0
        for review in self._store.unpublished():
            result = self._store.result(review.result_id)
            if result is None:
                continue
            if self._outbox.contains(review.sr_sop_instance_uid):
                self._store.mark_published(review.id)
            else:
                dataset = self._verified_sr(review, self._draft(review.result_id))
                self._publish(review, result.study_instance_uid, dataset, now, self._destinations)
            done += 1
        return done
