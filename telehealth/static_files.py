"""Built front-end files served by the hub: gzipped once, kept in memory, cached by content.

Both browser apps the hub serves (its own web app at /app/ and OHIF at /ohif/) are folders
of files built elsewhere. Each file is read, optionally rewritten, gzipped once and kept in
memory within a budget; content-hashed names are cached by browsers for a year, everything
else is revalidated by ETag. A township link then loads each script once.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from fastapi.responses import Response

# Content-hashed names (`12.bundle.b4688cdbdd856b75.js`, `0ddf166f7a343eda.wasm`,
# `Desk.d050c19e1d91e708.js`) never change content: cache them for a year.
HASHED = re.compile(r"(^|[./])[0-9a-f]{16}\.(js|css|wasm|woff2?)$")
COMPRESSIBLE = frozenset(
    {".js", ".css", ".html", ".json", ".jsonc", ".svg", ".wasm", ".map", ".xml", ".webapp", ".ico"}
)
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
# Larger files are streamed as they are rather than held in memory.
MAX_PREPARED_BYTES = 32 * 1024 * 1024

_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".wasm": "application/wasm",  # required for WebAssembly.instantiateStreaming
    ".json": "application/json",
    ".jsonc": "application/json",
    ".map": "application/json",
    ".webapp": "application/json",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
}


def media_type(path: str) -> str:
    known = _MEDIA_TYPES.get(Path(path).suffix)
    return known or mimetypes.guess_type(path)[0] or "application/octet-stream"


def cache_control_for(name: str) -> str:
    return IMMUTABLE if HASHED.search(name) else REVALIDATE


@dataclass(frozen=True)
class Prepared:
    body: bytes  # as served, after any rewrite
    gzipped: bytes | None
    etag: str
    worker: bool = False  # a web worker's script: it runs under the policy sent with it

    @property
    def size(self) -> int:
        return len(self.body) + len(self.gzipped or b"")


def prepared(data: bytes, *, compress: bool, worker: bool = False) -> Prepared:
    gzipped = (
        gzip.compress(data, compresslevel=6, mtime=0) if compress and len(data) > 1024 else None
    )
    return Prepared(data, gzipped, '"' + hashlib.sha256(data).hexdigest()[:32] + '"', worker)


class PreparedFolder:
    """One build folder's files, prepared on first request and kept within a memory budget.

    `rewrite(name, data)` may change a file as it is read (OHIF's root links);
    `is_worker(data)` marks web worker scripts, which get their own security policy.
    """

    def __init__(
        self,
        folder: Path,
        *,
        hidden: frozenset[str] = frozenset(),
        rewrite: Callable[[str, bytes], bytes] | None = None,
        is_worker: Callable[[bytes], bool] | None = None,
        budget_bytes: int = 96 * 1024 * 1024,
    ) -> None:
        self.folder = folder.resolve()
        self._hidden = hidden
        self._rewrite = rewrite
        self._is_worker = is_worker
        self._budget = budget_bytes
        self._cache: OrderedDict[str, Prepared] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()

    def file(self, rel: str) -> Path | None:
        """The file for a URL path below the mount, or None (hidden, missing, or outside)."""
        if not rel or rel.rsplit("/", 1)[-1] in self._hidden or rel.startswith("."):
            return None
        path = (self.folder / rel).resolve()
        if not path.is_relative_to(self.folder) or not path.is_file():
            return None
        return path

    def prepare(self, rel: str) -> Prepared:
        """The file as served: rewritten and gzipped once, then kept within the budget."""
        with self._lock:
            hit = self._cache.get(rel)
            if hit is not None:
                self._cache.move_to_end(rel)
                return hit
        # Outside the lock: gzip of a large bundle takes about a second.
        data = (self.folder / rel).read_bytes()
        if self._rewrite is not None:
            data = self._rewrite(rel.rsplit("/", 1)[-1], data)
        result = prepared(
            data,
            compress=Path(rel).suffix in COMPRESSIBLE,
            worker=self._is_worker(data) if self._is_worker else False,
        )
        with self._lock:
            if rel not in self._cache:
                self._cache[rel] = result
                self._cached_bytes += result.size
            while self._cached_bytes > self._budget and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= old.size
        return result


def _accepts_gzip(request: Request) -> bool:
    return "gzip" in request.headers.get("accept-encoding", "").lower()


def send(request: Request, file: Prepared, media: str, headers: dict[str, str]) -> Response:
    """The prepared file, gzipped when the browser takes it, or 304 when it has this one."""
    headers = headers | {"ETag": file.etag, "Vary": "Accept-Encoding"}
    if file.etag in request.headers.get("if-none-match", "").replace("W/", "").split(", "):
        return Response(status_code=304, headers=headers)
    if file.gzipped is not None and _accepts_gzip(request):
        headers["Content-Encoding"] = "gzip"  # the app's GZipMiddleware leaves it alone
        return Response(file.gzipped, media_type=media, headers=headers)
    # "identity": the app's GZipMiddleware would otherwise compress it again on every request.
    headers["Content-Encoding"] = "identity"
    return Response(file.body, media_type=media, headers=headers)
