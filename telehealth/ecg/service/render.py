"""The ECG on paper: A4 landscape, 3×4 leads + a lead II rhythm strip, 25 mm/s, 10 mm/mV.

Drawn with Pillow at a chosen resolution on a 1 mm / 5 mm grid, with a 1 mV calibration
pulse at the start of each row and labels in a CJK-capable font (Noto Sans CJK SC from the
`noto-cjk-sans-otc` package, a system CJK font, or TELEHEALTH_ECG_FONT). The PDF holds the
same page as one lossless image (PNG-predicted Flate), sized so it prints at 25 mm/s.
"""

from __future__ import annotations

import functools
import io
import logging
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from telehealth.ecg.service.waveform import EcgRecord

log = logging.getLogger(__name__)

PAGE_MM = (297.0, 210.0)
SPEED_MM_S = 25.0
GAIN_MM_MV = 10.0
LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
RHYTHM_LEAD = "II"
COLUMN_S = 2.5
_GRID_X, _GRID_Y = 18.5, 34.0  # mm, top-left of the grid
_CAL_MM = 10.0  # room at the left of each row for the calibration pulse
_ROW_MM = 40.0
_ROWS = 4
_WIDTH_MM = _CAL_MM + 4 * COLUMN_S * SPEED_MM_S  # 260 mm

_MINOR = (250, 214, 214)
_MAJOR = (236, 150, 150)
_INK = (0, 0, 0)
_TEXT = (20, 20, 20)

_SYSTEM_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
)


@dataclass(frozen=True)
class FontChoice:
    path: str | None
    index: int
    cjk: bool


def _packaged_font() -> str | None:
    try:
        import noto_cjk_sans_otc  # ships NotoSansCJK-Regular.ttc
    except ImportError:
        return None
    folder = Path(noto_cjk_sans_otc.__file__).parent
    found = sorted(folder.glob("*.tt[cf]")) + sorted(folder.glob("*.otf"))
    return str(found[0]) if found else None


@functools.lru_cache(maxsize=4)
def choose_font(configured: str | None = None) -> FontChoice:
    """The first CJK-capable font found; a collection's Simplified Chinese face preferred."""
    for path in (configured, _packaged_font(), *_SYSTEM_FONTS):
        if not path or not Path(path).exists():
            continue
        for index in range(12):
            try:
                face = ImageFont.truetype(path, 20, index=index)
            except OSError:
                break
            family = " ".join(part or "" for part in face.getname())
            if "SC" in family.split() or "CJK SC" in family or (index == 0 and "CJK" not in family):
                return FontChoice(path, index, True)
        return FontChoice(path, 0, True)
    log.warning("no CJK font found: Chinese labels on rendered ECGs will not show")
    return FontChoice(None, 0, False)


