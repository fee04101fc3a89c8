"""structlog configured once: JSON lines (readable on a TTY), stdlib loggers through the same chain.

No patient data is written: a processor drops identifying keys and replaces identifiers the node
needs to correlate (study, patient) by a keyed hash before anything is rendered; UIDs quoted inside
messages (other libraries' warnings, tracebacks) are redacted last.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pydicom.config
import structlog
from pynetdicom import _config as pynetdicom_config

from node.config import LoggingSettings

#: Keys that must never be written; their values are dropped, not hashed.
PHI_KEYS = frozenset(
    {
        "patient_name",
        "patient_id",
        "patient_birth_date",
        "birth_date",
        "accession_number",
        "study_instance_uid",
        "series_instance_uid",
        "sop_instance_uid",
        "referring_physician",
        "institution_name",
    }
)


class Pseudonymiser:
    """Keyed hash of identifiers, so logs can be correlated without revealing them."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def from_key_file(cls, path: Path) -> Pseudonymiser:
        """Read the node's log key, creating it (mode 0600) on first use."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls(path.read_bytes())
        key = secrets.token_bytes(32)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
            handle.flush()
            os.fsync(handle.fileno())
        return cls(key)

    def __call__(self, value: str) -> str:
        digest = hmac.new(self._key, value.encode("utf-8", "replace"), hashlib.sha256)
        return digest.hexdigest()[:16]


def drop_phi(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: remove every key that could carry patient data."""
    for key in PHI_KEYS.intersection(event_dict):
        del event_dict[key]
    return event_dict


#: A UID of five or more components (PS3.5 9.1) in a text: standing alone, or as a path component or
#: file name (``.../1.2.840.113619.2.1.3.dcm``); whatever follows it is no word character and no
#: further component.
_UID_IN_TEXT = re.compile(r"(?<![\w.])[0-2](?:\.\d+){4,}(?!\w)(?!\.\d)")
#: UIDs defined by the standard (SOP classes, transfer syntaxes) identify nobody and stay readable.
_STANDARD_UID_ROOT = "1.2.840.10008."


def _redact_uid(match: re.Match[str]) -> str:
    uid = match.group(0)
    return uid if uid.startswith(_STANDARD_UID_ROOT) else "<uid>"


def redact_uids(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: replace instance UIDs inside text values by ``<uid>``.

    Messages of other libraries (pynetdicom warns "Non-conformant 'Affected SOP Instance UID' value
    ...") and rendered tracebacks may quote study, series or instance UIDs that ``drop_phi`` cannot
    see, because they are not separate keys.
    """
    for key, value in event_dict.items():
        if isinstance(value, str) and "." in value:
            event_dict[key] = _UID_IN_TEXT.sub(_redact_uid, value)
    return event_dict


def configure_logging(settings: LoggingSettings) -> None:
    """Configure structlog and the stdlib root logger once for the process."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        drop_phi,
    ]
    use_console = settings.format == "console" or (settings.format == "auto" and sys.stderr.isatty())
    renderer: Any = structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_uids,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    # pynetdicom logs dataset contents at DEBUG; keep it at its own, higher level by default.
    logging.getLogger("pynetdicom").setLevel(settings.pynetdicom_level)
    # pynetdicom's standard event handlers write every PDU and DIMSE message out for its INFO and
    # DEBUG lines, whatever the level (and copy each received data set to say that it is present);
    # they are bound to associations made from here on, and only where those lines are kept.
    pynetdicom_config.LOG_HANDLER_LEVEL = (
        "standard" if logging.getLogger("pynetdicom").isEnabledFor(logging.INFO) else "none"
    )
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    # highdicom narrates every module it copies into a report at INFO: detail, not news.
    logging.getLogger("highdicom").setLevel(logging.DEBUG if settings.level == "DEBUG" else logging.WARNING)
    # dicomweb-client names studies and instances by UID in its lines, and retrying (under it) logs a
    # traceback per failed request; the delivery records and the node's own lines say what happened.
    for chatty in ("dicomweb_client", "retrying"):
        logging.getLogger(chatty).setLevel(logging.DEBUG if settings.level == "DEBUG" else logging.CRITICAL)
    # pydicom's value validation warns with the offending value, which may be a UID or a name.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger named after its module."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
