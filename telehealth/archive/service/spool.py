"""The local spool: where received bytes become durable before Success is answered."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from telehealth.errors import Overloaded

# Touched at every arrival; its mtime tells uploaders in any process that a modality is sending.
ACTIVITY_MARKER = ".activity"
# Uploaders look back half a second; touching the marker more often tells them nothing new and
# costs a journaled inode update per instance.
ACTIVITY_RESOLUTION_SECONDS = 0.1
# Empty files made ahead of need (see Spool.create); not instances, so names() skips them.
SPARE_SUFFIX = ".spare"
# An instance still arriving (SpoolFile): not an instance yet either.
PART_SUFFIX = ".part"
# Bytes written before the kernel is asked to start writing them to disk (SpoolFile.write).
WRITEBACK_BYTES = 256 * 1024
# A part file untouched this long was left by a process that died: an association idle for
# more than the DICOM node's network timeout (60 s) is aborted.
ABANDONED_AFTER_SECONDS = 300.0
# How long a reading of the spool disk's free space is trusted (Spool.reserve).
FREE_SPACE_TTL_SECONDS = 0.5


class SpoolFull(Overloaded):
    """The spool disk is too full to accept another instance."""


class SpoolUnavailable(Overloaded):
    """The spool could not be written (disk error, permissions)."""


class Spool:
    def __init__(self, folder: Path, *, min_free_bytes: int = 0, spares: int = 8) -> None:
        self.folder = folder
        self.quarantine = folder / "quarantine"
        self.min_free_bytes = min_free_bytes
        self.spares_wanted = spares
        self._marked = -ACTIVITY_RESOLUTION_SECONDS
        folder.mkdir(parents=True, exist_ok=True)
        self.quarantine.mkdir(exist_ok=True)
        # Spares left by any process sharing the folder; a rename claims one, so two processes
        # holding the same name merely see one rename fail.
        self._spares = [e.path for e in os.scandir(folder) if e.name.endswith(SPARE_SUFFIX)]
        self._spares_lock = threading.Lock()
        self._free_lock = threading.Lock()
        self._free = 0
        self._free_read_at = -FREE_SPACE_TTL_SECONDS

    @staticmethod
    def new_name(institution_id: int) -> str:
        """A fresh spool file name; it carries the sending institution, so that a file found
        after a crash, before its index row was committed, can still be attributed to its
        owner (spool_institution)."""
        return f"{uuid.uuid4().hex}-i{institution_id}.dcm"

    def write(self, data: bytes | bytearray, institution_id: int) -> str:
        """Write bytes to a new spool file, synced to disk; return its name.

        Raises SpoolFull when less than the configured reserve is free, SpoolUnavailable on an
        I/O error; in both cases nothing is left behind.
        """
        file = self.create()
        try:
            file.write(data)
            name = self.new_name(institution_id)
            file.keep(name)
        except BaseException:
            file.discard()
            raise
        file.sync()
        return name

    def create(self) -> SpoolFile:
        """A new, empty file for an instance's bytes, under a name that recovery and fsck
        ignore until SpoolFile.keep names it. Raises SpoolUnavailable.

        A spare is renamed when there is one: allocating an inode can cost ext4 ~0.4 ms in a
        directory of a block group that saw many files come and go (a spool does), while the
        modality waits for the answer; a rename costs ~0.02 ms. The rename also claims the
        spare against the other processes sharing the folder.
        """
        path = self.folder / f"{uuid.uuid4().hex}{PART_SUFFIX}"
        try:
            while True:
                with self._spares_lock:
                    spare = self._spares.pop() if self._spares else None
                if spare is None:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    break
                try:
                    os.rename(spare, path)
                except FileNotFoundError:
                    continue  # another process took it
                fd = os.open(path, os.O_WRONLY)
                break
        except OSError as exc:
            raise SpoolUnavailable(f"spool write failed: {exc.strerror}") from exc
        return SpoolFile(self, fd, path)

    def make_spares(self) -> None:
        """Top up the spare files `create` renames; for a background thread."""
        while len(self._spares) < self.spares_wanted:
            path = self.folder / f"{uuid.uuid4().hex}{SPARE_SUFFIX}"
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except OSError:
                return  # create() makes files itself, and reports what is wrong
            with self._spares_lock:
                self._spares.append(str(path))

    @property
    def spares_low(self) -> bool:
        return len(self._spares) < self.spares_wanted // 2

    def reserve(self, size: int) -> None:
        """Raise SpoolFull unless `size` more bytes leave the configured reserve free.

        The file system is asked at most every FREE_SPACE_TTL_SECONDS (a statfs per instance
        adds up), or sooner when what was reserved since could have eaten into the reserve.
        """
        if self.min_free_bytes <= 0:
            return
        with self._free_lock:
            now = time.monotonic()
            if (
                now - self._free_read_at > FREE_SPACE_TTL_SECONDS
                or self._free - size < self.min_free_bytes
            ):
                self._free, self._free_read_at = self.free_bytes(), now
            if self._free - size < self.min_free_bytes:
                raise SpoolFull("spool disk is full")
            self._free -= size

    def remove_abandoned_parts(self, min_age_seconds: float = ABANDONED_AFTER_SECONDS) -> int:
        """Remove files a process that died left half-received (none was answered Success),
        untouched for `min_age_seconds`, so that no receive still going on loses its file.
        Returns how many were removed."""
        cutoff = time.time() - min_age_seconds
        removed = 0
        for entry in os.scandir(self.folder):
            if not entry.name.endswith(PART_SUFFIX):
                continue
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime <= cutoff:
                    os.unlink(entry.path)
                    removed += 1
        return removed

    def mark_activity(self) -> None:
        """Record that an instance is arriving, for every process sharing this spool."""
        now = time.monotonic()
        if now - self._marked < ACTIVITY_RESOLUTION_SECONDS:
            return
        self._marked = now
        try:
            os.utime(self.folder / ACTIVITY_MARKER)
        except FileNotFoundError:
            (self.folder / ACTIVITY_MARKER).touch()

    def last_activity(self) -> float:
        """When an instance last arrived in any process (seconds since the epoch), or 0."""
        try:
            return (self.folder / ACTIVITY_MARKER).stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def path(self, name: str) -> Path:
        return self.folder / name

    def read(self, name: str) -> bytes:
        return (self.folder / name).read_bytes()

    def exists(self, name: str) -> bool:
        return (self.folder / name).exists()

    def remove(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)

    def quarantine_file(self, name: str) -> None:
        """Keep an unreadable spool file aside for a person to look at; never delete it."""
        os.replace(self.folder / name, self.quarantine / name)

    def names(self) -> Iterator[str]:
        for entry in os.scandir(self.folder):
            if entry.is_file() and entry.name.endswith(".dcm"):
                yield entry.name

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.folder).free


class SpoolFile:
    """An instance's bytes on their way into the spool: written as they arrive, named by
    `keep` once the whole instance is there, made durable by `sync`; `discard` drops it.

    Until `keep`, the file has a name (PART_SUFFIX) that recovery, fsck and the other
    processes leave alone, so a receive cut off by a crash leaves no instance behind.
    """

    def __init__(self, spool: Spool, fd: int, path: Path) -> None:
        self.spool = spool
        self.path = path
        self.name = ""  # set by keep
        self.size = 0
        self._fd: int | None = fd
        self._written_back = 0  # bytes the kernel was asked to start writing to disk

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes. Raises SpoolFull, SpoolUnavailable (the caller discards the file)."""
        assert self._fd is not None, "written after sync or discard"
        self.spool.reserve(len(data))
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            raise SpoolUnavailable(f"spool write failed: {exc.strerror}") from exc
        self.size += len(data)
        if self.size - self._written_back >= WRITEBACK_BYTES:
            # Writing back while the rest arrives leaves the fsync before Success ~0.15 ms
            # instead of ~0.5 ms of work for a CT slice.
            start_writeback(self._fd, self._written_back, self.size - self._written_back)
            self._written_back = self.size

    def keep(self, name: str) -> None:
        """Give the file its spool name (Spool.new_name); sync makes the name durable too."""
        try:
            os.rename(self.path, self.spool.folder / name)
        except OSError as exc:
            raise SpoolUnavailable(f"spool write failed: {exc.strerror}") from exc
        self.path, self.name = self.spool.folder / name, name

    def sync(self) -> None:
        """Sync and close. Raises SpoolUnavailable, the file removed.

        Success (0x0000) promises the instance is safe, and only a synced file keeps that
        promise. On ext4/xfs the fsync of a new file also commits its directory entry.
        """
        fd, self._fd = self._fd, None
        assert fd is not None, "synced twice or after discard"
        try:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self.path.unlink(missing_ok=True)
            raise SpoolUnavailable(f"spool write failed: {exc.strerror}") from exc

    def discard(self) -> None:
        """Close (if open) and remove the file, whatever its name by now."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.path.unlink(missing_ok=True)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range of a file to disk, without waiting (Linux's
    sync_file_range with SYNC_FILE_RANGE_WRITE); elsewhere, nothing: fsync does it all."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def _load_sync_file_range() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range = _load_sync_file_range()


def spool_institution(name: str) -> int:
    """The institution a spool file was received for (see Spool.new_name)."""
    return int(name.rsplit("-i", 1)[1].removesuffix(".dcm"))
