"""Load what the study page shows from the node's files: the secondary capture and the contoured cine.

A result never changes once recorded, so rendered pictures are cached by result id (a few, in memory).
"""

from __future__ import annotations

import itertools
import statistics
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import pydicom

from node.domain import OutboxKind
from node.images.pixels import read_cell
from node.logging import get_logger
from node.pipeline.grid import load_plan
from node.pipeline.stacks import StackPlan
from node.reports.errors import ReportError
from node.reports.sources import mid_ventricular_slice
from node.store.index import Index
from node.store.labels import decode_labels
from node.store.results import ResultRecord
from node.store.reviews import ReviewStore
from node.web.images import DEFAULT_FRAME_MS, cine_gif, dataset_png

log = get_logger(__name__)

#: The pictures the study page can show, the one made last first (verified after sign-off).
SECONDARY_CAPTURES: Final = (OutboxKind.VERIFIED_SC, OutboxKind.SC)
#: Label values of the released model (background, RV, LV myocardium, LV blood pool).
DEFAULT_CLASSES: Final = ("background", "right_ventricle", "lv_myocardium", "lv_blood_pool")
CACHE_ENTRIES: Final = 16


class _Cache:
    def __init__(self, entries: int) -> None:
        self._items: OrderedDict[str, bytes | None] = OrderedDict()
        self._entries = entries
        self._lock = threading.Lock()

    def get(self, key: str, make: Callable[[], bytes | None]) -> bytes | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._entries:
                self._items.popitem(last=False)
        return value


class StudyMedia:
    """Pictures of a result, rendered from the spool, the results spool and the outbox."""

    def __init__(
        self,
        index: Index,
        store: ReviewStore,
        data_dir: Path,
        classes: tuple[str, ...] = DEFAULT_CLASSES,
    ) -> None:
        self._index = index
        self._store = store
        self._spool = data_dir / "spool"
        self._results = data_dir / "results"
        self._outbox = data_dir / "outbox"
        self._blood = classes.index("lv_blood_pool")
        self._myocardium = classes.index("lv_myocardium")
        self._cache = _Cache(CACHE_ENTRIES)

    def secondary_capture_png(self, result_id: str) -> bytes | None:
        """The result's secondary capture last made for PACS (from the outbox: the verified one after
        sign-off, else the draft) as PNG; None when there is none yet."""
        found = next(
            (
                (kind, path)
                for kind in SECONDARY_CAPTURES
                if (path := self._store.outbox_path(result_id, kind))
            ),
            None,
        )
        if found is None:
            return None
        kind, path = found
        return self._cache.get(
            f"{kind}:{result_id}", lambda: dataset_png(pydicom.dcmread(self._outbox / path))
        )

    def cine_gif(self, result: ResultRecord) -> bytes | None:
        """The mid-ventricular slice over all phases with predicted contours; None when unavailable."""
        if result.labels_path is None or not result.measured:
            return None
        return self._cache.get(f"cine:{result.id}", lambda: self._render_cine(result))

    def _render_cine(self, result: ResultRecord) -> bytes | None:
        labels = decode_labels((self._results / str(result.labels_path)).read_bytes())
        plan = self._plan(result, labels)
        if plan is None:
            log.warning(
                "cine not rendered: the stored images no longer match the result", result_id=result.id
            )
            return None
        try:
            # The slice the secondary capture shows: one rule for both.
            index = mid_ventricular_slice(result.stack_result())
        except ReportError:
            return None
        frames: list[npt.NDArray[np.float32] | None] = [
            None if cell is None else read_cell(cell, self._spool) for cell in plan.grid[index]
        ]
        return cine_gif(
            frames,
            labels[index],
            blood_pool=self._blood,
            myocardium=self._myocardium,
            spacing_mm=plan.pixel_spacing,
            frame_ms=_frame_ms(plan),
        )

    def _plan(self, result: ResultRecord, labels: npt.NDArray[np.uint8]) -> StackPlan | None:
        """The stack the labels were predicted on, as stored with the result."""
        if result.grid is None:
            return None
        plan = load_plan(result.grid, self._index, self._spool)
        if plan is None or (plan.slices, plan.phases, plan.rows, plan.columns) != labels.shape:
            return None
        return plan


def _frame_ms(plan: StackPlan) -> float:
    times = [time for time in plan.trigger_times_ms if time is not None]
    steps = [later - earlier for earlier, later in itertools.pairwise(times) if later > earlier]
    return statistics.median(steps) if steps else DEFAULT_FRAME_MS
