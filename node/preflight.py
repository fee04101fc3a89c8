"""What ``serve`` needs before it starts, checked the same way by ``serve`` and ``check-config``.

Each problem is one line naming the setting and what would be valid: the execution providers, the
model, the DICOM TLS files, the DICOMweb destinations' credential and CA files, and the two ports (free
to listen on).
"""

from __future__ import annotations

import errno
import socket

from node.config import DicomwebDestination, Settings
from node.errors import ConfigError


def port_problem(variable: str, host: str, port: int) -> str | None:
    """Why the node could not listen on ``host:port`` (in use, not an address here), else None."""
    if port == 0:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return (
                    f"{variable}: port {port} on {host} is taken by another program; free it or pick another"
                )
            if error.errno == errno.EACCES:
                return f"{variable}: port {port} needs privileges this user lacks; choose a port above 1023"
            return f"{variable}: cannot listen on {host}:{port} ({error.strerror}); check the host and port"
    return None


def ports(settings: Settings) -> list[str]:
    """The listening ports that are not free."""
    found = [port_problem("DICOMNODE_DICOM__PORT", settings.dicom.host, settings.dicom.port)]
    if settings.web.enabled:
        found.append(port_problem("DICOMNODE_WEB__PORT", settings.web.host, settings.web.port))
    return [problem for problem in found if problem is not None]


def destination_files(settings: Settings) -> list[str]:
    """DICOMweb destinations whose credential or CA file cannot be read."""
    found = []
    for number, destination in enumerate(settings.delivery.destinations):
        if not isinstance(destination, DicomwebDestination):
            continue
        for path in [*destination.credential_files, *([destination.ca] if destination.ca else [])]:
            try:
                path.read_bytes()
            except OSError as error:
                found.append(
                    f"DICOMNODE_DELIVERY__DESTINATIONS: item {number} ({destination.key}): cannot read "
                    f"{path} ({error.strerror or type(error).__name__})"
                )
    return found


def problems(settings: Settings) -> list[str]:
    """Every problem ``serve`` would stop at, one line each."""
    from node.dicom.tls import server_context
    from node.inference.registry import find_model
    from node.inference.runner import resolve_providers

    found: list[str] = []
    checks = (
        lambda: resolve_providers(settings.inference.providers),
        lambda: find_model(
            settings.inference.model_dir, settings.inference.model_name, settings.inference.model_version
        ),
        lambda: server_context(settings.dicom) if settings.dicom.tls_cert is not None else None,
    )
    for check in checks:
        try:
            check()
        except ConfigError as error:
            found.append(str(error))
    return found + destination_files(settings) + ports(settings)
