"""The hub's DICOM application entity: C-ECHO and C-STORE into the one ingest path.

A front door in the STYLE.md sense: it turns DIMSE into service calls and domain errors back
into DIMSE statuses (through telehealth.errors), and knows nothing of storage.
"""

from __future__ import annotations

import gc
import logging
import socket
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
from pynetdicom.pdu_primitives import (
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node import fast_store, tls
from dicom_node.listener import SharedListener
from dicom_node.query_retrieve import SOP_CLASSES as QUERY_RETRIEVE_SOP_CLASSES
from dicom_node.query_retrieve import QueryRetrieve
from telehealth.archive.models import IngestSource
from telehealth.archive.service import IncomingInstance, Origin
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
        self._node = node
        self._limit = 10
        super().__init__(ae_title)

    @property  # type: ignore[override]
    def maximum_associations(self) -> int:
        # pynetdicom counts only its own acceptors; the fast path's share one limit with them.
        return max(0, self._limit - self._node.fast_associations)

    @maximum_associations.setter
    def maximum_associations(self, value: int) -> None:
        self._limit = max(1, value)

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
    """Lets several DICOM node processes serve one port, so parallel associations use more
    than one core: on the listener `telehealth serve` shares among them (dicom_node.listener,
    the least busy process accepting), or else each on its own socket with SO_REUSEPORT (the
    kernel spreading callers by a hash of their address). Associations that only store (or
    echo) are served by fast_store; pynetdicom gets all others."""

    _plans: fast_store.Plans | None = None
    _listener: SharedListener | None = None
    _open_requests = 0  # connections accepted whose request thread still runs

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._requests_lock = threading.Lock()  # before super(): it binds and activates
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        listener = self.ae._node.listener  # type: ignore[attr-defined]
        if listener is None:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            super().server_bind()
            return
        self.socket.close()
        self.socket = listener.socket
        self.server_address = listener.address
        self._listener = listener

    def server_activate(self) -> None:
        if self._listener is None:
            super().server_activate()
        else:
            self._listener.publish(self._serving())

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        listener = self._listener
        if listener is not None and not listener.take_pending(self._serving):
            # socketserver treats OSError as "no request this time round".
            raise BlockingIOError("a less busy DICOM node process took the connection")
        request = super().get_request()  # BlockingIOError when another process was quicker
        with self._requests_lock:
            self._open_requests += 1
        if listener is not None:
            listener.publish(self._serving())
        return request

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._requests_lock:
                self._open_requests -= 1
            if self._listener is not None:
                self._listener.publish(self._serving())

    def service_actions(self) -> None:
        super().service_actions()
        if self._listener is not None:  # pynetdicom's associations end without telling us
            self._listener.publish(self._serving())

    def server_close(self) -> None:
        if self._listener is None:
            super().server_close()
        else:
            self._listener.stop_listening()

    def _serving(self) -> int:
        """Associations this process serves: fast ones run in their request thread,
        pynetdicom's in threads of their own."""
        return self._open_requests + len(self.active_associations)

    def finish_request(self, request: Any, client_address: Any) -> None:
        node = self.ae._node  # type: ignore[attr-defined]
        if self.ssl_context is not None or not node.hub.settings.dicom_fast_store:
            super().finish_request(request, client_address)
            return
        if self._plans is None:  # two first callers at once merely build it twice
            self._plans = fast_store.Plans(self.contexts, node.acceptor_user_information())
        fast_store.serve(
            node,
            request,
            str(client_address[0]),
            self._plans,
            lambda: super(_SharedPortServer, self).finish_request(request, client_address),
        )


class DicomNode:
    def __init__(self, hub: Hub, listener: SharedListener | None = None) -> None:
        """`listener`: a socket shared with the hub's other DICOM node processes; without
        one the node binds its own (host and port from the settings)."""
        self.hub = hub
        self.listener = listener
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
        # Query/retrieve (dicom_node.query_retrieve). C-GET's C-STORE sub-operations need no
        # context here: unrestricted storage accepts the SCP role a C-GET caller proposes.
        for sop_class in QUERY_RETRIEVE_SOP_CLASSES:
            self.ae.add_supported_context(sop_class)
        self.ae.connection_timeout = 10  # a C-MOVE destination that does not answer
        self.query_retrieve = QueryRetrieve(hub, self._caller_for)
        self._server: ThreadedAssociationServer | None = None
        self._callers: weakref.WeakKeyDictionary[Association, Caller] = weakref.WeakKeyDictionary()
        # Admitted while the registry could not be read; checked at their next C-STORE.
        self._unchecked: weakref.WeakSet[Association] = weakref.WeakSet()
        self._fast: set[fast_store.FastAssociation] = set()
        self._fast_lock = threading.Lock()

    @property
    def is_listening(self) -> bool:
        return self._server is not None

    @property
    def listening_processes(self) -> int:
        """The hub's DICOM node processes accepting associations on this node's port."""
        if self.listener is not None:
            return sum(load is not None for load in self.listener.loads())
        return int(self.is_listening)

    def start(self) -> None:
        handlers = [
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self.query_retrieve.on_find),
            (evt.EVT_C_GET, self.query_retrieve.on_get),
            (evt.EVT_C_MOVE, self.query_retrieve.on_move),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        self._server = self.ae.start_server(
            (self.host, self.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=tls.server_context(self.hub.settings),
        )
        self.port = self._server.server_address[1]
        log.info("DICOM node %s listening on %s:%d", self.ae.ae_title, self.host, self.port)
        # What exists now (modules, mappers, settings) lives as long as the process. Without
        # this the collector walks it all again and again while instances arrive: ~5% of the
        # CPU of a hub process storing from several associations.
        gc.freeze()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        with self._fast_lock:
            fast = list(self._fast)
        for assoc in fast:
            assoc.close()
        self.ae.shutdown()

    # --- association admission ---------------------------------------------------------------

    def admit(self, assoc: Association) -> bool:
        """Decide once per association whether its caller may associate; remember who it is."""
        if assoc in self._callers or assoc in self._unchecked:
            return True
        admitted, caller = self.check_caller(
            (assoc.requestor.ae_title or "").strip(), assoc.requestor.address
        )
        if caller is not None:
            self._callers[assoc] = caller
        elif admitted:
            self._unchecked.add(assoc)
        return admitted

    def check_caller(self, ae_title: str, address: str) -> tuple[bool, Caller | None]:
        """Whether a caller may associate, and who it is (None: admitted unchecked)."""
        try:
            return True, self.identify(ae_title, address)
        except Overloaded as exc:
            # The registry cannot be read (database down). Refusing now would say "calling AE
            # title not recognised", a permanent error that sends a technician hunting for a
            # misconfiguration; admitting and answering each C-STORE "Out of Resources"
            # until the caller can be checked tells the modality to retry later.
            log.warning(
                "admitting AE %r at %s unchecked, registry unavailable: %s", ae_title, address, exc
            )
            return True, None
        except DomainError as exc:
            log.warning("refused association from AE %r at %s: %s", ae_title, address, exc)
            return False, None

    def identify(self, ae_title: str, address: str) -> Caller:
        """Raises CallerRefused, Overloaded (database down)."""
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
        caller = self.identify((assoc.requestor.ae_title or "").strip(), assoc.requestor.address)
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
            data = event.encoded_dataset()
        except Exception:
            log.exception("C-STORE: the received dataset could not be framed")
            return _status(0x0110, "processing failure")
        status, comment = self.store(
            data,
            str(event.request.AffectedSOPInstanceUID or ""),
            lambda: self._caller_for(event.assoc),
        )
        _BusyPolling.mark_busy(event.assoc)  # the next request is likely on its way
        return _status(status, comment) if status else 0x0000

    def receive(self, caller: Caller) -> IncomingInstance:
        """Start keeping an instance from an admitted caller as its bytes arrive (fast path);
        `store` finishes it."""
        return self.hub.archive.receive(self._origin(caller))

    def store(
        self,
        data: bytes | bytearray,
        requested_uid: str,
        caller_of: Callable[[], Caller],
        incoming: IncomingInstance | None = None,
    ) -> tuple[int, str]:
        """C-STORE a received Part 10 instance into the archive, for either path.

        `incoming` is the instance `receive` started, whose bytes (`data`) were added as they
        came. Returns the DIMSE status and an Error Comment; `caller_of` gives the
        association's checked caller or raises CallerRefused/Overloaded.
        """
        try:
            caller = caller_of()
        except DomainError as exc:
            if incoming is not None:
                incoming.discard()
            return wire_status(exc)[1], error_comment(str(exc))
        try:
            if incoming is not None:
                result = incoming.keep(data)
            else:
                result = self.hub.archive.ingest(data, self._origin(caller))
        except DomainError as exc:
            status = wire_status(exc)[1]
            log.warning("C-STORE from %s refused with 0x%04X: %s", caller.ae_title, status, exc)
            return status, error_comment(str(exc))
        except Exception:
            log.exception("C-STORE from %s failed unexpectedly", caller.ae_title)
            return 0x0110, "processing failure"
        if requested_uid and result.sop_instance_uid != requested_uid:
            # The dataset is stored (it is whole and valid); the sender's command disagreed.
            log.warning(
                "C-STORE from %s: command and dataset SOP Instance UIDs differ", caller.ae_title
            )
        return 0x0000, ""

    @staticmethod
    def _origin(caller: Caller) -> Origin:
        return Origin(
            source=IngestSource.DIMSE,
            institution_id=caller.institution_id,
            ae_title=caller.ae_title,
            address=caller.address,
        )

    # --- the fast path's share of the node (fast_store) ---------------------------------------

    @property
    def fast_associations(self) -> int:
        return len(self._fast)

    def fast_association_started(self, assoc: fast_store.FastAssociation) -> bool:
        """Count a fast association in; False when that would pass the node's limit."""
        pynetdicom_acceptors = sum(1 for a in self.ae.active_associations if a.is_acceptor)
        with self._fast_lock:
            if len(self._fast) + pynetdicom_acceptors >= self.hub.settings.max_associations:
                return False
            self._fast.add(assoc)
            return True

    def fast_association_ended(self, assoc: fast_store.FastAssociation) -> None:
        with self._fast_lock:
            self._fast.discard(assoc)

    def acceptor_user_information(self) -> list[Any]:
        """The user information items of our A-ASSOCIATE-AC, as pynetdicom sends them."""
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = self.ae.maximum_pdu_size
        class_uid = ImplementationClassUIDNotification()
        class_uid.implementation_class_uid = self.ae.implementation_class_uid
        items: list[Any] = [max_length, class_uid]
        if self.ae.implementation_version_name:
            version = ImplementationVersionNameNotification()
            version.implementation_version_name = self.ae.implementation_version_name
            items.append(version)
        return items


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


def error_comment(text: str) -> str:
    """An Error Comment (0000,0902): LO, at most 64 characters, plain ASCII."""
    return text.encode("ascii", "replace").decode()[:64]


def _status(code: int, comment: str) -> Dataset:
    """A status with an Error Comment so the sender sees why."""
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = error_comment(comment)
    return ds
