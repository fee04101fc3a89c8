"""STOW-RS (PS3.18 10.5) to a DICOMweb destination, through ``dicomweb-client``.

One request carries the objects of one study. The destination's answer is read per instance: an
instance in the response's Referenced SOP Sequence was stored, one in its Failed SOP Sequence was
not (with the Failure Reason, a DICOM status), whatever the HTTP status of the whole (200, 202 or
409). What the answer cannot decide per instance is raised: :class:`StowUnavailable` for what a later
attempt may change (no connection, a timeout, a failed TLS handshake, 5xx, 408, 429), and
:class:`StowRefused` for a 4xx without a per-instance answer, which a retry will not change (401,
403, 404, 413, 415 ...).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import fromstring

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from node.config import DicomwebDestination

#: HTTP statuses that say "not now" rather than "never" (besides every 5xx).
TRANSIENT_HTTP = frozenset({HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_MANY_REQUESTS})

#: The media types a STOW-RS answer comes in (PS3.18 10.5.3).
_JSON_TYPES = ("application/dicom+json", "application/json")
_XML_TYPES = ("application/dicom+xml", "application/xml", "text/xml")


class StowUnavailable(Exception):
    """The destination could not take the request now; a later attempt may succeed."""


class StowRefused(Exception):
    """The destination refused the request as a whole in a way no retry changes (a 4xx)."""


@dataclass(frozen=True)
class StowAnswer:
    """A destination's answer to one STOW-RS request, per SOP Instance UID.

    ``stored`` and ``failed`` (UID -> Failure Reason) come from the response's Referenced and Failed
    SOP Sequences. ``listed`` is False when the answer named no instance at all: a 200 answer without
    a body then means every instance was stored.
    """

    http_status: int
    stored: frozenset[str] = frozenset()
    failed: dict[str, int] = field(default_factory=dict)

    @property
    def listed(self) -> bool:
        """Whether the answer named any instance."""
        return bool(self.stored or self.failed)


def http_reason(status: int) -> str:
    """``HTTP 503 Service Unavailable``: how an HTTP answer is named in delivery records."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "unknown status"
    return f"HTTP {status} {phrase}"


def _sequence_uids(answer: Dataset, keyword: str) -> list[Dataset]:
    return list(answer.get(keyword, []) or [])


def read_answer(status: int, answer: Dataset) -> StowAnswer:
    """The per-instance outcome in a STOW-RS response dataset."""
    stored = frozenset(
        str(item.ReferencedSOPInstanceUID)
        for item in _sequence_uids(answer, "ReferencedSOPSequence")
        if "ReferencedSOPInstanceUID" in item
    )
    failed = {
        str(item.ReferencedSOPInstanceUID): int(item.get("FailureReason", 0x0110))
        for item in _sequence_uids(answer, "FailedSOPSequence")
        if "ReferencedSOPInstanceUID" in item
    }
    return StowAnswer(http_status=status, stored=stored, failed=failed)


def _body_dataset(response: requests.Response) -> Dataset | None:
    """The DICOM dataset of an answer's body (JSON or XML), or None when there is none to read."""
    if not response.content:
        return None
    media = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    try:
        if media in _JSON_TYPES:
            return Dataset.from_json(response.json())
        if media in _XML_TYPES:
            # dicomweb-client reads the PS3.19 native XML model; it exposes its reader only privately.
            from dicomweb_client.web import _load_xml_dataset

            return _load_xml_dataset(fromstring(response.content))
    except (ValueError, TypeError, KeyError, SyntaxError):
        return None
    return None


class _VerifyingSession(requests.Session):
    """A session whose ``verify`` is what the node configured: requests otherwise lets the environment's
    REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's CA bundle (proxies still come from it)."""

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        settings: dict[str, Any] = super().merge_environment_settings(url, proxies, stream, verify, cert)
        settings["verify"] = self.verify if verify is None else verify
        return settings


