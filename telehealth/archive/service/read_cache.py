"""A local disk cache of recently received instances, in front of the object store.

A township study is usually read within hours of arriving. Once uploaded, its spool file is
moved here instead of being deleted (a rename, no copy), so the reader's viewer gets it from
local disk, often from the page cache, rather than one object-store GET per instance.
Entries are named by object key, which contains the content's sha256: an entry can never be
stale, only missing. The oldest entries go when the cache passes its size budget.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

_EVICT_TO = 0.9  # evict down to this fraction of the budget, so eviction runs seldom


class ReadCache:
    def __init__(self, folder: Path, *, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._total = 0
        if self.enabled:
            folder.mkdir(parents=True, exist_ok=True)
            self._total = sum(entry.stat().st_size for entry in os.scandir(folder))

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def _path(self, key: str) -> Path:
        return self.folder / key.replace("/", "_")

    def adopt(self, path: Path, key: str) -> None:
        """Move a file that is now safely in the object store into the cache (or delete it)."""
        if not self.enabled:
            path.unlink(missing_ok=True)
            return
        try:
            size = path.stat().st_size
            os.replace(path, self._path(key))
        except FileNotFoundError:
            return
        except OSError as exc:  # another filesystem, say: the cache is only an optimisation
            log.warning("could not cache an uploaded instance: %s", exc.strerror)
            path.unlink(missing_ok=True)
            return
        self._added(size)

    def put(self, key: str, data: bytes) -> None:
        """Keep bytes just read from the object store (an older study being read again).

        Synced before it is renamed into place: a torn entry after a power cut would be
        served as the instance. Call it off the request path; it costs an fsync.
        """
        path = self._path(key)
        if not self.enabled or path.exists():
            return
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        try:
            with open(temporary, "xb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        except OSError as exc:
            log.warning("could not cache a read instance: %s", exc.strerror)
            temporary.unlink(missing_ok=True)
            return
        self._added(len(data))

    def get(self, key: str) -> bytes | None:
        if not self.enabled:
            return None
        path = self._path(key)
        try:
            data = path.read_bytes()
            os.utime(path)  # recently read entries stay longest
        except FileNotFoundError:
            return None
        return data

    def _added(self, size: int) -> None:
        with self._lock:
            self._total += size
            over = self._total > self.max_bytes
        if over:
            self._evict()

    def _evict(self) -> None:
        with self._lock:
            entries = []
            for entry in os.scandir(self.folder):
                try:
                    stat = entry.stat()
                except FileNotFoundError:
                    continue
                entries.append((stat.st_mtime, stat.st_size, entry.path))
            total = sum(size for _, size, _ in entries)
            entries.sort()
            for _, size, path in entries:
                if total <= self.max_bytes * _EVICT_TO:
                    break
                Path(path).unlink(missing_ok=True)
                total -= size
            self._total = total
