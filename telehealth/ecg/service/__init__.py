"""ECG logic without HTTP: formats in, DICOM out, measurements, rendering, triage."""

from telehealth.ecg.service.dicom_waveform import ECG_SOP_CLASSES, read_dicom_ecg, rhythm_of
from telehealth.ecg.service.dicom_writer import uid_from, write_dicom_ecg
from telehealth.ecg.service.formats import MEDIA_TYPES, EcgFormat, detect_format, read_ecg
from telehealth.ecg.service.measure import (
    SCALARS,
    Measurements,
    detect_r_peaks,
    measure,
    measure_record,
)
from telehealth.ecg.service.render import render_page, to_pdf, to_png
from telehealth.ecg.service.results import (
    ECG_MEASURED,
    BadReaderValue,
    EcgInstance,
    MeasurementsPending,
    MeasurementView,
    NotAnEcgInstance,
    NotAReader,
    OriginalNotFound,
    compute,
    effective_values,
    find_instance,
    get_measurements,
    load_record,
    original_of,
    set_reader_values,
    triage_for_study,
)
from telehealth.ecg.service.samples import SAMPLES_CACHE, EncodedSamples, SamplesCache
from telehealth.ecg.service.samples import etag_for as samples_etag
from telehealth.ecg.service.triage import (
    RequestFlag,
    TriageCode,
    TriageReason,
    TriageThresholds,
    request_flags_from_text,
    triage,
)
from telehealth.ecg.service.upload import EcgUpload, upload_ecg
from telehealth.ecg.service.waveform import (
    EcgChecksumMismatch,
    EcgRecord,
    EcgUnreadable,
    Lead,
    NoWaveform,
    TruncatedEcg,
    UnknownLead,
    UnsupportedEcgFormat,
)
from telehealth.ecg.service.wfdb_record import bundle_files, read_wfdb
from telehealth.ecg.service.wfdb_record import looks_like_header as looks_like_wfdb_header
from telehealth.ecg.service.worker import EcgWorker

__all__ = [
    "ECG_MEASURED",
    "ECG_SOP_CLASSES",
    "MEDIA_TYPES",
    "SAMPLES_CACHE",
    "SCALARS",
    "BadReaderValue",
    "EcgChecksumMismatch",
    "EcgFormat",
    "EcgInstance",
    "EcgRecord",
    "EcgUnreadable",
    "EcgUpload",
    "EcgWorker",
    "EncodedSamples",
    "Lead",
    "MeasurementView",
    "Measurements",
    "MeasurementsPending",
    "NoWaveform",
    "NotAReader",
    "NotAnEcgInstance",
    "OriginalNotFound",
    "RequestFlag",
    "SamplesCache",
    "TriageCode",
    "TriageReason",
    "TriageThresholds",
    "TruncatedEcg",
    "UnknownLead",
    "UnsupportedEcgFormat",
    "bundle_files",
    "compute",
    "detect_format",
    "detect_r_peaks",
    "effective_values",
    "find_instance",
    "get_measurements",
    "load_record",
    "looks_like_wfdb_header",
    "measure",
    "measure_record",
    "original_of",
    "read_dicom_ecg",
    "read_ecg",
    "read_wfdb",
    "render_page",
    "request_flags_from_text",
    "rhythm_of",
    "samples_etag",
    "set_reader_values",
    "to_pdf",
    "to_png",
    "triage",
    "triage_for_study",
    "uid_from",
    "upload_ecg",
    "write_dicom_ecg",
]
