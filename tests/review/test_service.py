"""The review service: who may review what, once; the verified SR it stores; the audit it writes."""

from __future__ import annotations

from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError

from node.accounts.users import Role
from node.domain import BasalRule, Outcome, QcStatus, StackResult
from node.inference.qc import qc_statement
from node.reports.codes import ReviewStatus
from node.reports.sr import build_verified_sr, read_report
from node.review.errors import AlreadyReviewed, DraftNotAvailable, InvalidReview, NotPermitted, NotReviewable
from node.review.service import ReviewService, person_name
from node.store.audit import AuditAction
from node.store.outbox import Outbox
from node.store.results import MODEL_FILES
from node.store.reviews import WorklistFilter, WorklistStatus
from node.store.schema import results
from node.web.app import http_status
from tests.review.seed import COMPANION_SHA256, MODEL_SHA256, PACS, Seeded, new_version, seed_result


def _verified(seeded: Seeded, result_id: str) -> Dataset:
    path = seeded.parts.store.outbox_path(result_id, "verified_sr")
    assert path is not None, "no verified SR in the outbox"
    return pydicom.dcmread(seeded.settings.storage.data_dir / "outbox" / path)


def _service(seeded: Seeded, builder: Any) -> ReviewService:
    return ReviewService(
        store=seeded.parts.store,
        outbox=seeded.outbox,
        outbox_root=seeded.settings.storage.data_dir / "outbox",
        audit=seeded.parts.audit,
        destinations=[PACS],
        build_verified_sr=builder,
    )


def test_sign_off_stores_a_verified_sr_for_every_destination(seeded: Seeded) -> None:
    """A radiologist's sign-off stores a VERIFIED SR naming them, queued for PACS, and audits it."""
    result_id = seed_result(seeded)
    user = seeded.user("jsmith", full_name="Jane Smith")
    review = seeded.parts.service.sign(result_id, user, "10.0.0.5", seeded.clock.now())
    assert review.published
    dataset = _verified(seeded, result_id)
    assert str(dataset.SOPInstanceUID) == review.sr_sop_instance_uid
    assert (dataset.VerificationFlag, dataset.CompletionFlag) == ("VERIFIED", "COMPLETE")
    assert str(dataset.VerifyingObserverSequence[0].VerifyingObserverName) == "Smith^Jane"
    assert dataset.VerifyingObserverSequence[0].VerifyingOrganization == "St Elsewhere Radiology"
    assert read_report(dataset).review == ReviewStatus.SIGNED_OFF
    states = [(row.kind, row.destination) for row in seeded.outbox.rows(result_id=result_id)]
    assert ("verified_sr", PACS.key) in states
    (entry,) = seeded.parts.audit.entries(action=AuditAction.SIGN_OFF)
    assert (entry.actor, entry.address, entry.target) == ("jsmith", "10.0.0.5", result_id)
    (row,) = seeded.parts.store.worklist(WorklistFilter())
    assert row.status == WorklistStatus.SIGNED_OFF and row.reviewer == "Jane Smith"
    assert seeded.metrics.reviews.labels(status="signed_off")._value.get() == 1


def test_admin_cannot_review(seeded: Seeded) -> None:
    """An admin's sign-off is refused with 403, nothing is stored, and the refusal is audited."""
    result_id = seed_result(seeded)
    admin = seeded.user("boss", role=Role.ADMIN)
    with pytest.raises(NotPermitted) as refused:
        seeded.parts.service.sign(result_id, admin, "10.0.0.5", seeded.clock.now())
    assert http_status(refused.value) == 403
    assert seeded.parts.store.for_result(result_id) is None
    assert seeded.parts.store.outbox_path(result_id, "verified_sr") is None
    (entry,) = seeded.parts.audit.entries(action=AuditAction.REVIEW_REFUSED)
    assert entry.details["refusal"] == "NotPermitted" and entry.actor == "boss"


