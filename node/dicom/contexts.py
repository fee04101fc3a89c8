"""Presentation contexts the node accepts (PS3.4 Annex B storage, PS3.5 Section 10 transfer syntaxes)."""

from __future__ import annotations

import uuid
from typing import TypeVar

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

#: Every transfer syntax accepted for storage; instances are kept as received, never re-encoded.
ACCEPTED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
)


#: The node's own identity in every association it opens or accepts (PS3.7 D.3.3.2), not its library's.
#: A UUID-derived UID (PS3.5 B.2): the node has no registered root of its own.
IMPLEMENTATION_CLASS_UID = "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "dicomnode:implementation-class").int)
IMPLEMENTATION_VERSION_NAME = "DICOMNODE_1"


_AE = TypeVar("_AE", bound=AE)


def identified(ae: _AE) -> _AE:
    """``ae`` naming the node as the implementation (class UID and version name)."""
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    return ae


def storage_contexts() -> list[PresentationContext]:
    """Verification plus every storage SOP class pynetdicom knows, with every accepted syntax."""
    contexts = [build_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            contexts.append(build_context(context.abstract_syntax, list(ACCEPTED_TRANSFER_SYNTAXES)))
    return contexts
