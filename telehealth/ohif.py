"""The OHIF viewer at /ohif/: npm `@ohif/app`'s prebuilt dist/, with an app-config.js of ours.

OHIF calls /dicomweb on the same origin, so the session cookie set by POST /api/auth/login
authorises each of its requests, and every call is scoped and audited like any other. Its
static files need no login: they hold no patient data.

The npm build was made for the site root: its webpack public path is "/", and index.html and
the CSS link "/...". Rather than rebuild OHIF, the few places that name the root are rewritten
for /ohif/ as the files are served. `OhifDist.check` proves the markers are where this module
expects them, so an OHIF upgrade that moves them leaves the viewer unmounted with a log line
instead of serving a blank page.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import mimetypes
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from telehealth.config import Settings

BASE = "/ohif"
DICOMWEB = "/dicomweb"
# Where `npm ci` in viewer/ohif puts the build (a checkout or an editable install).
DEFAULT_DIST = (
    Path(__file__).resolve().parents[1] / "viewer" / "ohif" / "node_modules" / "@ohif" / "app"
) / "dist"

# Not served: OHIF's own config and sample configs (ours replaces them), static-host files, and
# the service worker. Its precache list names root paths, and a worker that caches the app and
# its config would outlive a hub upgrade on every reading-room PC.
_HIDDEN = frozenset(
    {
        "app-config.js",
        "google.js",
        "sw.js",
        "init-service-worker.js",
        "_headers",
        "_redirects",
        "serve.json",
    }
)
# Content-hashed names (`12.bundle.b4688cdbdd856b75.js`, `0ddf166f7a343eda.wasm`) never change
# content: cache them for a year. Everything else is revalidated by ETag.
_HASHED = re.compile(r"(^|[./])[0-9a-f]{16}\.(js|css|wasm|woff2?)$")
_COMPRESSIBLE = frozenset(
    {".js", ".css", ".html", ".json", ".jsonc", ".svg", ".wasm", ".map", ".xml", ".webapp", ".ico"}
)
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"
# Prepared (rewritten, gzipped) files kept in memory; the viewer's working set is ~10 MB.
_CACHE_BUDGET_BYTES = 96 * 1024 * 1024
_MAX_PREPARED_BYTES = 32 * 1024 * 1024

_PUBLIC_URL = b'window.PUBLIC_URL="/"'
_PUBLIC_PATH = b'__webpack_require__.p = "/";'
_SERVICE_WORKER_TAG = re.compile(rb'<script[^>]*src="/init-service-worker\.js"[^>]*></script>')
_ROOT_LINK = re.compile(rb'(\s(?:href|src)=")/(?!/)')
_CSS_ROOT_URL = re.compile(rb"""url\((["']?)/(?!/)""")
# webpack's chunk loader inside a worker bundle (the image decoders, compute, polySeg, …).
_WORKER_RUNTIME = b"importScripts(__webpack_require__.p"
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


class OhifDistUnusable(Exception):
    """The folder is not an OHIF build this module knows how to serve under /ohif/."""


def dist_folder(settings: Settings) -> Path:
    return settings.ohif_dist or DEFAULT_DIST


def app_config() -> str:
    """OHIF's window.config: one DICOMweb data source, this hub, on the page's own origin.

    Nothing here names another host: the viewer makes no call outside the hub (the CSP below
    enforces it).
    """
    config = {
        "name": "telehealth",
        "routerBasename": BASE,
        "showStudyList": True,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 25},
        "defaultDataSourceName": "telehealth",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "telehealth",
                "configuration": {
                    "friendlyName": "Telehealth hub",
                    "name": "telehealth",
                    # qidoRoot, wadoRoot and wadoUriRoot are set below from the page's origin.
                    "qidoSupportsIncludeField": True,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": True,
                    "staticWado": False,
                    "singlepart": "bulkdata,video",
                    "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                    "omitQuotationForMultipartRequest": True,
                    "dicomUploadEnabled": False,
                    "supportsReject": False,
                },
            }
        ],
    }
    return (
        "// Generated by the hub (telehealth/ohif.py); OHIF's own app-config.js is not served.\n"
        f"window.config = {json.dumps(config, indent=2)};\n"
        "(function (source) {\n"
        f"  var root = window.location.origin + {json.dumps(DICOMWEB)};\n"
        "  source.qidoRoot = root;\n"
        "  source.wadoRoot = root;\n"
        "  source.wadoUriRoot = root;\n"
        "})(window.config.dataSources[0].configuration);\n"
        "window.config.httpErrorHandler = function (error) {\n"
        "  // 401: not logged in (POST /api/auth/login sets the cookie); 403/404: not yours.\n"
        '  console.warn("DICOMweb request failed", error && error.status);\n'
        "};\n"
    )


