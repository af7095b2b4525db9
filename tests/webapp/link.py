"""A township clinic's link that drops: a TCP relay between the browser and a served hub.

Chromium's network emulation throttles and reports "offline" to the page, but lets requests
already under way finish; a real link going down breaks them half-sent. `Link.cut()` does
that: every open connection is reset (the hub sees a body end mid-part, the browser a network
error) and new ones are refused until `restore()`.
"""

from __future__ import annotations

import socket
import struct
import threading
from types import TracebackType


class Link:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.down = False
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="link-accept", daemon=True).start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Reset every connection and refuse new ones."""
        with self._lock:
            self.down = True
            sockets, self._open = self._open, set()
        for s in sockets:
            _reset(s)

    def restore(self) -> None:
        self.down = False

    def close(self) -> None:
        self.cut()
        self._server.close()

    def __enter__(self) -> Link:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            if self.down:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._open |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            _reset(sink)  # one side broke: so does the other, as on a real link


def _reset(s: socket.socket) -> None:
    """Close with RST rather than FIN: the peer sees the connection broken, not finished."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    except OSError:
        pass
