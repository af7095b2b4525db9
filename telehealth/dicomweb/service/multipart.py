"""multipart/related bodies parsed as they arrive, and framed to send (RFC 2046, RFC 2387).

A push parser: feed it chunks of any size, get part starts (with headers), data pieces and
part ends back, holding only what a delimiter split across two chunks needs. The writer side
gives the framing around each part, so a sender can pass the parts' bytes on untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from telehealth.dicomweb.service.common import BadDicomwebRequest

MAX_HEADER_BYTES = 16 * 1024  # one part's header block; senders write two short lines
# Bytes before the first delimiter; a body that is not multipart at all fails this fast.
MAX_PREAMBLE_BYTES = 64 * 1024
_PADDING = b" \t"  # transport padding allowed between a boundary and its line break


class MalformedMultipart(BadDicomwebRequest):
    """The body is not the multipart/related its Content-Type announces."""


@dataclass(frozen=True)
class PartStart:
    headers: dict[str, str]  # names in lower case


@dataclass(frozen=True)
class PartData:
    data: bytes


@dataclass(frozen=True)
class PartEnd:
    complete: bool  # False: the body ended inside this part


Event = PartStart | PartData | PartEnd


class _State(Enum):
    PREAMBLE = 1
    HEADERS = 2
    BODY = 3
    EPILOGUE = 4


def _after_boundary(buf: bytearray, k: int) -> tuple[str, int]:
    """What follows a boundary that ends at k: ("part" | "close", end of the delimiter line),
    ("more", 0) when the bytes so far cannot tell, ("no", 0) when it is not a delimiter."""
    n = len(buf)
    if buf[k : k + 2] == b"--":
        return "close", k + 2
    if k == n or (k + 1 == n and buf[k] == 0x2D):  # nothing yet, or a lone "-"
        return "more", 0
    j = k
    while j < n and buf[j] in _PADDING:
        j += 1
    if j == n:
        return ("more", 0) if j - k <= 64 else ("no", 0)
    if buf[j] == 0x0A:  # a bare LF: not RFC 2046, but some senders write it
        return "part", j + 1
    if buf[j] == 0x0D:
        if j + 1 == n:
            return "more", 0
        if buf[j + 1] == 0x0A:
            return "part", j + 2
    return "no", 0


class MultipartReader:
    """A push parser for one multipart body: feed() chunks of any size, then close().

    Delimiters are found wherever the chunks split them. Lenient where senders differ: a bare
    LF for CRLF, transport padding after a boundary, a final part whose close delimiter lacks
    its "--". Part data is handed out as it arrives, never collected here.
    Raises MalformedMultipart for an invalid boundary, no delimiter within MAX_PREAMBLE_BYTES,
    a header block over MAX_HEADER_BYTES or a line in it that is not a header.
    """

    def __init__(self, boundary: str) -> None:
        # RFC 2046 §5.1.1: 1 to 70 characters.
        if not 1 <= len(boundary) <= 70 or not boundary.isascii() or not boundary.isprintable():
            raise MalformedMultipart(f"invalid multipart boundary {boundary[:80]!r}")
        self._delimiter = b"\n--" + boundary.encode("ascii")
        # A line break before the body: the first delimiter may open it without one.
        self._buf = bytearray(b"\n")
        self._state = _State.PREAMBLE
        self._skipped = 0
        self._headers: dict[str, str] = {}
        self._last_header = ""
        self._header_bytes = 0

    @property
    def finished(self) -> bool:
        """The close delimiter was seen (or close() was called): what follows is ignored."""
        return self._state is _State.EPILOGUE

    def feed(self, data: bytes) -> list[Event]:
        if self._state is _State.EPILOGUE:
            return []
        self._buf += data
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def close(self) -> list[Event]:
        """The body has ended: a part still open ends incomplete.

        Raises MalformedMultipart when no delimiter was ever found.
        """
        state, buf = self._state, self._buf
        if state is _State.PREAMBLE:
            raise MalformedMultipart("the body holds no multipart delimiter")
        events: list[Event] = []
        if state is _State.BODY:
            i = buf.find(self._delimiter)
            if i >= 0 and not bytes(buf[i + len(self._delimiter) :]).strip(b" \t\r\n-"):
                # The last delimiter without its "--": the part itself arrived whole.
                start = _data_end(buf, i)
                if start:
                    events.append(PartData(bytes(buf[:start])))
                events.append(PartEnd(complete=True))
            else:
                if buf:
                    events.append(PartData(bytes(buf)))
                events.append(PartEnd(complete=False))
        elif state is _State.HEADERS and (self._header_bytes or bytes(buf).strip()):
            events += [PartStart(dict(self._headers)), PartEnd(complete=False)]
        self._state = _State.EPILOGUE
        buf.clear()
        return events

    def _step(self, events: list[Event]) -> bool:
        """Parse what the buffer allows; False when more bytes are needed."""
        if self._state is _State.HEADERS:
            return self._header_line(events)
        if self._state is _State.EPILOGUE:
            self._buf.clear()
            return False
        buf = self._buf
        kind, start, end = self._find_delimiter()
        if kind in ("none", "more"):
            # Keep what could be the start of a delimiter (its CR included); pass on the rest.
            cut = start if kind == "more" else len(buf) - len(self._delimiter)
            if cut > 0:
                self._pass_on(events, bytes(buf[:cut]))
                del buf[:cut]
            return False
        self._pass_on(events, bytes(buf[:start]))
        if self._state is _State.BODY:
            events.append(PartEnd(complete=True))
        del buf[:end]
        if kind == "close":
            self._state = _State.EPILOGUE
            buf.clear()
        else:
            self._state = _State.HEADERS
            self._headers, self._last_header, self._header_bytes = {}, "", 0
        return True

    def _find_delimiter(self) -> tuple[str, int, int]:
        """("part" | "close" | "more" | "none", where the data before it ends, end of it)."""
        buf, pos = self._buf, 0
        while True:
            i = buf.find(self._delimiter, pos)
            if i < 0:
                return "none", 0, 0
            kind, end = _after_boundary(buf, i + len(self._delimiter))
            if kind != "no":
                return kind, _data_end(buf, i), end
            pos = i + 1  # "--boundary" followed by other text is data (RFC 2046)

    def _pass_on(self, events: list[Event], data: bytes) -> None:
        if not data:
            return
        if self._state is _State.BODY:
            events.append(PartData(data))
            return
        self._skipped += len(data)  # the preamble, ignored
        if self._skipped > MAX_PREAMBLE_BYTES:
            raise MalformedMultipart(
                f"no multipart delimiter in the first {MAX_PREAMBLE_BYTES} bytes of the body"
            )

    def _header_line(self, events: list[Event]) -> bool:
        buf = self._buf
        i = buf.find(b"\n")
        if i < 0 or self._header_bytes + i + 1 > MAX_HEADER_BYTES:
            if self._header_bytes + len(buf) > MAX_HEADER_BYTES:
                raise MalformedMultipart(f"part headers longer than {MAX_HEADER_BYTES} bytes")
            return False
        self._header_bytes += i + 1
        line = bytes(buf[:i]).rstrip(b"\r").decode("latin-1")
        del buf[: i + 1]
        if not line:
            events.append(PartStart(dict(self._headers)))
            self._state = _State.BODY
            return True
        if line[0] in " \t" and self._last_header:  # obsolete line folding (RFC 5322 §3.2.2)
            self._headers[self._last_header] += " " + line.strip()
            return True
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise MalformedMultipart(f"not a part header line: {line[:60]!r}")
        self._last_header = name.strip().lower()
        self._headers[self._last_header] = value.strip()
        return True


def part_head(boundary: str, content_type: str, length: int, *, first: bool) -> bytes:
    """What goes before a part's data: the line break ending the previous part (the CRLF
    before a delimiter belongs to the delimiter), the delimiter, and the part's headers."""
    lead = "" if first else "\r\n"
    return (
        f"{lead}--{boundary}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
    ).encode("ascii")


def close_delimiter(boundary: str, *, after_part: bool) -> bytes:
    """The close delimiter that ends the body, after the last part (if any)."""
    lead = "\r\n" if after_part else ""
    return f"{lead}--{boundary}--\r\n".encode("ascii")


def _data_end(buf: bytearray, i: int) -> int:
    """The CR before a delimiter's LF belongs to the delimiter, not to the data (RFC 2046)."""
    return i - 1 if i > 0 and buf[i - 1] == 0x0D else i
