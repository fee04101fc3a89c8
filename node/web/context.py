"""What the web app works with, built once by the node's wiring and passed to :func:`create_app`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from node.clock import Clock
from node.config import WebSettings
from node.dicomweb.stow import StowIngest
from node.metrics import NodeMetrics
from node.review.parts import ReviewParts
from node.web.media import StudyMedia


@dataclass(frozen=True)
class WebContext:
    """The web app's collaborators.

    Attributes
    ----------
    readiness
        Named checks for ``/readyz`` (e.g. ``index``, ``model``); each returns True when ready.
    node_name
        Shown in the page header (the node's AE title).
    stow
        What ``POST /dicomweb/studies`` stores through; None: the route answers 404.
    """

    settings: WebSettings
    parts: ReviewParts
    media: StudyMedia
    metrics: NodeMetrics
    clock: Clock
    readiness: Mapping[str, Callable[[], bool]] = field(default_factory=dict)
    node_name: str = "dicomnode"
    #: STOW-RS in (``/dicomweb/studies``); None where the app is built without the node's ingest.
    stow: StowIngest | None = None
