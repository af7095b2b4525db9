"""TLS for the hub's DICOM node (PS3.15 B.1, the TLS Secure Transport Connection Profile).

Incoming: the node listens with TELEHEALTH_DICOM_TLS_CERT/KEY and, when a CA is set, asks
callers for a certificate it signed. Outgoing: a C-MOVE to a destination registered for TLS
verifies the destination's certificate and host name against TELEHEALTH_DICOM_MOVE_TLS_CA (or
the system's CAs), and presents the hub's own certificate when it has one.
"""

from __future__ import annotations

import ssl

from telehealth.config import Settings


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The listening socket's context; None when no certificate is configured."""
    if not (settings.dicom_tls_cert and settings.dicom_tls_key):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.dicom_tls_cert, settings.dicom_tls_key)
    if settings.dicom_tls_ca:
        context.load_verify_locations(settings.dicom_tls_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(settings: Settings) -> ssl.SSLContext:
    """The context for connecting to a TLS move destination: certificate and host name
    checked (a clinic's studies must reach the clinic, not whoever answers at its address).

    Raises OSError / ssl.SSLError when a configured file cannot be read.
    """
    ca = settings.dicom_move_tls_ca
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    if settings.dicom_tls_cert and settings.dicom_tls_key:
        context.load_cert_chain(settings.dicom_tls_cert, settings.dicom_tls_key)
    return context
