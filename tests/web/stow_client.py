"""Raw STOW-RS requests: bodies built byte by byte, for what a well-behaved client never sends (a body
cut short, a part of another type) and to compare stored files with exactly the bytes sent."""

from __future__ import annotations

import contextlib
import http.client
import json
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from io import BytesIO
from typing import Any
from urllib.parse import urlsplit

import pydicom
from pydicom.dataset import Dataset

from tests.support import dicomnode_command

BOUNDARY = "dicomnode-test-boundary-7f3a"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def made_token(env: dict[str, str], name: str) -> str:
    """A sender's API token, made as an administrator does (``dicomnode tokens add NAME``)."""
    made = subprocess.run(
        [*dicomnode_command(), "tokens", "add", name], env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def sop_uid(data: bytes) -> str:
    """The SOP Instance UID of a Part 10 byte string."""
    return str(pydicom.dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def part(data: bytes, content_type: str = "application/dicom") -> bytes:
    """One part of the multipart body, with its delimiter."""
    return f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"


def body(parts: Iterable[bytes], close: bool = True) -> bytes:
    """A multipart/related body of ``parts`` (each made by :func:`part`), closed unless told not to."""
    return b"".join(parts) + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


@dataclass
class Answer:
    """An HTTP answer: status, headers, body."""

    status: int
    headers: dict[str, str]
    content: bytes

    def dataset(self) -> Dataset:
        """The answer's DICOM JSON body."""
        return Dataset.from_json(json.loads(self.content))

    def referenced(self) -> list[str]:
        """SOP Instance UIDs of the Referenced SOP Sequence."""
        return [str(item.ReferencedSOPInstanceUID) for item in self.dataset().ReferencedSOPSequence]

    def failed(self) -> dict[str | None, int]:
        """Failure Reason per SOP Instance UID of the Failed SOP Sequence."""
        return {
            (str(item.ReferencedSOPInstanceUID) if "ReferencedSOPInstanceUID" in item else None): int(
                item.FailureReason
            )
            for item in self.dataset().FailedSOPSequence
        }


def post_chunked(url: str, chunks: Iterable[bytes], token: str) -> Answer:
    """POST a body in chunked transfer encoding (no Content-Length), as clients streaming a study do."""
    target = urlsplit(url)
    connection = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=60)
    try:
        headers = {"Content-Type": CONTENT_TYPE, "Authorization": f"Bearer {token}"}
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.request("POST", target.path, body=iter(chunks), headers=headers, encode_chunked=True)
        response = connection.getresponse()
        return Answer(response.status, dict(response.getheaders()), response.read())
    finally:
        connection.close()


def post(
    url: str,
    content: bytes,
    token: str | None,
    content_type: str = CONTENT_TYPE,
    headers: dict[str, str] | None = None,
    length: int | None = None,
) -> Answer:
    """POST ``content`` to ``url`` (``length`` overrides the Content-Length header)."""
    target = urlsplit(url)
    connection = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=60)
    try:
        connection.putrequest("POST", target.path)
        sent: dict[str, Any] = {"Content-Type": content_type, "Content-Length": str(length or len(content))}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        sent.update(headers or {})
        for name, value in sent.items():
            connection.putheader(name, value)
        connection.endheaders()
        # The node may answer before reading everything (a refused request).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.send(content)
        response = connection.getresponse()
        return Answer(response.status, dict(response.getheaders()), response.read())
    finally:
        connection.close()
