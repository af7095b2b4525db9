"""WADO-RS frames and bulk data (PS3.18 §8.7.3, §10.4.1.1.3-4): pixels as stored or decoded.

A frame "as stored" is sliced out of native Pixel Data, or gathered from its encapsulated
fragments (Extended or Basic Offset Table when present, else pydicom's fragment/frame rules:
one fragment per frame, all fragments for a single frame, JPEG end markers otherwise).
An uncompressed frame is decoded by pydicom's pixel decoders (pylibjpeg, -libjpeg, -openjpeg,
-rle), one frame at a time. Decoded colour frames are RGB, as dcmtk and dcm4che decompress
them; palette frames stay indices. Nothing here knows HTTP: the Accept header arrives as
text, and the answer is a list of parts, each with its media type.

Bulk data paths (`{instance}/bulk/{path}`): a top-level element is its tag (`7FE00010`);
an element inside a sequence item is `{sequence tag}/{item index, from 0}/{tag}`, repeated
for deeper nesting (`54000100/1/54001010`: WaveformData of the second waveform). A lone tag
that is not at the top level names its first occurrence, depth first: what pydicom's default
bulk data handler emits for nested elements, so such URIs keep working.
"""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_fragments, generate_frames, get_frame
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder, pack_bits, pixel_array
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from telehealth import errors
from telehealth.dicomweb.service.common import BadDicomwebRequest
from telehealth.errors import DomainError, NotFound

if TYPE_CHECKING:
    pass

OCTET_STREAM = "application/octet-stream"
EXPLICIT_LE = str(ExplicitVRLittleEndian)
# Newer than pydicom 3.0: each frame a raw deflate stream of its native bytes (PS3.5 §8.2.15).
DEFLATED_FRAMES = "1.2.840.10008.1.2.8.1"
# What a client may ask for to mean "uncompressed little endian".
_UNCOMPRESSED_NAMES = frozenset({EXPLICIT_LE, str(ImplicitVRLittleEndian)})

# PS3.18 Table 8.7.3-5: media types of compressed pixel data and their transfer syntaxes.
MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    "image/jpeg": (
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
    ),
    "image/jls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "image/jp2": ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
    "image/jpx": ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"),
    "image/jphc": ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"),
    "image/dicom-rle": ("1.2.840.10008.1.2.5",),
    "video/mpeg2": ("1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101"),
    "video/mp4": tuple(f"1.2.840.10008.1.2.4.{n}" for n in range(102, 107)),
    "video/h265": ("1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108"),
}
_MEDIA_OF = {ts: media for media, syntaxes in MEDIA_TYPES.items() for ts in syntaxes}
# Older names that clients (dicomweb-client, cornerstone) still send.
_ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_BULK_PATH = re.compile(r"^[0-9A-Fa-f]{8}(/[0-9]{1,6}/[0-9A-Fa-f]{8}){0,8}$")
_FRAME_LIST = re.compile(r"^[1-9][0-9]{0,8}(,[1-9][0-9]{0,8})*$")


class FrameNotFound(NotFound):
    """A frame number past the instance's last frame."""


class BulkDataNotFound(NotFound):
    """No element at that bulk data path, or one whose value is not bulk data."""


class NotAcceptable(errors.NotAcceptable):
    """Nothing the client accepts can be made from this instance (PS3.18 §8.7.3.5: 406).

    The message says what can be made.
    """


class NotAnImage(NotAcceptable):
    """The instance has no pixel data: an ECG, a report, a PDF."""


class PixelsNotDecodable(NotAcceptable):
    """No decoder here can decompress the stored pixel data."""


class CorruptPixelData(DomainError):
    """The stored pixel data does not hold the frames its header announces."""


# --- content negotiation ----------------------------------------------------------------------


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header, parameter names lower-cased and values unquoted."""

    media_type: str
    params: dict[str, str]
    q: float = 1.0


def _split(text: str, separator: str) -> list[str]:
    """Split outside double quotes: a quoted parameter may hold the separator."""
    pieces: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    pieces.append("".join(current))
    return pieces


def parse_accept(header: str | None) -> list[MediaRange]:
    """The Accept header's ranges, most preferred first; no header accepts anything."""
    ranges: list[MediaRange] = []
    for item in _split(header or "*/*", ","):
        kind, *params = (piece.strip() for piece in _split(item, ";"))
        if not kind:
            continue
        values: dict[str, str] = {}
        for param in params:
            name, _, value = param.partition("=")
            values[name.strip().lower()] = value.strip().strip('"')
        try:
            q = float(values.pop("q", "1"))
        except ValueError:
            q = 1.0
        if q > 0:
            kind = kind.lower()
            ranges.append(MediaRange(_ALIASES.get(kind, kind), values, q))
    return sorted(ranges, key=lambda r: -r.q) or [MediaRange("*/*", {})]