def test_second_review_is_refused(seeded: Seeded) -> None:
    """Once a result is signed off, another sign-off, amendment or rejection is refused with 409."""
    result_id = seed_result(seeded)
    first, second = seeded.user("jsmith"), seeded.user("adoe", full_name="Ann Doe")
    service = seeded.parts.service
    service.sign(result_id, first, "10.0.0.5", seeded.clock.now())
    with pytest.raises(AlreadyReviewed) as again:
        service.sign(result_id, second, "10.0.0.6", seeded.clock.now())
    with pytest.raises(AlreadyReviewed):
        service.reject(result_id, "wrong slices", second, "10.0.0.6", seeded.clock.now())
    assert http_status(again.value) == 409
    assert seeded.parts.store.for_result(result_id).user_name == "jsmith"  # type: ignore[union-attr]
    assert [row.kind for row in seeded.outbox.rows(result_id=result_id)].count("verified_sr") == 1


def test_concurrent_sign_offs_have_one_winner(seeded: Seeded) -> None:
    """A click that completes while another is building its SR wins; the other gets 409, no second SR."""
    result_id = seed_result(seeded)
    first, second = seeded.user("jsmith"), seeded.user("adoe", full_name="Ann Doe")
    calls: list[str] = []

    def builder(draft: Dataset, **kwargs: Any) -> Dataset:
        calls.append(kwargs["sop_instance_uid"])
        if len(calls) == 1:  # the other click arrives and finishes while this one is building
            other.sign(result_id, second, "10.0.0.6", seeded.clock.now())
        return build_verified_sr(draft, **kwargs)

    racing, other = _service(seeded, builder), _service(seeded, builder)
    with pytest.raises(AlreadyReviewed):
        racing.sign(result_id, first, "10.0.0.5", seeded.clock.now())
    review = seeded.parts.store.for_result(result_id)
    assert review is not None and review.user_name == "adoe"
    assert review.sr_sop_instance_uid == calls[1]
    assert seeded.outbox.contains(calls[1]) and not seeded.outbox.contains(calls[0])


def test_amendment_keeps_ai_and_amended_values(seeded: Seeded) -> None:
    """An amendment records AI and amended volumes side by side, in the review, the audit and the SR."""
    result_id = seed_result(seeded, edv_ml=150.0, esv_ml=60.0)
    user = seeded.user("jsmith")
    review = seeded.parts.service.amend(
        result_id, 160.0, 80.0, "basal slice included", user, "10.0.0.5", seeded.clock.now()
    )
    assert (review.ai_edv_ml, review.ai_esv_ml, review.edv_ml, review.esv_ml) == (150.0, 60.0, 160.0, 80.0)
    (entry,) = seeded.parts.audit.entries(action=AuditAction.AMEND)
    assert entry.details["ai"] == {"edv_ml": 150.0, "esv_ml": 60.0, "ef_pct": 60.0}
    assert entry.details["amended"] == {"edv_ml": 160.0, "esv_ml": 80.0, "ef_pct": 50.0}
    assert entry.details["reason"] == "basal slice included"
    report = read_report(_verified(seeded, result_id))
    assert report.review == ReviewStatus.AMENDED
    assert report.values is not None and (report.values.edv_ml, report.values.esv_ml) == (160.0, 80.0)
    assert any("150" in statement and "60" in statement for statement in report.statements)


def test_the_qc_status_travels_from_the_draft_sr_to_the_verified_one(seeded: Seeded) -> None:
    """The draft SR codes the QC status and states it in words; the verified SR keeps both."""
    result_id = seed_result(seeded, qc_flags=("unstable_segmentation", "basal_slices_excluded"))
    user = seeded.user("jsmith")
    seeded.parts.service.sign(result_id, user, "10.0.0.5", seeded.clock.now())
    report = read_report(_verified(seeded, result_id))
    assert report.qc_status == QcStatus.CHECK
    assert set(report.qc_flags) == {"basal_slices_excluded", "unstable_segmentation"}
    assert qc_statement(QcStatus.CHECK) in report.statements
    ok = seed_result(seeded, qc_flags=("basal_slices_excluded",))
    seeded.parts.service.sign(ok, user, "10.0.0.5", seeded.clock.now())
    assert read_report(_verified(seeded, ok)).qc_status == QcStatus.OK