@dataclass(frozen=True)
class _Prepared:
    body: bytes  # as served, after the rewrites
    gzipped: bytes | None
    etag: str
    worker: bool = False  # a web worker's script: it runs under the policy sent with it

    @property
    def size(self) -> int:
        return len(self.body) + len(self.gzipped or b"")


def _prepared(data: bytes, *, compress: bool, worker: bool = False) -> _Prepared:
    gzipped = (
        gzip.compress(data, compresslevel=6, mtime=0) if compress and len(data) > 1024 else None
    )
    return _Prepared(data, gzipped, '"' + hashlib.sha256(data).hexdigest()[:32] + '"', worker)


class OhifDist:
    """One OHIF dist/ folder, served under BASE with the root links rewritten.

    Raises OhifDistUnusable (from the constructor) when the folder is not such a build.
    """

    def __init__(self, folder: Path, base: str = BASE) -> None:
        self.folder = folder.resolve()
        self.base = base
        self._prefix = (base + "/").encode()
        self._cache: OrderedDict[str, _Prepared] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self.check()
        self.index = self.prepare("index.html")
        self.csp = self._content_security_policy(self.index.body, worker=False)
        self.worker_csp = self._content_security_policy(b"", worker=True)

    def check(self) -> None:
        index = self.folder / "index.html"
        if not index.is_file():
            raise OhifDistUnusable(f"no index.html in {self.folder}")
        if _PUBLIC_URL not in index.read_bytes():
            raise OhifDistUnusable(f"{index} does not set {_PUBLIC_URL.decode()}")
        bundles = list(self.folder.glob("app.bundle.*.js"))
        if not any(_PUBLIC_PATH in b.read_bytes() for b in bundles):
            raise OhifDistUnusable(f"no app.bundle.*.js in {self.folder} sets the public path")

    def _rewrite(self, name: str, data: bytes) -> bytes:
        prefix = self._prefix
        if name == "index.html":
            data = _SERVICE_WORKER_TAG.sub(b"", data)
            data = data.replace(_PUBLIC_URL, b'window.PUBLIC_URL="' + prefix + b'"')
            return _ROOT_LINK.sub(lambda m: m.group(1) + prefix, data)
        if name.endswith(".js"):
            # webpack loads chunks, workers and wasm from its public path.
            data = data.replace(_PUBLIC_PATH, b'__webpack_require__.p = "' + prefix + b'";')
            microscopy = b"'/dicom-microscopy-viewer/"
            return data.replace(microscopy, b"'" + prefix + microscopy[2:])
        if name.endswith(".css"):
            return _CSS_ROOT_URL.sub(lambda m: b"url(" + m.group(1) + prefix, data)
        return data

    def file(self, rel: str) -> Path | None:
        """The dist file for a URL path below BASE, or None (hidden, missing, or outside)."""
        if not rel or rel.rsplit("/", 1)[-1] in _HIDDEN or rel.startswith("."):
            return None
        path = (self.folder / rel).resolve()
        if not path.is_relative_to(self.folder) or not path.is_file():
            return None
        return path

    def prepare(self, rel: str) -> _Prepared:
        """The file as served: rewritten and gzipped once, then kept within a memory budget."""
        with self._lock:
            hit = self._cache.get(rel)
            if hit is not None:
                self._cache.move_to_end(rel)
                return hit
        # Outside the lock: gzip of the 17 MB main bundle takes about a second.
        data = self._rewrite(rel.rsplit("/", 1)[-1], (self.folder / rel).read_bytes())
        prepared = _prepared(
            data, compress=Path(rel).suffix in _COMPRESSIBLE, worker=_WORKER_RUNTIME in data
        )
        with self._lock:
            if rel not in self._cache:
                self._cache[rel] = prepared
                self._cached_bytes += prepared.size
            while self._cached_bytes > _CACHE_BUDGET_BYTES and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= old.size
        return prepared

    def _content_security_policy(self, index: bytes, *, worker: bool) -> str:
        # index.html has two small inline scripts (PUBLIC_URL, an import() helper): allow
        # exactly those by hash rather than 'unsafe-inline'. 'wasm-unsafe-eval': the image
        # codecs are WebAssembly. 'unsafe-eval' only in workers: the Emscripten glue of the
        # JPEG 2000 and JPEG-LS decoders builds functions from strings (new Function), and a
        # worker has no DOM, no cookies of ours (HttpOnly) and no page to inject into.
        # Styles: React and emotion set inline styles.
        hashes = " ".join(
            "'sha256-" + base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode() + "'"
            for m in _INLINE_SCRIPT.finditer(index)
        )
        evaluation = "'unsafe-eval' 'wasm-unsafe-eval'" if worker else "'wasm-unsafe-eval'"
        return "; ".join(
            [
                "default-src 'self'",
                f"script-src 'self' {evaluation} {hashes}".strip(),
                "worker-src 'self' blob:",
                "style-src 'self' 'unsafe-inline'",
                "img-src 'self' data: blob:",
                "font-src 'self' data:",
                "connect-src 'self' blob: data:",
                "media-src 'self' blob:",
                "object-src 'none'",
                "base-uri 'self'",
                "form-action 'self'",
                "frame-ancestors 'self'",
            ]
        )

    def headers(self, cache_control: str, *, worker: bool = False) -> dict[str, str]:
        return {
            "Cache-Control": cache_control,
            "Content-Security-Policy": self.worker_csp if worker else self.csp,
            "X-Content-Type-Options": "nosniff",
            # Viewer URLs carry Study Instance UIDs; they stay on this site.
            "Referrer-Policy": "no-referrer",
        }


