"""Pydantic models of what the browser sends: the forms and the worklist's query string."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from node.store.reviews import SortKey, WorklistFilter, WorklistStatus

_ISO_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_DICOM_DATE = re.compile(r"^\d{8}$")


class CsrfForm(BaseModel):
    """A form that only carries the CSRF token (logout, sign off)."""

    model_config = ConfigDict(extra="ignore")

    csrf_token: str = ""


class LoginForm(CsrfForm):
    """The login form."""

    username: str = Field(default="", max_length=200)
    password: str = Field(default="", max_length=1024)
    next: str = "/worklist"


class SignForm(CsrfForm):
    """Sign off, with an optional comment."""

    comment: str = Field(default="", max_length=1000)


class ReasonForm(CsrfForm):
    """Reject: the reason is checked by the review service (required, one place)."""

    reason: str = Field(default="", max_length=2000)


class AmendForm(ReasonForm):
    """Amend: new EDV and ESV in mL, and the reason."""

    edv_ml: float
    esv_ml: float


def _dicom_date(value: str | None) -> str | None:
    """``YYYY-MM-DD`` (an HTML date input) or ``YYYYMMDD`` as the DICOM DA the studies table holds."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    iso = _ISO_DATE.match(text)
    if iso:
        return "".join(iso.groups())
    if _DICOM_DATE.match(text):
        return text
    raise ValueError("a date is YYYY-MM-DD")


class WorklistQuery(BaseModel):
    """The worklist's filter and sort, from the query string."""

    model_config = ConfigDict(extra="ignore")

    status: WorklistStatus | Literal[""] = ""
    date_from: str | None = None
    date_to: str | None = None
    confidence_max: float | None = Field(default=None, ge=0, le=1)
    sort: SortKey = "received"
    order: Literal["asc", "desc"] = "desc"
    page: int = Field(default=1, ge=1, le=10_000)

    @field_validator("date_from", "date_to")
    @classmethod
    def _date(cls, value: str | None) -> str | None:
        return _dicom_date(value)

    @field_validator("confidence_max", mode="before")
    @classmethod
    def _blank(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def selection(self, page_size: int) -> WorklistFilter:
        """The store's filter for this query."""
        return WorklistFilter(
            statuses=(WorklistStatus(self.status),) if self.status else (),
            study_date_from=self.date_from,
            study_date_to=self.date_to,
            confidence_max=self.confidence_max,
            sort=self.sort,
            descending=self.order == "desc",
            limit=page_size + 1,  # one more tells whether there is a next page
            offset=(self.page - 1) * page_size,
        )
