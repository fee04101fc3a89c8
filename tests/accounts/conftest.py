"""A fresh index with review parts per test (no DICOMNODE_* variables leak in from the environment)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.review.seed import Seeded, open_seeded


@pytest.fixture
def seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Seeded]:
    """An empty index, outbox and review parts under ``tmp_path``, with a manual clock."""
    for key in list(os.environ):
        if key.startswith("DICOMNODE_"):
            monkeypatch.delenv(key)
    opened = open_seeded(tmp_path / "data")
    yield opened
    opened.close()
