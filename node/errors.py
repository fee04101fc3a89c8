"""Domain exceptions. Each carries the DICOM status a protocol boundary answers with."""

from __future__ import annotations

from node.status import Status


class NodeError(Exception):
    """Base of the node's own errors; ``status`` is what a DIMSE boundary answers."""

    status: Status = Status.PROCESSING_FAILURE


class MalformedInstance(NodeError):
    """A received dataset cannot be parsed or lacks what every stored instance needs."""

    status = Status.CANNOT_UNDERSTAND


class SopClassMismatch(NodeError):
    """The dataset's SOP Class UID is not the one the C-STORE request announced."""

    status = Status.DATASET_DOES_NOT_MATCH_SOP_CLASS


class OutOfResources(NodeError):
    """The node cannot take the instance now (disk under its floor, or another limit)."""

    status = Status.OUT_OF_RESOURCES


class ConflictingInstance(NodeError):
    """A SOP Instance UID the node holds arrived again with other bytes (the first content is kept)."""

    status = Status.DUPLICATE_SOP_INSTANCE


class ConfigError(NodeError):
    """Settings that do not validate; the CLI prints one line per problem and exits 2."""
