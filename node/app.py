"""Application wiring: build every part from one ``Settings`` and run until a signal arrives."""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from types import FrameType

from node.clock import Clock, SystemClock
from node.config import Settings
from node.dicom.scp import StorageSCP
from node.logging import Pseudonymiser, get_logger
from node.store.index import Index
from node.store.ingest import Ingest
from node.store.spool import Spool

log = get_logger(__name__)


@dataclass
class Node:
    """The running node's parts."""

    settings: Settings
    index: Index
    spool: Spool
    scp: StorageSCP

    @classmethod
    def build(cls, settings: Settings, clock: Clock | None = None) -> Node:
        """Create the data directory, open the index and prepare the listener."""
        data_dir = settings.storage.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        spool = Spool(data_dir / "spool")
        removed = spool.clear_incoming()
        if removed:
            log.info("removed unacknowledged partial files", count=removed)
        index = Index.open(settings.storage.effective_database_url())
        pseudonymise = Pseudonymiser.from_key_file(data_dir / "log-key")
        ingest = Ingest(spool, index, clock or SystemClock(), settings.storage.min_free_mb * 1024 * 1024)
        scp = StorageSCP(settings.dicom, ingest, pseudonymise)
        return cls(settings=settings, index=index, spool=spool, scp=scp)

    def start(self) -> None:
        """Start serving."""
        self.scp.start()

    def stop(self) -> None:
        """Stop accepting, finish in-flight work within the grace period, close the index."""
        self.scp.stop(self.settings.dicom.shutdown_grace_s)
        self.index.close()
        log.info("stopped")

    def run_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop gracefully."""
        stopping = threading.Event()

        def _request_stop(signum: int, _frame: FrameType | None) -> None:
            log.info("stop requested", signal=signal.Signals(signum).name)
            stopping.set()

        signal.signal(signal.SIGTERM, _request_stop)
        signal.signal(signal.SIGINT, _request_stop)
        self.start()
        stopping.wait()
        self.stop()