@dataclass(frozen=True)
class StowClient:
    """Sends to one DICOMweb destination; credentials are read from their files at each request."""

    destination: DicomwebDestination
    #: The CA bundle when the destination names none (``dicom.tls_ca``); None: the system's CAs.
    default_ca: Path | None
    timeout_s: float

    def session(self) -> requests.Session:
        """A session with the destination's TLS verification and credentials.

        Raises
        ------
        StowUnavailable
            A credentials file cannot be read (it may be restored; the attempt is retried).
        """
        session = _VerifyingSession()
        destination = self.destination
        ca = destination.ca or self.default_ca
        session.verify = str(ca) if ca is not None else True
        session.headers["Accept"] = "application/dicom+json"
        try:
            if destination.token_file is not None:
                token = destination.token_file.read_text().strip()
                session.headers["Authorization"] = f"Bearer {token}"
            elif destination.basic_auth_file is not None:
                user, _, password = destination.basic_auth_file.read_text().strip().partition(":")
                session.auth = (user, password)
        except OSError as error:
            raise StowUnavailable(
                f"credentials file unreadable: {error.strerror or type(error).__name__}"
            ) from None
        return session

    def store(self, datasets: Sequence[Dataset], study_instance_uid: str) -> StowAnswer:
        """POST ``datasets`` (one study) to ``{base}/studies/{study}``; the answer per instance.

        dicomweb-client sends the request; the answer is read here, from the response itself (its
        media type with any parameter, e.g. ``; charset=utf-8``), never from what the client made of
        it.

        Raises
        ------
        StowUnavailable, StowRefused
            As the module docstring says.
        """
        responses: list[requests.Response] = []
        with self.session() as session:
            session.hooks["response"].append(lambda response, *_args, **_kwargs: responses.append(response))
            client = DICOMwebClient(self.destination.dicomweb, session=session, timeout=self.timeout_s)
            client.set_http_retry_params(retry=False)  # the outbox retries, with its backoff and cap
            try:
                client.store_instances(list(datasets), study_instance_uid=study_instance_uid)
            except requests.HTTPError:
                pass  # a 4xx or 5xx: read below
            except requests.exceptions.SSLError as error:
                raise StowUnavailable(f"TLS handshake failed: {_ssl_reason(error)}") from None
            except requests.Timeout:
                raise StowUnavailable(f"no answer within {self.timeout_s:g} s") from None
            except requests.ConnectionError:
                raise StowUnavailable("destination unreachable") from None
            except requests.RequestException as error:
                raise StowUnavailable(f"request failed: {type(error).__name__}") from None
            except (ValueError, KeyError):
                pass  # dicomweb-client could not read the answer's body: read below
        if not responses:
            raise StowUnavailable("no answer")
        return self._read(responses[-1])

    def _read(self, response: requests.Response) -> StowAnswer:
        status = response.status_code
        if status >= 500 or status in TRANSIENT_HTTP:
            raise StowUnavailable(http_reason(status))
        body = _body_dataset(response)
        answer = read_answer(status, body if body is not None else Dataset())
        if answer.listed:
            return answer
        if not 200 <= status < 300:
            raise StowRefused(http_reason(status))  # a 4xx, or a redirect the client did not follow
        if body is None and response.content:
            # Which instances were stored is unknown, so every one is sent again (a destination
            # takes a resent identical instance).
            raise StowUnavailable(f"answer not understood ({http_reason(status)})")
        if status == HTTPStatus.ACCEPTED:
            # 202 says some instances failed; without the list none can be taken as stored.
            raise StowUnavailable("HTTP 202 Accepted without the instances it stored")
        return answer

    def answers(self) -> bool:
        """Whether the destination's HTTP server answers at all (any status below 500): the probe that
        sends its dead letters again after an outage."""
        try:
            with self.session() as session:
                response = session.get(f"{self.destination.dicomweb}/studies", params={"limit": "1"},
                                       timeout=self.timeout_s)  # fmt: skip
        except (StowUnavailable, requests.RequestException):
            return False
        return response.status_code < 500


def _ssl_reason(error: BaseException) -> str:
    """The innermost reason of a failed handshake (``certificate verify failed: ...``), not requests'
    wrapping of it."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return str(getattr(seen, "verify_message", None) or seen.reason or seen)
        nested = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        seen = nested or seen.__cause__ or seen.__context__
    return type(error).__name__
