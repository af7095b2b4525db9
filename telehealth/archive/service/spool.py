"""The local spool: where received bytes become durable before Success is answered."""

from __future__ import annotations

import os
import shutil
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
# Empty files made ahead of need (see start_write); not instances, so names() skips them.
SPARE_SUFFIX = ".spare"


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

    @staticmethod
    def new_name(institution_id: int) -> str:
        """A fresh spool file name; it carries the sending institution (see write)."""
        return f"{uuid.uuid4().hex}-i{institution_id}.dcm"

    def write(self, data: bytes | bytearray, institution_id: int, name: str | None = None) -> str:
        """Write bytes to a new spool file, synced to disk; return its name.

        The name carries the sending institution so that a file found after a crash, before
        its index row was committed, can still be attributed to its owner. `name` (from
        new_name) lets a caller know the name before the write finishes.

        Raises SpoolFull when less than the configured reserve is free, SpoolUnavailable on an
        I/O error; in both cases nothing is left behind.
        """
        name = name or self.new_name(institution_id)
        self.sync(self.start_write(data, name), name)
        return name

    def start_write(self, data: bytes | bytearray, name: str) -> int:
        """The first half of write: the bytes in a new file, not yet synced; its descriptor.

        The two halves let a caller sync on another thread: the write is a copy into the page
        cache, and handing it over too would make the writer wait its turn for the GIL
        between the system calls. Raises SpoolFull, SpoolUnavailable (nothing left behind).
        """
        if self.free_bytes() - len(data) < self.min_free_bytes:
            raise SpoolFull("spool disk is full")
        path = self.folder / name
        try:
            fd = self._new_file(path)
        except OSError as exc:
            raise SpoolUnavailable(f"spool write failed: {exc.strerror}") from exc
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise SpoolUnavailable(f"spool write failed: {exc.strerror}") from exc
        return fd

    def _new_file(self, path: Path) -> int:
        """A new empty file at `path`, open for writing: a spare renamed when there is one.

        Allocating an inode can cost ext4 ~0.4 ms in a directory of a block group that saw
        many files come and go (a spool does), while the modality waits for the answer; a
        rename costs ~0.02 ms. Names are fresh UUIDs, so a rename cannot replace a file.
        """
        while True:
            with self._spares_lock:
                spare = self._spares.pop() if self._spares else None
            if spare is None:
                return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.rename(spare, path)
            except FileNotFoundError:
                continue  # another process took it
            return os.open(path, os.O_WRONLY)

    def make_spares(self) -> None:
        """Top up the spare files start_write renames; for a background thread."""
        while len(self._spares) < self.spares_wanted:
            path = self.folder / f"{uuid.uuid4().hex}{SPARE_SUFFIX}"
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except OSError:
                return  # start_write creates files itself, and reports what is wrong
            with self._spares_lock:
                self._spares.append(str(path))

    @property
    def spares_low(self) -> bool:
        return len(self._spares) < self.spares_wanted // 2

    def sync(self, fd: int, name: str) -> None:
        """The second half of write: sync and close. Raises SpoolUnavailable (file removed)."""
        try:
            try:
                # Success (0x0000) promises the instance is safe. Only a synced file keeps
                # that promise. On ext4/xfs the fsync of a new file also commits its entry.
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            (self.folder / name).unlink(missing_ok=True)
            raise SpoolUnavailable(f"spool write failed: {exc.strerror}") from exc

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


def spool_institution(name: str) -> int:
    """The institution a spool file was received for (see Spool.write)."""
    return int(name.rsplit("-i", 1)[1].removesuffix(".dcm"))
