"""Seed the index with results and their draft reports through the real store APIs and report builders.

Used by the review, web and accounts tests: a study row (``Index.add_instance``), a job and its result
(``JobQueue.enqueue_ready`` / ``claim`` / ``complete``), and the draft SR built by
:func:`node.reports.sr.build_draft_sr` stored with ``Outbox.add``, exactly as the node stores them.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from node.accounts.passwords import Passwords
from node.accounts.users import Role, User
from node.clock import ManualClock
from node.config import DeliverySettings, Destination, Settings, StorageSettings
from node.dicom.instance import InstanceHeader
from node.domain import BasalRule, ModelIdentity, OutboxKind, Outcome, StackResult
from node.inference.qc import qc_status
from node.metrics import NodeMetrics
from node.reports.codes import ReviewStatus
from node.reports.sc import build_sc
from node.reports.sr import build_draft_sr
from node.review.parts import ReviewParts
from node.store.index import Index
from node.store.jobs import JobQueue, ResultRow
from node.store.outbox import Outbox, OutgoingObject
from node.store.spool import Spool

PACS = Destination(ae_title="PACS", host="127.0.0.1", port=11113)
PASSWORD = "correct horse battery staple"
PHASES = 20
SLICES = 3


def make_settings(data_dir: Path, **sections: Any) -> Settings:
    """Settings for a test node: a data directory and PACS as the one delivery destination."""
    return Settings(
        storage=StorageSettings(data_dir=data_dir, min_free_mb=1),
        delivery=DeliverySettings(destinations=[PACS]),
        **sections,
    )


@dataclass
class Seeded:
    """An open index with the review parts over it, a manual clock and metrics."""

    settings: Settings
    clock: ManualClock
    metrics: NodeMetrics
    parts: ReviewParts

    @property
    def index(self) -> Index:
        return self.parts.index

    @property
    def outbox(self) -> Outbox:
        return self.parts.outbox

    def user(self, name: str, role: Role = Role.RADIOLOGIST, full_name: str = "Jane Smith") -> User:
        """Add a user with :data:`PASSWORD`."""
        return self.parts.accounts.add_user(
            name=name,
            role=role,
            full_name=full_name,
            organization="St Elsewhere Radiology",
            password=PASSWORD,
            identification_code=None,
            actor="test",
            address="test",
            now=self.clock.now(),
        )

    def close(self) -> None:
        self.parts.close()


def open_seeded(data_dir: Path, **sections: Any) -> Seeded:
    """A fresh index under ``data_dir`` with the review parts, cheap password hashing and metrics."""
    settings = make_settings(data_dir, **sections)
    index = Index.open(settings.storage.effective_database_url())
    outbox = Outbox(index, Spool(data_dir / "outbox"))
    metrics = NodeMetrics()
    parts = ReviewParts.build(settings, index, outbox, metrics, passwords=Passwords.fast_for_tests())
    return Seeded(settings=settings, clock=ManualClock(), metrics=metrics, parts=parts)


def _header(
    study: str, series: str, sop: str, patient_name: str, patient_id: str, study_date: str
) -> InstanceHeader:
    return InstanceHeader(
        sop_class_uid=str(MRImageStorage),
        sop_instance_uid=sop,
        study_instance_uid=study,
        series_instance_uid=series,
        transfer_syntax_uid=str(ExplicitVRLittleEndian),
        modality="MR",
        frame_of_reference_uid=None,
        image_type=("ORIGINAL", "PRIMARY"),
        series_number=1,
        instance_number=1,
        acquisition_number=None,
        acquisition_time=None,
        trigger_time=0.0,
        image_position=None,
        image_orientation=None,
        pixel_spacing=None,
        rows=None,
        columns=None,
        number_of_frames=None,
        series_description="cine sax",
        patient_id=patient_id,
        patient_name=patient_name,
        patient_birth_date=None,
        accession_number="ACC1",
        study_date=study_date,
        study_time="101500",
        study_description="Cardiac MR",
    )


def _evidence(study: str, series: str, sop: str, patient_name: str, patient_id: str, date: str) -> Dataset:
    """The header a real MR image of the study would have (no pixels: an SR needs none)."""
    dataset = Dataset()
    dataset.SOPClassUID = MRImageStorage
    dataset.SOPInstanceUID = sop
    dataset.StudyInstanceUID = study
    dataset.SeriesInstanceUID = series
    dataset.Modality = "MR"
    dataset.PatientName = patient_name
    dataset.PatientID = patient_id
    dataset.PatientBirthDate = ""
    dataset.PatientSex = "F"
    dataset.StudyDate = date
    dataset.StudyTime = "101500"
    dataset.AccessionNumber = "ACC1"
    dataset.StudyID = "1"
    dataset.ReferringPhysicianName = ""
    dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    return dataset


def encode(dataset: Dataset) -> bytes:
    """A dataset as Part 10 bytes."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def seed_result(
    seeded: Seeded,
    *,
    patient_name: str = "DOE^JANE",
    patient_id: str = "P001",
    study_date: str = "20250301",
    edv_ml: float = 150.0,
    esv_ml: float = 60.0,
    confidence: float = 0.9,
    qc_flags: tuple[str, ...] = (),
    outcome: Outcome = Outcome.MEASURED,
    draft: bool = True,
    secondary_capture: bool = False,
) -> str:
    """Record one processed study (version 1) and, for a measured one, its draft SR; return the result id."""
    study, series = generate_uid(), generate_uid()
    ed_uids = tuple(generate_uid() for _ in range(SLICES))
    es_uids = tuple(generate_uid() for _ in range(SLICES))
    seeded.index.add_instance(
        _header(study, series, ed_uids[0], patient_name, patient_id, study_date),
        path="unused.dcm",
        size_bytes=1,
        calling_ae="PACS",
        received_at=seeded.clock.now(),
    )
    seeded.clock.advance(20)
    queue = JobQueue(seeded.index)
    (job,) = queue.enqueue_ready(seeded.clock.now(), 10.0, 600.0)
    claimed = queue.claim("seed", seeded.clock.now())
    assert claimed is not None and claimed.id == job.id
    if outcome != Outcome.MEASURED:
        row = ResultRow(stack_index=0, outcome=outcome, series_instance_uids=(), details={"skipped": {}})
        (result_id,) = queue.complete(claimed, outcome, [row], seeded.clock.now())
        return str(result_id)
    es_phase = 8
    curve = tuple(
        esv_ml + (edv_ml - esv_ml) * (0.5 + 0.5 * math.cos(math.pi * phase / es_phase))
        if phase <= es_phase
        else esv_ml + (edv_ml - esv_ml) * (phase - es_phase) / (PHASES - es_phase)
        for phase in range(PHASES)
    )
    result = StackResult(
        study_instance_uid=study,
        series_instance_uids=(series,),
        frame_of_reference_uid=None,
        edv_ml=edv_ml,
        esv_ml=esv_ml,
        ef_pct=100.0 * (edv_ml - esv_ml) / edv_ml,
        sv_ml=edv_ml - esv_ml,
        lv_mass_g=110.0,
        ed_phase=0,
        es_phase=es_phase,
        slices=SLICES,
        phases=PHASES,
        volume_curve_ml=curve,
        slice_spacing_mm=10.0,
        pixel_spacing_mm=(1.4, 1.4),
        qc_status=qc_status(qc_flags),
        qc_flags=qc_flags,
        confidence=confidence,
        qc_features=None,
        model=ModelIdentity(
            name="lvseg-unet", version="1.0.0", sha256=MODEL_SHA256, companion_sha256=COMPANION_SHA256
        ),
        basal_rule=BasalRule.PER_PHASE,
        ed_sop_instance_uids=ed_uids,
        es_sop_instance_uids=es_uids,
        blood_pool_mm2=tuple(tuple(1000.0 for _ in range(PHASES)) for _ in range(SLICES)),
        myocardium_mm2=tuple(tuple(800.0 for _ in range(PHASES)) for _ in range(SLICES)),
    )
    row = ResultRow(stack_index=0, outcome=outcome, series_instance_uids=(series,), result=result)
    (result_id,) = queue.complete(claimed, outcome, [row], seeded.clock.now())
    evidence = [
        _evidence(study, series, uid, patient_name, patient_id, study_date) for uid in ed_uids + es_uids
    ]
    if draft:
        publish_draft(seeded, str(result_id), result, evidence)
    if secondary_capture:
        pixels = np.zeros((96, 128, 3), dtype=np.uint8)
        pixels[:, :, 0] = 200
        pixels[20:40, 30:90] = 255
        sc = build_sc(
            pixels,
            evidence[0],
            series_instance_uid=generate_uid(),
            sop_instance_uid=generate_uid(),
            instance_number=1,
            review=ReviewStatus.PENDING,
            now=seeded.clock.now(),
        )
        item = OutgoingObject(
            str(sc.SOPInstanceUID), str(sc.SOPClassUID), study, OutboxKind.SC, str(result_id)
        )
        seeded.outbox.add(item, encode(sc), [PACS], seeded.clock.now())
    return str(result_id)


