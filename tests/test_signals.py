"""StopSignals: the main thread learns of SIGTERM/SIGINT whichever thread the signal lands on."""

from __future__ import annotations

import os
import signal
import threading

from node.signals import StopSignals


def test_signal_to_the_process_is_returned_by_wait() -> None:
    """A SIGTERM sent to the process makes ``wait`` return SIGTERM."""
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.wait() is signal.SIGTERM


def test_signal_delivered_to_another_thread_wakes_the_main_thread() -> None:
    """A SIGINT delivered to a non-main thread (blocked on an event) ends ``wait`` in the main thread."""
    release = threading.Event()
    ready = threading.Event()

    def idle() -> None:
        ready.set()
        release.wait(timeout=60)

    thread = threading.Thread(target=idle)
    with StopSignals() as signals:
        thread.start()
        assert ready.wait(timeout=10)
        assert thread.ident is not None
        signal.pthread_kill(thread.ident, signal.SIGINT)
        assert signals.wait() is signal.SIGINT
    release.set()
    thread.join(timeout=10)


def test_previous_handlers_are_restored() -> None:
    """Leaving the context restores the handlers that were installed before it."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    with StopSignals():
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
    assert {signum: signal.getsignal(signum) for signum in before} == before
