"""Waiting in the main thread for SIGTERM or SIGINT, whichever thread the kernel delivers it to.

A process-directed signal may land on any thread that does not block it (an association thread, a
background loop, a native ONNX Runtime or BLAS worker). CPython then runs the Python handler only
when the main thread next executes bytecode, so a main thread blocked on ``Event.wait()`` never
wakes up. The C-level handler always writes the signal number to the wakeup file descriptor,
whichever thread it ran on, so the main thread waits on that instead.
"""

from __future__ import annotations

import os
import signal
from types import FrameType, TracebackType
from typing import Any

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """Python-level handler; the wakeup file descriptor carries the signal number."""


class StopSignals:
    """Context manager: handle SIGTERM and SIGINT from entry on; :meth:`wait` blocks until one arrives.

    Enter it before starting threads that must be stopped gracefully, so that a signal arriving at
    any time afterwards is never handled by the default action (immediate termination).
    """

    def __init__(self) -> None:
        self._read_fd = -1
        self._write_fd = -1
        self._previous_fd = -1
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._previous = {signum: signal.signal(signum, _ignore) for signum in STOP_SIGNALS}
        return self

    def wait(self) -> signal.Signals:
        """Block until SIGTERM or SIGINT has been received; return which."""
        while True:
            for number in os.read(self._read_fd, 64):
                if number in STOP_SIGNALS:
                    return signal.Signals(number)

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._read_fd)
        os.close(self._write_fd)
