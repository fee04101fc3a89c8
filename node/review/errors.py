"""Why a review was refused (the web app answers each with an HTTP status, :mod:`node.web.app`)."""

from __future__ import annotations

from node.errors import NodeError


class ReviewError(NodeError):
    """A review action was refused."""


class NotPermitted(ReviewError):
    """Only an enabled radiologist may sign off, amend or reject."""


class ResultNotFound(ReviewError):
    """No result with that id."""


class NotReviewable(ReviewError):
    """The result is superseded by a newer version, or has no measurements to review."""


class AlreadyReviewed(ReviewError):
    """The result already has a sign-off, amendment or rejection (the first one stands)."""


class DraftNotAvailable(ReviewError):
    """The result's draft SR is not in the outbox yet, so there is nothing to verify."""


class InvalidReview(ReviewError):
    """Amended values out of range, or a missing reason."""
