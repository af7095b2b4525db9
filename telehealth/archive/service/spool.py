"""The local spool: where received bytes become durable before Success is answered."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from telehealth.errors import Overloaded

# Touched at every arrival; its mtime tells uploaders in any process that a modality is sending.
ACTIVITY_MARKER = ".activity"


class SpoolFull(Overloaded):
    """The spool disk is too full to accept another instance."""


class SpoolUnavailable(Overloaded):
    """The spool could not be written (disk error, permissions)."""


class Spool:
    def __init__(self, folder: Path, *, min_free_bytes: int = 0) -> None:
        self.folder = folder
        self.quarantine = folder / "quarantine"
        self.min_free_bytes = min_free_bytes
        folder.mkdir(parents=True, exist_ok=True)
        self.quarantine.mkdir(exist_ok=True)

    @staticmethod
    def new_name(institution_id: int) -> str:
        """A fresh spool file name; it carries the sending institution (see write)."""
        return f"{uuid.uuid4().hex}-i{institution_id}.dcm"

    def write(self, data: bytes, institution_id: int, name: str | None = None) -> str:
        """Write bytes to a new spool file, synced to disk; return its name.

        The name carries the sending institution so that a file found after a crash, before
        its index row was committed, can still be attributed to its owner. `name` (from
        new_name) lets a caller know the name before the write finishes.

        Raises SpoolFull when less than the configured reserve is free, SpoolUnavailable on an
        I/O error; in both cases nothing is left behind.
        """
        if self.free_bytes() - len(data) < self.min_free_bytes:
            raise SpoolFull("spool disk is full")
        name = name or self.new_name(institution_id)
        path = self.folder / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                # Success (0x0000) promises the instance is safe. Only a synced file keeps
                # that promise. On ext4/xfs the fsync of a new file also commits its entry.
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise SpoolUnavailable(f"spool write failed: {exc.strerror}") from exc
        return name

    def mark_activity(self) -> None:
        """Record that an instance is arriving, for every process sharing this spool."""
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
