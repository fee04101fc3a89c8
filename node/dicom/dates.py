"""DICOM dates and times (DA, TM, DT) as :mod:`pydicom.valuerep` parses them, leniently.

Real-world headers break PS3.5: Sunnybrook's Study Date is ``20120000``, older scanners write the
retired ACR-NEMA time ``HH:MM:SS``. Here such a value is read where it can be (the colons dropped)
and is None where it is no calendar date or time, never an error: the node keeps the instance and
leaves the value out of what it orders or shows.
"""

from __future__ import annotations

from datetime import date, datetime, time
from typing import Final

from pydicom.valuerep import DA, DT, TM

#: Digits of a DA value (YYYYMMDD), the date part of a DT value.
DA_DIGITS: Final = 8
#: Digits of a whole TM value before its fraction (HHMMSS).
TM_DIGITS: Final = 6


def _text(value: object) -> str:
    return str(value).strip() if value is not None else ""


def date_of(value: object) -> date | None:
    """A DA value as a date; None when empty or no calendar date."""
    text = _text(value)
    try:
        parsed = DA(text) if text else None
    except ValueError:
        return None
    return date(parsed.year, parsed.month, parsed.day) if parsed is not None else None


def time_of(value: object) -> time | None:
    """A TM value (``HHMMSS.FFFFFF`` or a leading part of it; the retired ``HH:MM:SS`` too) as a time;
    None when empty or no time of day."""
    text = _text(value).replace(":", "")
    try:
        parsed = TM(text) if text else None
    except ValueError:
        return None
    return time(parsed.hour, parsed.minute, parsed.second, parsed.microsecond) if parsed is not None else None


def datetime_of(value: object) -> datetime | None:
    """A DT value (``YYYYMMDDHHMMSS.FFFFFF&ZZXX``) as a naive datetime, its UTC offset dropped (the
    node compares acquisitions of one study, on one scanner's clock); None when empty or invalid."""
    text = _text(value)
    try:
        parsed = DT(text) if text else None
    except ValueError:
        return None
    if parsed is None:
        return None
    return datetime(
        parsed.year, parsed.month, parsed.day, parsed.hour, parsed.minute, parsed.second, parsed.microsecond
    )


def seconds_of_day(moment: time) -> float:
    """Seconds since midnight."""
    return moment.hour * 3600 + moment.minute * 60 + moment.second + moment.microsecond / 1e6
