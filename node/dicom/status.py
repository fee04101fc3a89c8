"""Every DIMSE status the node sends or expects, by name (PS3.7 Annex C and PS3.4 B.2.3), and the
one place the node's errors become DIMSE statuses (:func:`dimse_status`); whether a peer's answer
means "stored" is pynetdicom's status category (:func:`stored`), not a hand list.
"""

from __future__ import annotations

from enum import IntEnum

from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

from node.errors import (
    ConflictingInstance,
    MalformedInstance,
    OutOfResources,
    SopClassMismatch,
    StudyMismatch,
)


class Status(IntEnum):
    """DIMSE status codes used by the node; never write a bare number."""

    SUCCESS = 0x0000
    #: C-STORE warning: coercion of data elements (PS3.4 Table B.2-1).
    WARNING_COERCION = 0xB000
    #: Refused: Out of Resources (PS3.4 Table B.2-1); sent when the disk is below its floor.
    OUT_OF_RESOURCES = 0xA700
    #: Error: Data Set does not match SOP Class (PS3.4 Table B.2-1).
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    #: Error: Cannot understand (PS3.4 Table B.2-1, 0xC000-0xCFFF); sent for unparseable data.
    CANNOT_UNDERSTAND = 0xC000
    #: Processing failure (PS3.7 C.4.1.1.1); an unexpected failure inside the node.
    PROCESSING_FAILURE = 0x0110
    #: Duplicate SOP Instance (PS3.7 C.4.1.1.3): sent when a held SOP Instance UID arrives again with
    #: other content; the first content is kept.
    DUPLICATE_SOP_INSTANCE = 0x0111
    #: SOP Class not supported (PS3.7 C.4.1.1.3); a STOW-RS Failure Reason (PS3.18 Table 10.5.3-2).
    SOP_CLASS_NOT_SUPPORTED = 0x0122


#: The answer to each refusal the storage SCP can meet; anything else is a processing failure.
_REFUSALS: dict[type[Exception], Status] = {
    MalformedInstance: Status.CANNOT_UNDERSTAND,
    SopClassMismatch: Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OutOfResources: Status.OUT_OF_RESOURCES,
    ConflictingInstance: Status.DUPLICATE_SOP_INSTANCE,
    # PS3.18 names no Failure Reason for it; Orthanc answers the same (with 409 Conflict).
    StudyMismatch: Status.PROCESSING_FAILURE,
}


def dimse_status(error: Exception) -> Status:
    """The C-STORE status that answers ``error``."""
    for kind, status in _REFUSALS.items():
        if isinstance(error, kind):
            return status
    return Status.PROCESSING_FAILURE


def stored(status: int) -> bool:
    """Whether a C-STORE response status means the peer stored the instance: Success, or a Warning
    (PS3.4 B.2.3: coercion, elements discarded, data set does not match SOP class; stored all)."""
    return code_to_category(status) in (STATUS_SUCCESS, STATUS_WARNING)
