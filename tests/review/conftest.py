"""A fresh index with review parts per test (no DICOMNODE_* variables leak in from the environment)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.review.seed import Seeded, open_seeded
from tests.support import clear_dicomnode_env


@pytest.fixture
def seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Seeded]:
    """An empty index, outbox and review parts under ``tmp_path``, with a manual clock."""
    clear_dicomnode_env(monkeypatch)
    opened = open_seeded(tmp_path / "data")
    yield opened
    opened.close()
