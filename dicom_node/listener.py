"""One listening socket shared by the hub's DICOM node processes, the least busy one accepting.

With SO_REUSEPORT each process has its own accept queue and the kernel picks one by a hash of
the caller's address and port: four modalities sending at once landed 2/2, 3/1 or 4/0 on two
processes, and three associations in one process share its GIL while the other core idles.
Here every process accepts from the same queue, and a table in shared memory says how many
associations each is serving; a process serving more than another waits briefly for that one
to take the pending connection (it takes it itself when the other does not come).

`telehealth serve` opens the listener and hands its socket and table to the worker processes
it starts (file descriptors inherited, named in TELEHEALTH_DICOM_LISTENER).
"""

from __future__ import annotations

import mmap
import os
import select
import socket
import time
from collections.abc import Callable

ENVIRONMENT_VARIABLE = "TELEHEALTH_DICOM_LISTENER"
# How long a busier process leaves a pending connection to a less busy one. A peer whose
# acceptor thread does not get the GIL (or that died) only delays an association this much.
PATIENCE_SECONDS = 0.05
_POLL_SECONDS = 0.001
# A slot whose process is not (or no longer) accepting: never the least busy.
_NOT_LISTENING = 2**31 - 1
_SLOT_BYTES = 4


class SharedListener:
    def __init__(self, sock: socket.socket, table_fd: int, slot: int, processes: int) -> None:
        self.socket = sock
        self.slot = slot
        self.processes = processes
        self._table_fd = table_fd
        self._map = mmap.mmap(table_fd, processes * _SLOT_BYTES)
        self._table = memoryview(self._map).cast("i")
        # Non-blocking: a process that lost the race to a connection goes back to its loop
        # instead of waiting in accept() for the next one.
        sock.setblocking(False)

    @classmethod
    def open(cls, host: str, port: int, processes: int, backlog: int = 128) -> SharedListener:
        """Bind and listen (slot 0: the opening process), with a table for `processes`."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(backlog)
        except OSError:
            sock.close()
            raise
        table_fd = os.memfd_create("telehealth-dicom-load")
        os.ftruncate(table_fd, processes * _SLOT_BYTES)
        listener = cls(sock, table_fd, 0, processes)
        for slot in range(processes):
            listener._table[slot] = _NOT_LISTENING
        return listener

    def handoff(self, slot: int) -> tuple[dict[str, str], tuple[int, ...]]:
        """The environment and file descriptors that let a child process take `slot`."""
        if not 0 < slot < self.processes:
            raise ValueError(f"slot {slot} outside 1..{self.processes - 1}")
        fds = (self.socket.fileno(), self._table_fd)
        value = f"{fds[0]},{fds[1]},{slot},{self.processes}"
        return {ENVIRONMENT_VARIABLE: value}, fds

    @classmethod
    def inherited(cls) -> SharedListener | None:
        """The listener a parent handed to this process (`handoff`), if any."""
        value = os.environ.get(ENVIRONMENT_VARIABLE)
        if not value:
            return None
        sock_fd, table_fd, slot, processes = (int(part) for part in value.split(","))
        return cls(socket.socket(fileno=sock_fd), table_fd, slot, processes)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.socket.getsockname()[:2]
        return str(host), int(port)

    def publish(self, serving: int) -> None:
        """Tell the other processes how many associations this one serves."""
        self._table[self.slot] = serving

    def mark_not_listening(self, slot: int) -> None:
        """A process that died cannot say so itself: its parent says it for it."""
        self._table[slot] = _NOT_LISTENING

    def loads(self) -> list[int | None]:
        """Associations served by each process; None for one not listening."""
        return [None if load == _NOT_LISTENING else load for load in self._table]

    def take_pending(self, serving: Callable[[], int]) -> bool:
        """Whether this process should accept the connection that is waiting, now.

        While another process serves fewer associations, leave it the connection for up to
        PATIENCE_SECONDS; False when someone took it meanwhile.
        """
        deadline = time.monotonic() + PATIENCE_SECONDS
        while True:
            mine = serving()
            self.publish(mine)
            if mine <= self._least_busy_peer() or time.monotonic() >= deadline:
                return True
            time.sleep(_POLL_SECONDS)
            if not self._pending():
                return False

    def stop_listening(self) -> None:
        """Leave the queue to the others, and close this process's descriptor of it (never
        shutdown(): that would stop the socket for every process)."""
        self.publish(_NOT_LISTENING)
        self.socket.close()

    def close(self) -> None:
        self.stop_listening()
        self._table.release()
        self._map.close()
        os.close(self._table_fd)

    def _least_busy_peer(self) -> int:
        return min(
            (load for slot, load in enumerate(self._table) if slot != self.slot),
            default=_NOT_LISTENING,
        )

    def _pending(self) -> bool:
        readable, _, _ = select.select([self.socket], [], [], 0)
        return bool(readable)