@dataclass(frozen=True)
class Part:
    data: bytes
    content_type: str


@dataclass(frozen=True)
class Parts:
    """A WADO-RS answer: `multipart` False means the single part is the whole body."""

    media_type: str
    transfer_syntax: str
    parts: list[Part]
    multipart: bool = True


@dataclass(frozen=True)
class _Choice:
    as_stored: bool  # encapsulated fragments as received; else uncompressed little endian
    media_type: str
    transfer_syntax: str
    multipart: bool


def _choose(
    ranges: list[MediaRange],
    stored: str,
    *,
    stored_parts: int,
    uncompressed_parts: int,
    decodable: bool,
) -> _Choice | None:
    """The first acceptable representation we can make, PS3.18 §8.7.3.5.

    No transfer-syntax parameter on application/octet-stream (or none at all) means Explicit
    VR Little Endian; `*` means as stored. An image/* type without one takes the stored
    syntax if it is of that type: the part's Content-Type says which.
    """
    encapsulated = is_encapsulated(stored)
    stored_media = _MEDIA_OF.get(stored, OCTET_STREAM) if encapsulated else None
    for entry in ranges:
        if entry.media_type == "multipart/related":
            multipart: bool | None = True
            media = entry.params.get("type", OCTET_STREAM).lower()
            media = _ALIASES.get(media, media)
        elif entry.media_type in ("*/*", "multipart/*"):
            multipart, media = (None if entry.media_type == "*/*" else True), "*/*"
        else:
            multipart, media = False, entry.media_type
        syntax = entry.params.get("transfer-syntax")
        as_stored: bool | None = None
        if media in ("*/*", "application/*", OCTET_STREAM):
            if syntax is None or syntax in _UNCOMPRESSED_NAMES:
                as_stored = False if (not encapsulated or decodable) else None
            elif syntax == "*":
                as_stored = encapsulated
            elif encapsulated and syntax == stored:
                as_stored = True
            if as_stored and media == "*/*":
                media = stored_media or OCTET_STREAM
        elif (
            stored_media
            and media in (stored_media, stored_media.split("/")[0] + "/*")
            and syntax in (None, "*", stored)
        ):
            as_stored, media = True, stored_media
        if as_stored is None:
            continue
        parts = stored_parts if as_stored else uncompressed_parts
        if multipart is False and parts != 1:
            continue  # a single-part body holds one item
        return _Choice(
            as_stored,
            media if as_stored else OCTET_STREAM,
            stored if as_stored else EXPLICIT_LE,
            multipart is not False,
        )
    return None


def _offers(stored: str, decodable: bool) -> str:
    offers = []
    if not is_encapsulated(stored) or decodable:
        offers.append(f'multipart/related; type="{OCTET_STREAM}"; transfer-syntax={EXPLICIT_LE}')
    if is_encapsulated(stored):
        media = _MEDIA_OF.get(stored, OCTET_STREAM)
        offers.append(f'multipart/related; type="{media}"; transfer-syntax={stored}')
    return " or ".join(offers)


def _refuse(stored: str, decodable: bool, what: str) -> NotAcceptable:
    name = UID(stored).name if UID(stored).is_transfer_syntax else stored
    hint = "" if decodable else " (no decoder here can decompress it)"
    return NotAcceptable(
        f"{what} is stored as {name}{hint}; it is available as {_offers(stored, decodable)}"
    )


# --- reading and parsing ----------------------------------------------------------------------


def parse_instance(data: bytes) -> Dataset:
    """The whole dataset (pixel data not decoded). Raises CorruptPixelData if unreadable."""
    try:
        return dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, ValueError, EOFError) as exc:  # ingest checked it; still
        raise CorruptPixelData(f"stored instance cannot be parsed: {exc}") from exc


def transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(uid) if uid else EXPLICIT_LE


def number_of_frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        return 1


