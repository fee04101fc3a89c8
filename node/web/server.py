"""Serve the worklist app with uvicorn on a thread of the node process.

The listening socket is bound in :meth:`WebServer.start`, before the thread starts, so a port
conflict fails the node's start at once and connections made right after ``start()`` wait in the
backlog instead of being refused.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Mapping
from typing import Final

import uvicorn
from fastapi import FastAPI
from sqlalchemy import text
from starlette.types import ASGIApp

from node.clock import Clock
from node.config import Settings, WebSettings
from node.dicomweb.stow import StowIngest
from node.logging import get_logger
from node.metrics import NodeMetrics
from node.review.parts import ReviewParts
from node.store.index import Index
from node.web.app import create_app
from node.web.context import WebContext
from node.web.media import DEFAULT_CLASSES, StudyMedia

log = get_logger(__name__)

BACKLOG: Final = 64


def index_reachable(index: Index) -> Callable[[], bool]:
    """A readiness check: the index answers a trivial query."""

    def check() -> bool:
        with index.engine.connect() as connection:
            return bool(connection.execute(text("SELECT 1")).scalar_one() == 1)

    return check


def build_app(
    settings: Settings,
    parts: ReviewParts,
    metrics: NodeMetrics,
    clock: Clock,
    readiness: Mapping[str, Callable[[], bool]],
    classes: tuple[str, ...] = DEFAULT_CLASSES,
    stow: StowIngest | None = None,
) -> FastAPI:
    """The worklist app over the node's parts; registers the index-backed gauges on ``metrics``."""
    metrics.add_gauge_source(
        "dicomnode_results", "Current results by review status", "status", parts.store.counts
    )
    metrics.add_gauge_source(
        "dicomnode_deliveries", "Outgoing (object, destination) pairs by state", "state", parts.outbox.counts
    )
    metrics.add_gauge_source(
        "dicomnode_dead_letters",
        "Dead-lettered (object, destination) pairs by destination",
        "destination",
        parts.outbox.dead_letters,
    )
    context = WebContext(
        settings=settings.web,
        parts=parts,
        media=StudyMedia(parts.index, parts.store, settings.storage.data_dir, classes),
        metrics=metrics,
        clock=clock,
        readiness=readiness,
        node_name=settings.dicom.ae_title,
        stow=stow,
    )
    return create_app(context)


class WebServer:
    """uvicorn on a daemon thread: :meth:`start` binds and serves, :meth:`stop` finishes and joins."""

    def __init__(self, app: ASGIApp, settings: WebSettings) -> None:
        self._settings = settings
        self._config = uvicorn.Config(
            app,
            log_config=None,  # keep the node's structlog configuration
            access_log=False,  # study views are audited instead; URLs are not logged
            proxy_headers=True,
            forwarded_allow_ips=list(settings.trusted_proxies),
            server_header=False,
            lifespan="off",
        )
        self._server = uvicorn.Server(self._config)
        self._socket: socket.socket | None = None
        self._port = 0
        self._thread: threading.Thread | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        parts: ReviewParts,
        metrics: NodeMetrics,
        clock: Clock,
        readiness: Mapping[str, Callable[[], bool]],
        classes: tuple[str, ...] = DEFAULT_CLASSES,
        stow: StowIngest | None = None,
    ) -> WebServer:
        """The server of the node's worklist and STOW-RS (see :func:`build_app`)."""
        return cls(build_app(settings, parts, metrics, clock, readiness, classes, stow), settings.web)

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the one picked for port 0); 0 before start."""
        return self._port

    def start(self) -> None:
        """Bind ``web.host:web.port`` and serve on a daemon thread."""
        family = socket.AF_INET6 if ":" in self._settings.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self._settings.host, self._settings.port))
            listener.listen(BACKLOG)
        except OSError:
            listener.close()
            raise
        self._socket = listener
        self._port = int(listener.getsockname()[1])
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [listener]}, name="web", daemon=True
        )
        self._thread.start()
        log.info("worklist listening", host=self._settings.host, port=self.port)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop accepting, let requests in flight finish (up to ``timeout_s``), close the socket."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(timeout=1.0)
        if self._socket is not None:
            self._socket.close()
        self._thread = None
