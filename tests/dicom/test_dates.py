"""The lenient DA / TM / DT reading over pydicom.valuerep (node.dicom.dates)."""

from __future__ import annotations

from datetime import date, datetime, time

import pytest

from node.dicom.dates import date_of, datetime_of, seconds_of_day, time_of
from node.web.present import dicom_date


@pytest.mark.parametrize(
    ("value", "expected"),
    [("20120131", date(2012, 1, 31)), ("2012.01.31", date(2012, 1, 31)), ("20120000", None), ("", None),
     (None, None), ("2012013", None), ("garbage!", None)],
)  # fmt: skip
def test_a_date_that_is_no_calendar_date_is_none(value: object, expected: date | None) -> None:
    """Sunnybrook's 20120000 and other invalid DA values read as None, never an error."""
    assert date_of(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("101010", time(10, 10, 10)), ("101010.5", time(10, 10, 10, 500000)), ("10:10:10", time(10, 10, 10)),
     ("1010", time(10, 10)), ("25", None), ("abc", None), ("", None)],
)  # fmt: skip
def test_times_in_the_current_and_the_retired_form(value: str, expected: time | None) -> None:
    """TM as PS3.5 writes it, the retired ACR-NEMA HH:MM:SS too; no time of day is None."""
    assert time_of(value) == expected


def test_a_datetime_drops_its_offset_and_an_invalid_one_is_none() -> None:
    """DT with a UTC offset compares on the scanner's clock; an impossible date is None."""
    assert datetime_of("20120131101010.5+0100") == datetime(2012, 1, 31, 10, 10, 10, 500000)
    assert datetime_of("20120000101010") is None
    assert seconds_of_day(time(1, 2, 3, 500000)) == pytest.approx(3723.5)


def test_the_worklist_shows_an_invalid_date_as_unknown() -> None:
    """A PN-less, date-less or invalid-dated study shows an en dash or 'unknown', never 0000-00-00."""
    assert (dicom_date("20250301"), dicom_date("00000000"), dicom_date(None)) == (
        "2025-03-01",
        "unknown",
        "–",
    )