def pixel_keyword(ds: Dataset) -> str:
    """The keyword of the instance's pixel data element. Raises NotAnImage."""
    for keyword in _PIXEL_KEYWORDS:
        if keyword in ds and ds[keyword].value:
            if "Rows" not in ds or "Columns" not in ds:
                raise NotAnImage("this instance has pixel data but no Rows and Columns to read it")
            return keyword
    sop_class = ds.get("SOPClassUID")
    what = UID(str(sop_class)).name if sop_class else "instance"
    raise NotAnImage(f"this {what} has no pixel data: it has no frames and cannot be rendered")


def is_encapsulated(syntax: str) -> bool:
    """Whether pixel data in this transfer syntax is encapsulated (compressed) fragments."""
    uid = UID(syntax)
    if uid.is_transfer_syntax:
        return bool(uid.is_encapsulated)
    # Newer than pydicom (Deflated Image Frame Compression, say): every native syntax is old.
    return True


def can_decode(syntax: str) -> bool:
    """Whether a decoder here can decompress pixel data in this transfer syntax."""
    if syntax == DEFLATED_FRAMES:
        return True
    try:
        return bool(get_decoder(UID(syntax)).is_available)
    except (NotImplementedError, ValueError):
        return False


def _frame_bits(ds: Dataset) -> int:
    samples = int(ds.get("SamplesPerPixel") or 1)
    bits = int(ds.get("BitsAllocated") or 8)
    frame_bits = int(ds.Rows) * int(ds.Columns) * samples * bits
    if ds.get("PhotometricInterpretation") == "YBR_FULL_422":
        frame_bits = frame_bits // 3 * 2  # two of every three chroma samples are not stored
    return frame_bits


def _le_bytes(arr: np.ndarray, bits_allocated: int) -> bytes:
    """Decoded pixels as native Explicit VR Little Endian bytes (PS3.5 §8.1.1)."""
    if bits_allocated == 1:
        return pack_bits(arr, pad=False)
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def _encapsulated_frames(ds: Dataset, indices: list[int]) -> list[bytes]:
    """Frames of encapsulated pixel data as stored: their fragments' bytes joined."""
    value = ds.PixelData
    offsets = ds.get("ExtendedOffsetTable")
    lengths = ds.get("ExtendedOffsetTableLengths")
    extended = (offsets, lengths) if offsets and lengths else None
    count = number_of_frames(ds)
    try:
        if len(indices) == 1:
            frame = get_frame(value, indices[0], extended_offsets=extended, number_of_frames=count)
            return [frame]
        frames = list(generate_frames(value, number_of_frames=count, extended_offsets=extended))
        return [frames[i] for i in indices]
    except (ValueError, IndexError) as exc:
        raise CorruptPixelData(f"encapsulated pixel data does not hold {count} frames") from exc


def _inflate(frame: bytes) -> bytes:
    try:
        return zlib.decompress(frame, -zlib.MAX_WBITS)  # raw deflate, no zlib header
    except zlib.error as exc:
        raise CorruptPixelData(f"deflated frame is corrupt: {exc}") from exc


def _native_frame(ds: Dataset, keyword: str, index: int) -> bytes:
    """A native frame as little endian bytes: sliced out when it starts on a byte."""
    frame_bits = _frame_bits(ds)
    if transfer_syntax(ds) == ExplicitVRBigEndian or frame_bits % 8:
        # Big endian OW swaps 8-bit samples in pairs; pydicom undoes that. 1-bit frames of
        # odd size start mid-byte: unpack and pack again from bit 0.
        arr = pixel_array(ds, index=index, raw=True)
        return _le_bytes(arr, int(ds.get("BitsAllocated") or 8))
    size = frame_bits // 8
    value = ds[keyword].value
    if len(value) < (index + 1) * size:
        raise CorruptPixelData(f"pixel data is too short for frame {index + 1}")
    return bytes(value[index * size : (index + 1) * size])


def decode_frame(ds: Dataset, index: int) -> np.ndarray:
    """One frame decoded to an array (colour as RGB), without decoding the others.

    Raises PixelsNotDecodable.
    """
    syntax = transfer_syntax(ds)
    try:
        if syntax == DEFLATED_FRAMES:
            return pixel_array(_native_copy(ds, _inflate(_encapsulated_frames(ds, [index])[0])))
        return pixel_array(ds, index=index)
    except CorruptPixelData:
        raise
    except Exception as exc:  # codecs raise anything from RuntimeError to their own types
        name = UID(syntax).name if UID(syntax).is_transfer_syntax else syntax
        raise PixelsNotDecodable(f"frame {index + 1} ({name}) cannot be decoded: {exc}") from exc


