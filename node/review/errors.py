"""Why a review was refused; each error carries the HTTP status the web boundary answers with."""

from __future__ import annotations

from http import HTTPStatus

from node.errors import NodeError


class ReviewError(NodeError):
    """A review action was refused; ``http_status`` says how the web app answers."""

    http_status: HTTPStatus = HTTPStatus.BAD_REQUEST


class NotPermitted(ReviewError):
    """Only an enabled radiologist may sign off, amend or reject."""

    http_status = HTTPStatus.FORBIDDEN


class ResultNotFound(ReviewError):
    """No result with that id."""

    http_status = HTTPStatus.NOT_FOUND


class NotReviewable(ReviewError):
    """The result is superseded by a newer version, or has no measurements to review."""

    http_status = HTTPStatus.CONFLICT


class AlreadyReviewed(ReviewError):
    """The result already has a sign-off, amendment or rejection (the first one stands)."""

    http_status = HTTPStatus.CONFLICT


class DraftNotAvailable(ReviewError):
    """The result's draft SR is not in the outbox yet, so there is nothing to verify."""

    http_status = HTTPStatus.CONFLICT


class InvalidReview(ReviewError):
    """Amended values out of range, or a missing reason."""

    http_status = HTTPStatus.UNPROCESSABLE_ENTITY
