"""The hub's DICOM application entity: C-ECHO and C-STORE into the one ingest path.

A front door in the STYLE.md sense: it turns DIMSE into service calls and domain errors back
into DIMSE statuses (through telehealth.errors), and knows nothing of storage.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pynetdicom.association
import pynetdicom.dul
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from telehealth.archive.models import IngestSource
from telehealth.archive.service import Origin
from telehealth.db import transaction
from telehealth.errors import DomainError, Overloaded, wire_status
from telehealth.institutions.service import Caller, CallerRefused, authorize_caller

if TYPE_CHECKING:
    from telehealth.hub import Hub

log = logging.getLogger(__name__)

# Accept any storage SOP class, including private and newer ones pynetdicom does not list:
# the archive keeps bytes as received and needs nothing class-specific to index them.
_config.UNRESTRICTED_STORAGE_SERVICE = True


class _BusyPolling:
    """Stands in for the `time` module inside pynetdicom's association and DUL loops.

    Both loops poll with `time.sleep(0.001)`: waiting for the next DIMSE message, for our
    response to send, for the next PDU. While a modality streams instances that adds ~1.5 ms
    to each; an association that stored something in the last moment polls 20× faster, and
    an idle one keeps pynetdicom's pace (and CPU use).
    """

    BUSY_SECONDS = 0.02
    FAST_SLEEP = 0.00005

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        thread = threading.current_thread()
        assoc = thread if isinstance(thread, Association) else getattr(thread, "assoc", None)
        busy_until = getattr(assoc, "_hub_busy_until", 0.0)
        if seconds == 0.001 and busy_until > time.monotonic():
            seconds = self.FAST_SLEEP
        time.sleep(seconds)

    @classmethod
    def mark_busy(cls, assoc: Association) -> None:
        assoc._hub_busy_until = time.monotonic() + cls.BUSY_SECONDS  # type: ignore[attr-defined]


pynetdicom.association.time = _BusyPolling()  # type: ignore[assignment]
pynetdicom.dul.time = _BusyPolling()  # type: ignore[assignment]

# pynetdicom's status for a refused caller: rejected-permanent, service-user, calling AE title
# not recognised (PS3.8 §9.3.4).
_REFUSED = ["\x00refused"]


class _HubAE(AE):
    """An AE that asks the hub, per association, whether the caller may associate.

    pynetdicom checks `require_calling_aet` while negotiating, inside the association's own
    thread; answering per thread lets us decide on the calling title *and* address, and
    reject with a proper A-ASSOCIATE-RJ rather than abort after accepting.
    """

    def __init__(self, node: DicomNode, ae_title: str) -> None:
        super().__init__(ae_title)
        self._node = node

    @property  # type: ignore[override]
    def require_calling_aet(self) -> list[str]:
        assoc = threading.current_thread()
        if not isinstance(assoc, Association) or not assoc.is_acceptor:
            return []
        return [] if self._node.admit(assoc) else _REFUSED

    @require_calling_aet.setter
    def require_calling_aet(self, value: list[str]) -> None:
        raise AttributeError("callers are decided by the hub's registry")

    def make_server(self, *args: Any, **kwargs: Any) -> ThreadedAssociationServer:
        # pynetdicom's start_server always builds its own server class; swap in ours.
        if kwargs.get("server_class") is ThreadedAssociationServer:
            kwargs["server_class"] = _SharedPortServer
        return super().make_server(*args, **kwargs)  # type: ignore[no-any-return]


class _SharedPortServer(ThreadedAssociationServer):
    """Lets several DICOM node processes listen on one port; the kernel spreads associations
    among them (SO_REUSEPORT), so parallel associations use more than one core."""

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class DicomNode:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        settings = hub.settings
        self.host = settings.dicom_host
        self.port = settings.dicom_port
        self.ae = _HubAE(self, settings.ae_title)
        self.ae.maximum_associations = settings.max_associations
        self.ae.maximum_pdu_size = settings.max_pdu_bytes
        self.ae.network_timeout = 60
        self.ae.acse_timeout = 30
        self.ae.dimse_timeout = 60
        self.ae.add_supported_context(Verification)
        self._server: ThreadedAssociationServer | None = None
        self._callers: weakref.WeakKeyDictionary[Association, Caller] = weakref.WeakKeyDictionary()
        # Admitted while the registry could not be read; checked at their next C-STORE.
        self._unchecked: weakref.WeakSet[Association] = weakref.WeakSet()

    @property
    def is_listening(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        handlers = [
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        self._server = self.ae.start_server(
            (self.host, self.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=self._ssl_context(),
        )
        self.port = self._server.server_address[1]
        log.info("DICOM node %s listening on %s:%d", self.ae.ae_title, self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.ae.shutdown()

    def _ssl_context(self) -> ssl.SSLContext | None:
        settings = self.hub.settings
        if not (settings.dicom_tls_cert and settings.dicom_tls_key):
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.dicom_tls_cert, settings.dicom_tls_key)
        if settings.dicom_tls_ca:
            context.load_verify_locations(settings.dicom_tls_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    # --- association admission ---------------------------------------------------------------

    def admit(self, assoc: Association) -> bool:
        """Decide once per association whether its caller may associate; remember who it is."""
        if assoc in self._callers or assoc in self._unchecked:
            return True
        ae_title = (assoc.requestor.ae_title or "").strip()
        try:
            self._callers[assoc] = self._identify(assoc)
        except Overloaded as exc:
            # The registry cannot be read (database down). Refusing now would say "calling AE
            # title not recognised", a permanent error that sends a technician hunting for a
            # misconfiguration; admitting and answering each C-STORE "Out of Resources"
            # until the caller can be checked tells the modality to retry later.
            log.warning(
                "admitting AE %r at %s unchecked, registry unavailable: %s",
                ae_title,
                assoc.requestor.address,
                exc,
            )
            self._unchecked.add(assoc)
        except DomainError as exc:
            log.warning(
                "refused association from AE %r at %s: %s", ae_title, assoc.requestor.address, exc
            )
            return False
        return True

    def _identify(self, assoc: Association) -> Caller:
        """Raises CallerRefused, Overloaded (database down)."""
        ae_title = (assoc.requestor.ae_title or "").strip()
        address = assoc.requestor.address
        settings = self.hub.settings
        with transaction(self.hub.factory) as session:
            caller = authorize_caller(
                session,
                ae_title,
                address,
                accept_unknown=settings.accept_unknown_callers,
                unknown_institution_code=settings.unknown_caller_institution,
            )
        if not caller.registered:
            log.info(
                "accepted unregistered AE %r at %s (accept_unknown_callers)", ae_title, address
            )
        return caller

    def _caller_for(self, assoc: Association) -> Caller:
        """The checked caller of an association. Raises CallerRefused, Overloaded."""
        caller = self._callers.get(assoc)
        if caller is not None:
            return caller
        if assoc not in self._unchecked:
            raise CallerRefused("caller not admitted")
        caller = self._identify(assoc)
        self._unchecked.discard(assoc)
        self._callers[assoc] = caller
        return caller

    # --- event handlers ----------------------------------------------------------------------

    def _on_connection(self, event: Any) -> None:
        # pynetdicom leaves Nagle on; each C-STORE response then waits ~40 ms for a delayed ACK.
        assoc_socket = event.assoc.dul.socket
        sock = getattr(assoc_socket, "socket", None)
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # pynetdicom reads a PDU 4 KiB per recv(); a 128 KiB PDU then costs 32 system calls,
            # each giving up and re-taking the GIL, which other busy threads (uploads, other
            # associations) hold for up to the switch interval. Read what the kernel has.
            assoc_socket.recv = _reader(sock)

    def _on_rejected(self, event: Any) -> None:
        self._callers.pop(event.assoc, None)

    def _on_echo(self, event: Any) -> int:
        return 0x0000

    def _on_store(self, event: Any) -> Dataset | int:
        _BusyPolling.mark_busy(event.assoc)
        try:
            caller = self._caller_for(event.assoc)
        except DomainError as exc:
            return _status(wire_status(exc)[1], str(exc))
        origin = Origin(
            source=IngestSource.DIMSE,
            institution_id=caller.institution_id,
            ae_title=caller.ae_title,
            address=caller.address,
        )
        requested_uid = str(event.request.AffectedSOPInstanceUID or "")
        try:
            data = event.encoded_dataset()
            result = self.hub.archive.ingest(data, origin)
        except DomainError as exc:
            status = wire_status(exc)[1]
            log.warning("C-STORE from %s refused with 0x%04X: %s", caller.ae_title, status, exc)
            return _status(status, str(exc))
        except Exception:
            log.exception("C-STORE from %s failed unexpectedly", caller.ae_title)
            return _status(0x0110, "processing failure")
        if requested_uid and result.sop_instance_uid != requested_uid:
            # The dataset is stored (it is whole and valid); the sender's command disagreed.
            log.warning(
                "C-STORE from %s: command and dataset SOP Instance UIDs differ", caller.ae_title
            )
        _BusyPolling.mark_busy(event.assoc)  # the next request is likely on its way
        return 0x0000


def _reader(sock: socket.socket) -> Callable[[int], bytearray]:
    """AssociationSocket.recv with large reads: block until `nr_bytes` are read or the peer
    closes (then return what was read), like pynetdicom's own."""

    def recv(nr_bytes: int) -> bytearray:
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        nr_read = 0
        while nr_read < nr_bytes:
            got = sock.recv_into(view[nr_read:], nr_bytes - nr_read)
            if not got:
                break
            nr_read += got
        view.release()
        if nr_read < nr_bytes:
            del buffer[nr_read:]
        return buffer

    return recv


def _status(code: int, comment: str) -> Dataset:
    """A status with an Error Comment (LO, 64 characters) so the sender sees why."""
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment.encode("ascii", "replace").decode()[:64]
    return ds