def _font(choice: FontChoice, px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if choice.path is None:
        return ImageFont.load_default(size=px)
    return ImageFont.truetype(choice.path, px, index=choice.index)


def _fmt(value: Any, unit: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "是" if value else "否"
    return f"{value:.0f} {unit}".strip()


@functools.lru_cache(maxsize=4)
def _paper(dpi: float) -> Image.Image:
    """The empty page with its grid (1 mm minor, 5 mm major lines), drawn once per resolution."""
    px = dpi / 25.4
    width, height = round(PAGE_MM[0] * px), round(PAGE_MM[1] * px)
    page = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    x0, y0 = _GRID_X * px, _GRID_Y * px
    grid_w, grid_h = _WIDTH_MM * px, _ROWS * _ROW_MM * px
    for major in (False, True):  # majors on top, so the 5 mm squares stay visible
        width_px = max(1, round(px * 0.15)) if major else 1
        colour = _MAJOR if major else _MINOR
        for mm in range(0, int(_WIDTH_MM) + 1, 5 if major else 1):
            x = x0 + mm * px
            draw.line([(x, y0), (x, y0 + grid_h)], fill=colour, width=width_px)
        for mm in range(0, int(_ROWS * _ROW_MM) + 1, 5 if major else 1):
            y = y0 + mm * px
            draw.line([(x0, y), (x0 + grid_w, y)], fill=colour, width=width_px)
    return page


def render_page(
    record: EcgRecord,
    *,
    values: Mapping[str, Any] | None = None,
    title: str = "",
    dpi: float = 200.0,
    font_path: str | None = None,
) -> Image.Image:
    """The paper ECG as an RGB image. `values` are the measurements shown in the header."""
    px = dpi / 25.4  # pixels per mm
    page = _paper(dpi).copy()
    draw = ImageDraw.Draw(page)
    x0, y0 = _GRID_X * px, _GRID_Y * px
    grid_h = _ROWS * _ROW_MM * px
    choice = choose_font(font_path)
    small, label = _font(choice, max(8, round(2.6 * px))), _font(choice, max(9, round(3.2 * px)))
    ink = max(1, round(0.25 * px))
    signals = record.with_derived_leads().microvolts()
    fs = record.sampling_frequency

    def trace(samples: np.ndarray, x_mm: float, baseline_mm: float) -> None:
        if samples.size < 2:
            return
        centred = samples - float(np.median(samples))
        t = np.arange(samples.size) / fs
        xs = x0 + (x_mm + t * SPEED_MM_S) * px
        ys = y0 + (baseline_mm - centred / 1000.0 * GAIN_MM_MV) * px
        draw.line(
            list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=_INK, width=ink, joint="curve"
        )

    def calibration(baseline_mm: float) -> None:
        # 1 mV for 0.2 s: a 5 mm wide, 10 mm high step.
        pts_mm = [(1, 0), (2.5, 0), (2.5, -GAIN_MM_MV), (7.5, -GAIN_MM_MV), (7.5, 0), (9, 0)]
        draw.line(
            [(x0 + x * px, y0 + (baseline_mm + y) * px) for x, y in pts_mm], fill=_INK, width=ink
        )

    per_column = round(COLUMN_S * fs)
    for row, names in enumerate(LAYOUT):
        baseline = row * _ROW_MM + _ROW_MM * 0.6
        calibration(baseline)
        for column, name in enumerate(names):
            x_mm = _CAL_MM + column * COLUMN_S * SPEED_MM_S
            segment = signals.get(name)
            if segment is not None:
                trace(segment[column * per_column : (column + 1) * per_column], x_mm, baseline)
            text = name if segment is not None else f"{name} —"
            draw.text(
                (x0 + (x_mm + 1) * px, y0 + (row * _ROW_MM + 2) * px), text, font=label, fill=_TEXT
            )
            if column:
                draw.line(
                    [
                        (x0 + x_mm * px, y0 + (baseline - 3) * px),
                        (x0 + x_mm * px, y0 + (baseline + 3) * px),
                    ],
                    fill=_INK,
                    width=ink,
                )
    rhythm_name = RHYTHM_LEAD if RHYTHM_LEAD in signals else next(iter(signals), None)
    baseline = 3 * _ROW_MM + _ROW_MM * 0.6
    calibration(baseline)
    if rhythm_name is not None:
        seconds = 4 * COLUMN_S
        trace(signals[rhythm_name][: round(seconds * fs)], _CAL_MM, baseline)
        draw.text(
            (x0 + (_CAL_MM + 1) * px, y0 + (3 * _ROW_MM + 2) * px),
            rhythm_name,
            font=label,
            fill=_TEXT,
        )

    # Header: who, when, where; the measurements; footer: paper speed and gain.
    p, a = record.patient, record.acquisition
    when = a.when
    when_text = (
        f"{when[:4]}-{when[4:6]}-{when[6:8]} {when[8:10]}:{when[10:12]}:{when[12:14]}"
        if len(when) >= 14
        else when
    )
    line1 = "  ".join(
        s
        for s in (
            title,
            f"姓名 {p.name.replace('^', ' ')}" if p.name else "",
            f"ID {p.patient_id}" if p.patient_id else "",
            f"性别 {p.sex}" if p.sex else "",
            f"出生 {p.birth_date}" if p.birth_date else "",
            f"采集 {when_text}" if when_text else "",
        )
        if s
    )
    line2 = "  ".join(s for s in (a.institution, a.manufacturer, a.device) if s)
    v = values or {}
    line3 = "   ".join(
        (
            f"心率 HR {_fmt(v.get('heart_rate_bpm'), '/min')}",
            f"PR {_fmt(v.get('pr_ms'), 'ms')}",
            f"QRS {_fmt(v.get('qrs_ms'), 'ms')}",
            f"QT/QTc {_fmt(v.get('qt_ms'), '')}/{_fmt(v.get('qtc_bazett_ms'), 'ms')}",
            f"电轴 axis {_fmt(v.get('frontal_axis_deg'), '°')}",
            f"节律规整 regular {_fmt(v.get('rhythm_regular'), '')}",
        )
    )
    draw.text((x0, 8 * px), line1, font=label, fill=_TEXT)
    draw.text((x0, 14 * px), line2, font=small, fill=_TEXT)
    draw.text((x0, 20 * px), line3, font=label, fill=_TEXT)
    draw.text(
        (x0, 26.5 * px),
        "自动测量，须经医生确认 automatic measurements, to be confirmed by a physician",
        font=small,
        fill=_TEXT,
    )
    footer = f"25 mm/s   10 mm/mV   {fs:g} Hz   {record.duration_s:.1f} s"
    if record.duration_s < 4 * COLUMN_S:
        footer += "   (记录不足10秒 recording shorter than 10 s)"
    draw.text((x0, y0 + grid_h + 3 * px), footer, font=small, fill=_TEXT)
    return page


def to_png(page: Image.Image) -> bytes:
    out = io.BytesIO()
    # A 64-colour palette keeps antialiased text and the grid, at a fraction of RGB's size.
    page.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(out, "PNG", compress_level=6)
    return out.getvalue()


def _png_chunks(data: bytes) -> dict[bytes, list[bytes]]:
    chunks: dict[bytes, list[bytes]] = {}
    pos = 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunks.setdefault(kind, []).append(data[pos + 8 : pos + 8 + length])
        pos += 12 + length
    return chunks


def to_pdf(page: Image.Image, *, title: str = "ECG") -> bytes:
    """One A4 landscape page holding the image at its physical size (prints at 25 mm/s)."""
    rgb = page.convert("RGB")
    png = io.BytesIO()
    rgb.save(png, "PNG", compress_level=6)
    chunks = _png_chunks(png.getvalue())
    width, height = struct.unpack(">II", chunks[b"IHDR"][0][:8])
    # A PNG's IDAT stream is a zlib stream of predicted rows: PDF reads it as FlateDecode
    # with Predictor 15 (PDF 32000-1 §7.4.4.4), so nothing is recompressed or lost.
    stream = b"".join(chunks[b"IDAT"])
    zlib.decompressobj().decompress(stream[:64])  # fail here, not in a reader, if malformed
    w_pt, h_pt = PAGE_MM[0] / 25.4 * 72, PAGE_MM[1] / 25.4 * 72
    content = f"q {w_pt:.2f} 0 0 {h_pt:.2f} 0 0 cm /Im0 Do Q".encode()
    safe_title = title.encode("utf-16-be").hex().upper()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {w_pt:.2f} {h_pt:.2f}] "
            "/Resources << /XObject << /Im0 4 0 R >> >> /Contents 5 0 R >>"
        ).encode(),
        (
            f"<< /Type /XObject /Subtype /Image /Width {width} /Height {height} "
            "/ColorSpace /DeviceRGB /BitsPerComponent 8 /Filter /FlateDecode "
            f"/DecodeParms << /Predictor 15 /Colors 3 /BitsPerComponent 8 /Columns {width} >> "
            f"/Length {len(stream)} >>\nstream\n"
        ).encode()
        + stream
        + b"\nendstream",
        f"<< /Length {len(content)} >>\nstream\n".encode() + content + b"\nendstream",
        f"<< /Title <FEFF{safe_title}> /Producer (telehealth hub) >>".encode(),
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info {len(objects)} 0 R >>\n"
        f"startxref\n{xref}\n%%EOF\n".encode()
    )
    return out.getvalue()