#: The sha256 the seeded results record for their model file and its companion network's.
MODEL_SHA256, COMPANION_SHA256 = "7a" * 32, "c0" * 32


def publish_draft(seeded: Seeded, result_id: str, result: StackResult, evidence: list[Dataset]) -> str:
    """Build the draft SR of a result and store it in the outbox for PACS; return its SOP Instance UID."""
    draft = build_draft_sr(
        result,
        evidence,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        instance_number=1,
        now=seeded.clock.now(),
    )
    item = OutgoingObject(
        str(draft.SOPInstanceUID),
        str(draft.SOPClassUID),
        result.study_instance_uid,
        OutboxKind.DRAFT_SR,
        result_id,
    )
    seeded.outbox.add(item, encode(draft), [PACS], seeded.clock.now())
    seeded.clock.advance(timedelta(seconds=1).total_seconds())
    return str(draft.SOPInstanceUID)


def new_version(seeded: Seeded, result_id: str) -> str:
    """A late instance reopens the result's study; record version 2 (superseding it); return its result id."""
    result = seeded.parts.store.result(result_id)
    assert result is not None
    header = seeded.index.study_instances(result.study_instance_uid)[0].header
    seeded.index.add_instance(
        replace(header, sop_instance_uid=generate_uid()),
        path="late.dcm",
        size_bytes=1,
        calling_ae="PACS",
        received_at=seeded.clock.now(),
    )
    seeded.clock.advance(20)
    queue = JobQueue(seeded.index)
    queue.enqueue_ready(seeded.clock.now(), 10.0, 600.0)
    job = queue.claim("seed", seeded.clock.now())
    assert job is not None and job.version == result.version + 1
    row = ResultRow(
        stack_index=0,
        outcome=Outcome.MEASURED,
        series_instance_uids=result.series_instance_uids,
        result=result.stack_result(),
    )
    (newer,) = queue.complete(job, Outcome.MEASURED, [row], seeded.clock.now())
    return str(newer)
