"""The worklist app in-process (Starlette TestClient) over a fresh seeded index, and form helpers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

from node.web.server import build_app
from tests.review.seed import PASSWORD, Seeded, open_seeded
from tests.support import clear_dicomnode_env

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Seeded]:
    """An empty index, outbox and review parts under ``tmp_path``, with a manual clock."""
    clear_dicomnode_env(monkeypatch)
    opened = open_seeded(tmp_path / "data")
    yield opened
    opened.close()


@pytest.fixture
def client(seeded: Seeded) -> Iterator[TestClient]:
    """A test client of the app; readiness checks report ready."""
    app = build_app(
        seeded.settings,
        seeded.parts,
        seeded.metrics,
        seeded.clock,
        {"index": lambda: True, "model": lambda: True},
    )
    with TestClient(app, follow_redirects=False) as test_client:
        yield test_client


def csrf_token(page: httpx.Response) -> str:
    """The CSRF token of the first form on a page."""
    found = _CSRF.search(page.text)
    assert found is not None, "no CSRF token on the page"
    return found.group(1)


def login(client: TestClient, name: str, password: str = PASSWORD) -> httpx.Response:
    """Fill in the login form as a browser would; returns the POST's response."""
    form = client.get("/login")
    return client.post(
        "/login",
        data={"username": name, "password": password, "csrf_token": csrf_token(form), "next": "/worklist"},
    )
