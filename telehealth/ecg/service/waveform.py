"""An ECG in memory, whatever it came from: leads of integer samples with their calibration.

Every reader (DICOM, HL7 aECG, SCP-ECG, vendor XML) produces an `EcgRecord`; the DICOM
writer, the measurements and the renderer take one. Samples stay as the source's integers
with a scale and an offset per lead, so a conversion keeps the source's quantisation and
`microvolts()` gives the physical values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np

from telehealth.errors import Invalid

# --- errors -----------------------------------------------------------------------------------


class EcgUnreadable(Invalid):
    """An ECG file that cannot be read; the message names the problem."""


class UnsupportedEcgFormat(EcgUnreadable):
    """The content is none of the ECG formats the hub reads."""


class TruncatedEcg(EcgUnreadable):
    """The file ends before the structure it declares."""


class EcgChecksumMismatch(EcgUnreadable):
    """A CRC in the file does not match its content."""


class UnknownLead(EcgUnreadable):
    """A lead code the hub does not know; a sample cannot be put on the right trace."""


class NoWaveform(EcgUnreadable):
    """The file holds no ECG samples (or none that are voltage leads)."""


class NotAnEcg(EcgUnreadable):
    """A DICOM instance that is not an ECG waveform."""


# --- leads ------------------------------------------------------------------------------------

# Lead numbers shared by SCP-ECG (EN 1064 Table 4), ISO/IEEE 11073-10101 (MDC partition 2)
# and so DICOM CID 3001: "5.6.3-9-N" (SCPECG) and "2:N" (MDC) name the same lead N.
LEAD_NUMBERS: dict[int, str] = {
    1: "I",
    2: "II",
    3: "V1",
    4: "V2",
    5: "V3",
    6: "V4",
    7: "V5",
    8: "V6",
    9: "V7",
    10: "V2R",
    11: "V3R",
    12: "V4R",
    13: "V5R",
    14: "V6R",
    15: "V7R",
    16: "X",
    17: "Y",
    18: "Z",
    19: "CC5",
    20: "CM5",
    61: "III",
    62: "aVR",
    63: "aVL",
    64: "aVF",
    65: "-aVR",
    66: "V8",
    67: "V9",
    68: "V8R",
    69: "V9R",
}
LEAD_NUMBER_BY_NAME = {name.upper(): number for number, name in LEAD_NUMBERS.items()}
STANDARD_12 = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
LIMB_DERIVED = ("III", "aVR", "aVL", "aVF")

_LEAD_TEXT = re.compile(
    r"(?<![A-Za-z0-9])(-?aV[RLF]|V[1-9]R?|III|II|I|X|Y|Z|CC5|CM5)(?![A-Za-z0-9])"
)


def lead_name(text: str) -> str | None:
    """The lead named in a label such as "Lead II", "aVR", "V4R", "Lead I (Einthoven)"."""
    match = _LEAD_TEXT.search(
        text.replace("avr", "aVR").replace("avl", "aVL").replace("avf", "aVF")
    )
    if match is None:
        return None
    token = match.group(1)
    number = LEAD_NUMBER_BY_NAME.get(token.upper())
    return LEAD_NUMBERS[number] if number is not None else None


# --- the record -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lead:
    """One lead: integer samples and their calibration (µV = samples × scale_uv + offset_uv)."""

    name: str
    samples: np.ndarray  # integer (as the source stored them) or float for derived leads
    scale_uv: float
    offset_uv: float = 0.0
    derived: bool = False
    low_hz: float | None = None  # filter settings as the source stated them
    high_hz: float | None = None
    notch_hz: float | None = None

    def microvolts(self) -> np.ndarray:
        return self.samples.astype(np.float64) * self.scale_uv + self.offset_uv


@dataclass(frozen=True)
class Patient:
    patient_id: str = ""
    name: str = ""  # DICOM PN form: Family^Given
    birth_date: str = ""  # YYYYMMDD
    sex: str = ""  # M, F, O or empty
    age: str = ""  # DICOM AS, e.g. 045Y


@dataclass(frozen=True)
class Acquisition:
    when: str = ""  # YYYYMMDDHHMMSS (local time of the cart)
    institution: str = ""
    department: str = ""
    device: str = ""
    manufacturer: str = ""
    software: str = ""
    operator: str = ""
    referring_physician: str = ""
    note: str = ""


@dataclass(frozen=True)
class EcgRecord:
    """A multi-lead recording at one sampling rate, with who and when.

    `source_format` says where it came from ("dicom", "hl7-aecg", "scp-ecg", "philips-xml",
    "ge-muse-xml"); `label` the kind of group ("RHYTHM", "MEDIAN BEAT").
    """

    leads: tuple[Lead, ...]
    sampling_frequency: float
    patient: Patient = field(default_factory=Patient)
    acquisition: Acquisition = field(default_factory=Acquisition)
    source_format: str = ""
    label: str = "RHYTHM"

    def __post_init__(self) -> None:
        if not self.leads:
            raise NoWaveform("the ECG has no leads")
        lengths = {lead.samples.shape[0] for lead in self.leads}
        if len(lengths) != 1:
            raise EcgUnreadable(f"leads have different numbers of samples: {sorted(lengths)}")
        if not (self.sampling_frequency > 0):
            raise EcgUnreadable(f"sampling frequency {self.sampling_frequency} is not positive")
        if self.num_samples == 0:
            raise NoWaveform("the ECG leads hold no samples")

    @property
    def num_samples(self) -> int:
        return int(self.leads[0].samples.shape[0])

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sampling_frequency

    @property
    def names(self) -> list[str]:
        return [lead.name for lead in self.leads]

    def lead(self, name: str) -> Lead | None:
        return next((lead for lead in self.leads if lead.name == name), None)

    def microvolts(self) -> dict[str, np.ndarray]:
        return {lead.name: lead.microvolts() for lead in self.leads}

    def with_derived_leads(self) -> EcgRecord:
        """The record with III, aVR, aVL, aVF computed from I and II where they are missing.

        Carts that send 8 leads (I, II, V1–V6) leave the other limb leads to the reader:
        by Einthoven and Goldberger, III = II − I, aVR = −(I + II)/2, aVL = I − II/2,
        aVF = II − I/2. The derived leads are floats in µV and marked `derived`.
        """
        lead_i, lead_ii = self.lead("I"), self.lead("II")
        missing = [name for name in LIMB_DERIVED if self.lead(name) is None]
        if lead_i is None or lead_ii is None or not missing:
            return self
        i_uv, ii_uv = lead_i.microvolts(), lead_ii.microvolts()
        formulas = {
            "III": ii_uv - i_uv,
            "aVR": -(i_uv + ii_uv) / 2,
            "aVL": i_uv - ii_uv / 2,
            "aVF": ii_uv - i_uv / 2,
        }
        added = [
            Lead(
                name,
                formulas[name],
                1.0,
                0.0,
                derived=True,
                low_hz=lead_ii.low_hz,
                high_hz=lead_ii.high_hz,
                notch_hz=lead_ii.notch_hz,
            )
            for name in missing
        ]
        return replace(self, leads=_in_standard_order([*self.leads, *added]))


def _in_standard_order(leads: list[Lead]) -> tuple[Lead, ...]:
    rank = {name: i for i, name in enumerate(STANDARD_12)}
    original = {id(lead): i for i, lead in enumerate(leads)}
    return tuple(
        sorted(leads, key=lambda lead: (rank.get(lead.name, len(rank)), original[id(lead)]))
    )


def check_known_leads(names: list[str], where: str) -> None:
    """Raise UnknownLead or EcgUnreadable (duplicates) for a list of lead names."""
    seen: set[str] = set()
    for name in names:
        if name.upper() not in LEAD_NUMBER_BY_NAME:
            raise UnknownLead(f"{where}: unknown lead {name!r}")
        if name in seen:
            raise EcgUnreadable(f"{where}: lead {name} appears twice")
        seen.add(name)
