"""Sending an instance in a transfer syntax the peer accepted (PS3.4 B.4.1, C.4.2.3.1).

A C-GET or C-MOVE sends each instance as stored whenever the peer accepted a presentation
context in the stored syntax: the bytes it receives are the bytes we received. When it did
not, but accepted Explicit or Implicit VR Little Endian for the SOP class (a township
workstation that reads only uncompressed images), the instance is sent uncompressed:
compressed pixel data is decoded by the same code as WADO-RS frames
(telehealth.dicomweb.service.frames: pylibjpeg, -openjpeg, -rle), and a deflated or
other-VR little endian dataset is merely written out again. The stored bytes never change.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context
from pynetdicom.association import Association
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext

from telehealth.dicomweb.service import frames
from telehealth.errors import DomainError

log = logging.getLogger(__name__)

# What an instance is sent as when its stored syntax was not accepted, most preferred first.
UNCOMPRESSED: tuple[str, ...] = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))
# pynetdicom proposes at most 128 presentation contexts (PS3.8 §9.3.2.2: odd IDs 1-255).
MAX_CONTEXTS = 128
_PIXEL_DATA = 0x7FE00010


class CannotTranscode(Exception):
    """The instance cannot be sent in any syntax the peer accepted. The message says why and
    names no patient data."""


def accepted_syntaxes(assoc: Association, sop_class_uid: str) -> list[str]:
    """The transfer syntaxes the peer accepted for sending (SCU role) instances of a class."""
    return [
        str(cx.transfer_syntax[0])
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == sop_class_uid and cx.as_scu
    ]


def choose_syntax(stored: str, accepted: Collection[str]) -> str | None:
    """The stored syntax when accepted, else an uncompressed one the peer accepted."""
    if stored in accepted:
        return stored
    return next((syntax for syntax in UNCOMPRESSED if syntax in accepted), None)


def proposed_contexts(pairs: Iterable[tuple[str, str]]) -> list[PresentationContext]:
    """Presentation contexts for a C-MOVE destination, one transfer syntax each: every
    (SOP class, stored syntax) first, then each class in the uncompressed syntaxes, so the
    destination can take an instance as stored or, failing that, uncompressed. A context
    per syntax lets the destination accept each on its own."""
    stored = sorted(set(pairs))
    wanted = list(stored)
    for sop_class in sorted({sop_class for sop_class, _ in stored}):
        wanted += [(sop_class, s) for s in UNCOMPRESSED if (sop_class, s) not in stored]
    if len(wanted) > MAX_CONTEXTS:
        log.warning(
            "C-MOVE: %d presentation contexts wanted, proposing the first %d",
            len(wanted),
            MAX_CONTEXTS,
        )
    return [build_context(sop_class, [syntax]) for sop_class, syntax in wanted[:MAX_CONTEXTS]]


def transcode(data: bytes, syntax: str) -> bytes:
    """The dataset of a stored Part 10 instance (after its file meta), encoded in `syntax`:
    Explicit or Implicit VR Little Endian, with compressed pixel data decoded (colour as
    RGB, planes interleaved, as dcmtk and pydicom decompress).

    Raises CannotTranscode: no decoder for the stored syntax, corrupt pixel data, a video
    stream (no frames to decode), big endian source (its other OW values would need swapping
    one by one).
    """
    if syntax not in UNCOMPRESSED:
        raise CannotTranscode(f"no transcoding into {_name(syntax)}")
    stored = "unknown transfer syntax"
    try:
        ds = frames.parse_instance(data)
        stored = frames.transfer_syntax(ds)
        if stored == ExplicitVRBigEndian:
            raise CannotTranscode("Explicit VR Big Endian is sent only as stored")
        if _PIXEL_DATA in ds and ds[_PIXEL_DATA].value and frames.is_encapsulated(stored):
            # WADO-RS bulk data, uncompressed: the whole Pixel Data value, little endian.
            pixels = frames.retrieve_bulk_data(data, "7FE00010", frames.OCTET_STREAM)
            _uncompressed(ds, pixels.parts[0].data)
    except DomainError as exc:  # PixelsNotDecodable, NotAcceptable (video), CorruptPixelData
        raise CannotTranscode(f"{_name(stored)}: {exc}") from None
    encoded = encode(ds, syntax == ImplicitVRLittleEndian, True, False)
    if encoded is None:  # pynetdicom has logged pydicom's reason
        raise CannotTranscode(f"cannot be written as {_name(syntax)}")
    return encoded


def _uncompressed(ds: Dataset, pixels: bytes) -> None:
    """Put decoded pixel data in place of the encapsulated fragments (PS3.5 §8.1.1, §8.2)."""
    bits = int(ds.get("BitsAllocated") or 8)
    if len(pixels) % 2:
        pixels += b"\x00"
    ds[_PIXEL_DATA] = DataElement(_PIXEL_DATA, "OW" if bits > 8 else "OB", pixels)
    if int(ds.get("SamplesPerPixel") or 1) > 1:
        ds.PlanarConfiguration = 0
        if str(ds.get("PhotometricInterpretation", "")).startswith("YBR"):
            ds.PhotometricInterpretation = "RGB"  # frames decodes colour as RGB
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            del ds[keyword]


def _name(syntax: str) -> str:
    uid = UID(syntax)
    return uid.name if uid.is_transfer_syntax else syntax
