"""Domain exceptions. Each boundary maps them to its own answers: DIMSE statuses in
:mod:`node.dicom.status`, HTTP statuses in :mod:`node.web.app`, exit codes in :mod:`node.cli`."""

from __future__ import annotations


class NodeError(Exception):
    """Base of the node's own errors."""


class MalformedInstance(NodeError):
    """A received dataset cannot be parsed or lacks what every stored instance needs."""


class SopClassMismatch(NodeError):
    """The dataset's SOP Class UID is not the one the C-STORE request announced."""


class StudyMismatch(NodeError):
    """A STOW-RS request for one study (``/studies/{study}``) carried an instance of another study."""


class OutOfResources(NodeError):
    """The node cannot take the instance now (disk under its floor, or another limit)."""


class ConflictingInstance(NodeError):
    """A SOP Instance UID the node holds arrived again with other bytes (the first content is kept)."""


class ConfigError(NodeError):
    """Settings that do not validate; the CLI prints one line per problem and exits 2."""
