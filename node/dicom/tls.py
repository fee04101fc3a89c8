"""DICOM TLS (PS3.15 Annex B, BCP 195 profiles): SSL contexts for the listener and for delivery.

Contexts are built once, at startup, from :class:`~node.config.DicomSettings`: a missing, unreadable
or invalid file is a :class:`~node.errors.ConfigError` naming its setting, not a failure at the
first association. TLS 1.2 is the minimum in both directions.

Trust is ``tls_ca`` alone, never the system's public roots: a peer is authenticated by a certificate
chain ending there. Inbound, callers must present such a certificate (``tls_require_client_cert``),
or may (when false; a certificate that is presented must still verify). Outbound, the peer's
certificate must chain to ``tls_ca``; its name is checked as well when the destination is configured
by DNS name, and not when it is configured by IP address, because certificates issued by hospital
CAs rarely carry IP addresses (subject alternative names) and DICOM peers are usually configured by
address. To have the name checked, configure the destination by the name on its certificate.

The listener's server (:class:`TLSHandshakeServer`) does each handshake on the connection's own
thread with a deadline, so a slow or silent client cannot stall accepting, and a failed handshake
is one warning line (peer address and reason) while the listener keeps serving.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from pynetdicom.transport import ThreadedAssociationServer

from node.config import ENV_PREFIX, DicomSettings
from node.errors import ConfigError
from node.logging import get_logger

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

log = get_logger(__name__)

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def _setting(name: str) -> str:
    """The environment variable of a ``[dicom]`` setting, as errors name it."""
    return f"{ENV_PREFIX}DICOM__{name.upper()}"


def _refuse_encrypted_key() -> bytes:
    # Called by OpenSSL only for an encrypted key: a service must not prompt on a terminal.
    raise ConfigError(
        f"{_setting('tls_key')}: the private key is encrypted; give an unencrypted PEM key "
        "(readable by the node's user only)"
    )


def _check_readable(path: Path, setting: str) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as error:
        raise ConfigError(f"{_setting(setting)}: cannot read {path}: {error.strerror or error}") from None


def _load_chain(context: ssl.SSLContext, settings: DicomSettings) -> None:
    cert, key = settings.tls_cert, settings.tls_key
    if cert is None or key is None:
        raise ConfigError(f"{_setting('tls_cert')} and {_setting('tls_key')}: set both")
    _check_readable(cert, "tls_cert")
    _check_readable(key, "tls_key")
    try:
        context.load_cert_chain(cert, key, password=_refuse_encrypted_key)
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"{_setting('tls_key')}: {key} is not the private key of {_setting('tls_cert')} "
                f"({error.reason})"
            ) from None
        raise ConfigError(
            f"{_setting('tls_cert')}, {_setting('tls_key')}: not a PEM certificate (chain) and its "
            f"private key: {error.reason or error}"
        ) from None


def _load_ca(context: ssl.SSLContext, settings: DicomSettings, purpose: str) -> None:
    ca = settings.tls_ca
    if ca is None:
        raise ConfigError(f"{_setting('tls_ca')}: not set; {purpose}")
    _check_readable(ca, "tls_ca")
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as error:
        raise ConfigError(
            f"{_setting('tls_ca')}: no PEM CA certificate in {ca}: {error.reason or error}"
        ) from None


def server_context(settings: DicomSettings) -> ssl.SSLContext:
    """The listener's context: our certificate, and callers verified against ``tls_ca``.

    Callers must present a certificate signed by ``tls_ca`` when ``tls_require_client_cert``
    (``CERT_REQUIRED``); otherwise one is asked for and verified when presented (``CERT_OPTIONAL``),
    or not asked for at all when there is no ``tls_ca`` (``CERT_NONE``).

    Raises
    ------
    ConfigError
        A file is missing, unreadable or not what its setting names.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    _load_chain(context, settings)
    if settings.tls_ca is not None:
        _load_ca(context, settings, "callers' certificates cannot be verified")
        context.verify_mode = ssl.CERT_REQUIRED if settings.tls_require_client_cert else ssl.CERT_OPTIONAL
    elif settings.tls_require_client_cert:
        _load_ca(context, settings, f"{_setting('tls_require_client_cert')} needs it")
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def is_ip_address(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address rather than a DNS name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def describe_failure(error: BaseException) -> str:
    """A short reason for a failed handshake, for logs and delivery records (no certificate data)."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"certificate not accepted: {error.verify_message or error.reason}"
    if isinstance(error, ssl.SSLError):
        return str(error.reason or error.strerror or type(error).__name__)
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, OSError):
        return str(error.strerror or type(error).__name__)
    return type(error).__name__


class _Failures:
    """Why the last handshake with each peer name failed, shared by the threads that connect."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reasons: dict[str, str] = {}

    def record(self, server_hostname: str | None, reason: str, *, first_only: bool = False) -> None:
        key = server_hostname or ""
        with self._lock:
            if not (first_only and key in self._reasons):
                self._reasons[key] = reason

    def take(self, host: str) -> str | None:
        with self._lock:
            return self._reasons.pop(_name_key(host), None)


def _name_key(host: str) -> str:
    """``host`` as :class:`ssl.SSLSocket` keeps it in ``server_hostname`` (IDNA, ASCII)."""
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


class DeliveryTLS:
    """The delivery sender's side of DICOM TLS: client contexts built once, and handshake outcomes.

    pynetdicom connects on its own thread and reports a connection that failed for any reason only
    as "not established"; the contexts' sockets record why their handshake failed, per peer name,
    so that the sender can tell "TLS handshake failed" from "destination unreachable". Give each
    sending thread its own instance (one association at a time per peer name).

    Raises
    ------
    ConfigError
        ``tls_ca`` is not set (nothing to verify the peer against) or a file cannot be used.
    """

    def __init__(self, settings: DicomSettings) -> None:
        self._failures = _Failures()
        self._by_name = self._context(settings, check_hostname=True)
        self._by_address = self._context(settings, check_hostname=False)

    def _context(self, settings: DicomSettings, *, check_hostname: bool) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = MINIMUM_VERSION
        context.check_hostname = check_hostname
        context.verify_mode = ssl.CERT_REQUIRED
        _load_ca(context, settings, "a destination has tls = true and its certificate must be verified")
        if settings.tls_cert is not None:
            _load_chain(context, settings)
        context.sslsocket_class = _recording_socket(self._failures)
        return context

    def tls_args(self, host: str) -> tuple[ssl.SSLContext, str]:
        """``(context, server_hostname)`` for ``AE.associate`` to ``host``; forgets its last failure.

        The name is checked for a DNS name and not for an IP address (see the module docstring).
        """
        self._failures.take(host)
        return (self._by_address if is_ip_address(host) else self._by_name), host

    def handshake_failure(self, host: str) -> str | None:
        """Why the handshake with ``host`` since :meth:`tls_args` failed; None if it did not."""
        return self._failures.take(host)


def _recording_socket(failures: _Failures) -> type[ssl.SSLSocket]:
    def after_handshake(hostname: str | None, error: OSError | None) -> None:
        # With TLS 1.3 the server verifies our certificate after our side of the handshake has
        # finished: its refusal is an alert on a read (the most telling reason, so it wins), or a
        # closed or reset connection.
        if isinstance(error, ssl.SSLError) and not isinstance(
            error, (ssl.SSLEOFError, ssl.SSLZeroReturnError)
        ):
            failures.record(hostname, f"refused by the peer: {describe_failure(error)}")
            return
        detail = "" if error is None else f" ({describe_failure(error)})"
        reason = f"connection closed by the peer after the handshake{detail}"
        failures.record(hostname, reason, first_only=True)

    class _RecordingSocket(ssl.SSLSocket):
        handshake_done = False  # reads and writes before it (ssl probes with one) are not refusals

        def do_handshake(self, block: bool = False) -> None:
            try:
                super().do_handshake(block)
            except OSError as error:  # ssl.SSLError, a reset or a timeout during the handshake
                failures.record(self.server_hostname, describe_failure(error))
                raise
            self.handshake_done = True

        def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
            try:
                data = super().recv(buflen, flags)
            except OSError as error:
                if self.handshake_done:
                    after_handshake(self.server_hostname, error)
                raise
            if not data and self.handshake_done:
                after_handshake(self.server_hostname, None)
            return data

        def send(self, data: ReadableBuffer, flags: int = 0) -> int:
            try:
                return super().send(data, flags)
            except OSError as error:
                if self.handshake_done:
                    after_handshake(self.server_hostname, error)
                raise

    return _RecordingSocket


class TLSHandshakeServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the TLS handshake moved off the accepting thread.

    pynetdicom wraps (and so handshakes) accepted sockets in ``get_request``, on the one thread
    that accepts: a client that connects and says nothing would stall the listener. Here the
    handshake runs on the connection's own thread within the AE's ACSE timeout; a failure is
    logged once (peer address and reason) and the connection closed. A connection closed before
    sending anything (a TCP health check) is not a failure. Nagle is disabled on accepted sockets.
    """

    def secured(self, client_address: tuple[str, int], secured: socket.socket) -> None:
        """Called with the TLS socket that replaces the accepted one, before its handshake."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        if self.socket is None:
            raise OSError("server socket closed")
        client, address = self.socket.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address

    def process_request_thread(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: tuple[str, int] | str
    ) -> None:
        context = self.ssl_context
        if context is None or not isinstance(request, socket.socket):
            super().process_request_thread(request, client_address)
            return
        peer = (
            f"{client_address[0]}:{client_address[1]}"
            if isinstance(client_address, tuple)
            else str(client_address)
        )
        secured: ssl.SSLSocket | None = None
        try:
            request.settimeout(self.ae.acse_timeout)
            if not request.recv(1, socket.MSG_PEEK):
                log.debug("connection closed before tls handshake", peer=peer)
                self.shutdown_request(request)
                return
            secured = context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
            if isinstance(client_address, tuple):
                self.secured(client_address, secured)
            secured.do_handshake()
            secured.settimeout(None)  # blocking, as pynetdicom has its accepted sockets
        except OSError as error:
            log.warning("tls handshake failed", peer=peer, reason=describe_failure(error))
            self.shutdown_request(secured if secured is not None else request)
            return
        super().process_request_thread(secured, client_address)
