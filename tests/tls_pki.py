"""A throw-away PKI for DICOM TLS tests, made with the ``openssl`` command line.

Two CAs: ``ca`` (the one the node trusts) and ``other_ca`` (one it does not). Keys are ECDSA
P-256, unencrypted PEM, valid for two days.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = shutil.which("openssl")
#: ECDSA P-256: quick to generate, and in every BCP 195 profile DCMTK offers.
_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


@dataclass(frozen=True)
class Credential:
    """A PEM certificate and its unencrypted PEM private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Everything a TLS test needs; ``server`` names IP:127.0.0.1 and DNS:localhost."""

    ca: Credential
    other_ca: Credential
    server: Credential
    client: Credential
    untrusted_client: Credential
    untrusted_server: Credential
    #: Signed by ``ca`` but named only DNS:pacs.example.org (no IP address, not localhost).
    server_named_elsewhere: Credential


def _openssl(*args: str | Path) -> None:
    if OPENSSL is None:
        raise RuntimeError("openssl is not installed")
    result = subprocess.run(
        [OPENSSL, *(str(arg) for arg in args)], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args))} failed:\n{result.stderr}")


def _ca(root: Path, name: str) -> Credential:
    credential = Credential(root / f"{name}.pem", root / f"{name}.key")
    _openssl(
        "req", "-x509", *_EC_KEY, "-nodes", "-days", "2",
        "-keyout", credential.key, "-out", credential.cert, "-subj", f"/O=dicomnode tests/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return credential


def _leaf(root: Path, name: str, issuer: Credential, extensions: str) -> Credential:
    credential = Credential(root / f"{name}.pem", root / f"{name}.key")
    request = root / f"{name}.csr"
    extfile = root / f"{name}.ext"
    extfile.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n" + extensions
    )
    _openssl(
        "req", "-new", *_EC_KEY, "-nodes", "-keyout", credential.key, "-out", request,
        "-subj", f"/O=dicomnode tests/CN={name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", request, "-CA", issuer.cert, "-CAkey", issuer.key, "-CAcreateserial",
        "-days", "2", "-out", credential.cert, "-extfile", extfile,
    )  # fmt: skip
    return credential


def make_pki(root: Path) -> Pki:
    """Create the CAs and certificates under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    ca = _ca(root, "ca")
    other_ca = _ca(root, "other-ca")
    server_ext = "extendedKeyUsage=serverAuth,clientAuth\n"
    client_ext = "extendedKeyUsage=clientAuth\n"
    return Pki(
        ca=ca,
        other_ca=other_ca,
        server=_leaf(root, "server", ca, server_ext + "subjectAltName=IP:127.0.0.1,DNS:localhost\n"),
        client=_leaf(root, "client", ca, client_ext),
        untrusted_client=_leaf(root, "untrusted-client", other_ca, client_ext),
        untrusted_server=_leaf(
            root, "untrusted-server", other_ca, server_ext + "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        ),
        server_named_elsewhere=_leaf(
            root, "server-elsewhere", ca, server_ext + "subjectAltName=DNS:pacs.example.org\n"
        ),
    )
