"""Logging processors: no patient data reaches a log line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.exc import SQLAlchemyError

from node.logging import drop_phi, redact_uids
from node.store.index import Index
from node.store.schema import outbox


def test_drop_phi_removes_identifying_keys() -> None:
    """Keys that may carry patient data are dropped; other keys stay."""
    event: dict[str, Any] = {
        "event": "instance stored",
        "patient_name": "Doe^Jane",
        "patient_id": "12345",
        "sop_instance_uid": "1.2.3.4.5",
        "study": "0eb8601907b99153",
    }
    assert drop_phi(None, "info", event) == {"event": "instance stored", "study": "0eb8601907b99153"}


def test_redact_uids_hides_instance_uids_quoted_in_messages() -> None:
    """An instance UID inside a message (as pynetdicom writes it) is replaced by ``<uid>``."""
    uid = "2.16.124.113543.6006.99.06478339416823747950"
    event: dict[str, Any] = {
        "event": f"Non-conformant 'Affected SOP Instance UID' value '{uid}'",
        "exception": "ValueError: bad value 1.3.6.1.4.1.9590.100.1.2.123456789",
    }
    redacted = redact_uids(None, "warning", event)
    assert redacted["event"] == "Non-conformant 'Affected SOP Instance UID' value '<uid>'"
    assert redacted["exception"] == "ValueError: bad value <uid>"


def test_redact_uids_keeps_standard_uids_addresses_and_versions() -> None:
    """DICOM-defined UIDs, IP addresses, ports and version numbers stay readable."""
    event: dict[str, Any] = {
        "event": "context 1.2.840.10008.5.1.4.1.1.4 with 1.2.840.10008.1.2.1",
        "peer": "127.0.0.1:4242",
        "version": "1.0.0",
        "count": 3,
    }
    assert redact_uids(None, "info", dict(event)) == event


def test_redact_uids_hides_uids_inside_spool_paths() -> None:
    """A UID as a folder or as a file name before ``.dcm`` is redacted too."""
    study, sop = "1.3.6.1.4.1.9328.50.1.12345", "1.3.6.1.4.1.9328.50.1.0000678"
    event: dict[str, Any] = {"exception": f"OSError: cannot open spool/{study}/{sop}.dcm (x.1.2.3.4.5.6)"}
    redacted = redact_uids(None, "error", event)
    assert redacted["exception"] == "OSError: cannot open spool/<uid>/<uid>.dcm (x.1.2.3.4.5.6)"


def test_index_errors_never_carry_their_parameters(tmp_path: Path) -> None:
    """An index error's text (which lands in a logged traceback) names no bound value."""
    index = Index.open(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    secret = "spool/1.2.3.4.5/ACQUIRED-AT-0815.dcm"
    try:
        with index.engine.begin() as connection:
            connection.execute(insert(outbox).values(id=1, sop_instance_uid="1.2.3.4.5"))
            connection.execute(
                insert(outbox).values(id=1, sop_instance_uid="1.2.3.4.6", path=secret, kind="sc")
            )
    except SQLAlchemyError as error:
        text = str(error)
    else:
        raise AssertionError("the duplicate insert was accepted")
    finally:
        index.close()
    assert "ACQUIRED-AT-0815" not in text and "parameters hidden" in text


#: Configures logging with pynetdicom at the given level, makes an association and prints the names
#: of the handlers pynetdicom bound to its DIMSE and PDU events.
_BOUND_HANDLERS = """
import sys
from pynetdicom import AE, evt
from pynetdicom.association import Association
from node.config import LoggingSettings
from node.logging import configure_logging

configure_logging(LoggingSettings(pynetdicom_level=sys.argv[1], format="json"))
association = Association(AE(), mode="requestor")
for event in (evt.EVT_DIMSE_RECV, evt.EVT_DIMSE_SENT, evt.EVT_PDU_RECV, evt.EVT_PDU_SENT):
    for handler, _ in association.get_handlers(event):
        print(handler.__name__)
"""


@pytest.mark.parametrize(
    ("level", "bound"),
    [
        ("WARNING", set()),
        ("ERROR", set()),
        ("INFO", {"standard_dimse_recv_handler", "standard_pdu_sent_handler"}),
        ("DEBUG", {"standard_dimse_recv_handler", "standard_pdu_sent_handler"}),
    ],
)
def test_pynetdicom_writes_messages_out_only_where_its_lines_are_kept(level: str, bound: set[str]) -> None:
    """pynetdicom's standard handlers (which format every PDU and DIMSE message, whatever the level)
    are bound only when pynetdicom logs at INFO or DEBUG."""
    done = subprocess.run(
        [sys.executable, "-c", _BOUND_HANDLERS, level], capture_output=True, text=True, timeout=60, check=True
    )
    handlers = set(done.stdout.split())
    assert handlers >= bound
    assert bool(handlers) == bool(bound)
