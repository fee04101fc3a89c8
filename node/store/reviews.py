"""Radiologist reviews and the worklist query over results, studies, reviews and deliveries.

One review per result at most: the ``reviews.result_id`` unique key decides between two concurrent
sign-offs, so exactly one of them is recorded. A review is written with its audit line in one
transaction; the verified SR it leads to is put in the outbox afterwards and the review then marked
published, so a crash in between leaves a review that :meth:`ReviewStore.unpublished` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from sqlalchemy import and_, case, exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from node.domain import BasalRule, ModelIdentity, Outcome, QcStatus
from node.store.audit import AuditEntry, audit_insert
from node.store.index import Index
from node.store.results import MODEL_FILE_FIELDS, MODEL_FILES, ResultRecord, StudyRecord, stored_qc_status
from node.store.schema import deliveries, outbox, results, reviews, studies


class WorklistStatus(StrEnum):
    """What the worklist shows for a current result: its review status, or why it has none."""

    PENDING = "pending"
    SIGNED_OFF = "signed off"
    AMENDED = "amended"
    REJECTED = "rejected"
    NO_SHORT_AXIS_CINE = "no short-axis cine found"
    FAILED = "failed"


#: ``reviews.status`` values (the ReviewStatus values of :mod:`node.reports.codes`) by worklist status.
REVIEW_STATUS_VALUES = {
    WorklistStatus.SIGNED_OFF: "signed_off",
    WorklistStatus.AMENDED: "amended",
    WorklistStatus.REJECTED: "rejected",
}

SortKey = Literal["received", "study_date", "confidence", "ef", "status"]


@dataclass(frozen=True)
class ReviewRecord:
    """One radiologist review of one result."""

    id: str
    result_id: str
    status: str
    user_name: str
    full_name: str
    organization: str
    identification_code: str | None
    address: str
    reviewed_at: datetime
    ai_edv_ml: float | None
    ai_esv_ml: float | None
    ai_ef_pct: float | None
    edv_ml: float | None
    esv_ml: float | None
    reason: str | None
    sr_sop_instance_uid: str
    published: bool = False


@dataclass(frozen=True)
class WorklistFilter:
    """Which current results the worklist shows, in which order."""

    statuses: tuple[WorklistStatus, ...] = ()
    study_date_from: str | None = None
    study_date_to: str | None = None
    confidence_max: float | None = None
    sort: SortKey = "received"
    descending: bool = True
    limit: int = 200
    offset: int = 0


@dataclass(frozen=True)
class WorklistRow:
    """One current result as the worklist shows it."""

    result_id: str
    study_instance_uid: str
    version: int
    stack_index: int
    outcome: str
    status: WorklistStatus
    patient_name: str | None
    patient_id: str | None
    study_date: str | None
    study_description: str | None
    accession_number: str | None
    edv_ml: float | None
    esv_ml: float | None
    ef_pct: float | None
    #: None where nothing was measured.
    qc_status: QcStatus | None
    qc_flags: tuple[str, ...]
    confidence: float | None
    #: The model that measured it (its files' sha256 None where not recorded); None where nothing was.
    model: ModelIdentity | None
    #: The basal rule the volumes were measured by; None where not recorded, or one this node does not
    #: know (:meth:`~node.domain.BasalRule.recorded`).
    basal_rule: BasalRule | None
    created_at: datetime
    reviewer: str | None
    reviewed_at: datetime | None
    #: Number of (object, destination) pairs of this result per delivery state.
    deliveries: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (``dicomnode worklist list --json``)."""
        return {
            "result_id": self.result_id,
            "study_instance_uid": self.study_instance_uid,
            "version": self.version,
            "stack_index": self.stack_index,
            "status": str(self.status),
            "patient_name": self.patient_name,
            "patient_id": self.patient_id,
            "study_date": self.study_date,
            "edv_ml": _round(self.edv_ml),
            "esv_ml": _round(self.esv_ml),
            "ef_pct": _round(self.ef_pct),
            "qc_status": None if self.qc_status is None else str(self.qc_status),
            "qc_flags": list(self.qc_flags),
            "confidence": None if self.confidence is None else round(self.confidence, 3),
            "model": None if self.model is None else asdict(self.model),
            "basal_rule": None if self.basal_rule is None else str(self.basal_rule),
            "reviewer": self.reviewer,
            "reviewed_at": self.reviewed_at.isoformat() if self.reviewed_at else None,
            "deliveries": dict(self.deliveries),
        }


