"""PhysioNet WFDB records (header .hea + signal .dat [+ annotations]) read with `wfdb`.

A record is several files, so it arrives as one ZIP, or as several files of one multipart
upload that `bundle_files` packs into a ZIP (the ZIP is then the original kept in the store).
The header is found by its content, not its name: the first non-comment line is a WFDB record
line ("name nsig [fs [nsamp]]") and the following lines name the signal files.

Samples stay the header's integers; gain (adu per physical unit) and baseline become the
lead's scale and offset in µV, so a conversion keeps the source's quantisation.
"""

from __future__ import annotations

import io
import re
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import wfdb

from telehealth.ecg.service.waveform import (
    Acquisition,
    EcgChecksumMismatch,
    EcgRecord,
    EcgUnreadable,
    Lead,
    NoWaveform,
    Patient,
    TruncatedEcg,
    UnsupportedEcgFormat,
    lead_name,
)

ZIP_MAGIC = b"PK\x03\x04"
MAX_FILES = 16  # hea, dat, atr and a few other annotators; more is not one record
MAX_UNZIPPED_BYTES = 200 * 1024 * 1024  # a ZIP bomb stops here

# Bytes per sample of the signal formats `wfdb` reads (WFDB "signal(5)"); FLAC (508/516/524)
# is left out: its size cannot be checked against the header before decoding.
_BYTES_PER_SAMPLE: dict[str, float] = {
    "8": 1,
    "16": 2,
    "61": 2,
    "80": 1,
    "160": 2,
    "24": 3,
    "32": 4,
    "212": 1.5,
    "310": 4 / 3,
    "311": 4 / 3,
}
_TO_UV = {"uV": 1.0, "mV": 1000.0, "V": 1_000_000.0, "nV": 0.001}

# Record line: name[/segments] nsig [fs[/counter][(base)] [nsamp [time [date]]]].
_RECORD_LINE = re.compile(
    rb"^[A-Za-z0-9_.+-]+(?:/\d+)?[ \t]+\d+(?:[ \t]+[\d.eE+-]+(?:/[\d.eE+-]+)?(?:\([^)]*\))?)?"
    rb"(?:[ \t]+\d+)?"
)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
_AGE_SEX = re.compile(r"^\s*(?:age:?\s*)?(\d{1,3})\s*,?\s*(?:sex:?\s*)?([MF])\b", re.IGNORECASE)


def looks_like_header(data: bytes) -> bool:
    """True for WFDB header text: a record line, then as many signal lines as it declares."""
    if len(data) > 64 * 1024 or b"\x00" in data[:4096]:
        return False
    lines = [ln.strip() for ln in data.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(b"#")]
    if not lines or _RECORD_LINE.match(lines[0]) is None:
        return False
    fields = lines[0].split()
    nsig = int(fields[1])
    if "/" in fields[0].decode("ascii", "replace"):
        return True  # multi-segment header: its lines name segments, read_wfdb refuses it
    return 0 < nsig <= len(lines) - 1 and all(len(ln.split()) >= 2 for ln in lines[1 : nsig + 1])


