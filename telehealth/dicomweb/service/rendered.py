"""WADO-RS rendered images and thumbnails (PS3.18 §8.3.5, §10.4.1.1.5-6): JPEG, PNG or GIF.

For people to look at, not to diagnose from: one frame, through the modality transform
(Rescale Slope/Intercept or Modality LUT) and the VOI transform (first Window Center/Width
and VOI LUT Function, else the first VOI LUT, else the frame's own range), to 8 bits;
MONOCHROME1 inverted; colour converted to RGB, palettes applied. Enhanced multi-frame
objects keep these values in functional groups, so the frame's own group is read first.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.uid import EncapsulatedPDFStorage

from telehealth.dicomweb.service.common import BadDicomwebRequest
from telehealth.dicomweb.service.frames import (
    FrameNotFound,
    NotAcceptable,
    NotAnImage,
    decode_frame,
    number_of_frames,
    parse_accept,
    parse_frame_numbers,
    parse_instance,
    pixel_keyword,
)
from telehealth.dicomweb.service.wado import read_instance_bytes

if TYPE_CHECKING:
    from telehealth.archive.service import Archive
    from telehealth.dicomweb.service.wado import InstanceRef

DEFAULT_QUALITY = 90
THUMBNAIL_VIEWPORT = (128, 128)
MAX_VIEWPORT = 4096  # a larger one is a mistake or an attempt to exhaust memory
# Instances tried for a series or study thumbnail before giving up: each one is a store read.
THUMBNAIL_TRIES = 8
PDF = "application/pdf"
_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}
_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}


@dataclass(frozen=True)
class Window:
    """A VOI window, PS3.3 §C.11.2.1.2; function is LINEAR, LINEAR_EXACT or SIGMOID."""

    center: float
    width: float
    function: str = "LINEAR"


@dataclass(frozen=True)
class RenderOptions:
    window: Window | None = None
    viewport: tuple[int | None, int | None] | None = None
    quality: int = DEFAULT_QUALITY


@dataclass(frozen=True)
class Rendered:
    media_type: str
    body: bytes


# --- request parameters -----------------------------------------------------------------------


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadDicomwebRequest(f"{what} must be a number: {text[:40]!r}") from None
    if not np.isfinite(value):
        raise BadDicomwebRequest(f"{what} must be a finite number: {text[:40]!r}")
    return value


def _window(text: str) -> Window:
    pieces = [p.strip() for p in text.split(",")]
    if len(pieces) not in (2, 3):
        raise BadDicomwebRequest(f"window must be center,width,function: {text[:60]!r}")
    center, width = _number(pieces[0], "window center"), _number(pieces[1], "window width")
    function = _FUNCTIONS.get(pieces[2].lower() if len(pieces) == 3 else "linear")
    if function is None:
        raise BadDicomwebRequest(
            f"window function must be one of {', '.join(_FUNCTIONS)}: {pieces[2][:40]!r}"
        )
    if width <= 0 or (function == "LINEAR" and width < 1):
        raise BadDicomwebRequest(f"window width must be at least 1: {pieces[1]!r}")
    return Window(center, width, function)


def _viewport(text: str) -> tuple[int | None, int | None]:
    pieces = [p.strip() for p in text.split(",")]
    if len(pieces) != 2:
        raise BadDicomwebRequest(
            f"viewport must be width,height (a source region is not supported): {text[:60]!r}"
        )
    size: list[int | None] = []
    for piece in pieces:
        if not piece:
            size.append(None)
        elif piece.isdigit() and 1 <= int(piece) <= MAX_VIEWPORT:
            size.append(int(piece))
        else:
            raise BadDicomwebRequest(f"viewport sizes must be 1 to {MAX_VIEWPORT}: {text[:60]!r}")
    if size == [None, None]:
        raise BadDicomwebRequest("viewport needs a width, a height or both")
    return size[0], size[1]


def parse_render_options(
    params: Iterable[tuple[str, str]], *, thumbnail: bool = False
) -> RenderOptions:
    """Options from the query (PS3.18 §8.3.5.1): window, viewport, quality; last one wins.

    A thumbnail takes only viewport (§10.4.1.1.6). Other parameters (annotation, charset,
    iccprofile) are ignored: nothing is burnt in. Raises BadDicomwebRequest.
    """
    values = dict(params)
    viewport = _viewport(values["viewport"]) if "viewport" in values else None
    if thumbnail:
        return RenderOptions(viewport=viewport or THUMBNAIL_VIEWPORT)
    quality = DEFAULT_QUALITY
    if "quality" in values:
        text = values["quality"].strip()
        if not text.isdigit() or not 1 <= int(text) <= 100:
            raise BadDicomwebRequest(f"quality must be 1 to 100: {text[:20]!r}")
        quality = int(text)
    window = _window(values["window"]) if "window" in values else None
    return RenderOptions(window=window, viewport=viewport, quality=quality)


def _media_type(accept: str | None, *, pdf: bool) -> str:
    """The rendered media type the client accepts best: image/jpeg unless it says otherwise."""
    for entry in parse_accept(accept):
        kind = entry.media_type
        if pdf and kind in (PDF, "application/*", "*/*"):
            return PDF
        if kind in _FORMATS:
            return kind
        if kind in ("*/*", "image/*"):
            return "image/jpeg"
    offered = f"{PDF}, " if pdf else ""
    raise NotAcceptable(f"rendered images are available as {offered}{', '.join(_FORMATS)}")


# --- pixels to display values -----------------------------------------------------------------


def _first_number(value: Any) -> float | None:
    """The first value of a possibly multi-valued number, or None if there is none."""
    if value is None or value == "":
        return None
    if not isinstance(value, str | bytes) and hasattr(value, "__len__"):  # MultiValue
        if len(value) == 0:
            return None
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _frame_value(ds: Dataset, index: int, sequence: str, keyword: str) -> Any:
    """An attribute from the frame's functional group, the shared one, or the top level."""
    for groups, item in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        items = ds.get(groups)
        if items and len(items) > item:
            inner = items[item].get(sequence)
            if inner and keyword in inner[0]:
                return inner[0][keyword].value
    return ds.get(keyword)


