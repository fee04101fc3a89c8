"""Typed rows of the ``results`` and ``studies`` tables: built here, once, and read by attribute.

A result's values that have columns (volumes, EF, flags, confidence, the model) live in those columns
alone; the ``record`` column holds what has none (the volume curve, the areas, the ED/ES images, or
why nothing was measured). :meth:`ResultRecord.stack_result` puts the two together again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, TypedDict

from sqlalchemy import select, update

from node.domain import ModelIdentity, Outcome, QcStatus, StackGrid, StackResult
from node.inference.qc import qc_status
from node.store.index import Index
from node.store.schema import results

#: StackResult fields stored in columns of their own (never again in ``record``).
_COLUMN_FIELDS = frozenset(
    {
        "study_instance_uid",
        "series_instance_uids",
        "edv_ml",
        "esv_ml",
        "ef_pct",
        "sv_ml",
        "lv_mass_g",
        "qc_status",
        "qc_flags",
        "confidence",
        "model",
    }
)


#: The ``record`` key of what identifies the model's files (:class:`~node.domain.ModelIdentity` less
#: the name and version, which have columns).
MODEL_FILES = "model_files"


_MODEL_COLUMNS = ("name", "version")
#: The :class:`~node.domain.ModelIdentity` fields kept under ``record[MODEL_FILES]``.
MODEL_FILE_FIELDS = tuple(field.name for field in fields(ModelIdentity) if field.name not in _MODEL_COLUMNS)


class ResultColumns(TypedDict):
    """The ``results`` columns a measurement fills (the insert's values)."""

    series_instance_uids: list[str]
    edv_ml: float | None
    esv_ml: float | None
    ef_pct: float | None
    sv_ml: float | None
    lv_mass_g: float | None
    qc_status: str | None
    qc_flags: list[str]
    confidence: float | None
    model_name: str | None
    model_version: str | None
    record: dict[str, Any]


def result_columns(result: StackResult) -> ResultColumns:
    """The ``results`` column values of a measured stack: its own columns, and ``record`` for the rest
    (the model's name and version have columns, its files' sha256 are kept in ``record``)."""
    record = {key: value for key, value in result.as_record().items() if key not in _COLUMN_FIELDS}
    record[MODEL_FILES] = {name: getattr(result.model, name) for name in MODEL_FILE_FIELDS}
    return ResultColumns(
        series_instance_uids=list(result.series_instance_uids),
        edv_ml=result.edv_ml,
        esv_ml=result.esv_ml,
        ef_pct=result.ef_pct,
        sv_ml=result.sv_ml,
        lv_mass_g=result.lv_mass_g,
        qc_status=str(result.qc_status),
        qc_flags=list(result.qc_flags),
        confidence=result.confidence,
        model_name=result.model.name,
        model_version=result.model.version,
        record=record,
    )


def unmeasured_columns(series_instance_uids: tuple[str, ...], details: dict[str, Any]) -> ResultColumns:
    """The ``results`` column values of a stack or study with nothing measured, and why."""
    return ResultColumns(
        series_instance_uids=list(series_instance_uids),
        edv_ml=None,
        esv_ml=None,
        ef_pct=None,
        sv_ml=None,
        lv_mass_g=None,
        qc_status=None,
        qc_flags=[],
        confidence=None,
        model_name=None,
        model_version=None,
        record=details,
    )


def stored_qc_status(value: str | None, outcome: str, flags: Sequence[str] | None) -> QcStatus | None:
    """The QC status of a ``results`` row: its column, else (a result an older node measured, before
    QC 2) the status its flags give; None where nothing was measured."""
    if value is not None:
        return QcStatus(value)
    return qc_status(flags or ()) if outcome == Outcome.MEASURED else None


def backfill_qc_status(index: Index) -> int:
    """Give results an older node measured (before QC 2, NULL in ``qc_status``) the status their flags
    give, once at start-up, so the worklist sorts them with the rest; returns how many."""
    with index.engine.begin() as connection:
        rows = connection.execute(
            select(results.c.id, results.c.qc_flags).where(
                results.c.qc_status.is_(None), results.c.outcome == str(Outcome.MEASURED)
            )
        ).all()
        for row in rows:
            status = str(qc_status(row.qc_flags or ()))
            connection.execute(update(results).where(results.c.id == row.id).values(qc_status=status))
    return len(rows)


@dataclass(frozen=True)
class ResultRecord:
    """One row of ``results``: a measured stack, or a study (version) with nothing measured.

    ``details`` is the ``record`` column: for a measured stack what no column holds (read it through
    :meth:`stack_result`), otherwise ``{"error": ...}`` or ``{"skipped": {...}}``.
    """

    id: str
    job_id: int
    study_instance_uid: str
    version: int
    stack_index: int
    outcome: Outcome
    series_instance_uids: tuple[str, ...]
    edv_ml: float | None
    esv_ml: float | None
    ef_pct: float | None
    sv_ml: float | None
    lv_mass_g: float | None
    qc_status: QcStatus | None
    qc_flags: tuple[str, ...]
    confidence: float | None
    model_name: str | None
    model_version: str | None
    details: Mapping[str, Any]
    labels_path: str | None
    grid: StackGrid | None
    superseded: bool
    published: bool
    created_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> ResultRecord:
        """The record of a ``results`` row as SQLAlchemy returns it."""
        outcome = Outcome(row["outcome"])
        flags = tuple(row["qc_flags"] or ())
        return cls(
            id=str(row["id"]),
            job_id=int(row["job_id"]),
            study_instance_uid=str(row["study_instance_uid"]),
            version=int(row["version"]),
            stack_index=int(row["stack_index"]),
            outcome=outcome,
            series_instance_uids=tuple(row["series_instance_uids"] or ()),
            edv_ml=row["edv_ml"],
            esv_ml=row["esv_ml"],
            ef_pct=row["ef_pct"],
            sv_ml=row["sv_ml"],
            lv_mass_g=row["lv_mass_g"],
            qc_status=stored_qc_status(row["qc_status"], outcome, flags),
            qc_flags=flags,
            confidence=row["confidence"],
            model_name=row["model_name"],
            model_version=row["model_version"],
            details=dict(row["record"] or {}),
            labels_path=row["labels_path"],
            grid=StackGrid.from_json(row["grid"]) if row["grid"] else None,
            superseded=bool(row["superseded"]),
            published=bool(row["published"]),
            created_at=row["created_at"],
        )

    @property
    def model(self) -> dict[str, str | None]:
        """Every field of :class:`~node.domain.ModelIdentity` as recorded: the name and version from
        their columns, the files' sha256 from ``record``; None where not recorded (nothing measured, or
        measured by a node that did not record it)."""
        files = dict(self.details.get(MODEL_FILES) or {}) if self.measured else {}
        return {
            "name": self.model_name,
            "version": self.model_version,
            **{name: files.get(name) for name in MODEL_FILE_FIELDS},
        }

    @property
    def measured(self) -> bool:
        """Whether this row holds measurements (and so can be reviewed, published and shown)."""
        return self.outcome == Outcome.MEASURED

    def stack_result(self) -> StackResult:
        """The measured stack's full result: the columns and ``record`` together."""
        if not self.measured:
            raise ValueError(f"result {self.id} holds no measurement: {self.outcome}")
        values = dict(self.details)
        values.pop(MODEL_FILES, None)
        values.update(
            study_instance_uid=self.study_instance_uid,
            series_instance_uids=list(self.series_instance_uids),
            edv_ml=self.edv_ml,
            esv_ml=self.esv_ml,
            ef_pct=self.ef_pct,
            sv_ml=self.sv_ml,
            lv_mass_g=self.lv_mass_g,
            qc_status=self.qc_status,
            qc_flags=list(self.qc_flags),
            confidence=self.confidence,
            model=self.model,
        )
        return StackResult.from_record(values)


@dataclass(frozen=True)
class StudyRecord:
    """A study's identifiers as PACS sent them (``studies``)."""

    study_instance_uid: str
    patient_id: str | None
    patient_name: str | None
    patient_birth_date: str | None
    accession_number: str | None
    study_date: str | None
    study_time: str | None
    study_description: str | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> StudyRecord:
        """The record of a ``studies`` row."""
        return cls(
            study_instance_uid=str(row["study_instance_uid"]),
            patient_id=row["patient_id"],
            patient_name=row["patient_name"],
            patient_birth_date=row["patient_birth_date"],
            accession_number=row["accession_number"],
            study_date=row["study_date"],
            study_time=row["study_time"],
            study_description=row["study_description"],
        )

    @classmethod
    def unknown(cls, study_instance_uid: str) -> StudyRecord:
        """A study the index holds no identifiers of."""
        return cls(study_instance_uid, None, None, None, None, None, None, None)
