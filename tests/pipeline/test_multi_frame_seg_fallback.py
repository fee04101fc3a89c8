"""An Enhanced MR stack highdicom cannot segment still gets its draft SR and secondary capture.

highdicom takes a multi-frame source only with one plane orientation for the frames segmented. A
phantom cine whose first slice is rotated in plane by one degree (within the stack finder's
tolerance, so it is measured) is received by the real node with SEG enabled: the SEG is left out with
a logged reason, and the draft SR and the SC are published.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import structlog
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from node.app import Node
from node.clock import ManualClock
from node.config import load_settings
from tests.pipeline.test_odd_input import enhanced_mr, phantom_stack
from tests.pipeline.test_stacks import encode
from tests.review.pipeline import process
from tests.support import clear_dicomnode_env

SLICES, PHASES, SIDE = 4, 6, 48
TILT_DEG = 1.0


def _rotated_in_plane(orientation: list[float], degrees: float) -> list[float]:
    row, column = orientation[:3], orientation[3:]
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return [c * r + s * k for r, k in zip(row, column, strict=True)] + [
        -s * r + c * k for r, k in zip(row, column, strict=True)
    ]


def _first_slice_tilted(path: Path, directory: Path) -> Path:
    """The Enhanced MR with Plane Orientation per frame, the first slice's frames rotated in plane."""
    dataset = pydicom.dcmread(path)
    shared = dataset.SharedFunctionalGroupsSequence[0]
    orientation = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    del shared.PlaneOrientationSequence
    for index, frame in enumerate(dataset.PerFrameFunctionalGroupsSequence):
        item = Dataset()
        tilted = index < PHASES  # frames are stored slice-major
        item.ImageOrientationPatient = [
            round(v, 6) for v in (_rotated_in_plane(orientation, TILT_DEG) if tilted else orientation)
        ]
        frame.PlaneOrientationSequence = DicomSequence([item])
    return Path(encode(dataset, directory).path)


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Node, ManualClock]]:
    clear_dicomnode_env(monkeypatch)
    monkeypatch.setenv("DICOMNODE_STORAGE__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DICOMNODE_STORAGE__MIN_FREE_MB", "1")
    monkeypatch.setenv("DICOMNODE_REPORTS__SEND_SEG", "true")
    monkeypatch.setenv(
        "DICOMNODE_DELIVERY__DESTINATIONS", '[{"ae_title": "PACS", "host": "127.0.0.1", "port": 104}]'
    )
    clock = ManualClock()
    built = Node.build(load_settings(), clock=clock)
    yield built, clock
    built.index.close()


def test_enhanced_mr_without_one_orientation_is_published_without_seg(
    node: tuple[Node, ManualClock], tmp_path: Path
) -> None:
    """SR and SC of a measured multi-frame stack are published; its SEG is skipped with a warning."""
    built, clock = node
    single = phantom_stack(tmp_path / "single", slices=SLICES, phases=PHASES, side=SIDE)
    positions = [(s, p) for s in range(SLICES) for p in range(PHASES)]
    multi = enhanced_mr(single, tmp_path / "multi", positions=positions)
    tilted = _first_slice_tilted(Path(multi.path), tmp_path / "tilted")
    row = process(built, clock, [tilted])
    assert row.outcome == "measured"
    with structlog.testing.capture_logs() as logs:
        assert built.publisher.run_once()
    assert sorted(state.kind for state in built.outbox.rows()) == ["draft_sr", "sc"]
    (warning,) = [entry for entry in logs if entry["event"] == "SEG not built"]
    assert warning["log_level"] == "warning"
    assert "PlaneOrientationSequence" in warning["reason"]