def _stored_window(ds: Dataset, index: int) -> Window | None:
    center = _first_number(_frame_value(ds, index, "FrameVOILUTSequence", "WindowCenter"))
    width = _first_number(_frame_value(ds, index, "FrameVOILUTSequence", "WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    function = str(_frame_value(ds, index, "FrameVOILUTSequence", "VOILUTFunction") or "LINEAR")
    function = function.strip().upper()
    if function not in _FUNCTIONS.values() or (function == "LINEAR" and width < 1):
        function = "LINEAR" if width >= 1 else "LINEAR_EXACT"
    return Window(center, width, function)


def _apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 §C.11.2.1.2-3 with output range 0 to 255."""
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        out = 255.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    elif window.function == "LINEAR_EXACT":
        out = ((values - c) / w + 0.5) * 255.0
    elif w <= 1:
        out = np.where(values > c - 0.5, 255.0, 0.0)
    else:
        out = ((values - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _grey(ds: Dataset, arr: np.ndarray, index: int, override: Window | None) -> np.ndarray:
    if "ModalityLUTSequence" in ds:
        values = apply_modality_lut(arr, ds).astype(np.float64)
    else:
        slope = _first_number(
            _frame_value(ds, index, "PixelValueTransformationSequence", "RescaleSlope")
        )
        intercept = _first_number(
            _frame_value(ds, index, "PixelValueTransformationSequence", "RescaleIntercept")
        )
        values = arr.astype(np.float64) * (slope or 1.0) + (intercept or 0.0)
    window = override or _stored_window(ds, index)
    if window is not None:
        return _apply_window(values, window)
    if "VOILUTSequence" in ds:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        out = apply_voi_lut(np.rint(values).astype(np.int64), ds, index=0, prefer_lut=True)
        return np.clip(np.rint(out * (255.0 / (2**bits - 1))), 0, 255).astype(np.uint8)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip(np.rint((values - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)


def display_pixels(ds: Dataset, index: int, window: Window | None = None) -> np.ndarray:
    """One frame as 8-bit display values: rows × columns, or rows × columns × 3 (RGB).

    Raises PixelsNotDecodable.
    """
    arr = decode_frame(ds, index)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return (rgb >> max(bits - 8, 0)).astype(np.uint8)
    if arr.ndim == 3:  # colour, already RGB (decode_frame converts YBR)
        shift = max(int(ds.get("BitsStored") or 8) - 8, 0)
        return (arr >> shift).astype(np.uint8) if shift else arr.astype(np.uint8)
    grey = _grey(ds, arr, index, window)
    return 255 - grey if photometric == "MONOCHROME1" else grey


# --- images -----------------------------------------------------------------------------------


def _fit(size: tuple[int, int], viewport: tuple[int | None, int | None]) -> tuple[int, int]:
    """The size that fits the viewport keeping the aspect ratio (a missing side follows)."""
    width, height = size
    box_width, box_height = viewport
    scales = [s for s in (box_width and box_width / width, box_height and box_height / height) if s]
    scale = min(scales)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _encode(pixels: np.ndarray, media_type: str, options: RenderOptions) -> bytes:
    image = Image.fromarray(pixels)  # uint8: L for grey, RGB for rows × columns × 3
    if options.viewport is not None:
        size = _fit(image.size, options.viewport)
        if size != image.size:
            image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    if media_type == "image/jpeg":
        image.save(out, "JPEG", quality=options.quality)
    else:
        image.save(out, _FORMATS[media_type])
    return out.getvalue()


def render_instance(
    data: bytes,
    accept: str | None,
    options: RenderOptions,
    *,
    frame: int | None = None,
    thumbnail: bool = False,
) -> Rendered:
    """An instance (its first frame unless told) rendered for display.

    An Encapsulated PDF renders as itself when the client takes application/pdf.
    Raises NotAnImage, NotAcceptable, FrameNotFound, PixelsNotDecodable.
    """
    ds = parse_instance(data)
    if not thumbnail and ds.get("SOPClassUID") == EncapsulatedPDFStorage:
        media_type = _media_type(accept, pdf=True)
        if media_type != PDF:
            raise NotAnImage(f"an Encapsulated PDF renders as {PDF}, not {media_type}")
        document = bytes(ds.get("EncapsulatedDocument") or b"")
        length = ds.get("EncapsulatedDocumentLength")
        return Rendered(PDF, document[:length] if length else document)  # drop the pad byte
    pixel_keyword(ds)  # raises NotAnImage before any decoding
    media_type = _media_type(accept, pdf=False)
    count = number_of_frames(ds)
    number = frame or 1
    if number > count:
        raise FrameNotFound(f"no frame {number}: the instance has {count} frame(s)")
    pixels = display_pixels(ds, number - 1, options.window)
    return Rendered(media_type, _encode(pixels, media_type, options))


def parse_rendered_frame(text: str) -> int:
    """The one frame number of a rendered-frame path. Raises BadDicomwebRequest."""
    numbers = parse_frame_numbers(text)
    if len(numbers) != 1:
        raise BadDicomwebRequest("a rendered frame is one frame number, not a list")
    return numbers[0]


def _candidates(refs: list[InstanceRef]) -> Iterator[InstanceRef]:
    """Each series' middle instance first, then its neighbours outwards, series by series."""
    by_series: dict[str, list[InstanceRef]] = defaultdict(list)
    for ref in refs:
        by_series[ref.series_uid].append(ref)
    for members in by_series.values():
        middle = (len(members) - 1) // 2
        for position in sorted(range(len(members)), key=lambda i: abs(i - middle)):
            yield members[position]


def render_thumbnail(
    archive: Archive, refs: list[InstanceRef], accept: str | None, options: RenderOptions
) -> Rendered:
    """A thumbnail of a series or study: its first image found from the middle outwards.

    Raises NotAcceptable, NotAnImage when none of the instances tried has pixels.
    """
    _media_type(accept, pdf=False)  # refuse before reading anything
    for tried, ref in enumerate(_candidates(refs)):
        if tried == THUMBNAIL_TRIES:
            break
        try:
            return render_instance(
                read_instance_bytes(archive, ref), accept, options, thumbnail=True
            )
        except NotAnImage:
            continue
    raise NotAnImage("no image found for a thumbnail: these instances have no pixel data")