def _native_copy(ds: Dataset, frame: bytes) -> Dataset:
    """A one-frame native dataset with the image pixel module of `ds`, for pydicom to decode."""
    copy = Dataset()
    for keyword in (
        "Rows",
        "Columns",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "PlanarConfiguration",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
    ):
        if keyword in ds:
            setattr(copy, keyword, ds[keyword].value)
    copy.NumberOfFrames = 1
    copy.file_meta = FileMetaDataset()
    copy.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    copy.PixelData = frame
    return copy


def _uncompressed_frame(ds: Dataset, keyword: str, index: int) -> bytes:
    syntax = transfer_syntax(ds)
    if syntax == DEFLATED_FRAMES:
        return _inflate(_encapsulated_frames(ds, [index])[0])
    if keyword != "PixelData" or not is_encapsulated(syntax):
        return _native_frame(ds, keyword, index)
    return _le_bytes(decode_frame(ds, index), int(ds.get("BitsAllocated") or 8))


# --- frames -----------------------------------------------------------------------------------


def parse_frame_numbers(text: str) -> list[int]:
    """Frame numbers from a path segment like `1` or `1,3,5` (1-based, PS3.18 §10.4.1.1.3).

    Raises BadDicomwebRequest.
    """
    if not _FRAME_LIST.match(text):
        raise BadDicomwebRequest(
            f"frame list must be frame numbers from 1, separated by commas: {text[:40]!r}"
        )
    return [int(number) for number in text.split(",")]


def retrieve_frames(data: bytes, numbers: list[int], accept: str | None) -> Parts:
    """The frames numbered (from 1, see parse_frame_numbers) in the representation the
    client accepts.

    Raises BadDicomwebRequest, FrameNotFound, NotAnImage, NotAcceptable (nothing acceptable
    can be made), PixelsNotDecodable, CorruptPixelData.
    """
    ds = parse_instance(data)
    keyword = pixel_keyword(ds)
    count = number_of_frames(ds)
    beyond = [number for number in numbers if number > count]
    if beyond:
        raise FrameNotFound(f"no frame {beyond[0]}: the instance has {count} frame(s)")
    if len(numbers) > count:
        raise BadDicomwebRequest(f"{len(numbers)} frames asked of an instance with {count}")
    syntax = transfer_syntax(ds) if keyword == "PixelData" else EXPLICIT_LE
    if _MEDIA_OF.get(syntax, "").startswith("video/"):
        raise NotAcceptable("video has no separate frames: retrieve its bulk data /bulk/7FE00010")
    decodable = can_decode(syntax)
    choice = _choose(
        parse_accept(accept),
        syntax,
        stored_parts=len(numbers),
        uncompressed_parts=len(numbers),
        decodable=decodable,
    )
    if choice is None:
        raise _refuse(syntax, decodable, "pixel data")
    indices = [number - 1 for number in numbers]
    if choice.as_stored:
        bodies = _encapsulated_frames(ds, indices)
    else:
        bodies = [_uncompressed_frame(ds, keyword, i) for i in indices]
    return _parts(choice, bodies)


def _parts(choice: _Choice, bodies: list[bytes]) -> Parts:
    content_type = f"{choice.media_type}; transfer-syntax={choice.transfer_syntax}"
    return Parts(
        choice.media_type,
        choice.transfer_syntax,
        [Part(body, content_type) for body in bodies],
        choice.multipart,
    )


# --- bulk data --------------------------------------------------------------------------------


def _first(ds: Dataset, tag: int) -> DataElement | None:
    """The first element with this tag, depth first, top level before nested."""
    if tag in ds:
        return ds[tag]
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                found = _first(item, tag)
                if found is not None:
                    return found
    return None


def check_bulk_path(path: str) -> str:
    """Return the path unchanged; raise BadDicomwebRequest unless it is tag(/item/tag)*."""
    if not _BULK_PATH.match(path):
        raise BadDicomwebRequest(
            "bulk data path must be a tag like 7FE00010, or sequence/item/tag like "
            f"54000100/0/54001010: {path[:80]!r}"
        )
    return path


