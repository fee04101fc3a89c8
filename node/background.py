"""Background loops (assembler, workers, publisher, sender): each a step repeated until stopped.

A step returns True when it did work (run it again at once) and False when idle (wait for the poll
interval, or until another loop signals new work).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from node.clock import monotonic
from node.logging import get_logger

log = get_logger(__name__)

Step = Callable[[], bool]


class BackgroundLoops:
    """Runs named steps on daemon threads until :meth:`stop`."""

    def __init__(self, poll_seconds: float) -> None:
        self._poll = poll_seconds
        self._steps: list[tuple[str, Step]] = []
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    def add(self, name: str, step: Step) -> None:
        """Register a loop (before :meth:`start`)."""
        self._steps.append((name, step))

    def start(self) -> None:
        """Start every loop on its own thread."""
        self._threads = [
            threading.Thread(target=self._run, args=(name, step), name=name, daemon=True)
            for name, step in self._steps
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout_s: float) -> None:
        """Ask every loop to stop after its current step; wait up to ``timeout_s`` for all of them."""
        self._stopping.set()
        self._wake.set()
        deadline = monotonic() + timeout_s
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - monotonic()))

    def _run(self, name: str, step: Step) -> None:
        while not self._stopping.is_set():
            try:
                busy = step()
            except Exception:
                log.exception("background step failed", loop=name)
                busy = False
            if busy:
                self._wake.set()
            else:
                self._wake.wait(self._poll)
                self._wake.clear()