def status_of(result: ResultRecord, review: ReviewRecord | None) -> WorklistStatus:
    """The worklist status of one result row and its review (the same rule as the worklist query)."""
    if result.outcome == Outcome.NO_SHORT_AXIS_CINE:
        return WorklistStatus.NO_SHORT_AXIS_CINE
    if result.outcome == Outcome.FAILED:
        return WorklistStatus.FAILED
    if review is None:
        return WorklistStatus.PENDING
    by_value = {value: status for status, value in REVIEW_STATUS_VALUES.items()}
    return by_value.get(review.status, WorklistStatus.PENDING)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _status_expression() -> ColumnElement[str]:
    return case(
        (results.c.outcome == str(Outcome.NO_SHORT_AXIS_CINE), str(WorklistStatus.NO_SHORT_AXIS_CINE)),
        (results.c.outcome == str(Outcome.FAILED), str(WorklistStatus.FAILED)),
        *((reviews.c.status == value, str(status)) for status, value in REVIEW_STATUS_VALUES.items()),
        else_=str(WorklistStatus.PENDING),
    )


def _review(row: Any) -> ReviewRecord:
    return ReviewRecord(**{name: row[name] for name in ReviewRecord.__dataclass_fields__})


class ReviewStore:
    """Reviews, and the reads of results the worklist and the review service need."""

    def __init__(self, index: Index) -> None:
        self._engine = index.engine

    # -- reviews -----------------------------------------------------------------------------------

    def record(self, review: ReviewRecord, entry: AuditEntry) -> bool:
        """Record a review and its audit line atomically.

        Returns False (and records nothing) when the result already has a review.
        """
        values = {name: getattr(review, name) for name in ReviewRecord.__dataclass_fields__}
        try:
            with self._engine.begin() as connection:
                connection.execute(insert(reviews).values(**values))
                connection.execute(audit_insert(entry))
        except IntegrityError:
            return False
        return True

    def for_result(self, result_id: str) -> ReviewRecord | None:
        """The review of a result, if any."""
        with self._engine.connect() as connection:
            row = (
                connection.execute(select(reviews).where(reviews.c.result_id == result_id)).mappings().first()
            )
        return None if row is None else _review(row)

    def for_results(self, result_ids: Sequence[str]) -> dict[str, ReviewRecord]:
        """Reviews of several results, by result id."""
        if not result_ids:
            return {}
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(reviews).where(reviews.c.result_id.in_(list(result_ids)))
            ).mappings()
            return {str(row["result_id"]): _review(row) for row in rows}

    def unpublished(self) -> list[ReviewRecord]:
        """Reviews whose verified SR is not in the outbox yet (a crash came in between)."""
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(reviews).where(reviews.c.published.is_(False)).order_by(reviews.c.reviewed_at)
            ).mappings()
            return [_review(row) for row in rows]

    def without_outbox_object(self, kind: str) -> list[ReviewRecord]:
        """Reviews whose result has no outbox object of ``kind`` (e.g. the verified picture)."""
        missing = ~exists().where(and_(outbox.c.result_id == reviews.c.result_id, outbox.c.kind == kind))
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(reviews).where(reviews.c.published.is_(True), missing).order_by(reviews.c.reviewed_at)
            ).mappings()
            return [_review(row) for row in rows]

    def mark_published(self, review_id: str) -> None:
        """Note that a review's verified SR is in the outbox."""
        with self._engine.begin() as connection:
            connection.execute(update(reviews).where(reviews.c.id == review_id).values(published=True))

    def counts(self) -> dict[str, int]:
        """Number of current results per :class:`WorklistStatus` (for metrics)."""
        status = _status_expression().label("status")
        query = (
            select(status, func.count())
            .select_from(results.outerjoin(reviews, reviews.c.result_id == results.c.id))
            .where(results.c.superseded.is_(False))
            .group_by(status)
        )
        with self._engine.connect() as connection:
            return {str(name): int(count) for name, count in connection.execute(query).all()}

    # -- results -----------------------------------------------------------------------------------

    def result(self, result_id: str) -> ResultRecord | None:
        """One result row, superseded or not."""
        with self._engine.connect() as connection:
            row = connection.execute(select(results).where(results.c.id == result_id)).mappings().first()
        return None if row is None else ResultRecord.from_row(row)

    def study(self, study_instance_uid: str) -> StudyRecord:
        """The study's identifiers as PACS sent them (all unknown when the index has no row of it)."""
        with self._engine.connect() as connection:
            row = (
                connection.execute(select(studies).where(studies.c.study_instance_uid == study_instance_uid))
                .mappings()
                .first()
            )
        return StudyRecord.unknown(study_instance_uid) if row is None else StudyRecord.from_row(row)

    def study_results(self, study_instance_uid: str) -> list[ResultRecord]:
        """Every result of a study, every version, newest first."""
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(results)
                .where(results.c.study_instance_uid == study_instance_uid)
                .order_by(results.c.version.desc(), results.c.stack_index)
            ).mappings()
            return [ResultRecord.from_row(row) for row in rows]

    def outbox_path(self, result_id: str, kind: str) -> str | None:
        """Outbox path (relative to the outbox spool) of a result's object of one kind, if stored."""
        with self._engine.connect() as connection:
            path = connection.execute(
                select(outbox.c.path)
                .where(outbox.c.result_id == result_id, outbox.c.kind == kind)
                .order_by(outbox.c.id)
                .limit(1)
            ).scalar_one_or_none()
        return None if path is None else str(path)

    def worklist(self, selection: WorklistFilter) -> list[WorklistRow]:
        """Current (not superseded) results with their study, review status and delivery summary."""
        status = _status_expression().label("status")
        query = (
            select(
                results.c.id,
                results.c.study_instance_uid,
                results.c.version,
                results.c.stack_index,
                results.c.outcome,
                results.c.edv_ml,
                results.c.esv_ml,
                results.c.ef_pct,
                results.c.qc_status,
                results.c.qc_flags,
                results.c.confidence,
                results.c.model_name,
                results.c.model_version,
                # Provenance kept in ``record`` (a measured stack's; absent for the others): read as
                # single values, never the whole record (volume curve, per-slice areas).
                *(
                    results.c.record[(MODEL_FILES, name)].as_string().label(f"{MODEL_FILES}.{name}")
                    for name in MODEL_FILE_FIELDS
                ),
                results.c.record["basal_rule"].as_string().label("basal_rule"),
                results.c.created_at,
                studies.c.patient_name,
                studies.c.patient_id,
                studies.c.study_date,
                studies.c.study_description,
                studies.c.accession_number,
                reviews.c.full_name,
                reviews.c.reviewed_at,
                status,
            )
            .select_from(
                results.outerjoin(
                    studies, studies.c.study_instance_uid == results.c.study_instance_uid
                ).outerjoin(reviews, reviews.c.result_id == results.c.id)
            )
            .where(results.c.superseded.is_(False))
        )
        if selection.statuses:
            query = query.where(status.in_([str(value) for value in selection.statuses]))
        if selection.study_date_from:
            query = query.where(studies.c.study_date >= selection.study_date_from)
        if selection.study_date_to:
            query = query.where(studies.c.study_date <= selection.study_date_to)
        if selection.confidence_max is not None:
            query = query.where(results.c.confidence <= selection.confidence_max)
        column = {
            "received": results.c.created_at,
            "study_date": studies.c.study_date,
            "confidence": results.c.confidence,
            "ef": results.c.ef_pct,
            "status": status,
        }[selection.sort]
        ordered = column.desc() if selection.descending else column.asc()
        # Results QC asks to check come first, whatever the sort (issue: "check results sort first").
        check_first = case((results.c.qc_status == str(QcStatus.CHECK), 0), else_=1)
        query = (
            query.order_by(check_first, column.is_(None), ordered, results.c.created_at.desc(), results.c.id)
            .limit(selection.limit)
            .offset(selection.offset)
        )
        with self._engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
            ids = [str(row["id"]) for row in rows]
            summary: dict[str, dict[str, int]] = {}
            if ids:
                counted = connection.execute(
                    select(outbox.c.result_id, deliveries.c.state, func.count())
                    .join(deliveries, deliveries.c.outbox_id == outbox.c.id)
                    .where(outbox.c.result_id.in_(ids))
                    .group_by(outbox.c.result_id, deliveries.c.state)
                ).all()
                for result_id, state, count in counted:
                    summary.setdefault(str(result_id), {})[str(state)] = int(count)
        return [
            WorklistRow(
                result_id=str(row["id"]),
                study_instance_uid=str(row["study_instance_uid"]),
                version=int(row["version"]),
                stack_index=int(row["stack_index"]),
                outcome=str(row["outcome"]),
                status=WorklistStatus(row["status"]),
                patient_name=row["patient_name"],
                patient_id=row["patient_id"],
                study_date=row["study_date"],
                study_description=row["study_description"],
                accession_number=row["accession_number"],
                edv_ml=row["edv_ml"],
                esv_ml=row["esv_ml"],
                ef_pct=row["ef_pct"],
                qc_status=stored_qc_status(row["qc_status"], row["outcome"], row["qc_flags"]),
                qc_flags=tuple(row["qc_flags"] or ()),
                confidence=row["confidence"],
                model=None
                if row["model_name"] is None
                else ModelIdentity(
                    name=row["model_name"],
                    version=row["model_version"],
                    **{name: row[f"{MODEL_FILES}.{name}"] for name in MODEL_FILE_FIELDS},
                ),
                basal_rule=BasalRule.recorded(row["basal_rule"]),
                created_at=row["created_at"],
                reviewer=row["full_name"],
                reviewed_at=row["reviewed_at"],
                deliveries=summary.get(str(row["id"]), {}),
            )
            for row in rows
        ]
