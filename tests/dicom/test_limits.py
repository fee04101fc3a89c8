"""The listener's resource limits against a running ``dicomnode serve``: each answers the way a PACS
expects (a transient association rejection, an ended association) and the listener carries on.

The per-study, backlog, instance-size and disk limits of the ingest itself are shown in
tests/store/test_ingest.py.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from io import BytesIO

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import AE, VerificationPresentationContexts
from pynetdicom.association import Association

from node.dicom.status import Status
from tests.support import NodeServer, receiver_only_env, synthetic_mr, wait_for

pytestmark = pytest.mark.integration

PER_CALLER = 2
MAX_INSTANCE_MB = 1

#: A-ASSOCIATE-RJ fields (PS3.8 9.3.4): rejected-transient, by the service provider's presentation
#: layer, local limit exceeded.
REJECTED_TRANSIENT = 2
SOURCE_PRESENTATION = 3
LOCAL_LIMIT_EXCEEDED = 2


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeServer]:
    """One node with small limits for the whole module (starting a node loads the model)."""
    from tests.support import free_port

    root = tmp_path_factory.mktemp("limits")
    server = NodeServer(
        data_dir=root / "data",
        log_path=root / "node.log",
        port=free_port(),
        extra_env={
            **receiver_only_env(),
            "DICOMNODE_DICOM__MAX_ASSOCIATIONS_PER_CALLER": str(PER_CALLER),
            "DICOMNODE_DICOM__MAX_INSTANCE_MB": str(MAX_INSTANCE_MB),
            "DICOMNODE_DICOM__MAX_PDU_SIZE": "16384",
            "DICOMNODE_WEB__ENABLED": "false",
        },
    ).start()
    yield server
    server.stop()


def _associate(server: NodeServer, calling_ae: str) -> Association:
    ae = AE(calling_ae)
    ae.requested_contexts = VerificationPresentationContexts
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae.associate("127.0.0.1", server.port, ae_title="DICOMNODE")


def _store_one(server: NodeServer) -> int:
    association = _associate(server, "AFTERWARDS")
    assert association.is_established
    try:
        dataset = pydicom.dcmread(BytesIO(synthetic_mr()))
        response = association.send_c_store(dataset)
        return int(response.Status)
    finally:
        association.release()


def test_a_caller_over_its_association_limit_is_rejected_as_transient(limited: NodeServer) -> None:
    """A calling AE holding its maximum of associations is rejected transiently; others are not."""
    held = [_associate(limited, "FLOOD") for _ in range(PER_CALLER)]
    try:
        assert all(association.is_established for association in held)
        extra = _associate(limited, "FLOOD")
        assert extra.is_rejected
        rejection = extra.acceptor.primitive
        assert rejection is not None
        assert (rejection.result, rejection.result_source, rejection.diagnostic) == (
            REJECTED_TRANSIENT,
            SOURCE_PRESENTATION,
            LOCAL_LIMIT_EXCEEDED,
        )
        other = _associate(limited, "OTHER")
        assert other.is_established
        other.release()
    finally:
        for association in held:
            association.release()
    again = _associate(limited, "FLOOD")
    assert again.is_established
    again.release()


def _oversized_instance() -> pydicom.Dataset:
    dataset = pydicom.dcmread(BytesIO(synthetic_mr()))
    side = 1024  # 2 MiB of 16-bit pixels, over the 1 MiB limit
    dataset.Rows = dataset.Columns = side
    dataset.PixelData = np.zeros((side, side), dtype=np.uint16).tobytes()
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return dataset


def test_an_instance_over_the_size_limit_ends_its_association_and_nothing_is_stored(
    limited: NodeServer,
) -> None:
    """An instance over the size limit is cut off before it is whole; the next one is stored."""
    before = limited.spool_files()
    association = _associate(limited, "BIGSENDER")
    assert association.is_established
    response = association.send_c_store(_oversized_instance())
    assert "Status" not in response  # no status: the node ended the association mid-transfer
    wait_for(lambda: not association.is_alive(), 30, "the association to end")
    assert limited.spool_files() == before
    wait_for(lambda: limited.log_events("association ended by a receive limit"), 30, "the limit's log line")
    assert _store_one(limited) == Status.SUCCESS


def test_a_pdu_declaring_an_absurd_length_is_dropped_before_it_is_read(limited: NodeServer) -> None:
    """A PDU header announcing ~4 GB gets the connection closed at once, without reading the bytes."""
    with socket.create_connection(("127.0.0.1", limited.port), timeout=30) as peer:
        a_associate_rq = 0x01
        peer.sendall(struct.pack(">BBL", a_associate_rq, 0, 0xFFFFFFF0) + bytes(1024))
        assert peer.recv(1) == b""  # closed by the node, not after 4 GB
    assert limited.is_running()
    assert _store_one(limited) == Status.SUCCESS