def _resolve(ds: Dataset, path: str) -> tuple[DataElement, bool]:
    """The element at a bulk data path and whether it is at the top level."""
    pieces = check_bulk_path(path).split("/")
    if len(pieces) == 1:
        tag = Tag(int(pieces[0], 16))
        element = _first(ds, tag)
        if element is None:
            raise BulkDataNotFound(f"no element {pieces[0].upper()} in the instance")
        return element, tag in ds
    dataset = ds
    for depth in range(0, len(pieces) - 1, 2):
        sequence = dataset.get(Tag(int(pieces[depth], 16)))
        number = int(pieces[depth + 1])
        if sequence is None or sequence.VR != "SQ" or number >= len(sequence.value):
            raise BulkDataNotFound(f"no item {'/'.join(pieces[: depth + 2])} in the instance")
        dataset = sequence.value[number]
    element = dataset.get(Tag(int(pieces[-1], 16)))
    if element is None:
        raise BulkDataNotFound(f"no element {path.upper()} in the instance")
    return element, False


def _element_bytes(ds: Dataset, element: DataElement) -> bytes:
    """An element's value as little endian bytes; only byte values are bulk data."""
    value = element.value
    if not isinstance(value, bytes | bytearray) or not value:
        raise BulkDataNotFound(f"element {element.tag:08X} holds no bulk data")
    width = _SWAP_WIDTH.get(element.VR)
    if width and transfer_syntax(ds) == ExplicitVRBigEndian and len(value) % width == 0:
        return np.frombuffer(value, dtype=f">u{width}").astype(f"<u{width}").tobytes()
    return bytes(value)


def retrieve_bulk_data(data: bytes, path: str, accept: str | None) -> Parts:
    """The value of one element, named by its bulk data path (see the module docstring).

    Top-level Pixel Data is negotiated like frames: uncompressed, one part holding the whole
    value; or as stored, one part per frame (a video stream is one part). Any other element
    is its value's bytes, little endian. Raises BadDicomwebRequest, BulkDataNotFound,
    NotAcceptable, PixelsNotDecodable, CorruptPixelData.
    """
    ds = parse_instance(data)
    element, top_level = _resolve(ds, path)
    ranges = parse_accept(accept)
    if top_level and element.tag == Tag("PixelData") and element.value:
        return _pixel_bulk_data(ds, ranges)
    body = _element_bytes(ds, element)
    choice = _choose(ranges, EXPLICIT_LE, stored_parts=1, uncompressed_parts=1, decodable=True)
    if choice is None:
        raise NotAcceptable(
            f'bulk data is available as multipart/related; type="{OCTET_STREAM}" or as '
            f"{OCTET_STREAM}, transfer-syntax={EXPLICIT_LE}"
        )
    return _parts(choice, [body])


def _pixel_bulk_data(ds: Dataset, ranges: list[MediaRange]) -> Parts:
    syntax = transfer_syntax(ds)
    count = number_of_frames(ds)
    video = _MEDIA_OF.get(syntax, "").startswith("video/")
    decodable = can_decode(syntax) and not video
    choice = _choose(
        ranges,
        syntax,
        stored_parts=1 if video else count,
        uncompressed_parts=1,
        decodable=decodable,
    )
    if choice is None:
        raise _refuse(syntax, decodable, "pixel data")
    if choice.as_stored:
        if video:  # one stream for all frames (PS3.5 §8.2.5)
            return _parts(choice, [b"".join(_fragments(ds.PixelData))])
        return _parts(choice, _encapsulated_frames(ds, list(range(count))))
    if not is_encapsulated(syntax) and syntax != ExplicitVRBigEndian:
        return _parts(choice, [bytes(ds.PixelData)])  # native little endian: the value itself
    bits = int(ds.get("BitsAllocated") or 8)
    if bits == 1:  # frames of bits run on without byte alignment: pack them all at once
        frames = [decode_frame(ds, i) for i in range(count)]
        return _parts(choice, [pack_bits(np.stack(frames), pad=False)])
    keyword = "PixelData"
    return _parts(choice, [b"".join(_uncompressed_frame(ds, keyword, i) for i in range(count))])


def _fragments(value: bytes) -> Iterator[bytes]:
    fragments = generate_fragments(value)
    next(fragments, None)  # the Basic Offset Table item
    yield from fragments