@pytest.mark.parametrize(("edv", "esv"), [(100.0, 120.0), (0.0, 0.0), (5000.0, 10.0), (float("nan"), 1.0)])
def test_amendment_with_impossible_volumes_is_refused(seeded: Seeded, edv: float, esv: float) -> None:
    """Amended volumes must satisfy 0 <= ESV <= EDV <= 2000 mL with EDV > 0 (else 422)."""
    result_id = seed_result(seeded)
    with pytest.raises(InvalidReview) as refused:
        seeded.parts.service.amend(
            result_id, edv, esv, "reason", seeded.user("jsmith"), "x", seeded.clock.now()
        )
    assert http_status(refused.value) == 422
    assert seeded.parts.store.for_result(result_id) is None


def test_rejection_requires_a_reason(seeded: Seeded) -> None:
    """A rejection without a reason is refused (422); with one, the SR withdraws the measurements."""
    result_id = seed_result(seeded)
    user = seeded.user("jsmith")
    with pytest.raises(InvalidReview):
        seeded.parts.service.reject(result_id, "   ", user, "10.0.0.5", seeded.clock.now())
    seeded.parts.service.reject(result_id, "motion artefact", user, "10.0.0.5", seeded.clock.now())
    report = read_report(_verified(seeded, result_id))
    assert report.review == ReviewStatus.REJECTED and report.values is None
    (entry,) = seeded.parts.audit.entries(action=AuditAction.REJECT)
    assert entry.details["reason"] == "motion artefact"


def test_superseded_and_unmeasured_results_cannot_be_reviewed(seeded: Seeded) -> None:
    """A result superseded by a newer study version, or one without measurements, is refused with 409."""
    old = seed_result(seeded)
    newer = new_version(seeded, old)
    failed = seed_result(seeded, outcome=Outcome.FAILED)
    no_stack = seed_result(seeded, outcome=Outcome.NO_SHORT_AXIS_CINE)
    user = seeded.user("jsmith")
    for result_id in (old, failed, no_stack):
        with pytest.raises(NotReviewable) as refused:
            seeded.parts.service.sign(result_id, user, "10.0.0.5", seeded.clock.now())
        assert http_status(refused.value) == 409
    assert [
        row.result_id
        for row in seeded.parts.store.worklist(WorklistFilter(statuses=(WorklistStatus.PENDING,)))
    ] == [newer]


def test_review_waits_for_the_draft_report(seeded: Seeded) -> None:
    """A measured result whose draft SR is not in the outbox yet cannot be reviewed (409)."""
    result_id = seed_result(seeded, draft=False)
    with pytest.raises(DraftNotAvailable) as refused:
        seeded.parts.service.sign(result_id, seeded.user("jsmith"), "10.0.0.5", seeded.clock.now())
    assert http_status(refused.value) == 409


