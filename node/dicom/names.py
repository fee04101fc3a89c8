"""Person names (PN, PS3.5 6.2) as the node shows them: one way everywhere, "Jane Smith"."""

from __future__ import annotations

from pydicom.valuerep import PersonName


def readable_name(value: str | None) -> str:
    """A PN value as a person reads it: given and middle names, then the family name, as received
    (``Smith^Jane`` and ``SMITH^JANE`` read ``Jane Smith`` and ``JANE SMITH``); a value without
    components is shown as it is; empty for none."""
    if not value:
        return ""
    name = PersonName(str(value))
    parts = [part for part in (name.name_prefix, name.given_name, name.middle_name, name.family_name) if part]
    return " ".join(parts) if parts else str(value).replace("^", " ").strip()