def _accepts_gzip(request: Request) -> bool:
    return "gzip" in request.headers.get("accept-encoding", "").lower()


def _send(
    request: Request, dist: OhifDist, prepared: _Prepared, media_type: str, cache_control: str
) -> Response:
    headers = dist.headers(cache_control, worker=prepared.worker) | {
        "ETag": prepared.etag,
        "Vary": "Accept-Encoding",
    }
    if prepared.etag in request.headers.get("if-none-match", "").replace("W/", "").split(", "):
        return Response(status_code=304, headers=headers)
    if prepared.gzipped is not None and _accepts_gzip(request):
        headers["Content-Encoding"] = "gzip"  # the app's GZipMiddleware leaves it alone
        return Response(prepared.gzipped, media_type=media_type, headers=headers)
    # "identity": the app's GZipMiddleware would otherwise compress it again on every request.
    headers["Content-Encoding"] = "identity"
    return Response(prepared.body, media_type=media_type, headers=headers)


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


def _media_type(path: str) -> str:
    known = _MEDIA_TYPES.get(Path(path).suffix)
    return known or mimetypes.guess_type(path)[0] or "application/octet-stream"


def router(dist: OhifDist) -> APIRouter:
    """Routes under BASE: the generated app-config.js, the build's files, and index.html for
    every client route (/ohif/viewer?StudyInstanceUIDs=…)."""
    routes = APIRouter(include_in_schema=False)
    config = _prepared(app_config().encode(), compress=False)

    @routes.get(dist.base)
    def ohif_root() -> RedirectResponse:
        return RedirectResponse(dist.base + "/", status_code=308)

    @routes.get(dist.base + "/app-config.js")
    def ohif_config(request: Request) -> Response:
        return _send(request, dist, config, "text/javascript; charset=utf-8", _REVALIDATE)

    @routes.get(dist.base + "/{rel:path}")
    def ohif_file(rel: str, request: Request) -> Response:
        path = dist.file(rel)
        if path is None:
            last = rel.rsplit("/", 1)[-1]
            if "." in last:  # a missing asset, not a client route
                return Response(status_code=404, headers=dist.headers(_REVALIDATE))
            return _send(request, dist, dist.index, "text/html; charset=utf-8", _REVALIDATE)
        rel = path.relative_to(dist.folder).as_posix()  # one cache key per file
        cache_control = _IMMUTABLE if _HASHED.search(path.name) else _REVALIDATE
        if path.stat().st_size > _MAX_PREPARED_BYTES:
            # Streamed as it is rather than held in memory (nothing in 3.13's dist is this big;
            # its largest, the optional AI models in ort/, are under 20 MB).
            headers = dist.headers(cache_control) | {"Content-Encoding": "identity"}
            return FileResponse(path, media_type=_media_type(rel), headers=headers)
        return _send(request, dist, dist.prepare(rel), _media_type(rel), cache_control)

    return routes