def test_a_crash_before_the_outbox_is_finished_by_publish_pending(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If storing the verified SR fails after the review is recorded, a retry stores it with the same UID."""
    result_id = seed_result(seeded)

    def broken(*args: Any, **kwargs: Any) -> bool:
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(Outbox, "add", broken)
        review = seeded.parts.service.sign(result_id, seeded.user("jsmith"), "10.0.0.5", seeded.clock.now())
    assert not review.published
    assert seeded.parts.store.outbox_path(result_id, "verified_sr") is None
    assert seeded.parts.service.publish_pending(seeded.clock.now()) == 1
    assert str(_verified(seeded, result_id).SOPInstanceUID) == review.sr_sop_instance_uid
    assert seeded.parts.service.publish_pending(seeded.clock.now()) == 0


def test_audit_rows_cannot_be_changed_or_deleted(seeded: Seeded) -> None:
    """The database refuses UPDATE and DELETE on the audit table."""
    seeded.user("jsmith")
    for statement in ("UPDATE audit SET actor = 'someone else'", "DELETE FROM audit"):
        with pytest.raises(DBAPIError, match="append-only"), seeded.index.engine.begin() as connection:
            connection.execute(text(statement))
    assert [entry.actor for entry in seeded.parts.audit.entries()] == ["test"]


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("Jane Smith", "Smith^Jane"),
        ("Smith^Jane", "Smith^Jane"),
        ("Mary Ann Jones", "Jones^Mary Ann"),
        ("Cher", "Cher^"),
    ],
)
def test_full_names_become_dicom_person_names(typed: str, expected: str) -> None:
    """A user's full name is written to the SR as a PN value, family name first."""
    assert person_name(typed) == expected


def _rewrite_record(seeded: Seeded, result_id: str, change: Any) -> StackResult:
    """Rewrite a stored result's ``record`` column with ``change(record)``; return the result read back."""
    with seeded.index.engine.begin() as connection:
        record = connection.execute(select(results.c.record).where(results.c.id == result_id)).scalar_one()
        connection.execute(update(results).where(results.c.id == result_id).values(record=change(record)))
    stored = seeded.parts.store.result(result_id)
    assert stored is not None
    return stored.stack_result()


def _without_provenance(record: dict[str, Any]) -> dict[str, Any]:
    """A result's ``record`` as a node that did not record provenance wrote it."""
    return {key: value for key, value in record.items() if key not in ("basal_rule", MODEL_FILES)}


def test_a_stored_result_keeps_its_basal_rule_and_the_sha256_of_its_model_files(seeded: Seeded) -> None:
    """All three are read back from the index as measured; a row an older node wrote, which lacks them,
    reads back with none (None: not recorded), not with today's defaults."""
    result_id = seed_result(seeded)
    stored = seeded.parts.store.result(result_id)
    assert stored is not None
    measured = stored.stack_result()
    assert measured.basal_rule == BasalRule.PER_PHASE
    assert (measured.model.sha256, measured.model.companion_sha256) == (MODEL_SHA256, COMPANION_SHA256)
    assert measured.to_json()["basal_rule"] == "per_phase"
    older = _rewrite_record(
        seeded,
        result_id,
        _without_provenance,
    )
    assert older.basal_rule is None
    assert (older.model.name, older.model.version, older.model.sha256, older.model.companion_sha256) == (
        "lvseg-unet",
        "1.0.0",
        None,
        None,
    )


def test_the_worklist_row_names_the_basal_rule_and_the_sha256_of_the_model_files(seeded: Seeded) -> None:
    """``worklist list --json`` gives the rule and the model files' sha256 the result recorded; a row an
    older node wrote reads with none of them, and a rule only a newer node knows reads as none."""
    result_id = seed_result(seeded)
    (row,) = seeded.parts.store.worklist(WorklistFilter())
    assert row.to_json()["model"] == {
        "name": "lvseg-unet",
        "version": "1.0.0",
        "sha256": MODEL_SHA256,
        "companion_sha256": COMPANION_SHA256,
    }
    assert (row.basal_rule, row.to_json()["basal_rule"]) == (BasalRule.PER_PHASE, "per_phase")
    _rewrite_record(
        seeded,
        result_id,
        _without_provenance,
    )
    (older,) = seeded.parts.store.worklist(WorklistFilter())
    assert older.basal_rule is None and older.model is not None
    assert (older.model.version, older.model.sha256, older.model.companion_sha256) == ("1.0.0", None, None)
    _rewrite_record(seeded, result_id, lambda record: {**record, "basal_rule": "a_later_rule"})
    (newer,) = seeded.parts.store.worklist(WorklistFilter())
    assert newer.basal_rule is None and newer.to_json()["basal_rule"] is None


def test_a_result_a_newer_node_stored_with_fields_this_node_does_not_know_still_reads(seeded: Seeded) -> None:
    """Nodes sharing one index (PostgreSQL) are upgraded one at a time: what a newer node adds to a
    result, or to its model's identity, is left out here, and the rest reads as stored."""
    result_id = seed_result(seeded)
    newer = _rewrite_record(
        seeded,
        result_id,
        lambda record: {
            **record,
            "a_later_measure": 1.5,
            MODEL_FILES: {**record[MODEL_FILES], "a_later_file_sha256": "ff" * 32},
        },
    )
    assert (newer.edv_ml, newer.basal_rule, newer.model.sha256) == (150.0, BasalRule.PER_PHASE, MODEL_SHA256)
    later_rule = _rewrite_record(seeded, result_id, lambda record: {**record, "basal_rule": "a_later_rule"})
    assert later_rule.basal_rule is None, "a rule this node does not know reads as not recorded"
    assert later_rule.edv_ml == 150.0
