"""Client-side conveniences: C-ECHO (PS3.7 9.1.5)."""

from __future__ import annotations

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.dicom.contexts import identified
from node.dicom.status import Status


class AssociationFailed(Exception):
    """The peer rejected, aborted or never answered the association request."""


def echo(host: str, port: int, calling_ae: str, called_ae: str, timeout_s: float = 10.0) -> Status | int:
    """Send one C-ECHO and return the peer's status (a plain int when the node has no name for it)."""
    ae = identified(AE(calling_ae))
    ae.add_requested_context(Verification)
    ae.acse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    association = ae.associate(host, port, ae_title=called_ae)
    if not association.is_established:
        raise AssociationFailed(f"association with {called_ae}@{host}:{port} was not established")
    try:
        response = association.send_c_echo()
    finally:
        association.release()
    if "Status" not in response:
        raise AssociationFailed("no C-ECHO response")
    value = int(response.Status)
    return Status(value) if value in Status._value2member_map_ else value
