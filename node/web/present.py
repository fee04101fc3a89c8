"""How values read on the pages: units, dates, names, delivery summaries (Jinja2 filters)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from node.dicom.dates import date_of
from node.dicom.names import readable_name
from node.domain import DeliveryState, OutboxKind, QcStatus, basal_rule_words
from node.inference.qc import QcFlag, qc_statement, qc_status
from node.inference.qc import flag_text as _flag_text

#: Worst first: the summary names the state that needs attention.
_DELIVERY_ORDER = (DeliveryState.DEAD, DeliveryState.SENDING, DeliveryState.PENDING, DeliveryState.DELIVERED)


def number(value: float | None, unit: str = "", decimals: int = 1) -> str:
    """``123.4 mL``; an en dash when there is no value."""
    if value is None:
        return "–"
    text = f"{value:.{decimals}f}"
    return f"{text} {unit}".strip()


def dicom_date(value: str | None) -> str:
    """A DA value as ``YYYY-MM-DD``; ``unknown`` where it is no calendar date (``00000000``), an en
    dash where there is none."""
    if not value:
        return "–"
    parsed = date_of(value)
    return parsed.isoformat() if parsed is not None else "unknown"


def person_name(value: str | None) -> str:
    """A PN value as the page shows every person: ``Jane Smith`` (:func:`node.dicom.names.readable_name`)."""
    return readable_name(value) or "–"


def timestamp(value: datetime | None) -> str:
    """UTC time to the minute."""
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "–"


def flag_text(flag: str) -> str:
    """The plain-words explanation of a QC flag."""
    return _flag_text(flag)


def check_reasons(flags: Sequence[str]) -> list[str]:
    """The short plain-words reasons of the flags that make a result ``check`` (notes left out)."""
    reasons = []
    for flag in flags:
        if qc_status((flag,)) == QcStatus.CHECK:
            known = QcFlag._value2member_map_.get(flag)
            reasons.append(known.info.meaning if isinstance(known, QcFlag) else flag.replace("_", " "))
    return reasons


#: What each outbox object is called on the page.
KIND_NAMES: Mapping[str, str] = {
    OutboxKind.DRAFT_SR: "Draft SR (unverified)",
    OutboxKind.SC: "Secondary capture (unverified)",
    OutboxKind.SEG: "Segmentation",
    OutboxKind.VERIFIED_SR: "Verified SR",
    OutboxKind.VERIFIED_SC: "Verified secondary capture",
}


def kind_name(kind: str) -> str:
    """The readable name of an outbox kind."""
    return KIND_NAMES.get(kind, kind.replace("_", " "))


def delivery_summary(counts: Mapping[str, int]) -> tuple[str, str]:
    """(text, css class) summarising a result's deliveries, e.g. ``delivered 3/3``."""
    total = sum(counts.values())
    if total == 0:
        return "not queued", "muted"
    delivered = counts.get(DeliveryState.DELIVERED, 0)
    for state in _DELIVERY_ORDER:
        if counts.get(state):
            if state == DeliveryState.DELIVERED:
                return f"delivered {delivered}/{total}", "ok"
            if state == DeliveryState.DEAD:
                return f"failed {counts[state]}/{total}", "bad"
            return f"{delivered}/{total} delivered, sending", "warn"
    return "–", "muted"


def status_class(status: str) -> str:
    """A CSS class per worklist status."""
    return {
        "pending": "warn",
        "signed off": "ok",
        "amended": "ok",
        "rejected": "bad",
        "failed": "bad",
    }.get(status, "muted")


FILTERS: Mapping[str, Any] = {
    "number": number,
    "dicom_date": dicom_date,
    "person_name": person_name,
    "timestamp": timestamp,
    "flag_text": flag_text,
    "basal_rule": basal_rule_words,
    "check_reasons": check_reasons,
    "kind_name": kind_name,
    "qc_statement": qc_statement,
    "status_class": status_class,
}
