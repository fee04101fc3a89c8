"""The error a report builder raises when it refuses to build (never a half-built object)."""

from __future__ import annotations

from node.errors import NodeError


class ReportError(NodeError):
    """A report cannot be built: missing sign-off data, unusable sources, or an inconsistent request."""