def unzip(data: bytes) -> dict[str, bytes]:
    """The files of a ZIP by base name. Raises EcgUnreadable (bad or oversized ZIP)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) > MAX_FILES:
            raise EcgUnreadable(
                f"ZIP holds {len(members)} files; a WFDB record is at most {MAX_FILES}"
            )
        if sum(m.file_size for m in members) > MAX_UNZIPPED_BYTES:
            raise EcgUnreadable(f"ZIP unpacks to more than {MAX_UNZIPPED_BYTES} bytes")
        files: dict[str, bytes] = {}
        for member in members:
            name = member.filename.replace("\\", "/").rsplit("/", 1)[-1]
            if name.startswith(".") or name.startswith("__MACOSX"):
                continue  # Finder's ._ forks
            files[name] = archive.read(member)
        return files
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as exc:
        raise EcgUnreadable(f"not a readable ZIP: {exc}") from exc


def is_wfdb_zip(data: bytes) -> bool:
    if not data.startswith(ZIP_MAGIC):
        return False
    try:
        return any(looks_like_header(content) for content in unzip(data).values())
    except EcgUnreadable:
        return False


def bundle_files(files: Sequence[tuple[str, bytes]]) -> bytes:
    """Several uploaded files of one record as one deterministic ZIP (same files, same bytes,
    so a resend is the same instance). Raises UnsupportedEcgFormat when no file is a WFDB
    header, EcgUnreadable for a bad or repeated file name."""
    if len(files) > MAX_FILES:
        raise EcgUnreadable(f"{len(files)} files sent; a WFDB record is at most {MAX_FILES}")
    named: dict[str, bytes] = {}
    for filename, content in files:
        name = filename.replace("\\", "/").rsplit("/", 1)[-1]
        if not _SAFE_NAME.match(name):
            raise EcgUnreadable(f"file name {filename[:80]!r} is not a plain WFDB file name")
        if name in named:
            raise EcgUnreadable(f"file {name} was sent twice")
        named[name] = content
    if not any(looks_like_header(content) for content in named.values()):
        raise UnsupportedEcgFormat(
            "several files were sent but none is a WFDB header (.hea); only a PhysioNet "
            "record is uploaded as several files"
        )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(named):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, named[name])
    return out.getvalue()


def _header_of(files: Mapping[str, bytes]) -> tuple[str, bytes]:
    headers = [(name, data) for name, data in files.items() if looks_like_header(data)]
    if not headers:
        raise NoWaveform("no WFDB header (.hea) among the files")
    if len(headers) > 1:
        names = ", ".join(sorted(name for name, _ in headers))
        raise EcgUnreadable(f"several WFDB headers ({names}); send one record at a time")
    return headers[0]


def _patient(comments: list[str]) -> Patient:
    # MIT-BIH puts "<age> <sex> …" in the first comment; other databases "age: 69 sex: M".
    for comment in comments:
        match = _AGE_SEX.match(comment)
        if match:
            age = int(match.group(1))
            return Patient(sex=match.group(2).upper(), age=f"{age:03d}Y" if age < 200 else "")
    return Patient()


def _lead(signal_name: str) -> str | None:
    """MLII → II, "ECG V1" → V1: MIT-BIH's modified limb leads are recorded as leads."""
    text = signal_name.strip()
    text = re.sub(r"^M(?:L|CL)?(?=I{1,3}$|V\d)", "", text)
    return lead_name(text)


def read_wfdb(files: Mapping[str, bytes]) -> EcgRecord:
    """The record whose header is among `files` (base name → bytes).

    Raises NoWaveform (no header, no voltage signal), UnsupportedEcgFormat (a signal format
    or record layout not read here), TruncatedEcg (a signal file missing or short),
    EcgChecksumMismatch, UnknownLead (a signal not named as a lead), EcgUnreadable.
    """
    header_name, header = _header_of(files)
    # looks_like_header found a record line: the first line that is not a comment.
    record_line = next(
        ln for ln in header.splitlines() if ln.strip() and not ln.strip().startswith(b"#")
    )
    name = record_line.split()[0].decode("ascii", "replace")
    if "/" in name:
        raise UnsupportedEcgFormat(f"WFDB record {name} is multi-segment; send one segment")
    if not _SAFE_NAME.match(name):
        raise EcgUnreadable(f"WFDB record name {name[:40]!r} is not a plain name")
    with tempfile.TemporaryDirectory(prefix="wfdb-") as tmp:
        folder = Path(tmp)
        (folder / f"{name}.hea").write_bytes(header)
        try:
            meta = wfdb.rdheader(str(folder / name))
        except Exception as exc:  # wfdb raises bare ValueError/IndexError on bad headers
            raise EcgUnreadable(f"WFDB header {header_name} is not readable: {exc}") from exc
        if not meta.file_name or not meta.fmt:
            raise NoWaveform(f"WFDB header {header_name} declares no signals")
        for file_name, fmt in zip(meta.file_name, meta.fmt, strict=True):
            if fmt not in _BYTES_PER_SAMPLE:
                raise UnsupportedEcgFormat(
                    f"WFDB signal format {fmt} (file {file_name}) is not one the hub reads "
                    f"(formats {', '.join(_BYTES_PER_SAMPLE)})"
                )
        if any((spf or 1) != 1 for spf in (meta.samps_per_frame or [])):
            raise UnsupportedEcgFormat("WFDB signals at several sampling rates are not read")
        _check_signal_files(files, meta, folder)
        try:
            rec = wfdb.rdrecord(str(folder / name), physical=False)
        except Exception as exc:
            raise EcgUnreadable(f"WFDB record {name} is not readable: {exc}") from exc
    return _record(rec, name)


