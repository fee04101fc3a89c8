"""Shared fixtures: the shared data directory, free ports, and ``dicomnode serve`` as a subprocess."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from tests.support import SHARED_DATA, SUNNYBROOK, SUNNYBROOK_SERIES, NodeServer
from tests.support import free_port as _free_port

NodeServerFactory = Callable[..., NodeServer]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``<repo>/../shared/data``; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data directory {SHARED_DATA.resolve()} is absent")
    return SHARED_DATA.resolve()


@pytest.fixture(scope="session")
def sunnybrook(shared_data: Path) -> Path:
    """The Sunnybrook cine series directory (three series, 700 instances)."""
    root = shared_data / "sunnybrook"
    missing = [name for name in SUNNYBROOK_SERIES if not (root / name).is_dir()]
    if missing:
        pytest.skip(f"Sunnybrook series {', '.join(missing)} absent under {SUNNYBROOK.resolve()}")
    return root


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A function returning a TCP port on 127.0.0.1 that nothing listens on."""
    return _free_port


@pytest.fixture
def node_server(tmp_path: Path) -> Iterator[NodeServerFactory]:
    """Factory starting ``dicomnode serve`` with a fresh data directory, a free port and JSON logs.

    Call it as ``node_server(extra_env={"DICOMNODE_...": "..."}, start=True)``; the returned
    :class:`~tests.support.NodeServer` has ``port``, ``data_dir``, ``log_path``, ``kill9()``,
    ``terminate()`` (returns the exit code) and ``restart()`` (same data directory and port). Every
    server still running at teardown gets SIGTERM and is waited for.
    """
    servers: list[NodeServer] = []

    def start(extra_env: Mapping[str, str] | None = None, *, start: bool = True) -> NodeServer:
        name = f"node{len(servers)}"
        server = NodeServer(
            data_dir=tmp_path / name / "data",
            log_path=tmp_path / name / "node.log",
            port=_free_port(),
            extra_env=dict(extra_env or {}),
        )
        servers.append(server)
        return server.start() if start else server

    yield start
    for server in servers:
        server.stop()
