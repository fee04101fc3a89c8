"""Domain types shared across layers: what a measured stack is, independent of how it is stored."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any


def stroke_volume(edv_ml: float, esv_ml: float) -> float:
    """SV = EDV - ESV (mL)."""
    return edv_ml - esv_ml


def ejection_fraction(edv_ml: float, esv_ml: float) -> float:
    """EF = SV / EDV, in percent; 0 for an EDV of 0 (no ventricle: nothing is ejected)."""
    return 100.0 * stroke_volume(edv_ml, esv_ml) / edv_ml if edv_ml > 0 else 0.0


class Outcome(StrEnum):
    """How processing a study (version) ended."""

    MEASURED = "measured"
    NO_SHORT_AXIS_CINE = "no short-axis cine found"
    FAILED = "failed"


@dataclass(frozen=True)
class ModelIdentity:
    """The model that produced a result (from its card): name, version, the sha256 of its ONNX file
    and of its companion network's where one took part (both None on results measured before the
    node recorded them)."""

    name: str
    version: str
    sha256: str | None = None
    companion_sha256: str | None = None


class BasalRule(StrEnum):
    """Which basal frames count as ventricle (SCMR 2020: a basal blood pool at least half surrounded by
    myocardium is ventricle), :mod:`node.inference.measurements`.

    ``per_phase``: judged phase by phase, as the guideline and the ACDC experts contour (default).
    ``every_phase``: a basal slice counts only where it is ventricle in every phase, so the same slices
    make EDV and ESV: the convention of readers who contour the same slices at ED and ES (the
    Sunnybrook experts, for one).
    """

    PER_PHASE = "per_phase"
    EVERY_PHASE = "every_phase"

    @property
    def counted(self) -> str:
        """How a reader is told which basal slices counted (the worklist, the picture, the console)."""
        return _BASAL_RULE_WORDS[self]

    @classmethod
    def recorded(cls, value: str | None) -> BasalRule | None:
        """The rule a result records (its value, as the index holds it); None where it records none or
        one this node does not know (a newer node's, in an index several nodes share)."""
        return cls._value2member_map_.get(value or "")  # type: ignore[return-value]


_BASAL_RULE_WORDS = {
    BasalRule.PER_PHASE: "basal slices judged per phase (SCMR)",
    BasalRule.EVERY_PHASE: "basal slices only where ventricle in every phase",
}


def basal_rule_words(value: str | None) -> str:
    """A recorded basal rule (a :class:`BasalRule` value, as the index holds it) in words; ``basal rule
    not recorded`` for a result measured before the node recorded it."""
    if not value:
        return "basal rule not recorded"
    known = BasalRule.recorded(value)
    return known.counted if known is not None else value


def algorithm_parameters(model: ModelIdentity, basal_rule: BasalRule | None) -> dict[str, str]:
    """How a result was measured, as the parameters of its algorithm identification (the SR's TID 4019,
    the SEG's segment descriptions): the basal rule, and the sha256 of the model file and of its
    companion network's, each where recorded."""
    recorded = {
        "basal_rule": basal_rule,
        "model_sha256": model.sha256,
        "companion_sha256": model.companion_sha256,
    }
    return {name: str(value) for name, value in recorded.items() if value is not None}


class QcStatus(StrEnum):
    """What QC asks of the reader: ``check`` this result first, or it looks ``ok`` (still unverified)."""

    OK = "ok"
    CHECK = "check"


@dataclass(frozen=True)
class StackResult:
    """Measurements, QC and provenance for one short-axis cine stack."""

    study_instance_uid: str
    series_instance_uids: tuple[str, ...]
    frame_of_reference_uid: str | None
    edv_ml: float
    esv_ml: float
    ef_pct: float
    sv_ml: float
    lv_mass_g: float
    ed_phase: int
    es_phase: int
    slices: int
    phases: int
    volume_curve_ml: tuple[float, ...]
    slice_spacing_mm: float
    pixel_spacing_mm: tuple[float, float]
    #: ``check`` when a flag says the volumes may be wrong (:func:`node.inference.qc.qc_status`).
    qc_status: QcStatus
    qc_flags: tuple[str, ...]
    #: Calibrated chance that EDV and ESV are both within 15 % (:mod:`node.inference.qc`).
    confidence: float
    #: What the confidence was estimated from (:class:`node.inference.qc.QcFeatures`); None on
    #: results measured before QC 2.
    qc_features: dict[str, float] | None
    model: ModelIdentity
    #: Which basal frames counted as ventricle; None on results measured before the node recorded it.
    basal_rule: BasalRule | None
    #: SOP Instance UID per slice at the ED and ES phases (None where the cell is missing).
    ed_sop_instance_uids: tuple[str | None, ...]
    es_sop_instance_uids: tuple[str | None, ...]
    #: Blood-pool and myocardium areas in mm^2, [slice][phase].
    blood_pool_mm2: tuple[tuple[float, ...], ...]
    myocardium_mm2: tuple[tuple[float, ...], ...]

    def to_json(self) -> dict[str, Any]:
        """The public JSON object of ``dicomnode measure --json``; ``ed_phase`` and ``es_phase`` count
        from 1 (phase k of ``phases``), as the worklist and the picture show them."""
        return {
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uids": list(self.series_instance_uids),
            "edv_ml": round(self.edv_ml, 1),
            "esv_ml": round(self.esv_ml, 1),
            "ef_pct": round(self.ef_pct, 1),
            "sv_ml": round(self.sv_ml, 1),
            "lv_mass_g": round(self.lv_mass_g, 1),
            # As a person reads them everywhere (worklist, picture): phase k of phases, from 1.
            "ed_phase": self.ed_phase + 1,
            "es_phase": self.es_phase + 1,
            "slices": self.slices,
            "phases": self.phases,
            "qc_status": str(self.qc_status),
            "qc_flags": list(self.qc_flags),
            "confidence": round(self.confidence, 3),
            "model": asdict(self.model),
            "basal_rule": None if self.basal_rule is None else str(self.basal_rule),
        }

    def as_record(self) -> dict[str, Any]:
        """Every field as plain JSON-able values (for the index)."""
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> StackResult:
        """Rebuild a result from :meth:`as_record`'s output (as read back from the index). Keys this
        node does not know are left out: a newer node's (in an index several nodes share), and
        ``flip_disagreement_ml``, which nodes before QC 2 recorded (in mL: not today's measure)."""
        known = {field.name for field in fields(cls)}
        values = {key: value for key, value in record.items() if key in known}
        model_fields = {field.name for field in fields(ModelIdentity)}
        values["model"] = ModelIdentity(**{k: v for k, v in values["model"].items() if k in model_fields})
        values["qc_status"] = QcStatus(values["qc_status"])
        values.setdefault("qc_features", None)
        # A rule only a newer node knows reads as not recorded here, rather than failing the result.
        values["basal_rule"] = BasalRule.recorded(values.get("basal_rule"))
        for name in ("series_instance_uids", "volume_curve_ml", "qc_flags", "ed_sop_instance_uids",
                     "es_sop_instance_uids", "pixel_spacing_mm"):  # fmt: skip
            values[name] = tuple(values[name])
        for name in ("blood_pool_mm2", "myocardium_mm2"):
            values[name] = tuple(tuple(row) for row in values[name])
        return cls(**values)


class ReportObject(StrEnum):
    """What a destination may be sent (``Destination.send``): the SR, the picture, the SEG."""

    SR = "sr"
    SC = "sc"
    SEG = "seg"


class OutboxKind(StrEnum):
    """What an outbox object is; each belongs to one :class:`ReportObject`."""

    DRAFT_SR = "draft_sr"
    SC = "sc"
    SEG = "seg"
    VERIFIED_SR = "verified_sr"
    VERIFIED_SC = "verified_sc"

    @property
    def report_object(self) -> ReportObject:
        """The kind of object a destination opts in to (``send``)."""
        return _REPORT_OBJECT[self]

    @property
    def label(self) -> str:
        """How the worklist names the object."""
        return _KIND_LABEL[self]


_REPORT_OBJECT = {
    OutboxKind.DRAFT_SR: ReportObject.SR,
    OutboxKind.VERIFIED_SR: ReportObject.SR,
    OutboxKind.SC: ReportObject.SC,
    OutboxKind.VERIFIED_SC: ReportObject.SC,
    OutboxKind.SEG: ReportObject.SEG,
}
_KIND_LABEL = {
    OutboxKind.DRAFT_SR: "draft report (SR)",
    OutboxKind.VERIFIED_SR: "verified report (SR)",
    OutboxKind.SC: "draft picture (SC)",
    OutboxKind.VERIFIED_SC: "verified picture (SC)",
    OutboxKind.SEG: "segmentation (SEG)",
}


class JobState(StrEnum):
    """State of a study version's job: queued, running (claimed under a lease), done or failed."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class DeliveryState(StrEnum):
    """State of one (object, destination) pair in the outbox."""

    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True)
class GridCell:
    """The image measured at one slice and phase: an instance, or one frame of a multi-frame one."""

    sop_instance_uid: str
    #: The frame's number within its instance, from 1 (PS3.3 C.7.6.6); None for a single-frame one.
    frame_number: int | None = None


@dataclass(frozen=True)
class StackGrid:
    """The measured stack as it is stored with its result, so that later stages never find it again.

    ``cells[slice][phase]`` names the image measured there (None where the slice lacks the phase);
    the geometry is the stack's as measured (see :class:`node.pipeline.stacks.StackPlan`, whose
    fields these are). Reports, the worklist's pictures and the verified picture load the stack
    from this record (:func:`node.pipeline.grid.load_plan`).
    """

    study_instance_uid: str
    frame_of_reference_uid: str | None
    series_instance_uids: tuple[str, ...]
    orientation: tuple[float, float, float, float, float, float]
    normal: tuple[float, float, float]
    slice_positions_mm: tuple[float, ...]
    slice_spacing_mm: float
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    trigger_times_ms: tuple[float | None, ...]
    flags: tuple[str, ...]
    cells: tuple[tuple[GridCell | None, ...], ...]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values for the index."""
        data = asdict(self)
        data["cells"] = [
            [None if cell is None else [cell.sop_instance_uid, cell.frame_number] for cell in row]
            for row in self.cells
        ]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StackGrid:
        """The record :meth:`to_json` wrote."""
        orientation = tuple(float(value) for value in data["orientation"])
        normal = tuple(float(value) for value in data["normal"])
        spacing = tuple(float(value) for value in data["pixel_spacing"])
        return cls(
            study_instance_uid=str(data["study_instance_uid"]),
            frame_of_reference_uid=data["frame_of_reference_uid"],
            series_instance_uids=tuple(str(uid) for uid in data["series_instance_uids"]),
            orientation=(
                orientation[0],
                orientation[1],
                orientation[2],
                orientation[3],
                orientation[4],
                orientation[5],
            ),
            normal=(normal[0], normal[1], normal[2]),
            slice_positions_mm=tuple(float(value) for value in data["slice_positions_mm"]),
            slice_spacing_mm=float(data["slice_spacing_mm"]),
            pixel_spacing=(spacing[0], spacing[1]),
            rows=int(data["rows"]),
            columns=int(data["columns"]),
            trigger_times_ms=tuple(None if t is None else float(t) for t in data["trigger_times_ms"]),
            flags=tuple(str(flag) for flag in data["flags"]),
            cells=tuple(
                tuple(None if cell is None else GridCell(str(cell[0]), cell[1]) for cell in row)
                for row in data["cells"]
            ),
        )
