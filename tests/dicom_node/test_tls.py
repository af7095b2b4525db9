"""DICOM over TLS with a real pynetdicom peer and certificates made by openssl for the test."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import Verification

from telehealth.hub import Hub
from tests.dicom_node.test_store import SUCCESS, associate, seeded

ECHO = [(Verification, ExplicitVRLittleEndian)]


def openssl(*args: str) -> None:
    tool = shutil.which("openssl")
    if tool is None:
        pytest.skip("openssl is not installed")
    subprocess.run([tool, *args], check=True, capture_output=True, timeout=60)


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (also usable as its own CA) and its key."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-keyout", str(key), "-out", str(cert),
        "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
    )  # fmt: skip
    return cert, key


def signed_by(ca: tuple[Path, Path], directory: Path, name: str) -> tuple[Path, Path]:
    """A client certificate and key signed by `ca`."""
    cert, key, request = (directory / f"{name}{ext}" for ext in (".crt", ".key", ".csr"))
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(request),
        "-subj", f"/CN={name}",
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-days", "1", "-out", str(cert),
    )  # fmt: skip
    return cert, key


def client_context(server_cert: Path, identity: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """Trusts only the hub's certificate, so a successful handshake proves who answered."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(server_cert))
    if identity is not None:
        context.load_cert_chain(str(identity[0]), str(identity[1]))
    return context


def tls_hub(hub_factory, tmp_path: Path, **extra: object) -> tuple[Hub, Path]:  # type: ignore[no-untyped-def]
    cert, key = self_signed(tmp_path, "hub")
    hub = seeded(hub_factory(dicom_tls_cert=cert, dicom_tls_key=key, **extra))
    return hub, cert


def test_echo_over_tls_succeeds_and_plain_tcp_fails(hub_factory, tmp_path):
    hub, cert = tls_hub(hub_factory, tmp_path)
    tls = (client_context(cert), "127.0.0.1")
    with associate(hub, "CLINIC_A_DR", ECHO, tls_args=tls) as assoc:
        assert assoc.is_established
        assert assoc.send_c_echo().Status == SUCCESS
    with associate(hub, "CLINIC_A_DR", ECHO) as plain:
        assert not plain.is_established
    # TLS does not replace the AE registry: an unknown caller is still refused.
    with associate(hub, "NOBODY", ECHO, tls_args=tls) as stranger:
        assert stranger.is_rejected


def test_with_a_ca_callers_need_a_certificate_it_signed(hub_factory, tmp_path):
    ca = self_signed(tmp_path, "clinics-ca")
    hub, cert = tls_hub(hub_factory, tmp_path, dicom_tls_ca=ca[0])
    clinic = signed_by(ca, tmp_path, "clinic-a")
    stranger = self_signed(tmp_path, "stranger")

    with associate(
        hub, "CLINIC_A_DR", ECHO, tls_args=(client_context(cert, clinic), "127.0.0.1")
    ) as assoc:
        assert assoc.is_established
        assert assoc.send_c_echo().Status == SUCCESS
    for identity in (None, stranger):
        context = client_context(cert, identity)
        with associate(hub, "CLINIC_A_DR", ECHO, tls_args=(context, "127.0.0.1")) as refused:
            assert not refused.is_established
