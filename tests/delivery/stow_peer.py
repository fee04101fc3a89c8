"""A scripted STOW-RS origin server for the DICOMweb sender's failure tests.

A stand-in, said so: Orthanc's DICOMweb plugin is the real server of the round-trip test
(tests/integration/test_dicomweb_orthanc.py), but it cannot be made to answer 409 for one chosen
instance, 503 on demand or 401 to a known client. This server is a real HTTP(S) server on loopback that
parses each multipart/related request and answers what the test scripts, as PS3.18 10.5.3 describes.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset


@dataclass
class StowRequest:
    """One request as the server received it."""

    path: str
    headers: dict[str, str]
    parts: list[bytes]

    def uids(self) -> list[str]:
        """The SOP Instance UIDs of the request's parts, in order."""
        return [str(pydicom.dcmread(BytesIO(part)).SOPInstanceUID) for part in self.parts]


@dataclass(frozen=True)
class Answer:
    """What the server answers one request: an HTTP status, and which UIDs it stored or failed."""

    status: int
    failed: dict[str, int] = field(default_factory=dict)
    #: Listed as stored; None: every part of the request not in ``failed``.
    stored: list[str] | None = None
    body: bool = True
    media_type: str = "application/dicom+json"


#: Makes the answer to a request from the request.
Script = Callable[[StowRequest], Answer]


def stow_answer(request: StowRequest, answer: Answer) -> bytes:
    """The PS3.18 response dataset (JSON) of ``answer`` to ``request``."""
    uids = request.uids()
    stored = [uid for uid in uids if uid not in answer.failed] if answer.stored is None else answer.stored
    response = Dataset()
    response.ReferencedSOPSequence = [_item(uid) for uid in stored]
    failed_items = []
    for uid, reason in answer.failed.items():
        item = _item(uid)
        item.FailureReason = reason
        failed_items.append(item)
    response.FailedSOPSequence = failed_items
    return json.dumps(response.to_json_dict()).encode()


def _item(uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    item.ReferencedSOPInstanceUID = uid
    return item


@dataclass
class StowPeer:
    """The running server: its URL, the requests it received, and the script it answers by."""

    url: str
    script: Script
    requests: list[StowRequest] = field(default_factory=list)


def _handler(peer: StowPeer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def do_GET(self) -> None:
            self.send_response(204)
            self.end_headers()

        def do_POST(self) -> None:
            length = self.headers.get("Content-Length")
            if length is not None:
                body = self.rfile.read(int(length))
            else:  # chunked transfer encoding
                chunks = []
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        break
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                body = b"".join(chunks)
            message = BytesParser(policy=HTTP).parsebytes(
                f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body
            )
            parts = [bytes(part.get_payload(decode=True)) for part in message.iter_parts()]
            request = StowRequest(path=self.path, headers=dict(self.headers.items()), parts=parts)
            peer.requests.append(request)
            answer = peer.script(request)
            payload = stow_answer(request, answer) if answer.body else b""
            self.send_response(answer.status)
            if payload:
                self.send_header("Content-Type", answer.media_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


@contextmanager
def running_stow_peer(
    script: Script, tls: tuple[Path, Path] | None = None, port: int = 0
) -> Iterator[StowPeer]:
    """A scripted STOW-RS server on 127.0.0.1 (``tls``: its certificate and key, for https)."""
    peer = StowPeer(url="", script=script)
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(peer))
    scheme = "http"
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    peer.url = f"{scheme}://127.0.0.1:{server.server_address[1]}/dicom-web"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield peer
    finally:
        server.shutdown()
        server.server_close()
