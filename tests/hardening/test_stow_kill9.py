"""kill -9 of `dicomnode serve` during and right after a STOW-RS upload: nothing the node called stored
is lost, nothing half-written is kept, and the sender's resend completes the upload."""

from __future__ import annotations

import contextlib
import http.client

import pytest

from node.failpoints import ENV as FAILPOINT
from tests.conftest import NodeServerFactory
from tests.support import free_port, synthetic_mr, wait_for
from tests.web.stow_client import CONTENT_TYPE, body, made_token, part, post, sop_uid

pytestmark = pytest.mark.integration


def test_kill_9_during_and_after_a_stow_rs_upload_keeps_every_instance_called_stored(
    node_server: NodeServerFactory,
) -> None:
    web_port = free_port()
    server = node_server(
        {"DICOMNODE_WEB__PORT": str(web_port), "DICOMNODE_PIPELINE__STABLE_SECONDS": "3600"}, start=False
    )
    token = made_token(server.env, "gateway")
    server.start()
    url = f"http://127.0.0.1:{web_port}/dicomweb/studies"
    instances = [synthetic_mr() for _ in range(6)]
    parts = [part(data) for data in instances]
    whole = body(parts)

    def kept() -> dict[str, bytes]:
        return {sop_uid(path.read_bytes()): path.read_bytes() for path in server.spool_files()}

    # Killed mid-body: three parts sent (and stored as they completed), the rest never.
    connection = http.client.HTTPConnection("127.0.0.1", web_port, timeout=60)
    connection.putrequest("POST", "/dicomweb/studies")
    for name, value in (
        ("Content-Type", CONTENT_TYPE),
        ("Content-Length", str(len(whole))),
        ("Authorization", f"Bearer {token}"),
    ):
        connection.putheader(name, value)
    connection.endheaders()
    connection.send(b"".join(parts[:3]) + parts[3][:100])
    wait_for(lambda: server.indexed_count() == 3, 60, "the three whole parts indexed")
    server.kill9()
    connection.close()
    server.restart()
    assert server.indexed_count() == 3
    assert kept() == {sop_uid(data): data for data in instances[:3]}
    assert not any((server.spool_dir / ".incoming").iterdir()), "a half-written part was kept"

    # Killed between writing a part's file and indexing it (as a power cut would leave it): the file
    # is indexed at start-up, so the sender's resend finds it held.
    server.stop()
    server.extra_env = {**server.extra_env, FAILPOINT: "ingest:written"}
    server.start()
    with contextlib.suppress(OSError, http.client.HTTPException):
        post(url, body([parts[3]]), token)
    server.process.wait(timeout=60)
    server.extra_env = {key: value for key, value in server.extra_env.items() if key != FAILPOINT}
    server.restart()
    assert server.indexed_count() == 4
    assert kept() == {sop_uid(data): data for data in instances[:4]}

    # The sender sends the whole upload again; the node is killed as soon as it has answered.
    answer = post(url, whole, token)
    assert answer.status == 200, answer.content
    server.kill9()
    called_stored = answer.referenced()
    assert sorted(called_stored) == sorted(sop_uid(data) for data in instances)
    server.restart()
    assert server.indexed_count() == 6
    assert kept() == {sop_uid(data): data for data in instances}