def _check_signal_files(files: Mapping[str, bytes], meta: wfdb.Record, folder: Path) -> None:
    """Every signal file present and as long as the header says; copied beside the header."""
    per_file: dict[str, list[str]] = {}
    offsets: dict[str, int] = {}
    byte_offsets = meta.byte_offset or [None] * len(meta.file_name)
    for file_name, fmt, offset in zip(meta.file_name, meta.fmt, byte_offsets, strict=True):
        per_file.setdefault(file_name, []).append(fmt)
        offsets.setdefault(file_name, int(offset or 0))
    for file_name, formats in per_file.items():
        if not _SAFE_NAME.match(file_name) or file_name == "-":
            raise UnsupportedEcgFormat(f"WFDB signal file {file_name!r} cannot be read here")
        if file_name not in files:
            sent = ", ".join(sorted(files)) or "none"
            raise TruncatedEcg(
                f"the WFDB header names signal file {file_name}, which was not sent (files: {sent})"
            )
        data = files[file_name]
        if meta.sig_len:
            frame = sum(_BYTES_PER_SAMPLE[f] for f in formats)
            need = offsets[file_name] + int(np.ceil(meta.sig_len * frame))
            if len(data) < need:
                raise TruncatedEcg(
                    f"WFDB signal file {file_name} has {len(data)} bytes; "
                    f"{meta.sig_len} samples of {len(formats)} signals need {need}"
                )
        (folder / file_name).write_bytes(data)


def _record(rec: wfdb.Record, name: str) -> EcgRecord:
    signals = np.asarray(rec.d_signal)
    leads: list[Lead] = []
    for index, signal_name in enumerate(rec.sig_name):
        units = (rec.units[index] if rec.units else "mV") or "mV"
        to_uv = _TO_UV.get(units)
        if to_uv is None:
            continue  # respiration, blood pressure: not an ECG lead
        column = signals[:, index].astype(np.int64)
        checksum = rec.checksum[index] if rec.checksum else None
        # The header's checksum is the 16-bit sum of the samples: a damaged .dat shows here.
        if checksum is not None and (int(column.sum()) - int(checksum)) % 65536 != 0:
            raise EcgChecksumMismatch(
                f"WFDB signal {signal_name} does not match the header's checksum {checksum}"
            )
        gain = float(rec.adc_gain[index]) or 200.0  # WFDB: gain 0 means uncalibrated, 200
        scale = to_uv / gain
        baseline = float(rec.baseline[index]) if rec.baseline else 0.0
        lead = _lead(signal_name) or signal_name  # an unknown name is refused by the caller
        leads.append(Lead(lead, column, scale, -baseline * scale))
    if not leads:
        raise NoWaveform(f"WFDB record {name} has no voltage signals")
    when = ""
    if rec.base_date is not None:
        when = rec.base_date.strftime("%Y%m%d")
        if rec.base_time is not None:
            when += rec.base_time.strftime("%H%M%S")
    return EcgRecord(
        leads=tuple(leads),
        sampling_frequency=float(rec.fs),
        patient=_patient(list(rec.comments or [])),
        acquisition=Acquisition(when=when, note=f"PhysioNet WFDB record {name}"),
        source_format="wfdb",
    )


def read_wfdb_zip(data: bytes) -> EcgRecord:
    """A WFDB record sent as one ZIP. Raises what `read_wfdb` and `unzip` raise."""
    return read_wfdb(unzip(data))
